"""The masked-diffusion ELBO (MD4, Shi et al., arXiv 2406.04329; MDLM, Sahoo et al., arXiv 2406.07524).

A second training objective for the same x_0-predicting network (``objective: masked_elbo`` in
``diffusion_config.params``; VQ-Diffusion's mask-and-replace bound stays the default). Absorbing state only:
a token is kept with probability ``alpha_t`` and becomes [MASK] = K otherwise, independently per position,
for continuous time ``t`` in [0, 1]::

    q(x_t^n | x_0^n) = alpha_t [x_t^n = x_0^n] + (1 - alpha_t) [x_t^n = MASK]                         (M1)

Schedules (MD4 Sec. 4, Table 4), clamped as MD4 does so that ``alpha_0 = 1 - eps`` and ``alpha_1 = eps``::

    abar_t = 1 - t (linear),  1 - cos(pi/2 (1 - t)) (cosine),  1 - t^w (polynomial, exponent w)
    alpha_t = (1 - 2 eps) abar_t + eps,   alpha'_t = (1 - 2 eps) abar'_t,   eps = 1e-4               (M2)

The reverse model is the mean parameterisation with carry-over unmasking (MDLM's SUBS): revealed tokens
stay, and from t to s < t a masked token is revealed with probability ``(alpha_s - alpha_t) / (1 - alpha_t)``
as a draw from ``p_theta(x_0 | x_t)``. Every KL term then reduces to a weighted cross-entropy on the masked
positions (MD4 Eq. 5; MDLM Eq. 10)::

    KL(q(x_s | x_t, x_0) || p_theta(x_s | x_t)) = (alpha_s - alpha_t) / (1 - alpha_t) CE_t,
    CE_t = -sum_{n: x_t^n = MASK} log p_theta(x_0^n | x_t)                                          (M3)

Discrete time with T steps (``t(i) = i / T``, MD4 Eq. 6), summed over the T terms and estimated with one
uniformly drawn term (hence the factor T)::

    L_T = sum_{i=1..T} E_q [(alpha_{t(i-1)} - alpha_{t(i)}) / (1 - alpha_{t(i)}) CE_{t(i)}]             (M4)

Continuous time (T -> infinity, MD4 Eq. 7)::

    L_inf = int_0^1 -alpha'_t / (1 - alpha_t) E_q[CE_t] dt                                           (M5)

The full bound adds the prior term ``N alpha_1 log K`` (the KL of q(x_1 | x_0) to a prior that is [MASK] with
probability 1 - alpha_1 and a uniform token otherwise; MD4 calls it negligible and drops it) and MD4's
reconstruction term ``N (1 - alpha_0) log K`` (a token still masked at t = 0 costs at most log K)::

    -log p(x_0) <= N alpha_1 log K + L_T (or L_inf) + N (1 - alpha_0) log K                           (M6)

Time is drawn antithetically, ``t_i = (u + i / B) mod 1`` with one ``u ~ U[0, 1)`` per batch (both papers'
default), which lowers the variance of the batch mean. The network of this project takes an integer step
in ``0 .. T-1`` (its time embedding); it gets the step whose mask rate matches: ``ceil((1 - alpha_t) T) - 1``
(:func:`network_step`, from the unclamped abar_t), the same rule MaskGIT sampling uses (``maskgit.py``), so any schedule feeds it the
masked fraction it sees. The bound holds for any such network (``p_theta`` may depend on x_t alone, MDLM).
Shapes: tokens (B, N) with [MASK] = K, log-probabilities (B, K, N) or (B, K+1, N), times (B,).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch

from vqdiff.utils.config_sections import ConfigSection, parse_section, setting

__all__ = [
    "MD4_EPS",
    "SCHEDULES",
    "TIME_FORMS",
    "MaskedELBOOptions",
    "alpha",
    "dalpha",
    "sample_times",
    "discretize",
    "loss_weight",
    "mask_tokens",
    "masked_cross_entropy",
    "network_step",
    "prior_term",
    "reconstruction_term",
    "diffusion_loss",
]

MD4_EPS = 1e-4
"""MD4's clamp of the schedule: ``alpha = (1 - 2 eps) abar + eps`` (M2)."""
SCHEDULES = ("linear", "cosine", "polynomial")
TIME_FORMS = ("continuous", "discrete")


