"""The Improved VQ-Diffusion sampler (arXiv 2205.16007, Sec. 3.3 and Eq. 11): high-quality inference
(``prior_rule`` 1) and the purity prior (``prior_rule`` 2); table row ``'improved'`` (``registry.py``)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

from ..log_ops import CLAMP_MIN, sample_categorical_index
from .steps import calls_for_budget, n_sample_table, rerun_flags

__all__ = ["sample_improved"]


@torch.no_grad()
def sample_improved(denoise: Any, x: torch.Tensor, steps: Sequence[int], options: Any,
                    callback: Optional[Callable[[dict], None]] = None, *, n_sample: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Improved VQ-Diffusion inference (arXiv 2205.16007, Sec. 3.3 and Eq. 11).

    At ``t > 0`` only [MASK] positions change: ``n_sample[t]`` of them are revealed per step, at most
    ``prior_ps`` per network call, chosen at random with weights ``score`` — 1 (``prior_rule=1``,
    "high-quality inference") or the purity ``max_k p(x_0 = k | x_t)`` normalised by its per-image
    maximum (``prior_rule=2``); their tokens are drawn from ``p(x_0 | x_t)``, sharpened to
    ``softmax((1 + r * score) log p)`` when ``r = prior_weight > 0`` and rule 2. At ``t = 0`` every
    position is drawn from the posterior. Calls per step = ``len(calls_for_budget(n_sample[t], prior_ps))``.
    ``(prior_rule, prior_ps)`` come from ``options.improved_prior``; ``n_sample`` (the per-step budget,
    default :func:`n_sample_table`) may be given to replay one official step.
    """
    K = denoise.num_classes - 1
    B, N = x.shape
    prior_rule, prior_ps = options.improved_prior(N, denoise.num_timesteps)
    prior_weight, generator = options.prior_weight, options.generator
    if prior_rule not in (1, 2):
        raise ValueError(f"sample_improved needs prior_rule 1 or 2, got {prior_rule}")
    if n_sample is None:
        n_sample = n_sample_table(denoise.num_timesteps, N, prior_ps)
    steps = list(steps)
    reruns = rerun_flags(len(steps), options.rerun_prob, x.device, generator)
    x = denoise.pin(x)
    log_x0 = None
    for i, t_int in enumerate(steps):
        t = torch.full((B,), t_int, device=x.device, dtype=torch.long)
        if t_int == 0:
            chunks = [N] * (2 if reruns[i] else 1)
        else:
            chunks = calls_for_budget(int(n_sample[t_int]), int(prior_ps))
        for n in chunks:
            log_x0 = denoise(x, t)  # (B, K+1, N)
            if t_int == 0:
                log_post = denoise.posterior(log_x0, x, t)
                x = denoise.pin(sample_categorical_index(log_post, generator))
                continue
            masked = x == K
            if denoise.fixed is not None:
                masked = masked & ~denoise.fixed[0]
            if prior_rule == 1:
                score = torch.ones(B, N, device=x.device, dtype=log_x0.dtype)
            else:
                score = log_x0.exp().amax(dim=1).clamp(0, 1)  # purity, (B, N)
                score = score / (score.amax(dim=1, keepdim=True) + 1e-10)
            if prior_rule != 1 and prior_weight > 0:
                probs = ((1 + prior_weight * score).unsqueeze(1) * log_x0).log_softmax(dim=1).clamp(CLAMP_MIN, 0)
            else:
                probs = log_x0
            proposal = sample_categorical_index(probs, generator)  # (B, N)
            # masked positions weigh their score; the others 1e-30, so that multinomial without
            # replacement always has n candidates (fewer masked than n happens with `fixed`) and picks
            # a masked position first whenever one is left; unmasked picks are discarded below.
            weight = torch.where(masked, score.clamp_min(1e-6), torch.full_like(score, 1e-30))
            sel = torch.multinomial(weight, min(n, N), replacement=False, generator=generator)  # (B, n)
            chosen = torch.zeros_like(masked).scatter_(1, sel, True) & masked
            x = torch.where(chosen, proposal, x)
        if callback is not None:
            callback({"step": i, "t": t_int, "x": x, "log_x0": log_x0})
    return x

