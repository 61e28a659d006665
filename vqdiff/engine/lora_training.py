"""The LoRA side of a training run (``solver.lora``): base weights, adapters, the EMA of the trained tensors,
and what a checkpoint holds.

Order (peft renames a wrapped weight, ``x.weight`` -> ``x.base_layer.weight``): the base checkpoint
(``--load_path``, or on ``--auto_resume`` the one ``last.pth`` records) is loaded into the plain model the way
inference loads it (``model``, then ``ema`` into ``get_ema_model()``: the EMA weights win, so the adapter is
trained on the weights it will be used with), its SHA-256 is taken, and only then are the adapters injected.

A LoRA run's checkpoint keeps the official layout with the trained tensors only: ``model`` = the adapter and
train_also tensors (DALLE names), ``ema`` = their EMA (DiffusionTransformer names), plus ``lora`` = the base
file's path, name and SHA-256 and the ``solver.lora`` section; optimizer, scheduler, RNG and data position as in
a full run, so ``--auto_resume`` continues exactly. Each save also writes the adapter folder
(:func:`vqdiff.adapters.lora.save_adapter`, EMA weights when there is an EMA) beside the ``.pth`` file:
``last.pth`` -> ``last_lora/``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from vqdiff.adapters.config import LoraConfig
from vqdiff.adapters.lora import LoraSetup, add_lora, file_sha256, save_adapter
from vqdiff.engine.checkpoint import CheckpointError, load_checkpoint
from vqdiff.engine.ema import EMA
from vqdiff.engine.state_match import require_same_shapes
from vqdiff.utils.config import ConfigError
from vqdiff.utils.config_sections import EMAConfig

__all__ = ["LoraRun", "adapter_folder_for"]


def adapter_folder_for(checkpoint_file: str | os.PathLike) -> Path:
    """``.../last.pth`` -> ``.../last_lora`` (the adapter folder written with that checkpoint)."""
    path = Path(checkpoint_file)
    return path.with_name(path.stem + "_lora")


def _load_base(model: nn.Module, path: Path, allow_unsafe: bool, logger: Any) -> None:
    """``ckpt['model']`` into ``model``, then ``ckpt['ema']`` into ``model.get_ema_model()`` (EMA wins)."""
    ckpt = load_checkpoint(path, map_location="cpu", allow_unsafe=allow_unsafe)
    if not isinstance(ckpt, Mapping) or "model" not in ckpt:
        raise CheckpointError(f"base checkpoint {path} has no 'model' entry (keys: {list(ckpt)[:8]})")
    if isinstance(ckpt.get("lora"), Mapping):
        raise CheckpointError(f"{path} is a LoRA run's checkpoint (trained tensors only), not a base model: "
                              f"give the base checkpoint it records ({ckpt['lora'].get('base_path')}), or merge "
                              f"its adapter first (scripts/merge_lora.py)")
    require_same_shapes(model, ckpt["model"], path)
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    ema_model = model.get_ema_model()
    prefix = next((n + "." for n, m in model.named_modules() if m is ema_model and n), "")
    if isinstance(ckpt.get("ema"), Mapping) and ckpt["ema"]:
        require_same_shapes(ema_model, ckpt["ema"], path, what="EMA model")
        e_missing, e_unexpected = ema_model.load_state_dict(ckpt["ema"], strict=False)
        unexpected = list(unexpected) + [f"ema:{k}" for k in e_unexpected]
        missing = [k for k in missing if not (k.startswith(prefix) and k[len(prefix):] in ckpt["ema"])]
    if unexpected:
        raise CheckpointError(f"base checkpoint {path} does not match the model: unexpected {list(unexpected)[:5]}")
    if missing:
        logger.warning(f"base checkpoint {path} has no {len(missing)} tensor(s) of the model, kept as initialised: "
                       f"{', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))


class LoraRun:
    """Built by the solver when ``solver.lora`` is set, before its EMA, optimizer and DDP wrapper."""

    def __init__(self, cfg: LoraConfig, model: nn.Module, base_path: Path, base_sha256: str, setup: LoraSetup):
        self.cfg = cfg
        self.model = model
        self.base_path = base_path
        self.base_sha256 = base_sha256
        self.setup = setup
        prefix = next(n for n, m in model.named_modules() if m is model.get_ema_model())
        self.ema_prefix = prefix + "." if prefix else ""
        # trained tensors by their EMA-model names (adapters and train_also), in model order
        self.trained = [n for n, p in model.get_ema_model().named_parameters() if p.requires_grad]

    @classmethod
    def prepare(cls, cfg: LoraConfig, model: nn.Module, args: Any, ckpt_dir: Path, logger: Any) -> "LoraRun":
        """Load the base (``args.load_path``, or the one ``ckpt_dir/last.pth`` records when auto-resuming),
        check it against that record, inject the adapters."""
        allow_unsafe = bool(getattr(args, "allow_unsafe_load", False))
        record = None
        last = Path(ckpt_dir) / "last.pth"
        if getattr(args, "auto_resume", False) and last.is_file():
            record = load_checkpoint(last, map_location="cpu", allow_unsafe=allow_unsafe).get("lora")
            if not isinstance(record, Mapping):
                raise CheckpointError(f"{last} is not a LoRA run's checkpoint (no 'lora' entry) but the config has "
                                      f"solver.lora: resume it without the lora section, or start a new run")
        base = getattr(args, "load_path", None) or (record or {}).get("base_path")
        if base is None:
            raise ConfigError("solver.lora fine-tunes a trained model: give its checkpoint with --load_path "
                              "<base.pth>")
        base = Path(base)
        sha = file_sha256(base) if base.is_file() else None
        if record is not None and sha != record.get("base_sha256"):
            raise CheckpointError(f"{last} was trained on base {record.get('base_path')} (SHA-256 "
                                  f"{str(record.get('base_sha256'))[:16]}...), but {base} differs: the resume "
                                  f"would not continue that run")
        _load_base(model, base, allow_unsafe, logger)
        setup = add_lora(model, cfg)
        run = cls(cfg, model, base.resolve(), sha, setup)
        total = sum(p.numel() for p in model.parameters())
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info(f"LoRA rank {cfg.rank} alpha {cfg.alpha:g} on {len(setup.targets)} layers"
                    + (f", training also {', '.join(setup.train_also)}" if setup.train_also else "")
                    + f": {trained:,} of {total:,} parameters train ({100 * trained / max(total, 1):.3f} %); "
                    f"base {base} (SHA-256 {sha[:16]}...)")
        return run

    def build_ema(self, cfg: EMAConfig) -> EMA:
        """The run's EMA: the solver's rule over the trained tensors only (keyed by their DiffusionTransformer
        names), no copy of the frozen base weights."""
        if cfg.target != EMAConfig.target:
            raise ConfigError(f"'solver.ema.target' {cfg.target}: a LoRA run keeps its own EMA of the trained "
                              f"tensors; remove the target")
        trained = set(self.trained)
        return EMA(self.model.get_ema_model(), decay=cfg.decay, update_interval=cfg.update_interval,
                   device=cfg.device, params=lambda name, _: name in trained)

    def record(self) -> dict:
        return {"base_path": str(self.base_path), "base_checkpoint": self.base_path.name,
                "base_sha256": self.base_sha256, "config": self.cfg.as_dict()}

    def trained_state(self) -> dict:
        """The checkpoint's ``model`` entry: the trained tensors under their names in the whole model."""
        own = dict(self.model.named_parameters())
        return {self.ema_prefix + n: own[self.ema_prefix + n].detach().clone() for n in self.trained}

    def load_trained_state(self, ckpt: Mapping, path: str | os.PathLike, ema: Optional[EMA]) -> None:
        """Resume: the checkpoint's trained tensors (and their EMA) must be exactly this run's."""
        state = ckpt["model"]
        want = {self.ema_prefix + n for n in self.trained}
        if not isinstance(ckpt.get("lora"), Mapping) or set(state) != want:
            raise CheckpointError(f"checkpoint {path} does not hold this LoRA run's trained tensors: missing "
                                  f"{sorted(want - set(state))[:5]}, unexpected {sorted(set(state) - want)[:5]}")
        require_same_shapes(self.model, state, path)
        own = dict(self.model.named_parameters())
        with torch.no_grad():
            for k in want:
                own[k].copy_(state[k])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"], strict=True)

    def save_adapter(self, checkpoint_file: Path, ema: Optional[EMA], last_epoch: int,
                     last_iter: int) -> Path:
        """The adapter folder beside ``checkpoint_file``, from the EMA weights when there is an EMA."""
        record = {**self.record(), "weights": "ema" if ema is not None else "raw", "last_epoch": last_epoch,
                  "last_iter": last_iter}
        record.pop("config")
        with ema.swapped() if ema is not None else contextlib.nullcontext():
            return save_adapter(adapter_folder_for(checkpoint_file), self.model, self.setup, record)
