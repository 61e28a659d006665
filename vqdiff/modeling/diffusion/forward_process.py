"""The forward (noising) process ``q`` of VQ-Diffusion as functions of the schedule (arXiv 2111.14822).

Equations: the one-step transition ``q(x_t | x_{t-1}) = v(x_t)^T Q_t v(x_{t-1})`` (Eq. 4) and the
cumulative one ``q(x_t | x_0) = v(x_t)^T Qbar_t v(x_0)`` (Eq. 5) of the mask-and-replace strategy
(Sec. 3.2, Eq. 7-8 give ``Q_t`` and ``Qbar_t`` in closed form). Conventions: log-probabilities are
(B, K+1, N) with [MASK] = K last; step index ``t = 0 .. T-1`` (paper ``t + 1``); ``t = -1`` is x_0 itself
(the cumulative arrays carry the identity at index T, so ``t`` is taken modulo T + 1).
The schedule is a :class:`~vqdiff.modeling.diffusion.schedule.LogSchedule`.
"""

from __future__ import annotations

from typing import Optional

import torch

from .log_ops import LOG_ZERO, extract, log_add_exp, log_sample_categorical, sample_categorical_index
from .schedule import LogSchedule

__all__ = ["cumulative_index", "q_pred_one_timestep", "q_pred", "q_sample", "q_sample_index"]


def cumulative_index(schedule: LogSchedule, t: torch.Tensor) -> torch.Tensor:
    """``t`` modulo T + 1, so that ``t = -1`` reads the identity entry of the cumulative arrays."""
    return (t + (schedule.num_timesteps + 1)) % (schedule.num_timesteps + 1)


def _apply_transition(
    log_x: torch.Tensor,
    t: torch.Tensor,
    log_a: torch.Tensor,
    log_b: torch.Tensor,
    log_1_min_c: torch.Tensor,
    log_c: torch.Tensor,
) -> torch.Tensor:
    """The mask-and-replace matrix (Eq. 7 / 8) at step t applied to ``x`` in log space, (B, K+1, N) ->
    (B, K+1, N): rows k < K ``log(a x[k] + b)``, row [MASK] ``log((1 - c) x[K] + c)``, with the
    coefficients read from the schedule arrays ``log_a, log_b, log_1_min_c, log_c`` at ``t`` (B,)."""
    log_a, log_b, log_1_min_c, log_c = (extract(v, t, log_x.shape) for v in (log_a, log_b, log_1_min_c, log_c))
    return torch.cat(
        [log_add_exp(log_x[:, :-1, :] + log_a, log_b), log_add_exp(log_x[:, -1:, :] + log_1_min_c, log_c)], dim=1
    )


def q_pred_one_timestep(schedule: LogSchedule, log_x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``log q(x_t | x_{t-1} = j)`` for every j (Eq. 4, ``Q_t^T x_t``): (B, K+1, N) in, (B, K+1, N) out.

    Rows j < K: ``log(a_t x_t[j] + b_t)``; row [MASK]: ``log((1 - c_t) x_t[K] + c_t)`` (Eq. 7).
    """
    s = schedule
    return _apply_transition(log_x_t, t, s.log_at, s.log_bt, s.log_1_min_ct, s.log_ct)


def q_pred(schedule: LogSchedule, log_x_start: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``log q(x_t | x_0)`` (Eq. 5, ``Qbar_t x_0``) for a (soft) x_0: (B, K+1, N) -> (B, K+1, N).

    Rows k < K: ``log(abar_t x_0[k] + bbar_t)``; row [MASK]: ``log((1 - cbar_t) x_0[K] + cbar_t)``
    (Eq. 8). ``t = -1`` is the identity.
    """
    s = schedule
    t = cumulative_index(s, t)
    return _apply_transition(
        log_x_start, t, s.log_cumprod_at, s.log_cumprod_bt, s.log_1_min_cumprod_ct, s.log_cumprod_ct
    )


def q_sample(
    schedule: LogSchedule, log_x_start: torch.Tensor, t: torch.Tensor, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Draw ``x_t ~ q(x_t | x_0)`` (Eq. 5, Gumbel-max), returned as a log one-hot (B, K+1, N)."""
    return log_sample_categorical(q_pred(schedule, log_x_start, t), log_x_start.shape[1], generator)


def q_sample_index(
    schedule: LogSchedule,
    x_start: torch.Tensor,
    t: torch.Tensor,
    num_classes: int,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """:func:`q_sample` from tokens x_0 (B, N) long to tokens x_t (B, N): the same Gumbel draw.

    ``q_pred`` of a one-hot takes two values per image and row kind (at ``k = x_0`` and elsewhere;
    Eq. 5), computed on (B, 1, 1) with the same operations as the full form and broadcast, so the
    (B, K+1, N) ``logaddexp`` is skipped; the noise and argmax are those of :func:`q_sample`.
    ``num_classes`` is K + 1.
    """
    B, N = x_start.shape
    shape = (B, 1, 1)
    dtype, device = schedule.log_cumprod_at.dtype, x_start.device
    tq = cumulative_index(schedule, t)
    on = torch.zeros(shape, dtype=dtype, device=device)
    off = torch.full(shape, LOG_ZERO, dtype=dtype, device=device)
    la, lb = extract(schedule.log_cumprod_at, tq, shape), extract(schedule.log_cumprod_bt, tq, shape)
    lm, lc = extract(schedule.log_1_min_cumprod_ct, tq, shape), extract(schedule.log_cumprod_ct, tq, shape)
    K = num_classes - 1
    rows = torch.cat([log_add_exp(off + la, lb).expand(B, K, N), log_add_exp(off + lm, lc).expand(B, 1, N)], dim=1)
    idx = x_start.unsqueeze(1)
    on_k = torch.where(idx == K, log_add_exp(on + lm, lc), log_add_exp(on + la, lb))  # (B, 1, N)
    log_probs = rows.scatter(1, idx, on_k)
    return sample_categorical_index(log_probs, generator)