@dataclass(frozen=True)
class MaskedELBOOptions(ConfigSection):
    """The options of ``objective: masked_elbo`` (``diffusion_config.params.masked_elbo``), each checked once.

    Attributes:
        schedule: one of ``SCHEDULES`` (M2).
        exponent: w of the polynomial schedule ``1 - t^w``, > 0 (the other schedules ignore it; 1 = linear).
        time: ``'continuous'`` (M5) or ``'discrete'`` (M4, T = ``diffusion_step`` terms).
        antithetic: draw the batch's times as ``(u + i / B) mod 1`` instead of B independent draws.
        eps: the clamp of (M2), in [0, 0.5); MD4's 1e-4 by default.
    """

    KEY_PATH = "masked_elbo"

    schedule: str = setting("linear", check=lambda v: v in SCHEDULES, must=f"one of {SCHEDULES}")
    exponent: float = setting(1.0, check=lambda v: v > 0, must="a number > 0")
    time: str = setting("continuous", check=lambda v: v in TIME_FORMS, must=f"one of {TIME_FORMS}")
    antithetic: bool = True
    eps: float = setting(MD4_EPS, check=lambda v: 0.0 <= v < 0.5, must="a number in [0, 0.5)")

    @classmethod
    def from_config(cls, config: Optional[Mapping[str, Any]],
                    key_path: str = "masked_elbo") -> "MaskedELBOOptions":
        """From the ``masked_elbo`` mapping of a config (None: the defaults); a :class:`ConfigError` names the
        key path of an unknown key or a bad value (``vqdiff.utils.config_sections.parse_section``)."""
        return cls() if config is None else parse_section(config, cls, key_path)

    def record(self) -> torch.Tensor:
        """The schedule as a small float64 tensor kept in checkpoints: (schedule index, exponent, eps)."""
        return torch.tensor([SCHEDULES.index(self.schedule), self.exponent, self.eps], dtype=torch.float64)


# --------------------------------------------------------------------------------------------------
# Schedule (M2)
# --------------------------------------------------------------------------------------------------
def _alpha_bar(t: torch.Tensor, opts: MaskedELBOOptions) -> torch.Tensor:
    if opts.schedule == "linear":
        return 1.0 - t
    if opts.schedule == "cosine":
        return 1.0 - torch.cos(math.pi / 2 * (1.0 - t))
    return 1.0 - t ** opts.exponent


def _dalpha_bar(t: torch.Tensor, opts: MaskedELBOOptions) -> torch.Tensor:
    if opts.schedule == "linear":
        return -torch.ones_like(t)
    if opts.schedule == "cosine":
        return -math.pi / 2 * torch.sin(math.pi / 2 * (1.0 - t))
    return -opts.exponent * t ** (opts.exponent - 1.0)


def alpha(t: torch.Tensor, opts: MaskedELBOOptions) -> torch.Tensor:
    """``alpha_t = (1 - 2 eps) abar_t + eps`` (M2): the probability that a token is still unmasked at t."""
    return (1.0 - 2.0 * opts.eps) * _alpha_bar(t, opts) + opts.eps


def dalpha(t: torch.Tensor, opts: MaskedELBOOptions) -> torch.Tensor:
    """``alpha'_t = (1 - 2 eps) abar'_t`` (M2), <= 0."""
    return (1.0 - 2.0 * opts.eps) * _dalpha_bar(t, opts)


