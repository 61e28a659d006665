"""Vector quantizers of the taming and ITHQ codecs.

- :class:`VectorQuantizer`: nearest-codebook quantization with a straight-through estimator
  (VQ-VAE, van den Oord et al., arXiv 1711.00937, Eq. 3); parameter ``embedding`` (taming's ``VectorQuantizer2``).
- :class:`GumbelQuantize`: logits over the codebook from a 1x1 conv ``proj``, Gumbel-softmax relaxation
  (Jang et al., arXiv 1611.01144) with a KL-to-uniform prior term; codebook ``embed``.
- :class:`EMAVectorQuantizer`: codebook kept as an exponential moving average of the assigned encoder
  outputs (arXiv 1711.00937, Appendix A.1); buffers ``embedding``, ``cluster_size``, ``embedding_avg``.
- :class:`FSQuantizer`: finite scalar quantization (Mentzer et al., arXiv 2309.15505): each channel bounded
  and rounded to a few levels; the code is the tuple of levels, so there is no codebook to collapse.

All take ``z (B, C, H, W)`` and return ``(z_q (B, C, H, W), loss (scalar), (perplexity, None, indices (B, H, W)))``
from ``forward``; ``get_indices(z) -> (B, H, W)`` encodes without any training-time work and
``get_codebook_entry(indices, shape) -> (B, C, H, W)`` looks codes up for decoding.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VectorQuantizer", "GumbelQuantize", "EMAVectorQuantizer", "FSQuantizer"]


def _flatten_bhwc(z: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B*H*W, C)``."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def _nearest(z_flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code, ``argmin_k ||z - e_k||^2 = |z|^2 + |e_k|^2 - 2 z.e_k`` (taming's form)."""
    d = (
        z_flat.pow(2).sum(dim=1, keepdim=True)
        + codebook.pow(2).sum(dim=1)
        - 2.0 * z_flat @ codebook.t()
    )
    return d.argmin(dim=1)


def _lookup(indices: torch.Tensor, codebook: torch.Tensor, shape: Sequence[int] | None) -> torch.Tensor:
    """Codebook rows for ``indices``; with ``shape = (B, H, W[, -1])`` returned as ``(B, C, H, W)``."""
    z_q = F.embedding(indices.reshape(-1), codebook)
    if shape is None:
        return z_q
    b, h, w = shape[0], shape[1], shape[2]
    return z_q.view(b, h, w, -1).permute(0, 3, 1, 2).contiguous()


def _perplexity(indices: torch.Tensor, n_e: int) -> torch.Tensor:
    probs = torch.bincount(indices.reshape(-1), minlength=n_e).float() / max(indices.numel(), 1)
    return torch.exp(-(probs * torch.log(probs + 1e-10)).sum())


class VectorQuantizer(nn.Module):
    """Nearest-neighbour VQ with a straight-through gradient (arXiv 1711.00937, Eq. 3).

    loss = ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2. taming's default (``legacy=True``) puts ``beta`` on
    the codebook term instead: ``||sg[z_e] - e||^2 * beta + ||z_e - sg[e]||^2``; both are offered.
    """

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25, legacy: bool = True, **ignore_kwargs):
        super().__init__()
        self.n_e = int(n_e)
        self.e_dim = int(e_dim)
        self.beta = float(beta)
        self.legacy = legacy
        self.embedding = nn.Embedding(self.n_e, self.e_dim)
        self.embedding.weight.data.uniform_(-1.0 / self.n_e, 1.0 / self.n_e)

    @property
    def codebook(self) -> torch.Tensor:
        return self.embedding.weight

    def get_indices(self, z: torch.Tensor) -> torch.Tensor:
        """``z (B, C, H, W) -> indices (B, H, W)``."""
        b, _, h, w = z.shape
        return _nearest(_flatten_bhwc(z), self.embedding.weight).view(b, h, w)

    def forward(self, z: torch.Tensor):
        b, _, h, w = z.shape
        idx = _nearest(_flatten_bhwc(z), self.embedding.weight)
        z_q = _lookup(idx, self.embedding.weight, (b, h, w))
        commit = F.mse_loss(z, z_q.detach())   # ||z_e - sg[e]||^2
        codebook = F.mse_loss(z_q, z.detach())  # ||sg[z_e] - e||^2
        if self.legacy:
            loss = commit + self.beta * codebook
        else:
            loss = codebook + self.beta * commit
        z_q = z + (z_q - z).detach()  # straight-through: forward z_q, backward identity to z
        return z_q, loss, (_perplexity(idx, self.n_e), None, idx.view(b, h, w))

    def get_codebook_entry(self, indices: torch.Tensor, shape: Sequence[int] | None) -> torch.Tensor:
        return _lookup(indices, self.embedding.weight, shape)


