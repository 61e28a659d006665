"""VQ-Diffusion models: ``DALLE`` (text), ``C_DALLE`` (class), ``UC_DALLE`` (unconditional)."""

from .conditional_dalle import C_DALLE
from .dalle import DALLE
from .unconditional_dalle import UC_DALLE

__all__ = ["DALLE", "C_DALLE", "UC_DALLE"]
