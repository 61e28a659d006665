"""Exponential moving average of the trained network (official ``ckpt['ema']`` = the DiffusionTransformer).

Every ``update_interval`` iterations (when ``(it + 1) % update_interval == 0``), for every floating-point
state-dict entry (parameters **and** float buffers): ``ema <- decay * ema + (1 - decay) * current``;
integer buffers are copied. ``swapped()`` puts the EMA weights into the live model for validation and
sampling and restores the trained weights afterwards. :func:`build_ema` builds the ``solver.ema`` target
(this class by default) from its typed config.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
from torch import nn

from vqdiff.utils.config import ConfigError, resolve_target
from vqdiff.utils.config_sections import EMAConfig

__all__ = ["EMA", "build_ema"]


class EMA:
    def __init__(self, model: nn.Module, decay: float = EMAConfig.decay,
                 update_interval: int = EMAConfig.update_interval, device: torch.device | str = EMAConfig.device):
        EMAConfig(decay=float(decay), update_interval=int(update_interval))  # the defaults' and ranges' one home
        self.model = model  # the live module (e.g. DALLE.get_ema_model())
        self.decay = float(decay)
        self.update_interval = int(update_interval)
        self.device = torch.device(device)
        self.ema_model = copy.deepcopy(model).to(self.device).eval()
        for p in self.ema_model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, iteration: int) -> bool:
        """Average at iterations with ``(iteration + 1) % update_interval == 0``; returns whether it did."""
        if (int(iteration) + 1) % self.update_interval != 0:
            return False
        cur = self.model.state_dict()
        for key, ema_v in self.ema_model.state_dict().items():
            v = cur[key].detach().to(ema_v.device)
            if ema_v.is_floating_point():
                ema_v.mul_(self.decay).add_(v.to(ema_v.dtype), alpha=1.0 - self.decay)
            else:
                ema_v.copy_(v)
        return True

    def state_dict(self) -> dict:
        return self.ema_model.state_dict()

    def load_state_dict(self, state_dict: dict, strict: bool = True):
        return self.ema_model.load_state_dict(state_dict, strict=strict)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[nn.Module]:
        """Within the block the live model holds the EMA weights (official modify_to_inference/modify_to_train)."""
        backup = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        try:
            with torch.no_grad():
                for k, v in self.model.state_dict().items():
                    v.copy_(self.ema_model.state_dict()[k].to(v.device, v.dtype))
            yield self.model
        finally:
            with torch.no_grad():
                for k, v in self.model.state_dict().items():
                    v.copy_(backup[k])


def build_ema(config: EMAConfig, model: nn.Module, key_path: str = "solver.ema") -> EMA:
    """``config.target(model, decay=, update_interval=, device=)``; the defaults and range checks are
    :class:`EMAConfig`'s."""
    cls = resolve_target(config.target, f"{key_path}.target")
    try:
        return cls(model, decay=config.decay, update_interval=config.update_interval, device=config.device)
    except TypeError as e:
        raise ConfigError(f"'{key_path}.target' {config.target} does not take (model, decay, update_interval, "
                          f"device): {e}") from e