class GumbelQuantize(nn.Module):
    """Gumbel-softmax quantizer (taming's ``GumbelQuantize``).

    ``logits = proj(z)`` (B, n_embed, H, W); training: ``y = gumbel_softmax(logits, tau)`` (hard one-hot with
    a straight-through gradient when ``straight_through``), ``z_q = sum_n y_n embed_n``; loss =
    ``kl_weight * KL(softmax(logits) || Uniform(n_embed))`` averaged over positions.

    Encoding (:meth:`get_indices`) is deterministic, ``argmax logits``, unless ``sample=True`` is asked,
    which draws as the official encoder does (it adds Gumbel noise even in eval mode; the codec wrappers
    choose per use: sampled for training, argmax otherwise).
    """

    def __init__(
        self,
        num_hiddens: int,
        embedding_dim: int,
        n_embed: int,
        straight_through: bool = True,
        kl_weight: float = 5e-4,
        temp_init: float = 1.0,
        **ignore_kwargs,
    ):
        super().__init__()
        self.embedding_dim = int(embedding_dim)
        self.n_embed = int(n_embed)
        self.n_e = self.n_embed
        self.straight_through = straight_through
        self.temperature = float(temp_init)
        self.kl_weight = float(kl_weight)
        self.proj = nn.Conv2d(num_hiddens, self.n_embed, 1)
        self.embed = nn.Embedding(self.n_embed, self.embedding_dim)

    @property
    def codebook(self) -> torch.Tensor:
        return self.embed.weight

    def get_indices(self, z: torch.Tensor, sample: bool = False,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """``z (B, C, H, W) -> indices (B, H, W)``: ``argmax_n logits``, or with ``sample`` a Gumbel-max draw.

        Sampling draws exactly as the official encoder (taming's ``GumbelQuantize.forward`` in eval mode,
        ``F.gumbel_softmax(logits, tau=temperature, dim=1, hard=True)`` then the argmax): one random call,
        ``torch.empty_like(logits).exponential_(generator=generator)`` (the global RNG of the logits' device
        when ``generator`` is None), ``g = -log(e)``, and the index of the largest
        ``softmax((logits + g) / tau)``. So ``P(index = n) = softmax(logits)_n`` (Gumbel-max trick,
        arXiv 1611.01144, Eq. 1), and with the same RNG state the tokens equal the official ones.
        """
        logits = self.proj(z)
        if not sample:
            return logits.argmax(dim=1)
        expo = torch.empty_like(logits, memory_format=torch.legacy_contiguous_format)
        gumbels = -expo.exponential_(generator=generator).log()
        y_soft = ((logits + gumbels) / self.temperature).softmax(dim=1)
        return y_soft.max(dim=1)[1]

    def forward(self, z: torch.Tensor, temp: float | None = None):
        hard = self.straight_through if self.training else True
        tau = self.temperature if temp is None else temp
        logits = self.proj(z)  # (B, n_embed, H, W)
        soft_one_hot = F.gumbel_softmax(logits, tau=tau, dim=1, hard=hard)
        z_q = torch.einsum("bnhw,nd->bdhw", soft_one_hot, self.embed.weight)
        # KL(q || uniform) = sum_n q_n log(q_n * n_embed)
        log_qy = F.log_softmax(logits, dim=1)
        qy = log_qy.exp()
        kl = (qy * (log_qy + torch.log(torch.tensor(float(self.n_embed))))).sum(dim=1).mean()
        idx = soft_one_hot.argmax(dim=1)
        return z_q, self.kl_weight * kl, (_perplexity(idx, self.n_embed), None, idx)

    def get_codebook_entry(self, indices: torch.Tensor, shape: Sequence[int] | None) -> torch.Tensor:
        return _lookup(indices, self.embed.weight, shape)


class EMAVectorQuantizer(nn.Module):
    """VQ with an EMA codebook (ITHQ's quantizer; arXiv 1711.00937, App. A.1).

    In training, per batch: ``N_k <- d N_k + (1-d) n_k``, ``m_k <- d m_k + (1-d) sum_{z -> k} z``,
    ``e_k = m_k / N~_k`` with Laplace-smoothed ``N~_k = (N_k + eps) / (N + K eps) * N``. Loss is the
    commitment term only, ``||z_e - sg[e]||^2`` (the codebook has no gradient). Buffers are named as the
    official ``ema_vqvae`` checkpoint: ``embedding``, ``cluster_size``, ``embedding_avg``.
    """

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25, decay: float = 0.99,
                 distance_type: str = "euclidean", eps: float = 1e-5, **ignore_kwargs):
        super().__init__()
        if distance_type not in ("euclidean", "cosine"):
            raise ValueError(f"distance_type must be 'euclidean' or 'cosine', got {distance_type!r}")
        self.n_e = int(n_e)
        self.e_dim = int(e_dim)
        self.beta = float(beta)
        self.decay = float(decay)
        self.eps = float(eps)
        self.distance_type = distance_type
        embed = torch.randn(self.n_e, self.e_dim)
        self.register_buffer("embedding", embed)
        self.register_buffer("cluster_size", torch.zeros(self.n_e))
        self.register_buffer("embedding_avg", embed.clone())

    @property
    def codebook(self) -> torch.Tensor:
        return self.embedding

    def _assign(self, z_flat: torch.Tensor) -> torch.Tensor:
        if self.distance_type == "cosine":
            return (z_flat @ F.normalize(self.embedding, dim=1).t()).argmax(dim=1)
        return _nearest(z_flat, self.embedding)

    def _prepare(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z, dim=1) if self.distance_type == "cosine" else z

    def get_indices(self, z: torch.Tensor) -> torch.Tensor:
        b, _, h, w = z.shape
        return self._assign(_flatten_bhwc(self._prepare(z))).view(b, h, w)

    only_get_indices = get_indices  # the official name

    @torch.no_grad()
    def _ema_update(self, z_flat: torch.Tensor, idx: torch.Tensor) -> None:
        one_hot = F.one_hot(idx, self.n_e).to(z_flat.dtype)  # (L, K)
        counts = one_hot.sum(0)
        sums = one_hot.t() @ z_flat  # (K, D)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embedding_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.n_e * self.eps) * n
        self.embedding.copy_(self.embedding_avg / smoothed.unsqueeze(1))

    def forward(self, z: torch.Tensor):
        z = self._prepare(z)
        b, _, h, w = z.shape
        z_flat = _flatten_bhwc(z)
        idx = self._assign(z_flat)
        if self.training:
            self._ema_update(z_flat.detach(), idx)
        z_q = _lookup(idx, self.embedding, (b, h, w))
        loss = F.mse_loss(z, z_q.detach())  # the official EMA loss has no beta factor
        z_q = z + (z_q - z).detach()
        return z_q, loss, (_perplexity(idx, self.n_e), None, idx.view(b, h, w))

    def get_codebook_entry(self, indices: torch.Tensor, shape: Sequence[int] | None) -> torch.Tensor:
        return _lookup(indices, self.embedding, shape)


