"""Alias of :mod:`vqdiff.adapters.config` (the solver.lora section), kept because configs and scripts name this path."""

from vqdiff.adapters.config import (  # noqa: F401
    LoraConfig,
    parse_lora_config,
    DEFAULT_TARGET_MODULES,
)

__all__ = ["LoraConfig", "parse_lora_config", "DEFAULT_TARGET_MODULES"]
