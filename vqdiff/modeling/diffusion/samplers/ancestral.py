"""The ancestral sampler of VQ-Diffusion (arXiv 2111.14822, Eq. 11), also skip-step (the official
``sample_fast``): table row ``'ancestral'`` (``registry.py``)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

from ..log_ops import sample_categorical_index
from .steps import rerun_flags

__all__ = ["sample_ancestral"]


@torch.no_grad()
def sample_ancestral(denoise: Any, x: torch.Tensor, steps: Sequence[int], options: Any,
                     callback: Optional[Callable[[dict], None]] = None) -> torch.Tensor:
    """Ancestral sampling ``x_{t-1} ~ p_theta(x_{t-1} | x_t)`` (arXiv 2111.14822, Eq. 11), also skip-step.

    At step ``t`` followed by ``t_next`` the network predicts ``p(x_0 | x_t)`` and the posterior
    ``q(x_{t_next} | x_t, x_0)`` is taken as one step from ``t_next + 1`` (for consecutive steps this is
    exactly the ancestral step; with skips it is the official ``sample_fast`` jump). One network call
    per visited step (two when a step is re-run, ``options.rerun_prob`` = the official ``q{p}``).
    """
    steps = list(steps)
    B = x.shape[0]
    generator = options.generator
    reruns = rerun_flags(len(steps), options.rerun_prob, x.device, generator)
    x = denoise.pin(x)
    for i, t_int in enumerate(steps):
        t_post = steps[i + 1] + 1 if i + 1 < len(steps) else 0
        t = torch.full((B,), t_int, device=x.device, dtype=torch.long)
        t_p = torch.full((B,), t_post, device=x.device, dtype=torch.long)
        for _ in range(2 if reruns[i] else 1):
            log_x0 = denoise(x, t)
            log_post = denoise.posterior(log_x0, x, t_p)
            x = denoise.pin(sample_categorical_index(log_post, generator))
        if callback is not None:
            callback({"step": i, "t": t_int, "x": x, "log_x0": log_x0})
    return x

