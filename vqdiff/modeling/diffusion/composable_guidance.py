"""Composable guidance: several conditionals combined with the null one (Liu et al., ECCV 2022, arXiv 2206.01714).

Liu et al. (Sec. 4.1, the conjunction AND) compose the scores of P conditions ``c_i`` with weights ``w_i``::

    eps(x_t, t) = eps(x_t, t | null) + sum_i w_i (eps(x_t, t | c_i) - eps(x_t, t | null))

VQ-Diffusion's classifier-free guidance (Improved VQ-Diffusion, arXiv 2205.16007 Eq. 9-10) applies the same
combination to the log-probabilities of x_0 and renormalises over the K classes::

    l_i = log p(x_0 | x_t, c_i),  l_null = log p(x_0 | x_t, null)
    log p(x_0 | x_t, c_1..c_P) = l - logsumexp_k(l),  l = l_null + sum_i w_i (l_i - l_null)

With one part this is ordinary guidance with scale ``s = w_1``: :class:`samplers.Denoiser` runs ordinary
guidance through :func:`compose_log_probs` with one part, so the two give the same bits. All P + 1
branches come from ONE network call on a batch of (P + 1) B rows, ordered part by part then the null rows
(:func:`stack_branches`, :func:`split_branches`).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from .log_ops import CLAMP_MIN

__all__ = ["compose_log_probs", "split_branches", "stack_branches"]

Weight = Union[float, torch.Tensor]


def compose_log_probs(log_conds: Sequence[torch.Tensor], log_null: torch.Tensor,
                      weights: Sequence[Weight]) -> torch.Tensor:
    """``log p`` of the composed condition (the module's formula), renormalised over dim 1 and clamped to
    [-70, 0].

    Args:
        log_conds: P tensors ``log p(x_0 | x_t, c_i)``, each (B, K, N).
        log_null: ``log p(x_0 | x_t, null)`` (B, K, N) (the null text, null label or a negative prompt).
        weights: P weights ``w_i``: numbers, or (B, 1, 1) tensors for a per-row scale (guidance schedules).

    Returns:
        (B, K, N) log-probabilities.
    """
    if len(log_conds) != len(weights) or not log_conds:
        raise ValueError(f"composable guidance needs one weight per part: {len(log_conds)} parts, "
                         f"{len(weights)} weights")
    delta = weights[0] * (log_conds[0] - log_null)  # one part: log_null + s (log_c - log_null), Eq. 9
    for w, log_c in zip(weights[1:], log_conds[1:]):
        delta = delta + w * (log_c - log_null)
    log_p = log_null + delta
    return (log_p - torch.logsumexp(log_p, dim=1, keepdim=True)).clamp(CLAMP_MIN, 0)


def stack_branches(conds: torch.Tensor, null: torch.Tensor, num_parts: int) -> torch.Tensor:
    """The network's batched condition: ``conds`` (P B, ...) part by part, then ``null`` (B, ...) or (1, ...)
    expanded to B rows: ((P + 1) B, ...)."""
    rows = conds.shape[0]
    if rows % num_parts:
        raise ValueError(f"the condition has {rows} rows, not a multiple of its {num_parts} prompt parts")
    batch = rows // num_parts
    null = null.to(device=conds.device, dtype=conds.dtype) if conds.is_floating_point() else null.to(conds.device)
    if null.shape[0] != batch:
        if null.shape[0] != 1:
            raise ValueError(f"the null condition has {null.shape[0]} rows for a batch of {batch}")
        null = null.expand(batch, *null.shape[1:])
    return torch.cat([conds, null], dim=0)


def split_branches(out: torch.Tensor, num_parts: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``((P + 1) B, ...)`` network outputs -> (P tensors (B, ...) of the parts, the null one (B, ...))."""
    *parts, null = out.chunk(num_parts + 1, dim=0)
    return parts, null
