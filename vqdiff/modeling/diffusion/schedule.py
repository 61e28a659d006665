"""The mask-and-replace noise schedule of VQ-Diffusion (arXiv 2111.14822, Sec. 3.2, Eq. 4-5).

Notation (the official code's, whose step index ``t = 0 .. T-1`` is the paper's ``t + 1``):

* one step ``q(x_t | x_{t-1})``: keep the token with ``a_t``, move to any of the K tokens with ``b_t``
  each, move to [MASK] with ``c_t`` (``a_t + K b_t + c_t = 1``); [MASK] stays [MASK];
* cumulative ``q(x_t | x_0)``: ``abar_t``, ``bbar_t``, ``cbar_t`` with ``abar_t + K bbar_t + cbar_t = 1``.

The released "alpha1" schedule is linear in ``abar`` (0.99999 -> 0.000009) and in ``cbar``
(0.000009 -> 0.99999), so ``abar + cbar = 0.999999`` and ``K bbar = 1e-6``: in practice an absorbing
(mask) diffusion. The one-step values follow from the cumulative ones (Eq. 5):
``a_t = abar_t / abar_{t-1}``, ``1 - c_t = (1 - cbar_t) / (1 - cbar_{t-1})``, ``b_t = (1 - a_t - c_t) / K``
with ``abar_{-1} = 1``, ``cbar_{-1} = 0``. Cumulative arrays get one extra entry at index ``T``
(``abar = 1, cbar = 0, bbar = 0``) so that ``t = -1`` (taken modulo ``T + 1``) is the identity.
Everything is computed in float64.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from .log_ops import log_1_min_a

__all__ = ["AlphaSchedule", "LogSchedule", "alpha_schedule", "log_schedule"]


@dataclass(frozen=True)
class AlphaSchedule:
    """One-step (length T) and cumulative (length T + 1) transition coefficients, float64."""

    at: torch.Tensor
    bt: torch.Tensor
    ct: torch.Tensor
    att: torch.Tensor
    btt: torch.Tensor
    ctt: torch.Tensor


def alpha_schedule(
    time_step: int,
    N: int = 100,
    att_1: float = 0.99999,
    att_T: float = 0.000009,
    ctt_1: float = 0.000009,
    ctt_T: float = 0.99999,
) -> AlphaSchedule:
    """The linear "alpha1" schedule of the official code (arXiv 2111.14822, Eq. 5), in float64.

    Args:
        time_step: number of diffusion steps ``T`` (>= 2).
        N: number of codebook entries ``K`` (the [MASK] token is not counted).
        att_1, att_T: ``abar`` at the first and last step.
        ctt_1, ctt_T: ``cbar`` at the first and last step.
    """
    if int(time_step) < 2:
        raise ValueError(f"diffusion_step must be >= 2, got {time_step}")
    if int(N) < 1:
        raise ValueError(f"the number of codebook entries N must be >= 1, got {N}")
    T = int(time_step)
    frac = torch.arange(T, dtype=torch.float64) / (T - 1)
    abar = att_1 + frac * (att_T - att_1)  # (T,)
    cbar = ctt_1 + frac * (ctt_T - ctt_1)  # (T,)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    cbar_prev = torch.cat([torch.zeros(1, dtype=torch.float64), cbar[:-1]])
    at = abar / abar_prev
    ct = 1.0 - (1.0 - cbar) / (1.0 - cbar_prev)
    bt = (1.0 - at - ct) / N
    att = torch.cat([abar, torch.ones(1, dtype=torch.float64)])  # (T + 1,), index T = identity
    ctt = torch.cat([cbar, torch.zeros(1, dtype=torch.float64)])
    btt = (1.0 - att - ctt) / N
    return AlphaSchedule(at=at, bt=bt, ct=ct, att=att, btt=btt, ctt=ctt)


def log_schedule(diffusion_step: int, num_embed: int, alpha_init_type: str = "alpha1") -> dict[str, torch.Tensor]:
    """Log-space schedule buffers (float64), keyed by the official buffer names.

    Returns ``log_at, log_bt, log_ct, log_1_min_ct`` (T,) and ``log_cumprod_at, log_cumprod_bt,
    log_cumprod_ct, log_1_min_cumprod_ct`` (T + 1,).
    """
    if alpha_init_type != "alpha1":
        raise ValueError(
            f"alpha_init_type={alpha_init_type!r} is not supported; the official code (and vqdiff) "
            "implement only 'alpha1'"
        )
    s = alpha_schedule(diffusion_step, N=num_embed)
    log_ct = torch.log(s.ct)
    log_cumprod_ct = torch.log(s.ctt)
    out = {
        "log_at": torch.log(s.at),
        "log_bt": torch.log(s.bt),
        "log_ct": log_ct,
        "log_cumprod_at": torch.log(s.att),
        "log_cumprod_bt": torch.log(s.btt),
        "log_cumprod_ct": log_cumprod_ct,
        "log_1_min_ct": log_1_min_a(log_ct),
        "log_1_min_cumprod_ct": log_1_min_a(log_cumprod_ct),
    }
    for name, value in out.items():
        if torch.isnan(value).any():
            raise ValueError(f"schedule buffer {name} has NaN (diffusion_step={diffusion_step}, K={num_embed})")
    return out


@dataclass(frozen=True)
class LogSchedule:
    """The log-space schedule the math functions read (``forward_process``, ``posterior``), by the
    official buffer names: one-step ``log_at, log_bt, log_ct, log_1_min_ct`` (T,) and cumulative
    ``log_cumprod_at, log_cumprod_bt, log_cumprod_ct, log_1_min_cumprod_ct`` (T + 1,).

    It holds references, not copies: built from a module's buffers (:meth:`from_module`) it follows the
    module's device and dtype, and the buffers stay where checkpoints expect them.
    """

    log_at: torch.Tensor
    log_bt: torch.Tensor
    log_ct: torch.Tensor
    log_1_min_ct: torch.Tensor
    log_cumprod_at: torch.Tensor
    log_cumprod_bt: torch.Tensor
    log_cumprod_ct: torch.Tensor
    log_1_min_cumprod_ct: torch.Tensor

    @property
    def num_timesteps(self) -> int:
        """T, the number of diffusion steps."""
        return int(self.log_at.shape[0])

    @classmethod
    def from_module(cls, module: nn.Module) -> "LogSchedule":
        """The schedule registered as buffers on ``module`` (``DiffusionTransformer``)."""
        return cls(**{f.name: getattr(module, f.name) for f in fields(cls)})
