"""Official training checkpoints -> vqdiff checkpoints and safetensors weight files.

An official ``.pth`` holds ``{'model', 'ema', 'last_epoch', 'last_iter', 'clip_grad_norm',
'optimizer_and_scheduler'}``; inference needs only the first four. :func:`convert_official_checkpoint`
keeps exactly those (tensors and ints: readable with ``torch.load(weights_only=True)``), and
:func:`merged_weights` folds the EMA weights into the model state dict (what inference uses), which
:func:`save_safetensors` writes as a flat safetensors file with the epoch in its metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from .loading import read_checkpoint_file, split_checkpoint

__all__ = [
    "EMA_PREFIX",
    "merged_weights",
    "convert_official_checkpoint",
    "save_safetensors",
    "load_safetensors",
    "convert_file",
]

# ``ckpt['ema']`` is the state dict of ``model.transformer`` (the DiffusionTransformer)
EMA_PREFIX = "transformer."


def merged_weights(model_sd: Mapping[str, torch.Tensor], ema_sd: Optional[Mapping[str, torch.Tensor]] = None,
                   ema_prefix: str = EMA_PREFIX) -> dict[str, torch.Tensor]:
    """The weights inference uses: ``model_sd`` with every ``ema_sd`` entry (prefixed) replacing its key."""
    out = dict(model_sd)
    if ema_sd:
        for k, v in ema_sd.items():
            out[ema_prefix + k] = v
    return out


def convert_official_checkpoint(ckpt: Mapping[str, Any], source: str = "<checkpoint>") -> dict:
    """``{'model', 'ema' (when present), 'last_epoch', 'last_iter'}`` of an official checkpoint.

    Optimizer, scheduler and gradient-clipping state (pickled Python objects in old files) are dropped.
    """
    model_sd, ema_sd, epoch = split_checkpoint(ckpt, source)
    out: dict[str, Any] = {"model": model_sd, "last_epoch": epoch}
    if ema_sd is not None:
        out["ema"] = ema_sd
    last_iter = ckpt.get("last_iter")
    if isinstance(last_iter, int):
        out["last_iter"] = last_iter
    return out


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | Path,
                     metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """Write a state dict as safetensors (shared tensors, e.g. the codec's quantizer that appears under
    both ``enc`` and ``dec``, are stored once per key: every tensor is made contiguous and unshared)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    save_file(tensors, str(path), metadata=meta)
    return path


def load_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(state_dict, metadata)`` of a safetensors file."""
    ckpt = read_checkpoint_file(path)
    return dict(ckpt["model"]), dict(ckpt.get("metadata") or {})


def convert_file(src: str | Path, dst: str | Path, safetensors_path: str | Path | None = None,
                 allow_unsafe_pickle: bool = False) -> dict:
    """Convert an official checkpoint file: ``dst`` (torch, weights only) and optionally
    ``safetensors_path`` (merged EMA weights). Returns the converted checkpoint."""
    ckpt = read_checkpoint_file(src, allow_unsafe_pickle=allow_unsafe_pickle)
    out = convert_official_checkpoint(ckpt, str(src))
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, dst)
    if safetensors_path is not None:
        weights = merged_weights(out["model"], out.get("ema"))
        save_safetensors(weights, safetensors_path,
                         {"format": "vqdiff", "source": Path(src).name, "last_epoch": out["last_epoch"],
                          "ema_merged": "ema" in out})
    return out
