"""A small logger: stdout plus an optional file; quiet on non-primary ranks."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

__all__ = ["get_logger"]


def get_logger(name: str = "vqdiff", log_file: str | Path | None = None, rank: int = 0, level: int = logging.INFO) -> logging.Logger:
    """Return a logger writing ``[time] message`` to stdout (rank 0 only) and to ``log_file``.

    Calling it again with the same name reuses the logger and adds the file handler once.
    """
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False
    fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    if rank == 0 and not any(getattr(h, "_vqdiff_stdout", False) for h in logger.handlers):
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(fmt)
        h._vqdiff_stdout = True  # type: ignore[attr-defined]
        logger.addHandler(h)
    if log_file is not None:
        log_file = str(Path(log_file).resolve())
        if not any(getattr(h, "baseFilename", None) == log_file for h in logger.handlers):
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(log_file, encoding="utf-8")
            fh.setFormatter(fmt)
            logger.addHandler(fh)
    return logger
