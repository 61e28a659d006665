"""Building blocks of the VQ-Diffusion denoising networks (arXiv 2111.14822, Sec. 4.1 and Fig. 2).

Every module here keeps the official parameter and buffer names (``key``, ``query``, ``value``, ``proj``,
``emb``, ``linear``, ``mlp.0`` / ``mlp.2`` or ``mlp.conv1`` / ``mlp.conv2``, the cross attention's
``mask`` buffer) so the released checkpoints load with ``strict=True``.  The computation is written for
speed: attention goes through :func:`torch.nn.functional.scaled_dot_product_attention`, the self
attention's three projections run as one matmul (also with an adapter on them: ``projections``), and
the cross attention's keys/values of the condition can be computed once per image
(:meth:`CrossAttention.condition_kv`) and reused at every diffusion step.

Shapes: ``B`` batch, ``N`` image tokens, ``D`` width, ``h`` heads, ``d = D / h``, ``Lc`` condition length.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vqdiff.modeling.transformers.projections import fused_linear_parameters

__all__ = [
    "GELU2",
    "make_activation",
    "SinusoidalPosEmb",
    "AdaLayerNorm",
    "AdaInsNorm",
    "FullAttention",
    "CrossAttention",
    "Conv_MLP",
    "Block",
    "ATTN_TYPES",
    "MLP_TYPES",
]

ATTN_TYPES = ("selfcross", "selfcondition", "self")
MLP_TYPES = ("fc", "conv_mlp")

KV = Tuple[torch.Tensor, torch.Tensor]


class GELU2(nn.Module):
    """The sigmoid approximation of GELU used by the official networks: ``x * sigmoid(1.702 x)``.

    Computed as ``silu(1.702 x) / 1.702`` (the same function): autograd then keeps one saved tensor
    (``1.702 x``) instead of two (``x`` and the sigmoid), which halves the MLP's activation memory.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x * 1.702) * (1.0 / 1.702)


def _activate_temporary(act: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``act(h)`` for a temporary ``h`` that nobody else reads (an MLP's hidden layer).

    Without autograd, GELU2 runs in place as ``silu(1.702 h) / 1.702`` (the same function): on CPU the
    two (B, N, 4D) temporaries of the plain formula cost more in page faults than the arithmetic itself.
    """
    if isinstance(act, GELU2) and not torch.is_grad_enabled():
        h = h.mul_(1.702)
        return F.silu(h, inplace=True).mul_(1.0 / 1.702)
    return act(h)


def make_activation(name: Optional[str]) -> nn.Module:
    """``'GELU'`` (exact erf GELU) or ``'GELU2'`` (the sigmoid form); the official ``block_activate``."""
    if name == "GELU":
        return nn.GELU()
    if name == "GELU2":
        return GELU2()
    raise ValueError(f"block_activate must be 'GELU' or 'GELU2', got {name!r}")


class SinusoidalPosEmb(nn.Module):
    """Transformer sinusoidal features of a timestep, rescaled so ``num_steps`` maps to ``rescale_steps``.

    Used by AdaLayerNorm when the timestep type contains ``'abs'``; it holds no parameters.
    """

    def __init__(self, num_steps: int, dim: int, rescale_steps: float = 4000.0):
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"SinusoidalPosEmb needs an even dim >= 4, got {dim}")
        self.dim = dim
        self.num_steps = float(num_steps)
        self.rescale_steps = float(rescale_steps)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, dim): ``[sin(t' w_i), cos(t' w_i)]``, ``w_i = 10000^{-i/(dim/2-1)}``, ``t' = t R / T``."""
        t = t.float() * (self.rescale_steps / self.num_steps)
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000.0) / (half - 1)))
        angles = t[:, None] * freqs[None, :]  # (B, dim/2)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class _AdaNormBase(nn.Module):
    """Shared part of AdaLayerNorm / AdaInsNorm: an embedding of an integer (timestep or class) that
    predicts a per-sample scale and shift, ``[s, b] = Linear(SiLU(e(t)))``.

    Improved VQ-Diffusion's zero-shot null class (arXiv 2205.16007, Sec. 3.2): an index at or beyond the
    table's rows uses the mean of all rows.  The official code tests ``t[0]`` only and applies the mean to
    the whole batch; here the rule is applied per sample (identical for the homogeneous batches the
    official code uses, and right for a batched classifier-free-guidance call that mixes labels with the
    null label).  It is tensor-only: no host sync, no Python branch for ``torch.compile``.
    """

    def __init__(self, n_embd: int, num_rows: int, emb_type: str):
        super().__init__()
        if "abs" in emb_type:
            self.emb: nn.Module = SinusoidalPosEmb(num_rows, n_embd)
        else:
            self.emb = nn.Embedding(num_rows, n_embd)
        self.silu = nn.SiLU()
        self.linear = nn.Linear(n_embd, n_embd * 2)
        self.diff_step = num_rows

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) integer-valued tensor -> (B, D) embedding, with the mean-row rule for ``t >= rows``."""
        t = t.long()
        if isinstance(self.emb, SinusoidalPosEmb):
            return self.emb(t)
        table = self.emb.weight  # (rows, D)
        rows = table.shape[0]
        looked_up = F.embedding(t.clamp(0, rows - 1), table)  # (B, D)
        mean_row = table.mean(dim=0, keepdim=True)  # (1, D)
        return torch.where((t >= rows)[:, None], mean_row, looked_up)

    def modulation(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, 1, 2D): the concatenated ``[scale, shift]`` used by ``forward``."""
        return self.linear(self.silu(self.embed(t))).unsqueeze(1)


