"""Gradient-norm clipping inside an iteration window (official ``image_synthesis.engine.clip_grad_norm``).

Window: clip while ``start_iteration <= it < end_iteration``; ``end_iteration <= 0`` means forever.

Difference from the official class: the official test is
``it >= start_iteration or (end_iteration > 0 and it < end_iteration)``, so with the configs'
``start_iteration: 0`` it clips on every step and ``end_iteration`` has no effect. Set
``official_semantics=True`` to reproduce that rule exactly (e.g. to re-run an official recipe
beyond ``end_iteration`` steps).
"""

from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["ClipGradNorm"]


class ClipGradNorm:
    def __init__(self, start_iteration: int = 0, end_iteration: int = -1, max_norm: float = 0.5,
                 official_semantics: bool = False):
        if max_norm <= 0:
            raise ValueError(f"ClipGradNorm: max_norm must be positive, got {max_norm}")
        self.start_iteration = int(start_iteration)
        self.end_iteration = int(end_iteration)
        self.max_norm = float(max_norm)
        self.official_semantics = bool(official_semantics)
        self.last_epoch = -1  # number of calls so far - 1 (official name)

    def should_clip(self, it: int) -> bool:
        if self.official_semantics:
            return it >= self.start_iteration or (self.end_iteration > 0 and it < self.end_iteration)
        return it >= self.start_iteration and (self.end_iteration <= 0 or it < self.end_iteration)

    def __call__(self, parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor | None:
        """Count one call; clip (in place) when inside the window. Returns the pre-clip total norm or None."""
        self.last_epoch += 1
        if self.should_clip(self.last_epoch):
            return torch.nn.utils.clip_grad_norm_(list(parameters), self.max_norm)
        return None

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state_dict: dict) -> None:
        self.__dict__.update(state_dict)
