"""Exponential moving average of the trained network (official ``ckpt['ema']`` = the DiffusionTransformer).

Every ``update_interval`` iterations (when ``(it + 1) % update_interval == 0``), for every floating-point
state-dict entry (parameters **and** float buffers): ``ema <- decay * ema + (1 - decay) * current``;
integer buffers are copied. ``swapped()`` puts the EMA weights into the live model for validation and
sampling and restores the trained weights afterwards. With a parameter filter (``params``) only the chosen
parameters are averaged and kept (a LoRA run: its adapters and ``train_also`` tensors, no copy of the frozen
base). :func:`build_ema` builds the ``solver.ema`` target (this class by default) from its typed config.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable, Iterator, Mapping, Optional

import torch
from torch import nn

from vqdiff.engine.checkpoint import CheckpointError
from vqdiff.utils.config import ConfigError, resolve_target
from vqdiff.utils.config_sections import EMAConfig

__all__ = ["EMA", "ParamFilter", "build_ema"]

ParamFilter = Callable[[str, nn.Parameter], bool]
"""``keep(name, parameter) -> bool``: which parameters of the model an EMA averages."""


class EMA:
    """The EMA of ``model``'s state (``params`` None: a full copy, ``self.ema_model``) or of the parameters
    ``params(name, parameter)`` keeps (``self.names``; its state dict holds only those, by their names in
    ``model``)."""

    def __init__(self, model: nn.Module, decay: float = EMAConfig.decay,
                 update_interval: int = EMAConfig.update_interval, device: torch.device | str = EMAConfig.device,
                 params: Optional[ParamFilter] = None):
        EMAConfig(decay=float(decay), update_interval=int(update_interval))  # the defaults' and ranges' one home
        self.model = model  # the live module (e.g. DALLE.get_ema_model())
        self.decay = float(decay)
        self.update_interval = int(update_interval)
        self.device = torch.device(device)
        if params is None:
            self.names: Optional[list[str]] = None
            self.ema_model: Optional[nn.Module] = copy.deepcopy(model).to(self.device).eval()
            for p in self.ema_model.parameters():
                p.requires_grad_(False)
            self.shadow = None
        else:
            self.names = [n for n, p in model.named_parameters() if params(n, p)]
            self.ema_model = None
            own = dict(model.named_parameters())
            self.shadow = {n: own[n].detach().clone().to(self.device) for n in self.names}

    def _averaged(self) -> Mapping[str, torch.Tensor]:
        """The averaged tensors by name (references: updated in place)."""
        return self.ema_model.state_dict() if self.shadow is None else self.shadow

    def _live(self) -> Mapping[str, torch.Tensor]:
        """The live model's tensors these average, by the same names."""
        if self.names is None:
            return self.model.state_dict()
        own = dict(self.model.named_parameters())
        return {n: own[n] for n in self.names}

    @torch.no_grad()
    def update(self, iteration: int) -> bool:
        """Average at iterations with ``(iteration + 1) % update_interval == 0``; returns whether it did."""
        if (int(iteration) + 1) % self.update_interval != 0:
            return False
        cur = self._live()
        for key, ema_v in self._averaged().items():
            v = cur[key].detach().to(ema_v.device)
            if ema_v.is_floating_point():
                ema_v.mul_(self.decay).add_(v.to(ema_v.dtype), alpha=1.0 - self.decay)
            else:
                ema_v.copy_(v)
        return True

    def state_dict(self) -> dict:
        return self.ema_model.state_dict() if self.shadow is None else dict(self.shadow)

    def load_state_dict(self, state_dict: Mapping, strict: bool = True):
        if self.shadow is None:
            return self.ema_model.load_state_dict(state_dict, strict=strict)
        missing = [n for n in self.names if n not in state_dict]
        unexpected = [k for k in state_dict if k not in self.shadow]
        if strict and (missing or unexpected):
            raise CheckpointError(f"EMA state does not match the trained tensors: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}")
        with torch.no_grad():
            for n in self.names:
                if n in state_dict:
                    self.shadow[n].copy_(state_dict[n])
        return torch.nn.modules.module._IncompatibleKeys(missing, unexpected)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[nn.Module]:
        """Within the block the live model holds the EMA weights (official modify_to_inference/modify_to_train)."""
        live = self._live()
        backup = {k: v.detach().clone() for k, v in live.items()}
        averaged = self._averaged()
        try:
            with torch.no_grad():
                for k, v in live.items():
                    v.copy_(averaged[k].to(v.device, v.dtype))
            yield self.model
        finally:
            with torch.no_grad():
                for k, v in live.items():
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
