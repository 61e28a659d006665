"""Ancestral sampling of ``objective: masked_elbo`` models (MD4 Sec. 5, arXiv 2406.04329; MDLM Sec. 3.3):
table row ``'masked'`` (``registry.py``); the objective runs it in place of ``'ancestral'`` and ``'improved'``.

From time t to s < t every [MASK] position is revealed with probability ``(alpha_s - alpha_t) / (1 - alpha_t)``
(``alpha`` the model's schedule, ``masked_elbo.alpha``), its token drawn from ``p_theta(x_0 | x_t)``;
revealed tokens never change (the reverse model of the bound, ``masked_elbo`` M3). The last step goes to
s = 0 and reveals every position still masked (MD4's decoder). One network call per visited step.

The visited steps are the integer list of :func:`steps.timesteps` (``skip_step`` visits fewer; a start
from noised tokens, ``filter_ratio > 0``, starts lower): step ``j`` stands for the grid value
``u = (j + 1) / T`` and the next visited step (or 0) for s. The grid maps u to time (``TIME_GRIDS``):
``'uniform'`` t = u, or MD4's ``'cosine'`` t = cos(pi/2 (1 - u)) (denser near t = 1, all masked). The network
gets the step of the current mask rate (``masked_elbo.network_step``).

Options that apply (``SamplingOptions``): truncation, top-k and classifier-free guidance (in the ``Denoiser``,
with the learned null text of ``learnable_cf`` models), pinned tokens (inpainting), the time grid, and the
Improved VQ-Diffusion rules (arXiv 2205.16007 Sec. 3.3): with ``prior_rule`` 1 or 2 the number of positions
revealed in a step is drawn as above, but the positions are chosen without replacement with weight 1 (rule 1:
the same distribution as rule 0) or the purity ``max_k p(x_0 = k | x_t)`` (rule 2), tokens from
``softmax((1 + r purity) log p)`` when ``prior_weight`` r > 0. MaskGIT runs unchanged (``maskgit.py``).
Options of the mask-and-replace chain are refused by the objective (``objectives/masked_elbo.py``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import torch

from .. import masked_elbo
from ..log_ops import CLAMP_MIN, gumbel_noise, sample_categorical_index

__all__ = ["TIME_GRIDS", "grid_time", "masked_alpha", "sample_masked"]

TIME_GRIDS = ("uniform", "cosine")


def grid_time(u: float, grid: str) -> float:
    """The time of grid value ``u`` in [0, 1]: ``u`` (uniform) or ``cos(pi/2 (1 - u))`` (cosine, MD4)."""
    if grid not in TIME_GRIDS:
        raise ValueError(f"sampling option time_grid must be one of {TIME_GRIDS}, got {grid!r}")
    return u if grid == "uniform" else math.cos(math.pi / 2 * (1.0 - u))


def masked_alpha(t: float, opts: masked_elbo.MaskedELBOOptions) -> float:
    return float(masked_elbo.alpha(torch.tensor(t, dtype=torch.float64), opts))


@torch.no_grad()
def sample_masked(denoise: Any, x: torch.Tensor, steps: Sequence[int], options: Any,
                  callback: Optional[Callable[[dict], None]] = None) -> torch.Tensor:
    """The masked-diffusion ancestral sampler with the common signature (``samplers/__init__.py``): (B, N) tokens,
    no [MASK] left; ``len(steps)`` network calls (see the module docstring)."""
    diffusion = denoise.diffusion
    opts, T = diffusion.masked_elbo_options, denoise.num_timesteps
    if opts is None:
        raise ValueError("sample_masked samples 'objective: masked_elbo' models; this one is 'vq_diffusion'")
    K = denoise.num_classes - 1
    B, N = x.shape
    generator, grid = options.generator, options.time_grid
    rule, weight = options.prior_rule, options.prior_weight
    steps = list(steps)
    x = denoise.pin(x)
    log_x0 = None
    for i, t_int in enumerate(steps):
        last = i + 1 == len(steps)
        t = grid_time((t_int + 1) / T, grid)
        a_t = masked_alpha(t, opts)
        a_s = 1.0 if last else masked_alpha(grid_time((steps[i + 1] + 1) / T, grid), opts)
        reveal_prob = 1.0 if last else (a_s - a_t) / (1.0 - a_t)
        step = masked_elbo.network_step(torch.full((B,), t, dtype=torch.float64, device=x.device), opts, T)
        log_x0 = denoise(x, step)  # (B, K+1, N), [MASK] row at -70
        masked = x == K
        if denoise.fixed is not None:
            masked = masked & ~denoise.fixed[0]
        draws = torch.rand(B, N, device=x.device, generator=generator, dtype=torch.float64) < reveal_prob
        reveal = masked & draws
        log_p = log_x0[:, :K]
        if rule in (1, 2):
            if rule == 2:
                score = log_p.exp().amax(dim=1).clamp(1e-10, 1)  # purity, (B, N)
                score = score / score.amax(dim=1, keepdim=True)
                if weight > 0:
                    log_p = ((1 + weight * score).unsqueeze(1) * log_p).log_softmax(dim=1).clamp(CLAMP_MIN, 0)
            else:
                score = torch.ones(B, N, device=x.device, dtype=log_p.dtype)
            # as many positions as the draws reveal, chosen without replacement with weight `score`
            # (Gumbel top-k), masked positions only
            key = score.log() + gumbel_noise(score.shape, score.device, generator, score.dtype)
            key = torch.where(masked, key, torch.full_like(key, -math.inf))
            rank = torch.empty_like(x).scatter_(
                1, key.argsort(dim=1, descending=True), torch.arange(N, device=x.device).expand(B, N).contiguous())
            reveal = masked & (rank < reveal.sum(dim=1, keepdim=True))
        proposal = sample_categorical_index(log_p, generator)  # (B, N) in 0..K-1
        x = denoise.pin(torch.where(reveal, proposal, x))
        if callback is not None:
            callback({"step": i, "t": int(t_int), "x": x, "log_x0": log_x0})
    return x
