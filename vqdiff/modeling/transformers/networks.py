"""The denoising networks of VQ-Diffusion (arXiv 2111.14822, Sec. 4.1): p_theta(x_0 | x_t, y) logits.

``Text2ImageTransformer`` (text, 'selfcross' blocks), ``Condition2ImageTransformer`` (class label,
'selfcondition' blocks) and ``UnCondition2ImageTransformer`` ('self' blocks) share one body: the token
embedding ``content_emb`` (built from ``content_emb_config``, which the DiffusionTransformer injects
together with ``diffusion_step``), a stack ``blocks`` and the head ``to_logits = (LayerNorm, Linear D->K)``.
Their constructors accept the official parameters, and their parameter/buffer names are the official
ones, so ``transformer.transformer.*`` entries of the released checkpoints load with ``strict=True``.

Call: ``net(input (B, N) long incl. [MASK] = K, cond_emb, t (B,) long) -> logits (B, K, N)``, with
``cond_emb`` the text features (B, Lc, Dc), the class labels (B,) (any dtype; used as integers), or None.
``net.precompute_condition(cond_emb)`` returns a per-block cache (cross-attention keys/values, or the
class modulation) that ``net(input, cond_emb, t, cond_cache=cache)`` reuses at every diffusion step;
the result equals the uncached call exactly, because the uncached call builds the same cache itself.
``cond_mask`` (B, Lc) bool (text only) masks the text padding in every cross attention (True: attend); it
is separate from the cache (the same keys/values serve masked and unmasked calls).
"""

from __future__ import annotations

import math
from typing import Any, List, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _activation_checkpoint

from vqdiff.modeling.transformers.layers import Block
from vqdiff.utils.config import instantiate_from_config

__all__ = ["Text2ImageTransformer", "Condition2ImageTransformer", "UnCondition2ImageTransformer"]


def _spatial(content_seq_len: int, content_spatial_size: Optional[Sequence[int]]) -> tuple:
    if content_spatial_size is None:
        s = int(math.sqrt(content_seq_len))
        if s * s != content_seq_len:
            raise ValueError(
                f"content_spatial_size is not given and content_seq_len={content_seq_len} is not a square"
            )
        return (s, s)
    return tuple(content_spatial_size)


