"""The negative ELBO of a ``DiffusionTransformer`` on held-out tokens, for either objective, in the same units.

Both objectives bound the same likelihood ``-log p(x_0)`` of the N tokens of an image, so their bounds can
be compared on the same tokens (bits per token: nats / (N ln 2)); lower is a tighter fit. Each call is one
unbiased Monte-Carlo draw per image (average several passes for a figure):

* ``vq_diffusion`` (arXiv 2111.14822 Eq. 8-10): ``L_prior + sum_{t=0}^{T-1} L_t``, estimated as
  ``T L_t`` at one uniform step (``L_0`` the decoder NLL; the mask weights and the auxiliary loss, which are
  training devices, are left out), with ``L_prior = KL(q(x_{T-1} | x_0) || p)`` against the stationary
  ``p = [abar/K + bbar, ..., cbar]`` of the schedule (code step T-1 = paper T);
* ``masked_elbo``: the masked-diffusion bound (``masked_elbo`` M6) in the model's own form (continuous or T
  steps), its prior and reconstruction terms included.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from . import masked_elbo
from .log_ops import index_to_log_onehot
from .losses import vlb_terms

__all__ = ["negative_elbo", "vq_diffusion_prior_kl", "bits_per_token"]


def vq_diffusion_prior_kl(diffusion: Any) -> float:
    """``KL(q(x_{T-1} | x_0) || p)`` per token (nats) of the mask-and-replace schedule (the same for any x_0)."""
    K = diffusion.num_classes - 1
    a = math.exp(float(diffusion.log_cumprod_at[diffusion.num_timesteps - 1]))
    b = math.exp(float(diffusion.log_cumprod_bt[diffusion.num_timesteps - 1]))
    p_token = a / K + b
    kl = (a + b) * math.log((a + b) / p_token)
    if b > 0:
        kl += (K - 1) * b * math.log(b / p_token)
    return kl


@torch.no_grad()
def negative_elbo(diffusion: Any, x0: torch.Tensor, cond_emb: Any, generator: Optional[torch.Generator] = None,
                  cond_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One draw of the negative ELBO per image (B,) in nats for tokens x0 (B, N) under condition ``cond_emb``
    and its text padding mask ``cond_mask`` (B, Lc) or None (both from
    ``condition_input.training_condition(diffusion, input)``)."""
    B, N = x0.shape
    K, T = diffusion.num_classes - 1, diffusion.num_timesteps
    cache = diffusion.precompute_condition(cond_emb)

    def predict(x_t: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return diffusion.predict_start_index(x_t, cond_emb, step, cache, cond_mask=cond_mask)

    opts = getattr(diffusion, "masked_elbo_options", None)
    if opts is not None:
        loss, *_ = masked_elbo.diffusion_loss(predict, x0, opts, T, K, generator)
        extra = masked_elbo.prior_term(opts, N, K) + masked_elbo.reconstruction_term(opts, N, K)
        return loss.double() + extra
    t = torch.randint(0, T, (B,), device=x0.device, generator=generator)
    x_t = diffusion.q_sample_index(x0, t, generator)
    log_x0 = predict(x_t, t).float()
    log_model = diffusion.q_posterior_index(log_x0, x_t, t)
    log_x_start = index_to_log_onehot(x0, K + 1)
    log_true = diffusion.q_posterior_index(log_x_start, x_t, t)
    terms = vlb_terms(log_x_start, log_true, log_model, x_t, t, (1.0, 1.0))
    return T * terms.kl_loss.double() + N * vq_diffusion_prior_kl(diffusion)


def bits_per_token(nats: torch.Tensor, seq_len: int) -> float:
    """The mean of per-image nats (B,) as bits per token."""
    return float(nats.double().mean()) / (seq_len * math.log(2))
