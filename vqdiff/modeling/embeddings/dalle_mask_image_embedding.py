"""Image-token embedding with the extra [MASK] token and learned row/column positions (VQ-Diffusion,
arXiv 2111.14822, Sec. 4.1; the official ``DalleMaskImageEmbedding``).

``emb`` has ``num_embed + 1`` rows (the last is [MASK], index K); ``height_emb`` (H, D) and ``width_emb``
(W, D) give position ``height_emb[r] + width_emb[c]`` to the grid cell (r, c) of the *configured*
``spatial_size`` grid, flattened row-major and truncated to the sequence length.  The released
ImageNet/FFHQ models are configured with a 32x32 grid but use 16x16 = 256 tokens, so token ``i`` gets
cell ``(i // 32, i % 32)`` (rows 0-7 only); this is replicated so their checkpoints behave the same.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

__all__ = ["DalleMaskImageEmbedding"]


class DalleMaskImageEmbedding(nn.Module):
    """tokens (B, N) long in ``0..K`` (negative ids read as 0) -> (B, N, D) token + position embedding.

    Args:
        num_embed: K, the codebook size; the table has K + 1 rows and ``self.num_embed`` is K + 1
            (the official convention, which the networks read to size their K-way head).
        spatial_size: (H, W) of the position grid (an int means square).
        embed_dim: D.
        trainable: False freezes the parameters and keeps the module in eval mode.
        pos_emb_type: 'embedding' (``nn.Embedding`` tables, keys ``height_emb.weight``) or 'parameter'
            (zero-initialised ``nn.Parameter`` of shape (1, H, D) / (1, W, D)).
    """

    def __init__(
        self,
        num_embed: int = 8192,
        spatial_size: Union[int, Sequence[int]] = (32, 32),
        embed_dim: int = 3968,
        trainable: bool = True,
        pos_emb_type: str = "embedding",
    ):
        super().__init__()
        if isinstance(spatial_size, int):
            spatial_size = (spatial_size, spatial_size)
        if len(spatial_size) != 2:
            raise ValueError(f"spatial_size must be an int or (H, W), got {spatial_size!r}")
        if pos_emb_type not in ("embedding", "parameter"):
            raise ValueError(f"pos_emb_type must be 'embedding' or 'parameter', got {pos_emb_type!r}")
        self.spatial_size = (int(spatial_size[0]), int(spatial_size[1]))
        self.num_embed = int(num_embed) + 1
        self.embed_dim = int(embed_dim)
        self.trainable = bool(trainable)
        self.pos_emb_type = pos_emb_type
        H, W = self.spatial_size
        self.emb = nn.Embedding(self.num_embed, self.embed_dim)
        if pos_emb_type == "embedding":
            self.height_emb: Union[nn.Embedding, nn.Parameter] = nn.Embedding(H, self.embed_dim)
            self.width_emb: Union[nn.Embedding, nn.Parameter] = nn.Embedding(W, self.embed_dim)
        else:
            self.height_emb = nn.Parameter(torch.zeros(1, H, self.embed_dim))
            self.width_emb = nn.Parameter(torch.zeros(1, W, self.embed_dim))
        if not self.trainable:
            for p in self.parameters():
                p.requires_grad_(False)
            super().train(False)

    def train(self, mode: bool = True) -> "DalleMaskImageEmbedding":
        """A frozen (``trainable=False``) embedding stays in eval mode."""
        return super().train(mode and self.trainable)

    def position_embedding(self) -> torch.Tensor:
        """(H*W, D): ``height_emb[r] + width_emb[c]`` for the cells in row-major order."""
        if isinstance(self.height_emb, nn.Embedding):
            h, w = self.height_emb.weight, self.width_emb.weight  # (H, D), (W, D)
        else:
            h, w = self.height_emb[0], self.width_emb[0]
        return (h[:, None, :] + w[None, :, :]).reshape(-1, self.embed_dim)  # (H, W, D) -> (H*W, D)

    def forward(self, index: torch.Tensor, **kwargs) -> torch.Tensor:
        """index (B, N) -> (B, N, D); N may be at most H*W (the first N cells of the grid are used)."""
        if index.dim() != 2:
            raise ValueError(f"DalleMaskImageEmbedding expects token indices (B, N), got shape {tuple(index.shape)}")
        N = index.shape[1]
        H, W = self.spatial_size
        if N > H * W:
            raise ValueError(f"sequence of {N} tokens is longer than the {H}x{W} position grid (spatial_size)")
        # the official code zeroes negative ids in place; here without touching the caller's tensor
        emb = self.emb(index.clamp(min=0))  # (B, N, D); ids > K raise IndexError from nn.Embedding
        return emb + self.position_embedding()[:N].unsqueeze(0)
