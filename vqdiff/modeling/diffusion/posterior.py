"""The posterior of VQ-Diffusion as a function of the schedule (arXiv 2111.14822, Eq. 11 with Bayes).

With ``Qt(k) = q(x_t | x_0 = k)`` (Eq. 5) and ``Q1(j) = q(x_t | x_{t-1} = j)`` (Eq. 4), Bayes gives
``q(x_{t-1} = j | x_t, x_0 = k) = q(x_{t-1} = j | x_0 = k) Q1(j) / Qt(k)``, and the reverse step of the
x_0-parameterised model (Eq. 11) is its average under ``p(x_0)``::

    p(x_{t-1} = j | x_t) = sum_k q(x_{t-1} = j | x_t, x_0 = k) p(x_0 = k | x_t)

This module holds the one implementation, from the tokens x_t (B, N); the log-one-hot form of the
official code (``DiffusionTransformer.q_posterior``) calls it. Shapes: log-probabilities (B, K+1, N),
[MASK] = K last; ``t = 0 .. T-1``.
"""

from __future__ import annotations

import torch

from .forward_process import cumulative_index, q_pred
from .log_ops import CLAMP_MIN, LOG_ZERO, extract, log_add_exp
from .schedule import LogSchedule

__all__ = ["q_posterior_index"]


def q_posterior_index(
    schedule: LogSchedule, log_x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """``log sum_k q(x_{t-1} | x_t, x_0 = k) p(x_0 = k)`` (Eq. 11 with the Bayes form of Eq. 7).

    Args:
        schedule: the log schedule buffers.
        log_x_start: (B, K+1, N) ``log p(x_0)`` (a log one-hot gives the true posterior of Eq. 7).
        x_t: (B, N) long tokens, [MASK] = K.
        t: (B,) steps in [0, T).

    Returns ``out(j) = log sum_k q(x_{t-1} = j | x_0 = k) Q1(j) p(x_0 = k) / Qt(k)``, (B, K+1, N), clamped
    to [-70, 0], computed as ``q_pred(r / Z, t - 1) + log Q1 + log Z`` with ``r = p / Qt`` (the official
    order of operations). For masked x_t, ``Qt(k) = cbar_t`` and ``Q1 = (c_t, ..., c_t, 1)``; for unmasked
    x_t the [MASK] row of Q1 is 0 (``LOG_ZERO``). At t = 0, ``q_pred(., -1)`` is the identity.

    Because ``x_t`` is one-hot, ``Qt`` and ``Q1`` take only two values per image off [MASK] (at
    ``k = x_t`` and elsewhere): they are computed on (B, 1, 1) scalars and written back by a
    gather/scatter at ``x_t``; only ``q_pred(q, t - 1)`` (one ``logaddexp`` over (B, K+1, N)) is done
    at full size, and no one-hot tensor is built.
    """
    K = log_x_start.shape[1] - 1
    B, N = x_t.shape
    shape = (B, 1, 1)
    dtype, device = log_x_start.dtype, log_x_start.device
    mask = (x_t == K).unsqueeze(1)  # (B, 1, N)
    idx = x_t.unsqueeze(1)  # (B, 1, N)
    on = torch.zeros(shape, dtype=dtype, device=device)  # log one-hot at k = x_t
    off = torch.full(shape, LOG_ZERO, dtype=dtype, device=device)  # elsewhere

    # Qt(k) (rows k < K): on / off values of q_pred(log one-hot x_t, t), cbar_t where x_t is [MASK]
    tq = cumulative_index(schedule, t)
    la, lb = extract(schedule.log_cumprod_at, tq, shape), extract(schedule.log_cumprod_bt, tq, shape)
    qt_on, qt_off = log_add_exp(on + la, lb), log_add_exp(off + la, lb)
    log_cumprod_ct = extract(schedule.log_cumprod_ct, t, shape)
    qt_rest = torch.where(mask, log_cumprod_ct, qt_off)  # (B, 1, N): Qt off x_t

    # q = log p(x_0) - log Qt (rows < K), LOG_ZERO on the [MASK] row; then normalise
    q = torch.empty((B, K + 1, N), dtype=dtype, device=device)
    q[:, :K] = log_x_start[:, :K] - qt_rest
    q[:, K:] = LOG_ZERO
    at_xt = log_x_start.gather(1, idx) - qt_on  # (B, 1, N): the k = x_t entry off [MASK]
    q = q.scatter(1, idx, torch.where(mask, q.gather(1, idx), at_xt))
    q_log_sum_exp = torch.logsumexp(q, dim=1, keepdim=True)
    q = q - q_log_sum_exp

    # Q1(j) (Eq. 4): on / off values of q_pred_one_timestep(log one-hot x_t, t); c_t / 1 where x_t is [MASK]
    a1, b1 = extract(schedule.log_at, t, shape), extract(schedule.log_bt, t, shape)
    q1_on, q1_off = log_add_exp(on + a1, b1), log_add_exp(off + a1, b1)
    log_ct = extract(schedule.log_ct, t, shape)
    q1_rest = torch.where(mask, log_ct, q1_off)  # rows < K
    q1_last = torch.where(mask, torch.zeros_like(log_ct), torch.full_like(log_ct, LOG_ZERO))  # row [MASK]

    # out = q_pred(q, t - 1) + log Q1 + Z, the k = x_t entry rewritten with Q1's on value
    pred = q_pred(schedule, q, t - 1)
    out = torch.cat([pred[:, :K] + q1_rest, pred[:, K:] + q1_last], dim=1) + q_log_sum_exp
    fixed = pred.gather(1, idx) + q1_on + q_log_sum_exp
    out = out.scatter(1, idx, torch.where(mask, out.gather(1, idx), fixed))
    return torch.clamp(out, CLAMP_MIN, 0)
