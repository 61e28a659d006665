"""The negative ELBO of a ``DiffusionTransformer`` on held-out tokens, for any objective, in the same units.

Every objective bounds the same likelihood ``-log p(x_0)`` of the N tokens of an image, so their bounds can
be compared on the same tokens (bits per token: nats / (N ln 2)); lower is a tighter fit. Each call is one
unbiased Monte-Carlo draw per image (average several passes for a figure); the bound itself is the
objective's (``Objective.negative_elbo``):

* ``vq_diffusion`` (arXiv 2111.14822 Eq. 8-10): ``L_prior + sum_{t=0}^{T-1} L_t``, estimated as
  ``T L_t`` at one uniform step (``objectives/vq_diffusion.py``);
* ``masked_elbo``: the masked-diffusion bound (``masked_elbo`` M6) in the model's own form (continuous or T
  steps), its prior and reconstruction terms included (``objectives/masked_elbo.py``).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from .objectives import objective_of
from .objectives.vq_diffusion import vq_diffusion_prior_kl

__all__ = ["negative_elbo", "vq_diffusion_prior_kl", "bits_per_token"]


@torch.no_grad()
def negative_elbo(diffusion: Any, x0: torch.Tensor, cond_emb: Any, generator: Optional[torch.Generator] = None,
                  cond_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One draw of the negative ELBO per image (B,) in nats for tokens x0 (B, N) under condition ``cond_emb``
    and its text padding mask ``cond_mask`` (B, Lc) or None (both from
    ``condition_input.training_condition(diffusion, input)``)."""
    cache = diffusion.precompute_condition(cond_emb)

    def predict(x_t: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return diffusion.predict_start_index(x_t, cond_emb, step, cache, cond_mask=cond_mask)

    return objective_of(diffusion).negative_elbo(diffusion, x0, predict, generator)


def bits_per_token(nats: torch.Tensor, seq_len: int) -> float:
    """The mean of per-image nats (B,) as bits per token."""
    return float(nats.double().mean()) / (seq_len * math.log(2))
