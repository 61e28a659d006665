"""Command-line error reporting: an ordinary input or run error is printed as one line plus a hint, not a
traceback; ``--debug`` on the command line shows the full traceback instead."""

from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

__all__ = ["user_error_types", "run_cli"]

DEBUG_FLAG = "--debug"


def user_error_types() -> tuple[type[BaseException], ...]:
    """Errors that describe bad input or a refused/stopped run (their messages name the key, file or value)."""
    from vqdiff.engine.checkpoint import CheckpointError
    from vqdiff.engine.run_lock import RunLockError

    types: list[type[BaseException]] = [ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                        PermissionError, FileExistsError, CheckpointError, RunLockError]
    try:
        from vqdiff.engine.solver import TrainingStopped

        types.append(TrainingStopped)
    except ImportError:  # pragma: no cover - partial installs
        pass
    return tuple(types)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    if isinstance(err, KeyError) and text.startswith("'") and text.endswith("'"):
        text = text[1:-1]
    return " ".join(text.split()) or type(err).__name__


def run_cli(main: Callable[[Optional[Sequence[str]]], object], argv: Optional[Sequence[str]], prog: str) -> object:
    """Call ``main(argv)``; on a user error print ``prog: error: <message>`` and the ``--debug`` hint to
    stderr and exit with status 1 (with ``--debug`` in ``argv`` the exception propagates)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(argv)
    except user_error_types() as err:
        if DEBUG_FLAG in args:
            raise
        print(f"{prog}: error: {_first_line(err)}\n{prog}: (run with {DEBUG_FLAG} for the full traceback)",
              file=sys.stderr)
        raise SystemExit(1) from None
