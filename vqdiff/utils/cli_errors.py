"""Command-line error reporting: an error ends the command with one line (``prog: error: <message>``) and a
hint, not a traceback; ``--debug`` on the command line shows the full traceback instead. The messages of
vqdiff's own errors name the key, file or value at fault, so the line is enough to act on."""

from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

__all__ = ["run_cli", "DEBUG_FLAG"]

DEBUG_FLAG = "--debug"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, KeyError) and len(text) > 1 and text[0] == text[-1] == "'":
        text = text[1:-1]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def run_cli(main: Callable[[Optional[Sequence[str]]], object], argv: Optional[Sequence[str]], prog: str) -> object:
    """Return ``main(argv)``; on an exception print ``prog: error: <type>: <message>`` and the ``--debug``
    hint to stderr and exit with status 1 (with ``--debug`` among the arguments the exception propagates).
    ``SystemExit`` (argparse's usage errors, exit codes) and ``KeyboardInterrupt`` pass through."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(argv)
    except Exception as err:  # noqa: BLE001 - every error of a command becomes one line
        if DEBUG_FLAG in args:
            raise
        print(f"{prog}: error: {_one_line(err)}\n{prog}: (run with {DEBUG_FLAG} for the full traceback)",
              file=sys.stderr)
        raise SystemExit(1) from None
