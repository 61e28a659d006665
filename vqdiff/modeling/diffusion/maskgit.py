"""Alias: the MaskGIT sampler lives in ``samplers/maskgit.py`` (this path is kept for existing imports)."""

from .samplers.maskgit import MASK_SCHEDULES, mask_ratio, maskgit_timesteps, sample_maskgit

__all__ = ["MASK_SCHEDULES", "mask_ratio", "maskgit_timesteps", "sample_maskgit"]
