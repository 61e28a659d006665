"""Log-space helpers for categorical diffusion (tensors of log-probabilities shaped (B, C, N)).

All functions are pure; sampling takes an optional ``torch.Generator`` so that a request can be
reproduced exactly. Log one-hot vectors use ``log(1e-30) ~ -69.08`` for the zero entries, as the
official code does, so nothing is ever ``-inf``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = [
    "LOG_ZERO",
    "CLAMP_MIN",
    "log_1_min_a",
    "log_add_exp",
    "extract",
    "index_to_log_onehot",
    "log_onehot_to_index",
    "multinomial_kl",
    "log_categorical",
    "gumbel_noise",
    "sample_categorical_index",
    "log_sample_categorical",
]

LOG_ZERO = math.log(1e-30)  # the "zero" of a log one-hot vector
CLAMP_MIN = -70.0  # log-probabilities are clamped to [-70, 0], as the official code does


def log_1_min_a(a: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(a))`` with a 1e-40 floor (finite even for ``a = 0``)."""
    return torch.log(1 - a.exp() + 1e-40)


def log_add_exp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``log(exp(a) + exp(b))``, stable, and ``a`` when ``b = -inf``."""
    return torch.logaddexp(a, b)


def extract(a: torch.Tensor, t: torch.Tensor, x_shape: torch.Size | tuple) -> torch.Tensor:
    """Gather the schedule entries ``a[t]`` (t: (B,)) and shape them (B, 1, 1, ...) to broadcast over ``x_shape``."""
    out = a.gather(-1, t)
    return out.reshape(t.shape[0], *((1,) * (len(x_shape) - 1)))


def index_to_log_onehot(x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Tokens (B, N) long -> log one-hot (B, num_classes, N) float32 (``LOG_ZERO`` off the index).

    No host synchronisation: out-of-range indices raise inside ``scatter`` (CPU) rather than being
    checked with ``.item()``.
    """
    out = torch.full((x.shape[0], num_classes, *x.shape[1:]), LOG_ZERO, dtype=torch.float32, device=x.device)
    return out.scatter_(1, x.unsqueeze(1), 0.0)


def log_onehot_to_index(log_x: torch.Tensor) -> torch.Tensor:
    """(B, C, N) -> (B, N): the most probable class at each position."""
    return log_x.argmax(1)


def multinomial_kl(log_prob1: torch.Tensor, log_prob2: torch.Tensor) -> torch.Tensor:
    """``KL(p1 || p2)`` over dim 1: (B, C, N) -> (B, N)."""
    return (log_prob1.exp() * (log_prob1 - log_prob2)).sum(dim=1)


def log_categorical(log_x_start: torch.Tensor, log_prob: torch.Tensor) -> torch.Tensor:
    """``sum_k x_k log p_k`` over dim 1 (the log-likelihood of a (soft) one-hot ``x``): (B, N)."""
    return (log_x_start.exp() * log_prob).sum(dim=1)


def gumbel_noise(
    shape: torch.Size | tuple, device: torch.device, generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log(u + 1e-30) + 1e-30)``, u ~ U[0, 1) (the official form)."""
    g = torch.rand(shape, device=device, generator=generator, dtype=dtype)
    # in place, the same operations in the same order as -log(-log(u + 1e-30) + 1e-30): one buffer
    return g.add_(1e-30).log_().neg_().add_(1e-30).log_().neg_()


def sample_categorical_index(logits: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Gumbel-max sample from unnormalised log-probabilities (B, C, N) -> indices (B, N).

    The noise buffer takes the sum in place (``g + logits == logits + g`` exactly), so one (B, C, N)
    tensor is allocated per draw.
    """
    return gumbel_noise(logits.shape, logits.device, generator, logits.dtype).add_(logits).argmax(dim=1)


def log_sample_categorical(
    logits: torch.Tensor, num_classes: int, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Gumbel-max sample returned as a log one-hot (B, num_classes, N) (the official convention)."""
    return index_to_log_onehot(sample_categorical_index(logits, generator), num_classes)