# --------------------------------------------------------------------------------------------------
# Time and weights (M4, M5)
# --------------------------------------------------------------------------------------------------
def sample_times(b: int, device: torch.device, antithetic: bool = True,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """t (b,) in [0, 1): ``(u + i / b) mod 1`` with one u (antithetic), else b independent uniforms."""
    if antithetic:
        u = torch.rand(1, device=device, generator=generator, dtype=torch.float64)
        t = torch.remainder(u + torch.arange(b, device=device, dtype=torch.float64) / b, 1.0)
    else:
        t = torch.rand(b, device=device, generator=generator, dtype=torch.float64)
    return t.float()


def discretize(t: torch.Tensor, num_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(t(i), t(i-1)) of the term that ``t`` in [0, 1) picks: ``i = floor(t T) + 1`` (M4; MD4's rule)."""
    i = torch.clamp(torch.floor(t.double() * num_steps) + 1, 1, num_steps)
    return (i / num_steps).to(t.dtype), ((i - 1) / num_steps).to(t.dtype)


def loss_weight(t: torch.Tensor, opts: MaskedELBOOptions, num_steps: Optional[int] = None) -> torch.Tensor:
    """The weight of ``CE_t`` for one drawn t (B,), >= 0, computed in float64.

    Continuous (``num_steps`` None): ``-alpha'_t / (1 - alpha_t)`` (M5). Discrete: ``t`` must already be a
    grid point t(i) (:func:`discretize`) and the weight is ``T (alpha_{t - 1/T} - alpha_t) / (1 - alpha_t)``
    (M4 with one of its T terms drawn uniformly).
    """
    t64 = t.double()
    a_t = alpha(t64, opts)
    if num_steps is None:
        w = -dalpha(t64, opts) / (1.0 - a_t)
    else:
        a_s = alpha((t64 - 1.0 / num_steps).clamp_min(0.0), opts)
        w = num_steps * (a_s - a_t) / (1.0 - a_t)
    return w.to(t.dtype)


# --------------------------------------------------------------------------------------------------
# Forward draw (M1) and the cross-entropy (M3)
# --------------------------------------------------------------------------------------------------
def mask_tokens(x0: torch.Tensor, alpha_t: torch.Tensor, mask_id: int,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Draw ``x_t ~ q(x_t | x_0)`` (M1): each token of x0 (B, N) is kept with probability alpha_t (B,)."""
    u = torch.rand(x0.shape, device=x0.device, generator=generator, dtype=torch.float64)
    keep = u < alpha_t.double().view(-1, *([1] * (x0.dim() - 1)))
    return torch.where(keep, x0, torch.full_like(x0, mask_id))


def masked_cross_entropy(log_p_x0: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, mask_id: int) -> torch.Tensor:
    """``CE_t = -sum_{n: x_t^n = MASK} log p(x_0^n | x_t)`` (M3) per image (B,) from log_p_x0 (B, K[+1], N)."""
    log_p_true = log_p_x0.gather(1, x0.unsqueeze(1)).squeeze(1)  # (B, N)
    masked = (x_t == mask_id).to(log_p_true.dtype)
    return -(log_p_true * masked).sum(dim=1)


def network_step(t: torch.Tensor, opts: MaskedELBOOptions, num_steps: int) -> torch.Tensor:
    """The network's integer step (B,) at time t (B,): ``ceil((1 - abar_t) T) - 1`` in 0..T-1, the step whose
    share of the T steps matches the mask rate (unclamped, so the uniform grid ``t = (j + 1) / T`` of the
    linear schedule feeds step j exactly; the clamp moves the rate by at most eps)."""
    rate = (1.0 - _alpha_bar(t.double(), opts)) * num_steps
    return torch.clamp(torch.ceil(rate - 1e-4) - 1, 0, num_steps - 1).long()  # slack: float32 times


def prior_term(opts: MaskedELBOOptions, seq_len: int, num_tokens: int) -> float:
    """``N alpha_1 log K`` (M6): KL of q(x_1 | x_0) to [MASK] w.p. 1 - alpha_1, else a uniform token."""
    a1 = float(alpha(torch.tensor(1.0, dtype=torch.float64), opts))
    return seq_len * a1 * math.log(num_tokens)


def reconstruction_term(opts: MaskedELBOOptions, seq_len: int, num_tokens: int) -> float:
    """``N (1 - alpha_0) log K`` (M6, MD4's ``recon_loss``): a token still masked at t = 0 costs log K."""
    a0 = float(alpha(torch.tensor(0.0, dtype=torch.float64), opts))
    return seq_len * (1.0 - a0) * math.log(num_tokens)


def diffusion_loss(predict_log_x0: Any, x0: torch.Tensor, opts: MaskedELBOOptions, num_steps: int, mask_id: int,
                   generator: Optional[torch.Generator] = None, t: Optional[torch.Tensor] = None):
    """One Monte-Carlo draw of (M5) (``opts.time == 'continuous'``) or (M4) per image.

    Args:
        predict_log_x0: ``f(x_t (B, N) long, step (B,) long) -> log p(x_0 | x_t)`` (B, K[+1], N).
        x0: (B, N) tokens.
        num_steps: T (the network's steps; the number of terms of (M4)).
        t: (B,) times in [0, 1) to use instead of drawing them (tests).

    Returns ``(loss (B,), log p(x_0 | x_t), x_t, t)``: the loss is ``weight(t) CE_t`` in nats per image.
    """
    if t is None:
        t = sample_times(x0.shape[0], x0.device, opts.antithetic, generator)
    if opts.time == "discrete":
        t, _ = discretize(t, num_steps)
        weight = loss_weight(t, opts, num_steps)
    else:
        weight = loss_weight(t, opts)
    a_t = alpha(t.double(), opts)
    x_t = mask_tokens(x0, a_t, mask_id, generator)
    log_p = predict_log_x0(x_t, network_step(t, opts, num_steps))
    ce = masked_cross_entropy(log_p.float(), x0, x_t, mask_id)
    return weight.to(ce.dtype) * ce, log_p, x_t, t

