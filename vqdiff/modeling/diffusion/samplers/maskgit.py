"""Confidence-ordered parallel decoding (MaskGIT, Chang et al. 2022, arXiv 2202.04200) for any vqdiff model.

The discrete diffusion's network already predicts ``p(x_0 | x_t)`` for every position from a partly
masked ``x_t`` (VQ-Diffusion's x_0-parameterisation, arXiv 2111.14822 Sec. 3.3), so MaskGIT's iterative
decoding runs on it unchanged: at each of S steps

1. ``log p(x_0 | x_t)`` from ONE ``denoise`` call (guidance and truncation live in ``denoise``);
2. a token is drawn at every [MASK] position (Gumbel-max, optionally at a sampling temperature);
3. its confidence is ``log p(drawn token) + tau_i * g`` with Gumbel noise ``g`` and the annealed choice
   temperature ``tau_i = choice_temperature * (1 - (i + 1) / S)`` (MaskGIT Sec. 3.2);
4. of the ``M`` positions masked at the start, ``floor(M * gamma((i + 1) / S))`` stay masked (the least
   confident ones), the rest keep their drawn token for good; ``gamma`` is the mask schedule
   (cosine ``cos(pi r / 2)``, linear ``1 - r``, square ``1 - r^2``, cubic ``1 - r^3``, sqrt ``1 - sqrt(r)``),
   and every step reveals at least one token while any is left.

``gamma(1) = 0``: after the S-th step no [MASK] remains. The network sees the step ``t`` whose
cumulative mask rate ``cbar_t`` (linear in t for the released schedule) matches the current masked
fraction: :func:`maskgit_timesteps`. Exactly S network calls (2S rows when guided, in one batched call).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import torch

from ..log_ops import gumbel_noise, sample_categorical_index

__all__ = ["MASK_SCHEDULES", "mask_ratio", "maskgit_timesteps", "sample_maskgit"]


MASK_SCHEDULES: dict[str, Callable[[float], float]] = {
    "cosine": lambda r: math.cos(math.pi * r / 2),
    "linear": lambda r: 1.0 - r,
    "square": lambda r: 1.0 - r * r,
    "cubic": lambda r: 1.0 - r ** 3,
    "sqrt": lambda r: 1.0 - math.sqrt(r),
}


def mask_ratio(schedule: str, r: float) -> float:
    """``gamma(r)``: the fraction of the initially masked tokens still masked at progress ``r`` in [0, 1]."""
    if schedule not in MASK_SCHEDULES:
        raise ValueError(f"unknown mask schedule {schedule!r}; expected one of {sorted(MASK_SCHEDULES)}")
    if r >= 1.0:
        return 0.0
    return min(1.0, max(0.0, MASK_SCHEDULES[schedule](max(0.0, r))))


def maskgit_timesteps(num_timesteps: int, num_steps: int, schedule: str = "cosine") -> list[int]:
    """The diffusion step fed to the network at each of the S steps: ``ceil(gamma(i / S) * T) - 1``,
    clamped to ``0 .. T-1`` (``cbar_t ~ (t + 1) / T`` for the released linear schedule). Step 0 is T-1."""
    if num_steps < 1:
        raise ValueError(f"the confidence sampler needs at least 1 step, got {num_steps}")
    T = int(num_timesteps)
    return [min(T - 1, max(0, math.ceil(mask_ratio(schedule, i / num_steps) * T - 1e-9) - 1))
            for i in range(int(num_steps))]


@torch.no_grad()
def sample_maskgit(denoise: Any, x: torch.Tensor, steps: Sequence[int], options: Any,
                   callback: Optional[Callable[[dict], None]] = None) -> torch.Tensor:
    """MaskGIT decoding with the common sampler signature (see ``samplers/__init__.py``); ``len(steps)`` = S calls.

    Args:
        denoise: the request's ``samplers.Denoiser`` (its ``fixed`` pinned tokens are never masked nor changed).
        x: (B, N) start tokens; positions equal to [MASK] = K (and not pinned) are decoded.
        steps: the diffusion step given to the network at each step (:func:`maskgit_timesteps`).
        options: the ``SamplingOptions``: ``maskgit_schedule`` (the mask schedule gamma, ``MASK_SCHEDULES``),
            ``choice_temperature`` (scale of the Gumbel noise added to the confidences, annealed linearly
            to 0), ``temperature`` (of the drawn tokens: ``log p / temperature``) and ``generator``.

    Returns the (B, N) tokens, no [MASK] left.
    """
    schedule, choice_temperature = options.maskgit_schedule, options.choice_temperature
    temperature, generator = options.temperature, options.generator
    steps = list(steps)
    S = len(steps)
    if S < 1:
        raise ValueError("sample_maskgit needs at least one step")
    K = denoise.num_classes - 1
    B, N = x.shape
    x = denoise.pin(x)
    masked = x == K
    m0 = masked.sum(dim=1)  # (B,) tokens to decode per image
    log_x0 = None
    for i, t_int in enumerate(steps):
        t = torch.full((B,), int(t_int), device=x.device, dtype=torch.long)
        log_x0 = denoise(x, t)  # (B, K+1, N)
        logits = log_x0[:, :K]
        if temperature != 1.0:
            logits = logits / temperature
        drawn = sample_categorical_index(logits, generator)  # (B, N)
        conf = log_x0[:, :K].gather(1, drawn.unsqueeze(1)).squeeze(1)  # log p(drawn), (B, N)
        tau = float(choice_temperature) * (1.0 - (i + 1) / S)
        if tau > 0:
            conf = conf + tau * gumbel_noise(conf.shape, conf.device, generator, conf.dtype)
        # how many stay masked after this step: floor(M gamma), at most (masked now - 1) when any is left
        keep_masked = torch.floor(m0.to(torch.float64) * mask_ratio(schedule, (i + 1) / S)).long()
        n_now = masked.sum(dim=1)
        keep_masked = torch.minimum(keep_masked, (n_now - 1).clamp_min(0))
        # rank the masked positions by confidence (ascending); revealed positions sort last
        conf = torch.where(masked, conf, torch.full_like(conf, float("inf")))
        rank = torch.empty_like(drawn).scatter_(
            1, conf.argsort(dim=1), torch.arange(N, device=x.device).expand(B, N).contiguous()
        )
        still = masked & (rank < keep_masked.unsqueeze(1))
        reveal = masked & ~still
        x = torch.where(reveal, drawn, x)
        masked = still
        if callback is not None:
            callback({"step": i, "t": int(t_int), "x": x, "log_x0": log_x0})
    return x
