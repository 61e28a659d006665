"""Checking that a checkpoint's tensors fit a module before ``load_state_dict`` (which, even with
``strict=False``, stops at the first size mismatch with torch's raw message and no file name)."""

from __future__ import annotations

import os
from typing import Any, Mapping

from torch import nn

from vqdiff.engine.checkpoint import CheckpointError

__all__ = ["shape_mismatches", "require_same_shapes"]


def shape_mismatches(module: nn.Module, state: Mapping[str, Any]) -> list[tuple[str, tuple, tuple]]:
    """``(key, checkpoint shape, model shape)`` for every key both hold with different shapes, in model order."""
    out = []
    for key, mine in module.state_dict().items():
        theirs = state.get(key)
        if hasattr(theirs, "shape") and tuple(theirs.shape) != tuple(mine.shape):
            out.append((key, tuple(theirs.shape), tuple(mine.shape)))
    return out


def require_same_shapes(module: nn.Module, state: Mapping[str, Any], path: str | os.PathLike, what: str = "model",
                        first: int = 5) -> None:
    """Raise :class:`CheckpointError` naming ``path``, the count and the first ``first`` mismatched keys."""
    bad = shape_mismatches(module, state)
    if not bad:
        return
    listed = "; ".join(f"{k}: checkpoint {list(a)} vs {what} {list(b)}" for k, a, b in bad[:first])
    more = f" (and {len(bad) - first} more)" if len(bad) > first else ""
    raise CheckpointError(f"checkpoint {path} does not fit the {what}: {len(bad)} tensor(s) of another size: "
                          f"{listed}{more}. Was it trained with another config (model size)?")
