"""Reading taming / ITHQ codec checkpoints safely and loading them with strict key checking.

Accepted file forms: the Lightning ``.ckpt`` (``{'state_dict': …, 'optimizer_states': …, …}``), the ITHQ
``{'model': …}`` form, and a plain state dict. Files are read with ``torch.load(weights_only=True)``; a
file that needs arbitrary unpickling is refused unless the caller opts in (``allow_unsafe_pickle=True``
or the environment variable ``VQDIFF_ALLOW_UNSAFE_PICKLE=<this file>``), because unpickling runs code from
the file.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from vqdiff.utils.safe_load import UNSAFE_PICKLE_ENV, env_allows_unsafe_pickle

__all__ = [
    "UNSAFE_PICKLE_ENV",
    "TRAINING_ONLY_PREFIXES",
    "read_checkpoint",
    "extract_state_dict",
    "load_codec_weights",
]

logger = logging.getLogger(__name__)


# Keys a taming checkpoint holds that an inference model never has: the training loss (LPIPS,
# discriminator), and, in a Net2NetTransformer checkpoint, the GPT and condition stage.
TRAINING_ONLY_PREFIXES: tuple[str, ...] = (
    "loss.",
    "first_stage_model.loss.",
    "transformer.",
    "cond_stage_model.",
    "permuter.",
)


def _unsafe_allowed(allow_unsafe_pickle: bool, path: Path) -> bool:
    return allow_unsafe_pickle or env_allows_unsafe_pickle(path)


def read_checkpoint(path: str | Path, allow_unsafe_pickle: bool = False) -> object:
    """``torch.load`` on CPU with ``weights_only=True``; refuses pickled code unless allowed.

    Raises:
        FileNotFoundError: naming the path and the working directory it was resolved from.
        RuntimeError: when the file needs unsafe unpickling and the caller did not opt in.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: '{path}' (resolved from the working directory '{Path.cwd()}' to "
            f"'{path.resolve()}'); paths in configs are relative to the working directory"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
        if not _unsafe_allowed(allow_unsafe_pickle, path):
            raise RuntimeError(
                f"'{path}' cannot be read with torch.load(weights_only=True): it holds pickled Python "
                f"objects beyond tensors ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
                f"Unpickling them can run arbitrary code; if you trust the file, pass "
                f"allow_unsafe_pickle=True (a codec parameter) or set {UNSAFE_PICKLE_ENV}={path}"
            ) from e
        logger.warning("loading '%s' with full unpickling (allow_unsafe_pickle): trust the file", path)
        return torch.load(path, map_location="cpu", weights_only=False)


def extract_state_dict(ckpt: object, source: str = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The weights inside a checkpoint: ``ckpt['state_dict']`` (Lightning), ``ckpt['model']`` (ITHQ),
    or ``ckpt`` itself when it is a plain mapping of tensors."""
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"{source}: expected a dict checkpoint, got {type(ckpt).__name__}")
    for key in ("state_dict", "model"):
        if key in ckpt and isinstance(ckpt[key], Mapping):
            return dict(ckpt[key])
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return dict(ckpt)
    raise ValueError(
        f"{source}: no weights found; expected a 'state_dict' or 'model' entry or a plain state dict, "
        f"got keys {', '.join(map(str, list(ckpt)[:10]))}"
    )


def _summarise(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys)} in all)" if len(keys) > limit else "")


def load_codec_weights(
    model: nn.Module,
    source: str | Path | Mapping[str, torch.Tensor],
    allow_unsafe_pickle: bool = False,
    drop_prefixes: Iterable[str] = TRAINING_ONLY_PREFIXES,
) -> list[str]:
    """Load a checkpoint (path or state dict) into ``model`` with strict key checking.

    Keys under ``drop_prefixes`` that the model does not have (the taming loss / discriminator, a
    Net2NetTransformer's GPT) are dropped and reported through the logger; every other missing or
    unexpected key is an error. Returns the dropped keys.
    """
    name = str(source) if not isinstance(source, Mapping) else "<state dict>"
    if isinstance(source, Mapping):
        sd = extract_state_dict(source, name)
    else:
        sd = extract_state_dict(read_checkpoint(source, allow_unsafe_pickle), name)
    own = model.state_dict()
    drop_prefixes = tuple(drop_prefixes)
    dropped = [k for k in sd if k not in own and k.startswith(drop_prefixes)]
    for k in dropped:
        del sd[k]
    if dropped:
        logger.info("%s: dropped %d training-only keys (%s)", name, len(dropped), _summarise(dropped))
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise RuntimeError(
            f"{name} does not match {type(model).__name__}: "
            f"missing keys [{_summarise(missing)}]; unexpected keys [{_summarise(unexpected)}]. "
            f"Check that the codec YAML (ddconfig, n_embed, embed_dim) describes this checkpoint"
        )
    bad_shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sd if tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if bad_shapes:
        raise RuntimeError(f"{name}: shape mismatch for {len(bad_shapes)} keys: {'; '.join(bad_shapes[:5])}")
    model.load_state_dict(sd, strict=True)
    return dropped
