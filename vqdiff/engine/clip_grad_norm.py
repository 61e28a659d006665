"""Gradient-norm clipping (official ``image_synthesis.engine.clip_grad_norm.ClipGradNorm``).

Each call counts one iteration ``it`` (``last_epoch``, official name) and clips the total gradient norm of
the given parameters to ``max_norm`` when the rule says so:

- ``rule: official`` (default, the rule the released models were trained with):
  clip when ``it >= start_iteration or (end_iteration > 0 and it < end_iteration)``. With the official
  configs' ``start_iteration: 0`` this clips on **every** step and ``end_iteration`` has no effect.
- ``rule: window`` (opt-in): clip while ``start_iteration <= it < end_iteration``
  (``end_iteration <= 0``: no end), which is what the config words suggest.

:meth:`ineffective_end_iteration` tells when a config's ``end_iteration`` changes nothing under its rule
(the solver logs a warning then).
"""

from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["ClipGradNorm", "CLIP_RULES"]

CLIP_RULES = ("official", "window")


class ClipGradNorm:
    def __init__(self, start_iteration: int = 0, end_iteration: int = -1, max_norm: float = 0.5,
                 rule: str = "official"):
        if max_norm <= 0:
            raise ValueError(f"ClipGradNorm: max_norm must be positive, got {max_norm}")
        if rule not in CLIP_RULES:
            raise ValueError(f"ClipGradNorm: rule must be one of {', '.join(CLIP_RULES)}, got {rule!r}")
        self.start_iteration = int(start_iteration)
        self.end_iteration = int(end_iteration)
        self.max_norm = float(max_norm)
        self.rule = rule
        self.last_epoch = -1  # number of calls so far - 1 (official name)

    def should_clip(self, it: int) -> bool:
        if self.rule == "official":
            return it >= self.start_iteration or (self.end_iteration > 0 and it < self.end_iteration)
        return it >= self.start_iteration and (self.end_iteration <= 0 or it < self.end_iteration)

    def ineffective_end_iteration(self) -> bool:
        """True when ``end_iteration`` is set but, under the official rule, clipping never stops
        (``[0, end) ∪ [start, ∞)`` covers every iteration once ``end >= start``)."""
        return self.rule == "official" and 0 < self.end_iteration and self.end_iteration >= self.start_iteration

    def __call__(self, parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor | None:
        """Count one call; clip (in place) when the rule says so. Returns the pre-clip total norm or None."""
        self.last_epoch += 1
        if self.should_clip(self.last_epoch):
            return torch.nn.utils.clip_grad_norm_(list(parameters), self.max_norm)
        return None

    def state_dict(self) -> dict:
        """Official keys (``start_iteration``, ``end_iteration``, ``max_norm``, ``last_epoch``) plus ``rule``."""
        return dict(self.__dict__)

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the counter and window; the rule stays the one of this run's config (official
        checkpoints have none)."""
        rule = self.rule
        self.__dict__.update(state_dict)
        self.rule = rule
