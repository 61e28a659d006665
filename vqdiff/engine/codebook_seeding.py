"""Where a codec's codes start and where dead codes go: k-means++ seeding from data and dead-code restarts.

Seeding acts on nearest-code quantizers (``VectorQuantizer``, whose codes are ``embedding.weight``, and
``EMAVectorQuantizer``, whose codes are the buffer ``embedding``), whose codes live where the encoder outputs
do. Restarts act on those and on ``GumbelQuantize``, whose dead codes are split off used ones (a Gumbel code
is chosen by its logit, not by distance, so moving its vector alone would not revive it). FSQ has no
codebook to collapse and is left alone.

Under ``torch.distributed`` every rank holds the same codebook: the counts of chosen codes are summed over
ranks before this module reads them, rank 0 draws the new codes and broadcasts them.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from vqdiff.modeling.codecs.image.quantizers import EMAVectorQuantizer, GumbelQuantize, VectorQuantizer

__all__ = ["d2_sample", "has_codebook", "codebook_of", "seed_codebook_from_data", "restart_dead_codes"]


def d2_sample(z: torch.Tensor, codes: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` rows of ``z (M, C)`` drawn with probability proportional to their squared distance to the
    nearest row of ``codes (K, C)`` (k-means++ "D^2" seeding, Arthur & Vassilvitskii 2007, arXiv cs/0611017).

    Rare patches (a small coloured shape on a large background) lie far from every code, so they are the
    likeliest picks: uniform picks would spend almost every code on background patches. ``generator``
    None draws from the global RNG (which the trainer's checkpoints restore).
    """
    d2 = torch.cdist(z, codes).pow(2).min(dim=1).values if codes.numel() else torch.ones(z.shape[0], device=z.device)
    if float(d2.sum()) <= 0:
        d2 = torch.ones_like(d2)
    pick = torch.multinomial(d2.float().cpu(), n, replacement=n > z.shape[0], generator=generator)
    return z[pick.to(z.device)]


def has_codebook(quantizer: nn.Module) -> bool:
    """Whether ``quantizer`` keeps an explicit nearest-code codebook this module can seed and restart."""
    return isinstance(quantizer, (VectorQuantizer, EMAVectorQuantizer))


def codebook_of(quantizer: nn.Module) -> torch.Tensor:
    """The ``(K, C)`` code tensor of a nearest-code quantizer (a parameter or a buffer)."""
    return quantizer.embedding.weight if isinstance(quantizer, VectorQuantizer) else quantizer.embedding


@torch.no_grad()
def _write_codes(quantizer: nn.Module, which: torch.Tensor, values: torch.Tensor) -> None:
    """Set codes ``which`` to ``values``; an EMA codebook restarts their running averages there too."""
    codebook_of(quantizer)[which] = values.to(codebook_of(quantizer).dtype)
    if isinstance(quantizer, EMAVectorQuantizer):
        quantizer.cluster_size[which] = 1.0
        quantizer.embedding_avg[which] = values.to(quantizer.embedding_avg.dtype)


@torch.no_grad()
def seed_codebook_from_data(encode: nn.Module, quantizer: nn.Module, images: Iterable[torch.Tensor],
                            generator: torch.Generator) -> bool:
    """Seed the codebook with encoder outputs picked by k-means++ D^2 sampling (no dead code at the start,
    and codes for the rare foreground patches as well as the background).

    Args:
        encode: ``(B, 3, H, W) in [-1, 1] -> (B, C, h, w)`` (the model's ``encode_to_prequant``).
        quantizer: the model's quantizer; nothing happens unless :func:`has_codebook`.
        images: batches in ``[-1, 1]`` (e.g. 64 training images).
        generator: the RNG of the picks.
    Returns whether the codebook was seeded.
    """
    if not has_codebook(quantizer):
        return False
    z = torch.cat([encode(x) for x in images])
    z = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B*h*w, C)
    codes = z[torch.randint(0, z.shape[0], (1,), generator=generator)]
    for _ in range(quantizer.n_e - 1):
        codes = torch.cat([codes, d2_sample(z, codes, 1, generator)])
    _write_codes(quantizer, torch.arange(quantizer.n_e), codes)
    return True


@torch.no_grad()
def restart_dead_codes(quantizer: nn.Module, counts: torch.Tensor, last_z: torch.Tensor | None,
                       distributed: bool = False) -> int:
    """Move every code that no encoder output chose (``counts == 0``) onto encoder outputs of the latest
    batch ``last_z (M, C)``, drawn by D^2 sampling against the live codes, so dead codes go where the
    codebook represents the data worst (Jukebox's random restarts, arXiv 2005.00341 Sec. 2.2, with
    error-weighted picks). A code nobody picks gets no gradient and would stay dead for good.

    ``counts (K,)`` must already be summed over ranks; rank 0 draws from the global RNG and broadcasts.
    Resets ``counts`` to zero and returns how many codes moved. A Gumbel quantizer's dead codes are split off
    used ones instead (:func:`_split_gumbel_codes`).
    """
    if isinstance(quantizer, GumbelQuantize):
        return _split_gumbel_codes(quantizer, counts, distributed)
    if not has_codebook(quantizer) or last_z is None:
        return 0
    dead = (counts == 0).nonzero().flatten()
    counts.zero_()
    if dead.numel() == 0:
        return 0
    codebook = codebook_of(quantizer)
    live = torch.ones(codebook.shape[0], dtype=torch.bool, device=codebook.device)
    live[dead.to(codebook.device)] = False
    new = d2_sample(last_z.to(codebook), codebook[live], dead.numel())
    if distributed:
        torch.distributed.broadcast(new, src=0)
    _write_codes(quantizer, dead.to(codebook.device), new)
    return int(dead.numel())


@torch.no_grad()
def _split_gumbel_codes(quantizer: GumbelQuantize, counts: torch.Tensor, distributed: bool) -> int:
    """Revive each dead Gumbel code by splitting a used code ``l`` (drawn in proportion to its use) in two:
    the dead code takes ``l``'s logit row (``proj`` weight and bias) and its vector ``embed_l`` plus a little
    noise, and both logits drop by ``log 2``, so the pair keeps ``l``'s probability, ``2 e^{z - log 2} = e^z``
    (the splitting of k-means / LBG codebook design). The two then drift apart where the data differ. Each
    used code donates at most once per restart; dead codes beyond the number of used codes wait."""
    dead = (counts == 0).nonzero().flatten()
    used = counts.clone().float()
    counts.zero_()
    if dead.numel() == 0 or float(used.sum()) <= 0:
        return 0
    weight, bias, embed = quantizer.proj.weight, quantizer.proj.bias, quantizer.embed.weight
    dead = dead[: int((used > 0).sum())]
    donors = torch.multinomial(used.cpu(), dead.numel(), replacement=False).to(embed.device)
    noise = torch.randn(dead.numel(), embed.shape[1], device=embed.device) * 1e-3 * (embed.std() + 1e-8)
    if distributed:
        torch.distributed.broadcast(donors, src=0)
        torch.distributed.broadcast(noise, src=0)
    dead = dead.to(embed.device)
    weight[dead] = weight[donors]
    embed[dead] = embed[donors] + noise
    if bias is not None:
        bias[donors] -= math.log(2.0)
        bias[dead] = bias[donors]
    return int(dead.numel())
