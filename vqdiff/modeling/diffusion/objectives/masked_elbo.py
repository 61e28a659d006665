"""The masked-diffusion ELBO as an objective (MD4, arXiv 2406.04329; MDLM, arXiv 2406.07524): the bound and
its schedule are in ``diffusion/masked_elbo.py`` (equations M1-M6 there); this file says how a model trained
on it is sampled, noised, recorded in checkpoints and evaluated."""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Optional

import torch

from .. import masked_elbo
from ..samplers.masked import grid_time, masked_alpha
from .base import Objective, Predictor

__all__ = ["MaskedELBOObjective", "masked_sampler_kind", "noise_to_step"]


def masked_sampler_kind(kind: str, options: Any) -> str:
    """The sampler table key for a masked-ELBO model: the ancestral and Improved samplers become ``'masked'``,
    the others stay (MaskGIT runs unchanged); options that only the mask-and-replace chain has are a ValueError."""
    if options.rerun_prob > 0:
        raise ValueError(f"sampling option rerun_prob (q{{p}}) = {options.rerun_prob} re-runs a mask-and-replace "
                         "step; an 'objective: masked_elbo' model has no such step (use rerun_prob 0)")
    if options.time_ratio is not None or options.prior_ps is not None:
        raise ValueError("sampling options time_ratio (time{s<1}) and prior_ps set the Improved VQ-Diffusion token "
                         "budget per call; an 'objective: masked_elbo' model reveals what its schedule says per "
                         "step (use skip_step / time{s>=2} or maskgit{S} for fewer calls)")
    return "masked" if kind in ("ancestral", "improved") else kind


def noise_to_step(diffusion: Any, x0: torch.Tensor, start_step: int, grid: str,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``x ~ q(x_t | x_0)`` (masked_elbo M1) at the time of step ``start_step - 1`` (u = start_step / T):
    the start of partial sampling (``filter_ratio``)."""
    t = grid_time(start_step / diffusion.num_timesteps, grid)
    a = torch.full((x0.shape[0],), masked_alpha(t, diffusion.masked_elbo_options), dtype=torch.float64,
                   device=x0.device)
    return masked_elbo.mask_tokens(x0, a, diffusion.num_classes - 1, generator)


class MaskedELBOObjective(Objective):
    """``objective: masked_elbo``, its options (``MaskedELBOOptions``) from ``diffusion_config.params.masked_elbo``;
    checkpoints record its schedule under ``masked_elbo_schedule``."""

    name = "masked_elbo"
    record_key = "masked_elbo_schedule"
    options_key = "masked_elbo"
    options: masked_elbo.MaskedELBOOptions

    def __init__(self, options: Optional[masked_elbo.MaskedELBOOptions] = None):
        super().__init__(masked_elbo.MaskedELBOOptions() if options is None else options)

    @classmethod
    def from_config(cls, config: Optional[Mapping[str, Any]], key_path: str) -> "MaskedELBOObjective":
        return cls(masked_elbo.MaskedELBOOptions.from_config(config, key_path))

    def loss(self, diffusion: Any, x: torch.Tensor, cond_emb: Any, *, is_train: bool = True,
             generator: Optional[torch.Generator] = None, cond_mask: Optional[torch.Tensor] = None):
        """One draw of the masked-diffusion bound per image (B,) in nats and ``log p_theta(x_0 | x_t)``
        (B, K+1, N): :func:`masked_elbo.diffusion_loss` on the model's network."""
        def predict(x_t: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
            return diffusion.predict_start_index(x_t, cond_emb, step, cond_mask=cond_mask)

        loss, log_x0, _, _ = masked_elbo.diffusion_loss(
            predict, x, self.options, diffusion.num_timesteps, diffusion.num_classes - 1, generator)
        return log_x0, loss

    def sampler_for(self, kind: str, options: Any) -> str:
        return masked_sampler_kind(kind, options)

    def noised_start(self, diffusion: Any, x0: torch.Tensor, start_step: int, options: Any,
                     official_noise: bool = True) -> torch.Tensor:
        return noise_to_step(diffusion, x0, start_step, options.time_grid, options.generator)

    def record(self) -> torch.Tensor:
        return self.options.record()

    def check_record(self, record: Optional[torch.Tensor]) -> None:
        """A masked-ELBO checkpoint loads only with the same schedule (else ValueError naming the setting); a
        checkpoint without the record (VQ-Diffusion's, the official ones) loads with a warning (a fine-tuning
        start)."""
        if record is None:
            warnings.warn("loading a checkpoint without a masked_elbo record (a 'vq_diffusion' network) into an "
                          "'objective: masked_elbo' model: its network starts from those weights", stacklevel=6)
            return
        mine = self.options.record()
        if record.shape != mine.shape or not torch.allclose(record.double().cpu(), mine):
            raise ValueError(f"checkpoint's masked_elbo schedule (index into {masked_elbo.SCHEDULES}, exponent, eps) "
                             f"= {record.tolist()} differs from the model's {mine.tolist()}; set "
                             "diffusion_config.params.masked_elbo to the checkpoint's")

    def negative_elbo(self, diffusion: Any, x0: torch.Tensor, predict: Predictor,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The bound (M6) in the model's own form (continuous or T steps), prior and reconstruction terms included."""
        N, K, T = x0.shape[1], diffusion.num_classes - 1, diffusion.num_timesteps
        loss, *_ = masked_elbo.diffusion_loss(predict, x0, self.options, T, K, generator)
        extra = masked_elbo.prior_term(self.options, N, K) + masked_elbo.reconstruction_term(self.options, N, K)
        return loss.double() + extra
