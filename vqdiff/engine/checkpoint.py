"""Atomic checkpoint writing and safe checkpoint reading.

``save_checkpoint`` writes to a temporary file in the destination folder, flushes and ``fsync``s it, then
``os.replace``s it over the destination, so a crash or a full disk mid-write never leaves a half-written
``last.pth``: the previous file stays intact. The temporary file a killed save left behind is deleted by
the next save of the same path. Only the primary rank writes (``primary_only``).

``load_checkpoint`` reads with ``torch.load(weights_only=True)``; a file that needs arbitrary unpickling is
refused with a message naming the opt-in flag (``allow_unsafe=True`` / ``--allow_unsafe_load``), and a
truncated or corrupt file raises :class:`CheckpointError` naming the file. The policy itself (the flag, the
variable naming trusted files) is :mod:`vqdiff.utils.safe_load`'s.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from vqdiff import distributed as dist_utils
from vqdiff.utils.safe_load import UNSAFE_FLAG, UNSAFE_PICKLE_ENV, env_allows_unsafe_pickle, needs_unsafe_unpickling

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "remove_stale_temporaries", "UNSAFE_FLAG",
           "UNSAFE_PICKLE_ENV", "env_allows_unsafe_pickle", "needs_unsafe_unpickling"]

class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file."""


def save_checkpoint(obj: Any, path: str | os.PathLike, primary_only: bool = True,
                    _save_fn: Callable[[Any, Any], None] | None = None) -> Path | None:
    """Atomically write ``obj`` to ``path`` (returns the path, or None on non-primary ranks).

    ``_save_fn(obj, file)`` replaces ``torch.save`` (tests use it to simulate failures midway).
    """
    if primary_only and not dist_utils.is_primary():
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_fn = _save_fn or torch.save
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            save_fn(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(
                f"no space left on the device while writing checkpoint {path} "
                f"({os.strerror(e.errno)}); the previous file at that path (if any) is unchanged. "
                "Free disk space or point --output elsewhere."
            ) from e
        raise CheckpointError(f"writing checkpoint {path} failed: {e}; the previous file is unchanged") from e
    except BaseException:
        _remove(tmp)
        raise
    try:  # make the rename durable
        dir_fd = os.open(str(path.parent), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files a killed earlier save of ``path`` left (each as large as a
    checkpoint). Only the run holding the output folder's lock writes there, so none is in use."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp"))
    for p in stale:
        _remove(str(p))
    return stale


def _remove(p: str) -> None:
    try:
        os.remove(p)
    except OSError:
        pass


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", allow_unsafe: bool = False) -> Any:
    """Read a checkpoint safely (tensors, numbers, strings, containers only unless ``allow_unsafe``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        return torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - classify below
        msg = str(e)
        if needs_unsafe_unpickling(e):
            if allow_unsafe:
                try:
                    return torch.load(str(path), map_location=map_location, weights_only=False)
                except Exception as e2:  # noqa: BLE001
                    raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {e2}") from e2
            raise CheckpointError(
                f"checkpoint {path} contains Python objects that need unsafe unpickling (arbitrary code "
                f"could run). Only if you trust this file, pass {UNSAFE_FLAG} (allow_unsafe=True). "
                f"Details: {msg.splitlines()[0] if msg else type(e).__name__}"
            ) from e
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt and cannot be read: "
                              f"{type(e).__name__}: {msg.splitlines()[0] if msg else ''}") from e
