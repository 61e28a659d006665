"""The posterior in the official code's full one-hot form (arXiv 2111.14822, Eq. 11): a reference.

The library has one posterior (``vqdiff/modeling/diffusion/posterior.py``, from the tokens x_t); this
second, independent evaluation over full (B, K+1, N) tensors lets tests check that the index form
reaches the same values, gradients and sampled tokens, and ``bench_all.py`` time what the index form saves.
"""

from __future__ import annotations

import torch

from vqdiff.modeling.diffusion.log_ops import CLAMP_MIN, LOG_ZERO, extract, log_onehot_to_index


def one_hot_q_posterior(d, log_x_start: torch.Tensor, log_x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``log sum_k q(x_{t-1} | x_t, x_0 = k) p(x_0 = k)`` with ``x_t`` a log one-hot (B, K+1, N).

    ``Qt = q_pred(x_t, t)`` (cbar_t where x_t is [MASK]) and ``Q1 = q_pred_one_timestep(x_t, t)``
    (c_t / 1 where x_t is [MASK]) at full size; out = ``q_pred(r / Z, t - 1) + log Q1 + log Z`` with
    ``r = p / Qt``, clamped to [-70, 0].
    """
    K = d.num_classes - 1
    B, N = log_x_start.shape[0], log_x_start.shape[-1]
    mask = (log_onehot_to_index(log_x_t) == K).unsqueeze(1)
    log_zero = torch.full((B, 1, N), LOG_ZERO, dtype=log_x_t.dtype, device=log_x_t.device)
    log_qt = d.q_pred(log_x_t, t)[:, :-1, :]
    log_qt = torch.where(mask, extract(d.log_cumprod_ct, t, log_x_start.shape).expand(-1, K, -1), log_qt)
    log_q1 = torch.cat([d.q_pred_one_timestep(log_x_t, t)[:, :-1, :], log_zero], dim=1)
    log_ct = extract(d.log_ct, t, log_x_start.shape)
    log_q1 = torch.where(mask, torch.cat([log_ct.expand(-1, K, -1), torch.zeros_like(log_ct)], dim=1), log_q1)
    q = torch.cat([log_x_start[:, :-1, :] - log_qt, log_zero], dim=1)
    q_log_sum_exp = torch.logsumexp(q, dim=1, keepdim=True)
    out = d.q_pred(q - q_log_sum_exp, t - 1) + log_q1 + q_log_sum_exp
    return torch.clamp(out, CLAMP_MIN, 0)
