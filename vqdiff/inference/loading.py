"""Building a VQ-Diffusion model from a config and loading a checkpoint into it, for inference.

The official ``inference_VQ_Diffusion.py`` loads ``ckpt['model']`` into the whole model with
``strict=False`` and then ``ckpt['ema']`` into ``model.get_ema_model()`` (the ``DiffusionTransformer``), so
the EMA weights win, and prints nothing about keys that did not match. Here the same order is kept, the
keys that matched neither entry are gathered into ONE :class:`LoadReport` (grouped by prefix, with
counts and hints such as the ``learnable_cf`` flag a checkpoint needs), and files are read with
``torch.load(weights_only=True)`` unless the caller opts in to full unpickling.

Accepted checkpoint files: the official training checkpoint (``{'model', 'ema', 'last_epoch', ...}``),
vqdiff's converted checkpoint (same keys, optimizer state dropped), a ``.safetensors`` file of the model
state dict (see :mod:`vqdiff.inference.conversion`), or a plain state dict.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from vqdiff.utils.config import instantiate_from_config, load_yaml_config

__all__ = [
    "UNSAFE_PICKLE_ENV",
    "LoadReport",
    "choose_device",
    "read_checkpoint_file",
    "split_checkpoint",
    "prepare_config",
    "set_learnable_cf",
    "parameter_counts",
    "build_model",
    "load_model_weights",
    "freeze_for_inference",
]

logger = logging.getLogger(__name__)

UNSAFE_PICKLE_ENV = "VQDIFF_ALLOW_UNSAFE_PICKLE"

_TRANSFORMER_CONFIG_PATH = ("model", "params", "diffusion_config", "params", "transformer_config", "params")


# --------------------------------------------------------------------------------------------------
# devices and files
# --------------------------------------------------------------------------------------------------
def choose_device(device: Optional[str | torch.device] = None) -> torch.device:
    """``device`` when given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def read_checkpoint_file(path: str | Path, allow_unsafe_pickle: bool = False) -> Mapping[str, Any]:
    """Read a checkpoint on the CPU without running pickled code (unless ``allow_unsafe_pickle``).

    ``.safetensors`` files are read with safetensors and returned as ``{'model': state_dict}`` plus the
    file's metadata under ``'metadata'``.

    Raises:
        FileNotFoundError: the file does not exist (the message names it and the working directory).
        RuntimeError: the file needs full unpickling and the caller did not opt in (the message names
            the ``allow_unsafe_pickle`` flag, the CLI's ``--allow-unsafe-pickle`` and the environment
            variable ``VQDIFF_ALLOW_UNSAFE_PICKLE=<this file>``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint file not found: '{path}' (working directory '{Path.cwd()}', resolved to "
            f"'{path.resolve()}')"
        )
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        sd: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            for k in f.keys():
                sd[k] = f.get_tensor(k)
        return {"model": sd, "metadata": meta}
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - classified below: unsafe content vs. a damaged file
        from vqdiff.utils.safe_load import env_allows_unsafe_pickle, needs_unsafe_unpickling

        text = str(e)
        if not needs_unsafe_unpickling(e):
            raise ValueError(
                f"'{path}' is truncated or corrupt, or not a PyTorch checkpoint: it cannot be read "
                f"({type(e).__name__}: {text.splitlines()[0] if text else ''})"
            ) from e
        allowed = allow_unsafe_pickle or env_allows_unsafe_pickle(path)
        if not allowed:
            first = str(e).splitlines()[0] if str(e) else ""
            raise RuntimeError(
                f"'{path}' cannot be read with torch.load(weights_only=True): besides tensors it holds "
                f"pickled Python objects ({type(e).__name__}: {first}). Unpickling them can run arbitrary "
                f"code. If you trust the file, pass allow_unsafe_pickle=True (CLI: --allow-unsafe-pickle, or "
                f"set {UNSAFE_PICKLE_ENV}={path}), or convert it once to a safe file with "
                f"scripts/convert_official_checkpoint.py --allow-unsafe-pickle"
            ) from e
        logger.warning("reading '%s' with full unpickling (allow_unsafe_pickle): trust the file", path)
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"'{path}': expected a dict checkpoint, got {type(ckpt).__name__}")
    return ckpt


def split_checkpoint(ckpt: Mapping[str, Any], source: str = "<checkpoint>") -> tuple[dict, Optional[dict], int]:
    """``(model_state, ema_state or None, epoch)`` of a checkpoint in any accepted form.

    The epoch is ``last_epoch`` or ``epoch`` (official), else 0.
    """
    if "model" in ckpt and isinstance(ckpt["model"], Mapping):
        model_sd = dict(ckpt["model"])
    elif "state_dict" in ckpt and isinstance(ckpt["state_dict"], Mapping):
        model_sd = dict(ckpt["state_dict"])
    elif ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        model_sd = dict(ckpt)
    else:
        raise ValueError(
            f"{source}: no model weights found; expected a 'model' entry (official training checkpoint), "
            f"a 'state_dict' entry or a plain state dict; keys present: {', '.join(map(str, list(ckpt)[:10]))}"
        )
    ema = ckpt.get("ema")
    ema_sd = dict(ema) if isinstance(ema, Mapping) and len(ema) else None
    epoch = ckpt.get("last_epoch", ckpt.get("epoch", 0))
    try:
        epoch = int(epoch)
    except (TypeError, ValueError):
        epoch = 0
    return model_sd, ema_sd, epoch


# --------------------------------------------------------------------------------------------------
# configs and models
# --------------------------------------------------------------------------------------------------
def prepare_config(config: str | Path | Mapping, imagenet_cf: bool = False) -> dict:
    """Load (or deep-copy) a config; ``imagenet_cf`` sets the class network's ``class_number`` to 1001.

    With 1001 classes the network has a learned row for the "no class" label 1000 used by
    classifier-free guidance (the official ``imagenet_cf`` switch); the null label stays 1000.
    """
    cfg = load_yaml_config(config) if isinstance(config, (str, Path)) else copy.deepcopy(dict(config))
    if "model" not in cfg:
        raise ValueError(f"config {config if isinstance(config, (str, Path)) else '<mapping>'} has no 'model' section")
    if imagenet_cf:
        node: Any = cfg
        for i, key in enumerate(_TRANSFORMER_CONFIG_PATH):
            if not isinstance(node, Mapping) or key not in node:
                raise ValueError(
                    "imagenet_cf=True needs a class-conditional config with "
                    f"'{'.'.join(_TRANSFORMER_CONFIG_PATH)}.class_number'; "
                    f"'{'.'.join(_TRANSFORMER_CONFIG_PATH[: i + 1])}' is missing"
                )
            node = node[key]
        if "class_number" not in node:
            raise ValueError(
                "imagenet_cf=True but the network config has no 'class_number' (it is not a "
                "class-conditional model)"
            )
        node["class_number"] = 1001
    return cfg


def build_model(config: Mapping) -> nn.Module:
    """``instantiate_from_config(config['model'])`` with errors naming the ``model.…`` key path."""
    return instantiate_from_config(config["model"], key_path="model")


# --------------------------------------------------------------------------------------------------
# loading and the report
# --------------------------------------------------------------------------------------------------
def _group(keys: list[str], depth: int = 3) -> "OrderedDict[str, int]":
    groups: "OrderedDict[str, int]" = OrderedDict()
    for k in keys:
        parts = k.split(".")
        prefix = ".".join(parts[:depth]) + (".*" if len(parts) > depth else "")
        groups[prefix] = groups.get(prefix, 0) + 1
    return groups


@dataclass
class LoadReport:
    """What did not match when a checkpoint was loaded (empty lists: everything matched)."""

    source: str = "<checkpoint>"
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    used_ema: bool = False
    epoch: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def __str__(self) -> str:
        head = f"loaded '{self.source}' (epoch {self.epoch}, {'EMA weights' if self.used_ema else 'no EMA entry'})"
        if self.ok and not self.hints:
            return head + ": all keys matched"
        lines = [head + ":"]
        for title, keys in (("missing (kept their initial values)", self.missing),
                            ("unexpected (ignored)", self.unexpected)):
            if keys:
                lines.append(f"  {len(keys)} {title}:")
                lines += [f"    {p}  [{n}]" for p, n in _group(keys).items()]
        if self.shape_mismatch:
            lines.append(f"  {len(self.shape_mismatch)} with a different shape (not loaded):")
            lines += [f"    {s}" for s in self.shape_mismatch[:10]]
            if len(self.shape_mismatch) > 10:
                lines.append(f"    ... and {len(self.shape_mismatch) - 10} more (LoadReport.shape_mismatch)")
        lines += [f"  hint: {h}" for h in self.hints]
        return "\n".join(lines)


def _load_partial(module: nn.Module, sd: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """Load the keys that exist with the same shape; return (missing, unexpected, shape mismatches)."""
    own = module.state_dict()
    mismatched = {k for k, v in sd.items() if k in own and tuple(v.shape) != tuple(own[k].shape)}
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sd.items() if k in mismatched]
    res = module.load_state_dict({k: v for k, v in sd.items() if k not in mismatched}, strict=False)
    # a key with the wrong shape is reported once, as a mismatch, not also as missing
    return [k for k in res.missing_keys if k not in mismatched], list(res.unexpected_keys), bad


def _learnable_cf_hints(model: nn.Module, model_sd: Mapping, ema_sd: Optional[Mapping]) -> list[str]:
    trans = getattr(model, "transformer", None)
    has_embed_ckpt = "transformer.empty_text_embed" in model_sd or (ema_sd is not None and "empty_text_embed" in ema_sd)
    model_learnable = bool(getattr(trans, "learnable_cf", False))
    if has_embed_ckpt and not model_learnable:
        return [
            "this checkpoint was trained with learnable classifier-free guidance (it has "
            "'transformer.empty_text_embed') but the config builds a model without it: set "
            "'learnable_cf: True' at model.params AND at model.params.diffusion_config.params to use it "
            "(sampling still works without it, guidance then uses the CLIP embedding of '')"
        ]
    if model_learnable and not has_embed_ckpt:
        return [
            "the config has 'learnable_cf: True' but the checkpoint has no 'empty_text_embed' (it is not "
            "a learnable-cf checkpoint): set 'learnable_cf: False' at model.params and "
            "model.params.diffusion_config.params, or guidance will use an untrained null embedding"
        ]
    return []


def load_model_weights(
    model: nn.Module,
    model_sd: Mapping[str, torch.Tensor],
    ema_sd: Optional[Mapping[str, torch.Tensor]] = None,
    source: str = "<checkpoint>",
    epoch: int = 0,
) -> LoadReport:
    """Official inference loading: ``model_sd`` into ``model``, then ``ema_sd`` into ``model.get_ema_model()``.

    EMA weights win. A key missing from ``model_sd`` but given by ``ema_sd`` is not reported missing.
    Keys with a different shape are skipped and reported (never a bare size-mismatch traceback).
    """
    report = LoadReport(source=source, epoch=epoch)
    missing, unexpected, bad = _load_partial(model, model_sd)
    report.unexpected += unexpected
    report.shape_mismatch += bad
    if ema_sd is not None:
        ema_model = model.get_ema_model() if hasattr(model, "get_ema_model") else model
        prefix = ""
        for name, mod in model.named_modules():
            if mod is ema_model:
                prefix = name + "." if name else ""
                break
        e_missing, e_unexpected, e_bad = _load_partial(ema_model, ema_sd)
        covered = {prefix + k for k in ema_sd}
        missing = [k for k in missing if k not in covered]
        # a key the EMA entry lacks is missing only when the 'model' entry did not give it either
        missing += [prefix + k for k in e_missing if prefix + k not in model_sd]
        report.unexpected += ["ema:" + k for k in e_unexpected]
        report.shape_mismatch += ["ema:" + s for s in e_bad]
        report.used_ema = True
    report.missing = sorted(set(missing))
    report.hints = _learnable_cf_hints(model, model_sd, ema_sd)
    return report


def freeze_for_inference(model: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` everywhere (the official inference state)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def set_learnable_cf(config: dict, learnable_cf: bool) -> dict:
    """Set ``learnable_cf`` at ``model.params`` and ``model.params.diffusion_config.params`` (the two
    places the official ``VQ_Diffusion(learnable_cf=…)`` writes); a model without a diffusion config is
    refused with the missing key named."""
    params = config["model"].setdefault("params", {})
    diffusion = params.get("diffusion_config")
    if not isinstance(diffusion, Mapping):
        raise ValueError("learnable_cf needs a config with 'model.params.diffusion_config'")
    params["learnable_cf"] = learnable_cf
    diffusion.setdefault("params", {})["learnable_cf"] = learnable_cf
    return config


def parameter_counts(model: nn.Module) -> dict[str, dict[str, int]]:
    """Parameter counts per top-level part and ``'overall'``: ``{'trainable', 'non_trainable', 'total'}``
    (the official ``get_model()['parameter']``, as numbers)."""
    def count(module: nn.Module) -> dict[str, int]:
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        total = sum(p.numel() for p in module.parameters())
        return {"trainable": trainable, "non_trainable": total - trainable, "total": total}

    out = {name: count(child) for name, child in model.named_children()}
    out["overall"] = count(model)
    return out
