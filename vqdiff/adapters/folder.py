"""Reading and checking a LoRA adapter folder completely before anything touches the model.

:func:`read_adapter_folder` reads every file of the folder (``vqdiff_adapter.json``, ``adapter_config.json``,
``adapter_model.safetensors``, ``train_also.safetensors``) and checks each tensor against the network it is
meant for: the layers its config targets exist and are linear, every ``lora_A`` / ``lora_B`` pair is there
with the shapes ``(r, in_features)`` / ``(out_features, r)``, no other tensor is present, values are finite,
and each ``train_also`` tensor names a parameter of the same shape. Any problem is a :class:`LoraError`
naming the file and what is wrong (never a raw ``SafetensorError``, ``KeyError`` or ``JSONDecodeError``), and
the model is untouched: :func:`vqdiff.adapters.lora.apply_adapter` injects only a folder that passed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["AdapterFiles", "LoraError", "read_adapter_folder", "read_json", "WEIGHTS_FILE", "CONFIG_FILE",
           "TRAIN_ALSO_FILE", "RECORD_FILE"]

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
TRAIN_ALSO_FILE = "train_also.safetensors"
RECORD_FILE = "vqdiff_adapter.json"


class LoraError(RuntimeError):
    """An adapter folder that cannot be used with this model or base checkpoint; the message names it."""


@dataclass(frozen=True)
class AdapterFiles:
    """A checked adapter folder: its record, peft config, LoRA tensors (peft's names, no adapter name) and
    train_also tensors (DiffusionTransformer names)."""

    folder: Path
    record: dict
    peft_config: Any
    weights: dict
    train_also: dict


def read_json(path: Path, required: bool = True) -> dict:
    """The JSON object in ``path`` ({} when absent and not ``required``); LoraError naming the file."""
    if not path.is_file():
        if required:
            raise LoraError(f"'{path}' is missing")
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LoraError(f"'{path}' is not readable JSON: {err}") from None
    if not isinstance(value, dict):
        raise LoraError(f"'{path}' must hold a JSON object, found {type(value).__name__}")
    return value


def _read_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    if not path.is_file():
        raise LoraError(f"'{path}' is missing")
    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError (and OSError) for broken files
        raise LoraError(f"'{path}' is not a readable safetensors file ({type(err).__name__}: {err})") from None
    for name, value in tensors.items():
        if not value.is_floating_point():
            raise LoraError(f"'{path}': tensor '{name}' has dtype {value.dtype}, expected floating point")
        if not bool(torch.isfinite(value).all()):
            raise LoraError(f"'{path}': tensor '{name}' holds NaN or infinite values")
    return tensors


def _peft_config(folder: Path) -> Any:
    import peft

    path = folder / CONFIG_FILE
    read_json(path)  # a clear message for a missing or broken file before peft reads it
    try:
        cfg = peft.LoraConfig.from_pretrained(str(folder))
    except Exception as err:  # peft raises TypeError/ValueError/KeyError for fields it does not take
        raise LoraError(f"'{path}' is not a peft LoraConfig ({type(err).__name__}: {err})") from None
    if not cfg.target_modules:
        raise LoraError(f"'{path}' names no target_modules")
    return cfg


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (hasattr(module, "get_base_layer")
                                             and isinstance(module.get_base_layer(), nn.Linear))


def linear_layer_names(network: nn.Module) -> list[str]:
    """Dotted names of the network's linear layers (a LoRA-wrapped one by its own name, not its parts)."""
    out = []
    for name, module in network.named_modules():
        if isinstance(module, nn.Linear) and name.endswith(".base_layer"):
            continue
        if name and _is_linear(module) and not any(name.startswith(o + ".") for o in out):
            out.append(name)
    return out


def _targets(network: nn.Module, cfg: Any, path: Path) -> dict[str, nn.Linear]:
    """The linear layers the config targets, by network name (peft's rules: a string is a full-match
    regular expression, a list matches a name or a ``.name`` suffix)."""
    layers = {}
    for name in linear_layer_names(network):
        module = network.get_submodule(name)
        layers[name] = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    if isinstance(cfg.target_modules, str):
        chosen = [n for n in layers if re.fullmatch(cfg.target_modules, n)]
        if not chosen:
            raise LoraError(f"'{path}': target_modules '{cfg.target_modules}' matches no linear layer of the network")
        return {n: layers[n] for n in chosen}
    chosen = []
    for pattern in sorted(cfg.target_modules):
        hits = [n for n in layers if n == pattern or n.endswith("." + pattern)]
        if not hits:
            raise LoraError(f"'{path}': target module '{pattern}' names no linear layer of the network "
                            f"(it has e.g. {', '.join(list(layers)[:6])})")
        chosen += [n for n in hits if n not in chosen]
    return {n: layers[n] for n in layers if n in chosen}


def _check_weights(path: Path, weights: dict, targets: dict[str, nn.Linear], cfg: Any) -> None:
    patterned = bool(getattr(cfg, "rank_pattern", None))
    expected = set()
    for name, layer in targets.items():
        a, b = f"{name}.lora_A.weight", f"{name}.lora_B.weight"
        expected |= {a, b}
        for key in (a, b):
            if key not in weights:
                raise LoraError(f"'{path}': tensor '{key}' is missing (adapter_config.json targets '{name}')")
        rank = int(weights[a].shape[0]) if patterned else int(cfg.r)
        want = {a: (rank, layer.in_features), b: (layer.out_features, rank)}
        for key, shape in want.items():
            if tuple(weights[key].shape) != shape:
                raise LoraError(f"'{path}': tensor '{key}' has shape {tuple(weights[key].shape)}, the model "
                                f"needs {shape} (rank {rank}, layer {layer.in_features} -> {layer.out_features})")
    extra = sorted(set(weights) - expected)
    if extra:
        raise LoraError(f"'{path}': {len(extra)} tensor(s) fit no targeted layer, e.g. {extra[:3]}")


def _check_train_also(folder: Path, record: dict, ema_model: nn.Module) -> dict:
    names = record.get("train_also") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise LoraError(f"'{folder / RECORD_FILE}': 'train_also' must be a list of parameter names, got {names!r}")
    if not names:
        return {}
    path = folder / TRAIN_ALSO_FILE
    tuned = _read_tensors(path)
    own = dict(ema_model.named_parameters())
    for name in names:
        if name not in tuned:
            raise LoraError(f"'{path}': tensor '{name}' is missing ({RECORD_FILE} lists it in train_also)")
        if name not in own:
            raise LoraError(f"'{path}': '{name}' is no parameter of this model's DiffusionTransformer")
        if tuple(own[name].shape) != tuple(tuned[name].shape):
            raise LoraError(f"'{path}': tensor '{name}' has shape {tuple(tuned[name].shape)}, the model's is "
                            f"{tuple(own[name].shape)}")
    return {n: tuned[n] for n in names}


def read_adapter_folder(folder: str | Path, network: nn.Module, ema_model: nn.Module) -> AdapterFiles:
    """Read and check every file of the adapter ``folder`` against ``network`` (where the adapters go) and
    ``ema_model`` (whose parameters train_also names); LoraError naming the file, model untouched."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LoraError(f"LoRA adapter folder '{folder}' does not exist")
    record = read_json(folder / RECORD_FILE, required=False)
    cfg = _peft_config(folder)
    weights = _read_tensors(folder / WEIGHTS_FILE)
    _check_weights(folder / WEIGHTS_FILE, weights, _targets(network, cfg, folder / CONFIG_FILE), cfg)
    train_also = _check_train_also(folder, record, ema_model)
    return AdapterFiles(folder=folder, record=record, peft_config=cfg, weights=weights, train_also=train_also)
