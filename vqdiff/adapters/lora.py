"""LoRA adapters on a VQ-Diffusion model through peft: which layers, injecting, the adapter folder, applying one.

Used by training (``vqdiff.engine.lora_training``) and inference (``VQ_Diffusion(lora=...)``,
``scripts/merge_lora.py``) alike; the folder format is read and checked in :mod:`vqdiff.adapters.folder`.

The adapters go into the denoising network (``model.get_ema_model().transformer``, the ``Text2ImageTransformer``
of a DALLE) with peft's ``inject_adapter_in_model``; the layers are peft's (``lora.Linear``: ``x.weight`` becomes
``x.base_layer.weight`` beside ``x.lora_A.default.weight`` / ``x.lora_B.default.weight``), so a base checkpoint
is loaded BEFORE :func:`add_lora` and official-format checkpoints keep loading into models without adapters.
``train_also`` tensors of the ``DiffusionTransformer`` (the EMA model) train in full beside them.

The adapter folder (written at every save of a LoRA run, read by ``VQ_Diffusion(lora=...)``)::

    adapter_model.safetensors   peft's get_peft_model_state_dict of the network (peft's own key names)
    adapter_config.json         peft's LoraConfig (target_modules: the layer names, or peft's shortest suffixes)
    train_also.safetensors      the train_also tensors (DiffusionTransformer names), when there are any
    vqdiff_adapter.json         the base checkpoint's file name and SHA-256, the weights saved (ema/raw),
                                the iteration, the solver.lora section

Applying one with scale s: every LoRA layer's scaling becomes ``s * alpha / rank`` (peft's ``set_scale``) and a
train_also tensor becomes ``base + s (tuned - base)`` (``tuned`` itself at s = 1), so s = 0 is the base model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import torch
from torch import nn

from vqdiff.adapters.config import LoraConfig
from vqdiff.adapters.folder import CONFIG_FILE, linear_layer_names, RECORD_FILE, TRAIN_ALSO_FILE, WEIGHTS_FILE, LoraError, \
    read_adapter_folder, read_json
from vqdiff.utils.config import ConfigError

__all__ = ["ADAPTER_NAME", "RECORD_FILE", "LoraError", "lora_network", "linear_layer_names", "resolve_targets",
           "resolve_train_also", "add_lora", "file_sha256", "save_adapter", "read_adapter_record", "check_base",
           "apply_adapter", "set_lora_scale", "merge_lora", "is_adapter_folder"]

ADAPTER_NAME = "default"
NETWORK = "transformer"  # the network's name inside the DiffusionTransformer (the EMA model)


def lora_network(model: nn.Module) -> nn.Module:
    """The denoising network of ``model`` (``model.get_ema_model().transformer``), where the adapters go."""
    ema_model = model.get_ema_model() if hasattr(model, "get_ema_model") else model
    network = getattr(ema_model, NETWORK, None)
    if not isinstance(network, nn.Module):
        raise ConfigError(f"LoRA needs a model whose get_ema_model() has a '{NETWORK}' network; "
                          f"{type(model).__name__} has none")
    return network


def _short_names(names: list[str]) -> list[str]:
    """The names without their ``blocks.<i>.`` prefix, each once (what a user would write)."""
    out: list[str] = []
    for n in names:
        parts = n.split(".")
        short = ".".join(parts[2:]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else n
        if short not in out:
            out.append(short)
    return out


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern)


def resolve_targets(network: nn.Module, targets: tuple, key_path: str = "solver.lora.target_modules") -> list[str]:
    """The full names of the linear layers ``targets`` name (peft's suffix rule); a name that matches no
    linear layer is a :class:`ConfigError` listing the network's linear-layer names."""
    linear = linear_layer_names(network)
    chosen: list[str] = []
    for pattern in targets:
        hits = [n for n in linear if _matches(n, pattern)]
        if not hits:
            raise ConfigError(f"'{key_path}': '{pattern}' names no linear layer of the network; its linear layers "
                              f"are (per block, or by full name): {', '.join(_short_names(linear))}")
        chosen += [n for n in hits if n not in chosen]
    return [n for n in linear if n in chosen]  # network order


def resolve_train_also(ema_model: nn.Module, names: tuple, lora_targets: list[str],
                       key_path: str = "solver.lora.train_also") -> list[str]:
    """Parameter names (of the DiffusionTransformer) that ``names`` select, by parameter or module name."""
    params = [n for n, _ in ema_model.named_parameters()]
    wrapped = [f"{NETWORK}.{t}." for t in lora_targets]
    chosen: list[str] = []
    for pattern in names:
        hits = [p for p in params if _matches(p, pattern) or _matches(p.rsplit(".", 1)[0], pattern)]
        if not hits:
            holders = [n for n, m in ema_model.named_modules() if n and next(m.parameters(recurse=False), None) is not None]
            modules = _short_names(holders)
            raise ConfigError(f"'{key_path}': '{pattern}' names no parameter of the DiffusionTransformer; "
                              f"parameters are held by: {', '.join(modules)}")
        clash = [p for p in hits if any(p.startswith(w) for w in wrapped)]
        if clash:
            raise ConfigError(f"'{key_path}': '{pattern}' selects {clash[0]}, a layer that already gets a LoRA "
                              f"adapter (solver.lora.target_modules); train it one way")
        chosen += [p for p in hits if p not in chosen]
    return chosen


def _peft_config(cfg: LoraConfig, targets: list[str]):
    import peft

    return peft.LoraConfig(r=cfg.rank, lora_alpha=float(cfg.alpha), lora_dropout=float(cfg.dropout),
                           target_modules=list(targets), bias="none")


@dataclass(frozen=True)
class LoraSetup:
    """What :func:`add_lora` did: the layers wrapped (network names), the train_also parameters (EMA-model
    names), and peft's config."""

    config: LoraConfig
    targets: tuple
    train_also: tuple
    peft_config: object


def add_lora(model: nn.Module, cfg: LoraConfig) -> LoraSetup:
    """Freeze every parameter of ``model``, inject peft LoRA layers into its network, unfreeze train_also.

    Call it after the base weights are loaded (peft renames the wrapped weights)."""
    from peft import inject_adapter_in_model

    network = lora_network(model)
    ema_model = model.get_ema_model()
    targets = resolve_targets(network, cfg.target_modules)
    train_also = resolve_train_also(ema_model, cfg.train_also, targets)
    for p in model.parameters():
        p.requires_grad_(False)
    peft_cfg = _peft_config(cfg, targets)
    inject_adapter_in_model(peft_cfg, network, adapter_name=ADAPTER_NAME)
    params = dict(ema_model.named_parameters())
    for name in train_also:
        params[name].requires_grad_(True)
    return LoraSetup(config=cfg, targets=tuple(targets), train_also=tuple(train_also), peft_config=peft_cfg)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def is_adapter_folder(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file() and (Path(path) / WEIGHTS_FILE).is_file()


def save_adapter(folder: str | os.PathLike, model: nn.Module, setup: LoraSetup, record: Mapping,
                 train_also_state: Optional[Mapping[str, torch.Tensor]] = None) -> Path:
    """Write the adapter folder of ``model``'s current LoRA weights (replacing ``folder`` as a whole).

    ``train_also_state``: the train_also tensors to store (default: the model's own); ``record``: the
    base checkpoint's ``base_checkpoint`` name and ``base_sha256`` and anything else to keep."""
    import peft
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    network = lora_network(model)
    state = get_peft_model_state_dict(network, adapter_name=ADAPTER_NAME)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp / WEIGHTS_FILE),
              metadata={"format": "pt"})
    setup.peft_config.save_pretrained(str(tmp))
    if setup.train_also:
        if train_also_state is None:
            own = dict(model.get_ema_model().named_parameters())
            train_also_state = {n: own[n] for n in setup.train_also}
        save_file({n: train_also_state[n].detach().cpu().contiguous() for n in setup.train_also},
                  str(tmp / TRAIN_ALSO_FILE))
    info = {**dict(record), "lora": setup.config.as_dict(), "network": f"get_ema_model().{NETWORK}",
            "train_also": list(setup.train_also), "peft_version": peft.__version__}
    (tmp / RECORD_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def read_adapter_record(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    if not is_adapter_folder(folder):
        raise FileNotFoundError(f"'{folder}' is not a LoRA adapter folder (it needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    return read_json(folder / RECORD_FILE, required=False)


def check_base(record: Mapping, base_path: str | os.PathLike, folder: str | os.PathLike,
               allow_mismatch: bool = False) -> None:
    """Compare the base file's SHA-256 with the adapter's record: a mismatch is a :class:`LoraError` unless
    ``allow_mismatch`` (then a warning); a record without a SHA-256 (an adapter from elsewhere) warns."""
    want = record.get("base_sha256")
    if not want:
        warnings.warn(f"adapter '{folder}' records no base checkpoint SHA-256: cannot check that '{base_path}' "
                      f"is its base", stacklevel=3)
        return
    got = file_sha256(base_path)
    if got == want:
        return
    msg = (f"adapter '{folder}' was trained on '{record.get('base_checkpoint')}' (SHA-256 {str(want)[:16]}...), "
           f"but the base given is '{base_path}' (SHA-256 {got[:16]}...): the samples may be wrong")
    if not allow_mismatch:
        raise LoraError(msg + "; refused (lora_allow_base_mismatch=True / --lora-allow-base-mismatch to use it anyway)")
    warnings.warn(msg, stacklevel=3)


def set_lora_scale(network: nn.Module, scale: float) -> int:
    """peft's ``set_scale``: scaling = ``scale * alpha / rank`` on every LoRA layer; returns how many."""
    from peft.tuners.lora import LoraLayer

    count = 0
    for module in network.modules():
        if isinstance(module, LoraLayer):
            module.set_scale(ADAPTER_NAME, float(scale))
            count += 1
    return count


def apply_adapter(model: nn.Module, folder: str | os.PathLike, scale: float = 1.0,
                  base_path: Optional[str | os.PathLike] = None, allow_base_mismatch: bool = False) -> dict:
    """Add the adapter in ``folder`` to ``model`` (base weights loaded) at ``scale``; returns its record.

    All or nothing: every file of the folder is read and checked against the model first
    (:func:`vqdiff.adapters.folder.read_adapter_folder`), and the base's SHA-256 compared; only then are
    the adapters injected and the train_also tensors copied, so a refused folder leaves the model as it was.

    Raises:
        LoraError: a file is missing, unreadable or does not fit the model (the message names the file and
            the problem), or the base's SHA-256 differs from the record (unless ``allow_base_mismatch``).
    """
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    folder = Path(folder)
    network = lora_network(model)
    files = read_adapter_folder(folder, network, model.get_ema_model())
    if base_path is not None:
        check_base(files.record, base_path, folder, allow_base_mismatch)
    # ---- from here on the model changes; everything below was checked above
    inject_adapter_in_model(files.peft_config, network, adapter_name=ADAPTER_NAME)
    result = set_peft_model_state_dict(network, files.weights, adapter_name=ADAPTER_NAME)
    wanted = {k for k in network.state_dict() if ".lora_" in k}
    loaded = {k for k in wanted if k not in set(result.missing_keys)}
    if result.unexpected_keys or loaded != wanted:  # a peft behaviour the checks above do not know
        raise LoraError(f"adapter '{folder}' does not fit the model: unexpected {list(result.unexpected_keys)[:5]}, "
                        f"missing {sorted(wanted - loaded)[:5]}")
    if files.train_also:
        own = dict(model.get_ema_model().named_parameters())
        with torch.no_grad():
            for n, tuned in files.train_also.items():
                value = tuned.to(own[n].device, own[n].dtype)
                own[n].copy_(value if scale == 1 else own[n] + float(scale) * (value - own[n]))
    set_lora_scale(network, scale)
    return files.record


def merge_lora(model: nn.Module) -> int:
    """peft's ``merge()`` on every LoRA layer of the network, each then replaced by its base ``nn.Linear``
    (official key names again); returns the number of layers merged."""
    from peft.tuners.lora import LoraLayer

    network = lora_network(model)
    wrapped = [(n, m) for n, m in network.named_modules() if isinstance(m, LoraLayer)]
    for name, module in wrapped:
        module.merge(adapter_names=[ADAPTER_NAME])
        parent_name, _, attr = name.rpartition(".")
        parent = network.get_submodule(parent_name) if parent_name else network
        setattr(parent, attr, module.get_base_layer())
    if hasattr(network, "peft_config"):
        del network.peft_config
    return len(wrapped)
