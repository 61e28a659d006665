"""The unsafe-pickle policy every file reader follows: a checkpoint is read with ``torch.load(weights_only=True)``
and a file that holds pickled Python objects is opened fully only when the caller opts in (``--allow_unsafe_load``,
``allow_unsafe_pickle=True``) or ``VQDIFF_ALLOW_UNSAFE_PICKLE`` names that very file.

Below everything that loads files (the engine's checkpoints, the codec weights, inference loading), so the
model code needs nothing from the engine to follow it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

__all__ = ["UNSAFE_FLAG", "UNSAFE_PICKLE_ENV", "env_allows_unsafe_pickle", "needs_unsafe_unpickling"]

UNSAFE_FLAG = "--allow_unsafe_load"
"""The training flag that opts in (``allow_unsafe=True`` in code)."""
UNSAFE_PICKLE_ENV = "VQDIFF_ALLOW_UNSAFE_PICKLE"
"""The environment variable that names trusted files (``os.pathsep``-separated)."""
_BLANKET_VALUES = ("1", "true", "True", "yes")


def env_allows_unsafe_pickle(path: str | os.PathLike) -> bool:
    """Whether ``VQDIFF_ALLOW_UNSAFE_PICKLE`` names ``path``: it holds the trusted files, separated by
    ``os.pathsep`` (compared after resolving). A blanket ``1`` opens no file: it would also open every
    other checkpoint read in the process (codec weights included); a warning says how to name the file."""
    value = os.environ.get(UNSAFE_PICKLE_ENV, "")
    if value in _BLANKET_VALUES:
        warnings.warn(f"{UNSAFE_PICKLE_ENV}={value} no longer allows unsafe unpickling of every file; set it to "
                      f"the trusted file(s) instead: {UNSAFE_PICKLE_ENV}={Path(path).resolve()}", stacklevel=3)
        return False
    target = Path(path).resolve()
    return any(Path(p).resolve() == target for p in value.split(os.pathsep) if p.strip())


def needs_unsafe_unpickling(error: BaseException) -> bool:
    """Whether a ``torch.load(weights_only=True)`` failure means "the file holds Python objects".

    Only a refused global/class says that; any other unpickling failure (a truncated zip, bytes that are
    no pickle at all: "Unsupported operand") means the file is damaged, and unsafe loading would not help.
    """
    text = str(error)
    return "Unsupported global" in text or "Unsupported class" in text
