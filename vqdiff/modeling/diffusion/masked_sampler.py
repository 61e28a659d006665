"""Alias: the masked-diffusion sampler lives in ``samplers/masked.py``, its noised start and the sampler swap
in ``objectives/masked_elbo.py`` (this path is kept for existing imports)."""

from .objectives.masked_elbo import masked_sampler_kind, noise_to_step
from .samplers.masked import TIME_GRIDS, grid_time, sample_masked

__all__ = ["TIME_GRIDS", "grid_time", "masked_sampler_kind", "noise_to_step", "sample_masked"]