class _ImageTokenTransformer(nn.Module):
    """Common body; subclasses only choose the block type and the constructor signature."""

    def _build(
        self,
        content_emb_config: Optional[Mapping],
        n_layer: int,
        n_embd: int,
        content_seq_len: int,
        checkpoint: bool,
        block_kwargs: dict,
    ) -> None:
        if content_emb_config is None:
            raise ValueError(
                f"{type(self).__name__} needs 'content_emb_config' (the DalleMaskImageEmbedding config; the "
                "DiffusionTransformer injects it)"
            )
        self.use_checkpoint = bool(checkpoint)
        self.content_emb = instantiate_from_config(content_emb_config)
        emb_dim = getattr(self.content_emb, "embed_dim", n_embd)
        if emb_dim != n_embd:
            raise ValueError(f"content_emb_config.params.embed_dim ({emb_dim}) must equal n_embd ({n_embd})")
        self.blocks = nn.Sequential(*[Block(n_embd=n_embd, seq_len=content_seq_len, **block_kwargs) for _ in range(n_layer)])
        # content_emb.num_embed is K + 1 (the official convention: codes + [MASK]); the head predicts K
        self.num_embed = self.content_emb.num_embed - 1
        self.to_logits = nn.Sequential(nn.LayerNorm(n_embd), nn.Linear(n_embd, self.num_embed))
        self.content_seq_len = content_seq_len
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """Official init: Linear/Embedding weights N(0, 0.02), zero biases, affine LayerNorm 1/0."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def precompute_condition(self, cond_emb: Any) -> Optional[List[Any]]:
        """Per-block condition cache (see :meth:`layers.Block.condition_cache`); None when unconditional."""
        if cond_emb is None:
            return None
        return [block.condition_cache(cond_emb) for block in self.blocks]

    def forward(
        self,
        input: torch.Tensor,
        cond_emb: Any,
        t: torch.Tensor,
        cond_cache: Optional[List[Any]] = None,
        cond_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """input (B, N) long, cond_emb, t (B,) long, optional ``cond_mask`` (B, Lc) bool -> logits (B, K, N)
        (no logit for [MASK])."""
        if input.dim() != 2:
            raise ValueError(f"input must be token indices (B, N), got shape {tuple(input.shape)}")
        t = t.to(input.device)
        x = self.content_emb(input)  # (B, N, D)
        if cond_cache is None:
            cond_cache = self.precompute_condition(cond_emb)
        elif len(cond_cache) != len(self.blocks):
            raise ValueError(f"cond_cache has {len(cond_cache)} entries; the network has {len(self.blocks)} blocks")
        use_ckpt = self.use_checkpoint and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            cache = None if cond_cache is None else cond_cache[i]
            if use_ckpt:
                x = _activation_checkpoint(block, x, cond_emb, t, cache, cond_mask, use_reentrant=False)
            else:
                x = block(x, cond_emb, t, cache, cond_mask)
        logits = self.to_logits(x)  # (B, N, K)
        return logits.transpose(1, 2)  # (B, K, N)

    def parameters(self, recurse: bool = True, name: Optional[str] = None):
        """``parameters()`` as usual; ``name`` other than None/'none' gives the official minGPT-style
        weight-decay groups (Linear/Conv weights decayed; biases, norms, embeddings not)."""
        if name is None or name == "none":
            return super().parameters(recurse=recurse)
        decay, no_decay = [], []
        for mn, m in self.named_modules():
            for pn, p in m.named_parameters(recurse=False):
                if pn.endswith("weight") and isinstance(m, (nn.Linear, nn.Conv2d)):
                    decay.append(p)
                else:
                    no_decay.append(p)
        return [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]


class Text2ImageTransformer(_ImageTokenTransformer):
    """Text-conditional network: 'selfcross' blocks (self attention, cross attention to the text, MLP),
    every norm before attention an AdaLayerNorm of the timestep (arXiv 2111.14822 Fig. 2)."""

    def __init__(
        self,
        condition_seq_len: int = 77,
        n_layer: int = 14,
        n_embd: int = 1024,
        n_head: int = 16,
        content_seq_len: int = 1024,
        attn_pdrop: float = 0.0,
        resid_pdrop: float = 0.0,
        mlp_hidden_times: int = 4,
        block_activate: Optional[str] = None,
        attn_type: str = "selfcross",
        content_spatial_size: Optional[Sequence[int]] = (32, 32),
        condition_dim: int = 512,
        diffusion_step: int = 1000,
        timestep_type: str = "adalayernorm",
        content_emb_config: Optional[Mapping] = None,
        mlp_type: str = "fc",
        checkpoint: bool = False,
    ):
        super().__init__()
        if attn_type != "selfcross":
            raise ValueError(f"Text2ImageTransformer supports attn_type 'selfcross' only, got {attn_type!r}")
        _spatial(content_seq_len, content_spatial_size)
        self.condition_seq_len = condition_seq_len
        self._build(
            content_emb_config, n_layer, n_embd, content_seq_len, checkpoint,
            dict(
                condition_seq_len=condition_seq_len, n_head=n_head, attn_pdrop=attn_pdrop,
                resid_pdrop=resid_pdrop, mlp_hidden_times=mlp_hidden_times, activate=block_activate,
                attn_type=attn_type, condition_dim=condition_dim, diffusion_step=diffusion_step,
                timestep_type=timestep_type, mlp_type=mlp_type,
            ),
        )


class Condition2ImageTransformer(_ImageTokenTransformer):
    """Class-conditional network: 'selfcondition' blocks; the label enters through ``ln2``, an
    AdaLayerNorm over ``class_number`` rows (a label >= class_number uses the mean row: the null class)."""

    def __init__(
        self,
        class_type: str = "adalayernorm",
        class_number: int = 1000,
        n_layer: int = 24,
        n_embd: int = 1024,
        n_head: int = 16,
        content_seq_len: int = 1024,
        attn_pdrop: float = 0.0,
        resid_pdrop: float = 0.0,
        mlp_hidden_times: int = 4,
        block_activate: Optional[str] = None,
        attn_type: str = "selfcondition",
        content_spatial_size: Optional[Sequence[int]] = (32, 32),
        diffusion_step: int = 100,
        timestep_type: str = "adalayernorm",
        content_emb_config: Optional[Mapping] = None,
        mlp_type: str = "conv_mlp",
        checkpoint: bool = False,
    ):
        super().__init__()
        if attn_type != "selfcondition":
            raise ValueError(f"Condition2ImageTransformer supports attn_type 'selfcondition' only, got {attn_type!r}")
        _spatial(content_seq_len, content_spatial_size)
        self._build(
            content_emb_config, n_layer, n_embd, content_seq_len, checkpoint,
            dict(
                class_type=class_type, class_number=class_number, n_head=n_head, attn_pdrop=attn_pdrop,
                resid_pdrop=resid_pdrop, mlp_hidden_times=mlp_hidden_times, activate=block_activate,
                attn_type=attn_type, diffusion_step=diffusion_step, timestep_type=timestep_type,
                mlp_type=mlp_type,
            ),
        )


class UnCondition2ImageTransformer(_ImageTokenTransformer):
    """Unconditional network: 'self' blocks (AdaLayerNorm + self attention, LayerNorm + MLP)."""

    def __init__(
        self,
        class_type: str = "adalayernorm",
        n_layer: int = 24,
        n_embd: int = 512,
        n_head: int = 16,
        content_seq_len: int = 256,
        attn_pdrop: float = 0.0,
        resid_pdrop: float = 0.0,
        mlp_hidden_times: int = 4,
        block_activate: Optional[str] = None,
        attn_type: str = "self",
        content_spatial_size: Optional[Sequence[int]] = (16, 16),
        diffusion_step: int = 100,
        timestep_type: str = "adalayernorm",
        content_emb_config: Optional[Mapping] = None,
        mlp_type: str = "conv_mlp",
        checkpoint: bool = False,
    ):
        super().__init__()
        if attn_type != "self":
            raise ValueError(f"UnCondition2ImageTransformer supports attn_type 'self' only, got {attn_type!r}")
        _spatial(content_seq_len, content_spatial_size)
        self._build(
            content_emb_config, n_layer, n_embd, content_seq_len, checkpoint,
            dict(
                n_head=n_head, attn_pdrop=attn_pdrop, resid_pdrop=resid_pdrop,
                mlp_hidden_times=mlp_hidden_times, activate=block_activate, attn_type=attn_type,
                diffusion_step=diffusion_step, timestep_type=timestep_type, mlp_type=mlp_type,
            ),
        )