class FSQuantizer(nn.Module):
    """Finite scalar quantization (FSQ; Mentzer et al., "Finite Scalar Quantization: VQ-VAE Made Simple",
    arXiv 2309.15505, Sec. 3).

    ``z (B, d, H, W)`` with ``d = len(levels)``: channel ``i`` is bounded to ``L_i`` values by
    ``f(z) = tanh(z + s_i) * h_i - o_i`` (``h_i = (L_i - 1)(1 + eps) / 2``, offset ``o_i = 0.5`` for even
    ``L_i`` and ``s_i = atanh(o_i / h_i)``, so that rounding gives exactly ``L_i`` integers), rounded with a
    straight-through gradient (Eq. 1-2), then scaled by ``1 / floor(L_i / 2)`` into ``[-1, 1]``. The code
    is the tuple of per-channel levels; its index is the mixed-radix number
    ``sum_i d_i prod_{j<i} L_j`` with digits ``d_i = round(f(z)_i) + floor(L_i / 2)``, so the implicit
    codebook has ``K = prod_i L_i`` entries (``[8, 5, 5, 5]``: 1000) and token ids ``0 .. K-1`` like any
    codec's. There is no codebook loss (the returned loss is 0) and no parameter.
    """

    def __init__(self, levels: Sequence[int], eps: float = 1e-3, **ignore_kwargs):
        super().__init__()
        levels = [int(v) for v in levels]
        if not levels or min(levels) < 2:
            raise ValueError(f"FSQ levels must be integers >= 2, one per channel, got {levels!r}")
        self.levels = levels
        self.e_dim = len(levels)
        self.n_e = int(torch.tensor(levels).prod())
        self.eps = float(eps)
        lv = torch.tensor(levels, dtype=torch.float32)
        self.register_buffer("_levels", lv, persistent=False)
        self.register_buffer("_basis", torch.cumprod(torch.tensor([1] + levels[:-1]), 0), persistent=False)
        self.register_buffer("_half_width", torch.floor(lv / 2), persistent=False)

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        """``z (B, H, W, d) -> f(z)``: each channel in ``(-h_i - o_i, h_i - o_i)``, rounding to L_i values."""
        half_l = (self._levels - 1) * (1 + self.eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def _quantize(self, z_bhwc: torch.Tensor) -> torch.Tensor:
        """Bounded, rounded (straight-through) and scaled to ``[-1, 1]``: ``(B, H, W, d)``."""
        bounded = self._bound(z_bhwc)
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        return rounded / self._half_width

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """``(..., d)`` codes in ``[-1, 1]`` -> ``(...)`` LongTensor indices (mixed radix)."""
        digits = torch.round(codes * self._half_width + self._half_width).long()
        return (digits * self._basis).sum(dim=-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """``(...)`` indices -> ``(..., d)`` codes in ``[-1, 1]``."""
        digits = (indices.long().unsqueeze(-1) // self._basis) % self._levels.long()
        return (digits.float() - self._half_width) / self._half_width

    @property
    def codebook(self) -> torch.Tensor:
        """The implicit codebook ``(K, d)``: every code, in index order."""
        return self.indices_to_codes(torch.arange(self.n_e, device=self._basis.device))

    def get_indices(self, z: torch.Tensor) -> torch.Tensor:
        """``z (B, d, H, W) -> indices (B, H, W)``."""
        return self.codes_to_indices(self._quantize(z.permute(0, 2, 3, 1)))

    def forward(self, z: torch.Tensor):
        if z.shape[1] != self.e_dim:
            raise ValueError(f"FSQ with levels {self.levels} needs {self.e_dim} channels, got {z.shape[1]}")
        codes = self._quantize(z.permute(0, 2, 3, 1))  # (B, H, W, d)
        idx = self.codes_to_indices(codes)
        z_q = codes.permute(0, 3, 1, 2).contiguous()
        return z_q, z.new_zeros(()), (_perplexity(idx, self.n_e), None, idx)

    def get_codebook_entry(self, indices: torch.Tensor, shape: Sequence[int] | None) -> torch.Tensor:
        codes = self.indices_to_codes(indices.reshape(-1))
        if shape is None:
            return codes
        b, h, w = shape[0], shape[1], shape[2]
        return codes.view(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
