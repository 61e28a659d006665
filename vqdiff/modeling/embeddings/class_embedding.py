"""Class-label condition (the official ``ClassEmbedding``; ImageNet model of VQ-Diffusion,
arXiv 2111.14822, Sec. 4.1).

With ``identity=True`` (every released config) it holds no weights and passes the labels through: the
class then enters the network through the blocks' class AdaLayerNorm.  Otherwise it is a table
``emb`` (num_embed, D) and returns (B, 1, D).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ClassEmbedding"]


class ClassEmbedding(nn.Module):
    """labels (B,) long -> the labels (identity) or ``emb(labels)`` (B, 1, D).

    ``num_embed`` is the number of real classes; the label ``num_embed`` is the "no class" label the
    class-conditional model uses for classifier-free guidance.
    """

    def __init__(self, num_embed: int = 1000, embed_dim: int = 512, identity: bool = False, trainable: bool = True):
        super().__init__()
        self.num_embed = int(num_embed)
        self.embed_dim = int(embed_dim)
        self.identity = bool(identity)
        self.trainable = bool(trainable)
        if not self.identity:
            self.emb = nn.Embedding(self.num_embed, self.embed_dim)
            if not self.trainable:
                for p in self.parameters():
                    p.requires_grad_(False)
                super().train(False)

    def train(self, mode: bool = True) -> "ClassEmbedding":
        """A frozen (``trainable=False``) embedding stays in eval mode."""
        return super().train(mode and self.trainable)

    def forward(self, index: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.identity:
            return index
        if index.dim() != 1:
            raise ValueError(f"ClassEmbedding expects labels of shape (B,), got {tuple(index.shape)}")
        return self.emb(index.long()).unsqueeze(1)  # (B, 1, D)