class AdaLayerNorm(_AdaNormBase):
    """Adaptive layer norm (VQ-Diffusion Sec. 4.1): ``LN(x) * (1 + s(t)) + b(t)``, LN without affine.

    Keys: ``emb.weight`` (rows, D) (absent for 'abs' types), ``linear.weight`` (2D, D), ``linear.bias`` (2D).
    """

    def __init__(self, n_embd: int, diffusion_step: int, emb_type: str = "adalayernorm_abs"):
        super().__init__(n_embd, diffusion_step, emb_type)
        self.layernorm = nn.LayerNorm(n_embd, elementwise_affine=False)

    def forward(self, x: torch.Tensor, timestep: Optional[torch.Tensor], modulation: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, N, D), timestep (B,) -> (B, N, D); a precomputed ``modulation`` (B, 1, 2D) replaces it."""
        mod = self.modulation(timestep) if modulation is None else modulation
        scale, shift = mod.chunk(2, dim=2)  # (B, 1, D) each
        return torch.addcmul(shift, self.layernorm(x), 1 + scale)


class AdaInsNorm(_AdaNormBase):
    """Adaptive instance norm over the token axis (the official ``class_type`` without 'adalayernorm')."""

    def __init__(self, n_embd: int, diffusion_step: int, emb_type: str = "adainsnorm_abs"):
        super().__init__(n_embd, diffusion_step, emb_type)
        self.instancenorm = nn.InstanceNorm1d(n_embd)

    def forward(self, x: torch.Tensor, timestep: Optional[torch.Tensor], modulation: Optional[torch.Tensor] = None) -> torch.Tensor:
        mod = self.modulation(timestep) if modulation is None else modulation
        scale, shift = mod.chunk(2, dim=2)
        normed = self.instancenorm(x.transpose(-1, -2)).transpose(-1, -2)  # normalise over N per channel
        return torch.addcmul(shift, normed, 1 + scale)


def _split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, L, D) -> (B, h, L, d)."""
    B, L, D = x.shape
    return x.view(B, L, n_head, D // n_head).transpose(1, 2)


def _merge_heads(y: torch.Tensor) -> torch.Tensor:
    """(B, h, L, d) -> (B, L, D)."""
    B, H, L, d = y.shape
    return y.transpose(1, 2).reshape(B, L, H * d)


class FullAttention(nn.Module):
    """Multi-head self attention without mask: ``softmax(Q K^T / sqrt(d)) V`` then ``proj``.

    The official separate ``key``/``query``/``value`` Linears are kept (checkpoint keys); the forward
    concatenates their weights so the three projections are one matmul.
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        seq_len: Optional[int] = None,
        attn_pdrop: float = 0.1,
        resid_pdrop: float = 0.1,
        causal: bool = True,
    ):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        self.key = nn.Linear(n_embd, n_embd)
        self.query = nn.Linear(n_embd, n_embd)
        self.value = nn.Linear(n_embd, n_embd)
        self.attn_pdrop = float(attn_pdrop)
        self.resid_drop = nn.Dropout(resid_pdrop)
        self.proj = nn.Linear(n_embd, n_embd)
        self.n_head = n_head
        self.causal = causal  # the official flag; the official forward never applies a mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, D) -> (B, N, D)."""
        fused = fused_linear_parameters((self.query, self.key, self.value))  # (3D, D), (3D,)
        if fused is not None:
            q, k, v = F.linear(x, *fused).chunk(3, dim=-1)  # (B, N, D) each
        else:  # a projection carries an adapter that acts on the input (training): call each
            q, k, v = self.query(x), self.key(x), self.value(x)
        y = F.scaled_dot_product_attention(
            _split_heads(q, self.n_head),
            _split_heads(k, self.n_head),
            _split_heads(v, self.n_head),
            dropout_p=self.attn_pdrop if self.training else 0.0,
        )  # (B, h, N, d)
        return self.resid_drop(self.proj(_merge_heads(y)))


class CrossAttention(nn.Module):
    """Multi-head attention from the image tokens to the condition (text) sequence. As in the official code
    the text padding is attended to, unless a padding ``mask`` (B, Lc) bool is given (True: attend): the
    masked positions then get a ``-inf`` logit before the softmax (``condition_padding_mask``,
    ``vqdiff.modeling.diffusion.condition_input``).

    ``key``/``value`` map the condition width ``condition_embd`` to ``n_embd``.  The buffer ``mask``
    (1, 1, L, L) of lower-triangular ones is registered (persistent) only because the official
    checkpoints hold it; it is never used.
    """

    def __init__(
        self,
        condition_seq_len: int,
        n_embd: int,
        condition_embd: int,
        n_head: int,
        seq_len: Optional[int] = None,
        attn_pdrop: float = 0.1,
        resid_pdrop: float = 0.1,
        causal: bool = True,
    ):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        self.key = nn.Linear(condition_embd, n_embd)
        self.query = nn.Linear(n_embd, n_embd)
        self.value = nn.Linear(condition_embd, n_embd)
        self.attn_pdrop = float(attn_pdrop)
        self.resid_drop = nn.Dropout(resid_pdrop)
        self.proj = nn.Linear(n_embd, n_embd)
        self.n_head = n_head
        self.causal = causal
        if causal:
            if seq_len is None:
                raise ValueError("CrossAttention(causal=True) needs seq_len for its (unused) 'mask' buffer")
            self.register_buffer("mask", torch.tril(torch.ones(seq_len, seq_len)).view(1, 1, seq_len, seq_len))

    def condition_kv(self, cond: torch.Tensor) -> KV:
        """cond (B, Lc, Dc) -> (k, v), each (B, h, Lc, d): computed once per image, reused every step."""
        if cond.dtype == torch.float64:
            cond = cond.float()  # the learnable empty-text embedding is a float64 parameter (official)
        fused = fused_linear_parameters((self.key, self.value))  # (2D, Dc), (2D,)
        if fused is not None:
            k, v = F.linear(cond, *fused).chunk(2, dim=-1)
        else:  # a projection carries an adapter that acts on the input (training): call each
            k, v = self.key(cond), self.value(cond)
        return _split_heads(k, self.n_head), _split_heads(v, self.n_head)

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None, kv: Optional[KV] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, N, D) and either cond (B, Lc, Dc) or its precomputed ``kv``, optional ``mask`` (B, Lc) bool
        -> (B, N, D)."""
        if kv is None:
            if cond is None:
                raise ValueError("CrossAttention needs the condition (B, Lc, Dc) or its cached (k, v)")
            kv = self.condition_kv(cond)
        k, v = kv
        q = _split_heads(self.query(x), self.n_head)  # (B, h, N, d)
        attn_mask = None
        if mask is not None:
            if mask.shape != (k.shape[0], k.shape[2]):
                raise ValueError(f"the condition mask has shape {tuple(mask.shape)}; the condition is "
                                 f"(B, Lc) = ({k.shape[0]}, {k.shape[2]})")
            attn_mask = mask.to(device=q.device, dtype=torch.bool)[:, None, None, :]  # (B, 1, 1, Lc): False -> -inf
        y = F.scaled_dot_product_attention(
            q, k.to(q.dtype), v.to(q.dtype), attn_mask=attn_mask, dropout_p=self.attn_pdrop if self.training else 0.0
        )
        return self.resid_drop(self.proj(_merge_heads(y)))


class Conv_MLP(nn.Module):  # noqa: N801 (official name)
    """The MLP as two 3x3 convolutions over the sqrt(N) x sqrt(N) token grid (ImageNet/FFHQ models)."""

    def __init__(self, n_embd: int, mlp_hidden_times: float, act: nn.Module, resid_pdrop: float):
        super().__init__()
        hidden = int(mlp_hidden_times * n_embd)
        self.conv1 = nn.Conv2d(n_embd, hidden, kernel_size=3, stride=1, padding=1)
        self.act = act
        self.conv2 = nn.Conv2d(hidden, n_embd, kernel_size=3, stride=1, padding=1)
        self.dropout = nn.Dropout(resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, D); the grid has ``int(sqrt(N))`` rows, row-major (as the official)."""
        B, N, D = x.shape
        h = int(math.isqrt(N))
        if h * (N // h) != N:
            raise ValueError(f"Conv_MLP needs a token count that fills an int(sqrt(N))-row grid, got N={N}")
        grid = x.reshape(B, h, N // h, D).permute(0, 3, 1, 2)  # (B, D, h, w), channels-last strides
        y = self.conv2(_activate_temporary(self.act, self.conv1(grid)))  # (B, D, h, w)
        return self.dropout(y.permute(0, 2, 3, 1).reshape(B, N, D))


class Block(nn.Module):
    """One transformer block (VQ-Diffusion Fig. 2); ``attn_type``:

    - ``'selfcross'`` (text): ``x += attn1(ln1(x, t)); x += attn2(ln1_1(x, t), c); x += mlp(ln2(x))``
    - ``'selfcondition'`` (class): ``x += attn(ln1(x, t)); x += mlp(ln2(x, y))``, ``ln2`` an AdaLayerNorm
      over ``class_number`` labels (the class enters only there)
    - ``'self'`` (unconditional): ``x += attn(ln1(x, t)); x += mlp(ln2(x))``

    The constructor accepts all official ``Block`` parameters (the unused ones only for config parity).
    """

    def __init__(
        self,
        class_type: str = "adalayernorm",
        class_number: int = 1000,
        condition_seq_len: int = 77,
        n_embd: int = 1024,
        n_head: int = 16,
        seq_len: int = 256,
        attn_pdrop: float = 0.1,
        resid_pdrop: float = 0.1,
        mlp_hidden_times: int = 4,
        activate: Optional[str] = "GELU",
        attn_type: str = "full",
        if_upsample: bool = False,
        upsample_type: str = "bilinear",
        upsample_pre_channel: int = 0,
        content_spatial_size=None,
        conv_attn_kernel_size=None,
        condition_dim: int = 1024,
        diffusion_step: int = 100,
        timestep_type: str = "adalayernorm",
        window_size: int = 8,
        mlp_type: str = "fc",
    ):
        super().__init__()
        if attn_type not in ATTN_TYPES:
            raise ValueError(f"attn_type must be one of {ATTN_TYPES}, got {attn_type!r}")
        if "adalayernorm" not in timestep_type:
            raise ValueError(f"timestep_type must contain 'adalayernorm' (e.g. 'adalayernorm'), got {timestep_type!r}")
        if mlp_type not in MLP_TYPES:
            raise ValueError(f"mlp_type must be one of {MLP_TYPES}, got {mlp_type!r}")
        self.attn_type = attn_type
        # registration order = the official state-dict key order: ln1, ln2, attn(1), attn2, ln1_1, mlp
        self.ln1 = AdaLayerNorm(n_embd, diffusion_step, timestep_type)
        if attn_type == "selfcondition":
            if "adalayernorm" in class_type:
                self.ln2: nn.Module = AdaLayerNorm(n_embd, class_number, class_type)
            else:
                self.ln2 = AdaInsNorm(n_embd, class_number, class_type)
        else:
            self.ln2 = nn.LayerNorm(n_embd)
        if attn_type == "selfcross":
            self.attn1 = FullAttention(n_embd, n_head, seq_len, attn_pdrop, resid_pdrop)
            self.attn2 = CrossAttention(condition_seq_len, n_embd, condition_dim, n_head, seq_len, attn_pdrop, resid_pdrop)
            self.ln1_1 = AdaLayerNorm(n_embd, diffusion_step, timestep_type)
        else:
            self.attn = FullAttention(n_embd, n_head, seq_len, attn_pdrop, resid_pdrop)
        act = make_activation(activate)
        if mlp_type == "conv_mlp":
            self.mlp: nn.Module = Conv_MLP(n_embd, mlp_hidden_times, act, resid_pdrop)
        else:
            self.mlp = nn.Sequential(
                nn.Linear(n_embd, mlp_hidden_times * n_embd),
                act,
                nn.Linear(mlp_hidden_times * n_embd, n_embd),
                nn.Dropout(resid_pdrop),
            )

    def _mlp(self, h: torch.Tensor) -> torch.Tensor:
        if isinstance(self.mlp, nn.Sequential):  # keys mlp.0 (Linear), mlp.1 (act), mlp.2 (Linear), mlp.3 (Dropout)
            return self.mlp[3](self.mlp[2](_activate_temporary(self.mlp[1], self.mlp[0](h))))
        return self.mlp(h)

    def condition_cache(self, cond):
        """What this block can precompute from the condition: the cross-attention (k, v) for
        'selfcross', the class modulation (B, 1, 2D) of ``ln2`` for 'selfcondition', None for 'self'."""
        if self.attn_type == "selfcross":
            return self.attn2.condition_kv(cond)
        if self.attn_type == "selfcondition":
            return self.ln2.modulation(cond)
        return None

    def forward(self, x: torch.Tensor, cond, t: torch.Tensor, cache=None, cond_mask=None) -> torch.Tensor:
        """x (B, N, D), cond (text (B, Lc, Dc) | labels (B,) | None), t (B,) -> (B, N, D).

        ``cache`` is this block's :meth:`condition_cache` of ``cond``; when given, ``cond`` is not read.
        ``cond_mask`` (B, Lc) bool: the text padding mask of the cross attention ('selfcross' only).
        """
        if self.attn_type == "selfcross":
            x = x + self.attn1(self.ln1(x, t))
            if cache is None:
                x = x + self.attn2(self.ln1_1(x, t), cond, mask=cond_mask)
            else:
                x = x + self.attn2(self.ln1_1(x, t), kv=cache, mask=cond_mask)
            return x + self._mlp(self.ln2(x))
        if cond_mask is not None:
            raise ValueError(f"a condition mask is for the text cross attention; attn_type {self.attn_type!r} "
                             "has none")
        x = x + self.attn(self.ln1(x, t))
        if self.attn_type == "selfcondition":
            if cache is None:
                return x + self._mlp(self.ln2(x, cond.long()))
            return x + self._mlp(self.ln2(x, None, modulation=cache))
        return x + self._mlp(self.ln2(x))
