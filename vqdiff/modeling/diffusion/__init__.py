"""Discrete (mask-and-replace) diffusion: schedule, log-space ops, samplers, ``DiffusionTransformer``."""

from .diffusion_transformer import DiffusionTransformer
from .schedule import alpha_schedule, log_schedule

__all__ = ["DiffusionTransformer", "alpha_schedule", "log_schedule"]
