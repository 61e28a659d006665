"""The training objective of VQ-Diffusion as functions (arXiv 2111.14822, Sec. 3.3, Eq. 8-12).

* :func:`sample_time`: the step t and its probability ``p_t`` (uniform, then importance sampling over
  the loss history, as Nichol & Dhariwal), with the official random calls in the official order;
* :func:`vlb_terms`: the variational bound per image, ``L_t = sum_n w_n KL(q(x_{t-1} | x_t, x_0) ||
  p_theta(x_{t-1} | x_t))`` for t > 0 and the decoder NLL ``L_0 = -sum_n log p_theta(x_0 | x_1)``;
* :func:`update_loss_history`: the running ``E[L_t^2]`` that importance sampling reads, with a guard
  that keeps a non-finite loss out of it;
* :func:`auxiliary_loss`: the x_0 reconstruction term of Eq. 12.

Shapes: log-probabilities (B, K+1, N) with [MASK] = K last, tokens (B, N), steps (B,).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .log_ops import log_categorical, multinomial_kl

__all__ = ["VLBTerms", "sample_time", "vlb_terms", "update_loss_history", "auxiliary_loss"]

TIME_METHODS = ("uniform", "importance")


def sample_time(
    Lt_history: torch.Tensor,
    Lt_count: torch.Tensor,
    b: int,
    device: torch.device,
    method: str = "uniform",
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw t (b,) and its probability p_t (b,), with the official random calls in the official order.

    'uniform': one ``torch.randint``, p_t = 1/T (T = ``len(Lt_count)``). 'importance': the uniform draw
    while any step has been seen 10 times or fewer (``Lt_count <= 10``); after that only one
    ``torch.multinomial`` over ``p(t) ∝ sqrt(E[L_t^2]) + 1e-4`` (with ``p(0) := p(1)``), p_t = p(t).
    """
    if method not in TIME_METHODS:
        raise ValueError(f"unknown time sampling method {method!r} (expected 'uniform' or 'importance')")
    num_timesteps = int(Lt_count.shape[0])
    # The official code makes exactly one of the two draws, chosen by Lt_count, so which random call
    # to make needs this one boolean on the host (a device sync per training step on GPU). Drawing
    # both and selecting on the device avoids the sync but consumes the RNG differently: the same seed
    # then gives other t and x_t than a seeded official step (tests/test_official_*.py).
    if method == "importance" and bool((Lt_count > 10).all()):
        Lt_sqrt = torch.sqrt(Lt_history + 1e-10) + 0.0001
        Lt_sqrt = torch.cat([Lt_sqrt[1:2], Lt_sqrt[1:]])  # the decoder term takes L_1's weight
        pt_all = Lt_sqrt / Lt_sqrt.sum()
        t = torch.multinomial(pt_all, num_samples=b, replacement=True, generator=generator)
        return t, pt_all.gather(0, t)
    t = torch.randint(0, num_timesteps, (b,), device=device, generator=generator)
    return t, torch.full((b,), 1.0 / num_timesteps, device=device)


@dataclass(frozen=True)
class VLBTerms:
    """The per-image terms of the bound: ``kl_loss`` (B,) is ``L_0`` at t = 0 and ``L_t`` elsewhere;
    ``decoder_nll`` (B,) is ``L_0`` at every t; ``token_weight`` (B, N) is the mask weight ``w_n``."""

    kl_loss: torch.Tensor
    decoder_nll: torch.Tensor
    token_weight: torch.Tensor


def vlb_terms(
    log_x_start: torch.Tensor,
    log_true_prob: torch.Tensor,
    log_model_prob: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    mask_weight: Sequence[float],
) -> VLBTerms:
    """The variational bound of Eq. 8-10 per image.

    Args:
        log_x_start: (B, K+1, N) log one-hot x_0.
        log_true_prob: (B, K+1, N) ``log q(x_{t-1} | x_t, x_0)`` (the posterior of the true x_0).
        log_model_prob: (B, K+1, N) ``log p_theta(x_{t-1} | x_t)`` (the posterior of the predicted x_0).
        x_t: (B, N) tokens, [MASK] = K.
        t: (B,) steps.
        mask_weight: ``[w on masked positions, w on unmasked positions]``.
    """
    masked = (x_t == log_x_start.shape[1] - 1).float()
    token_weight = masked * mask_weight[0] + (1.0 - masked) * mask_weight[1]
    kl = (multinomial_kl(log_true_prob, log_model_prob) * token_weight).sum(1)  # (B,)
    decoder_nll = -log_categorical(log_x_start, log_model_prob).sum(1)  # (B,)
    is_t0 = (t == 0).float()
    kl_loss = is_t0 * decoder_nll + (1.0 - is_t0) * kl
    return VLBTerms(kl_loss=kl_loss, decoder_nll=decoder_nll, token_weight=token_weight)


@torch.no_grad()
def update_loss_history(
    Lt_history: torch.Tensor, Lt_count: torch.Tensor, t: torch.Tensor, kl_loss: torch.Tensor
) -> None:
    """In place: ``Lt_history[t] <- 0.1 L_t^2 + 0.9 Lt_history[t]`` and ``Lt_count[t] += 1``.

    A non-finite loss (a diverged step the solver will skip) must not reach the history: a NaN there
    would make every later importance draw fail. Such entries are left as they were and not counted
    (a masked update, no host sync).
    """
    old_hist = Lt_history.gather(0, t)
    new_hist = 0.1 * kl_loss.detach().pow(2) + 0.9 * old_hist
    finite = torch.isfinite(new_hist)
    Lt_history.scatter_(0, t, torch.where(finite, new_hist, old_hist))
    Lt_count.scatter_add_(0, t, finite.to(new_hist.dtype))


def auxiliary_loss(
    log_x_start: torch.Tensor,
    log_x0_recon: torch.Tensor,
    terms: VLBTerms,
    t: torch.Tensor,
    num_timesteps: int,
    loss_weight: float,
    adaptive: bool,
) -> torch.Tensor:
    """The auxiliary x_0 loss of Eq. 12 per image (B,), before ``1 / p_t``.

    ``lambda sum_n w_n KL(x_0 || p_theta(x_0 | x_t))`` over the K tokens (the decoder NLL at t = 0),
    times ``2 - t/T`` when ``adaptive``; ``loss_weight`` is lambda.
    """
    kl_aux = multinomial_kl(log_x_start[:, :-1, :], log_x0_recon[:, :-1, :]) * terms.token_weight
    is_t0 = (t == 0).float()
    kl_aux_loss = is_t0 * terms.decoder_nll + (1.0 - is_t0) * kl_aux.sum(1)
    weight = (1.0 - t / num_timesteps) + 1.0 if adaptive else 1.0
    return weight * loss_weight * kl_aux_loss
