"""VQ-Diffusion's objective (arXiv 2111.14822, Sec. 3.3, Eq. 8-12): the mask-and-replace variational bound
with its auxiliary x_0 loss, the default of ``DiffusionTransformer``; the math is in ``losses.py``."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from .. import losses
from ..log_ops import index_to_log_onehot, log_onehot_to_index
from .base import Objective, Predictor

__all__ = ["VQDiffusionObjective", "vq_diffusion_prior_kl"]


def vq_diffusion_prior_kl(diffusion: Any) -> float:
    """``KL(q(x_{T-1} | x_0) || p)`` per token (nats) of the mask-and-replace schedule (the same for any x_0),
    against the stationary ``p = [abar/K + bbar, ..., cbar]`` (code step T-1 = paper T)."""
    K = diffusion.num_classes - 1
    a = math.exp(float(diffusion.log_cumprod_at[diffusion.num_timesteps - 1]))
    b = math.exp(float(diffusion.log_cumprod_bt[diffusion.num_timesteps - 1]))
    p_token = a / K + b
    kl = (a + b) * math.log((a + b) / p_token)
    if b > 0:
        kl += (K - 1) * b * math.log(b / p_token)
    return kl


class VQDiffusionObjective(Objective):
    """``objective: vq_diffusion``: no options, no checkpoint record (the official checkpoint layout)."""

    name = "vq_diffusion"
    mask_and_replace = True

    def loss(self, diffusion: Any, x: torch.Tensor, cond_emb: Any, *, is_train: bool = True,
             generator: Optional[torch.Generator] = None, cond_mask: Optional[torch.Tensor] = None):
        """Per-sample loss (B,): ``L_t / p_t`` + the auxiliary x_0 loss (Eq. 12); also ``log p_theta(x_{t-1} | x_t)``.

        The steps are ``sample_time`` (importance sampling), ``q_sample_index`` (the same draw as ``q_sample``),
        ``predict_start_index``, ``q_posterior_index`` (true and model posteriors), then the bound
        (:func:`losses.vlb_terms`), the history update with its NaN guard and the auxiliary term.
        """
        d = diffusion
        b, device = x.shape[0], x.device
        t, pt = d.sample_time(b, device, "importance", generator)
        log_x_start = index_to_log_onehot(x, d.num_classes)
        xt = d.q_sample_index(x, t, generator)

        log_x0_recon = d.predict_start_index(xt, cond_emb, t, cond_mask=cond_mask)
        with torch.autocast(device.type, enabled=False):
            log_x0_recon = log_x0_recon.float()
            log_model_prob = d.q_posterior_index(log_x0_recon, xt, t)
            log_true_prob = d.q_posterior_index(log_x_start, xt, t)
            terms = losses.vlb_terms(log_x_start, log_true_prob, log_model_prob, xt, t, d.mask_weight)
            losses.update_loss_history(d.Lt_history, d.Lt_count, t, terms.kl_loss)
            loss = terms.kl_loss / pt
            if d.auxiliary_loss_weight != 0 and is_train:
                aux = losses.auxiliary_loss(
                    log_x_start, log_x0_recon, terms, t, d.num_timesteps, d.auxiliary_loss_weight,
                    d.adaptive_auxiliary_loss,
                )
                loss = loss + aux / pt
        return log_model_prob, loss

    def sampler_for(self, kind: str, options: Any) -> str:
        if options.time_grid != "uniform":
            raise ValueError(f"sampling option time_grid={options.time_grid!r} is for 'objective: masked_elbo' models")
        return kind

    def noised_start(self, diffusion: Any, x0: torch.Tensor, start_step: int, options: Any,
                     official_noise: bool = True) -> torch.Tensor:
        """``x_t ~ q(x_t | x_0)`` (Eq. 5) at step ``start_step - 1``; the official one-hot form when asked."""
        t = torch.full((x0.shape[0],), start_step - 1, device=x0.device, dtype=torch.long)
        if not official_noise:
            return diffusion.q_sample_index(x0, t, options.generator)
        return log_onehot_to_index(diffusion.q_sample(index_to_log_onehot(x0, diffusion.num_classes), t,
                                                      options.generator))

    def negative_elbo(self, diffusion: Any, x0: torch.Tensor, predict: Predictor,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``L_prior + sum_{t=0}^{T-1} L_t`` (Eq. 8-10) estimated as ``T L_t`` at one uniform step (``L_0`` the
        decoder NLL; the mask weights and the auxiliary loss, training devices, are left out), with
        ``L_prior`` = :func:`vq_diffusion_prior_kl` per token."""
        B, N = x0.shape
        K, T = diffusion.num_classes - 1, diffusion.num_timesteps
        t = torch.randint(0, T, (B,), device=x0.device, generator=generator)
        x_t = diffusion.q_sample_index(x0, t, generator)
        log_x0 = predict(x_t, t).float()
        log_model = diffusion.q_posterior_index(log_x0, x_t, t)
        log_x_start = index_to_log_onehot(x0, K + 1)
        log_true = diffusion.q_posterior_index(log_x_start, x_t, t)
        terms = losses.vlb_terms(log_x_start, log_true, log_model, x_t, t, (1.0, 1.0))
        return T * terms.kl_loss.double() + N * vq_diffusion_prior_kl(diffusion)
