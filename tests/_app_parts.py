"""A tiny text-to-image model on disk for the web-app tests: configs/tiny_text_shapes.yaml with its random
parts (vqdiff.utils.tiny_parts) under ``root``, and a checkpoint, either of the freshly built model (instant)
or trained for two tiny epochs with train.py (a few seconds)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from vqdiff.utils.tiny_parts import write_tiny_parts

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny_text_shapes.yaml"


@contextlib.contextmanager
def working_directory(path: Path):
    """Run the block in ``path`` (the tiny config names its parts relative to the working directory)."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(before)


def tiny_text_model(root: Path, trained: bool) -> tuple[str, str]:
    """Write the tiny model under ``root`` (call with ``root`` as the working directory); returns
    ``(config, checkpoint)`` paths as the app takes them."""
    write_tiny_parts(root)
    if trained:
        import train

        train.main(["--config_file", str(TINY_CONFIG), "--name", "tiny", "--output", str(root / "OUTPUT"),
                    "--seed", "0", "--no_progress_bar"])
        ckpt = root / "OUTPUT" / "tiny" / "checkpoint" / "last.pth"
    else:
        from vqdiff.inference.loading import build_model, prepare_config

        torch.manual_seed(0)
        model = build_model(prepare_config(str(TINY_CONFIG)))
        ckpt = root / "tiny_untrained.pth"
        torch.save({"model": model.state_dict()}, ckpt)
    return str(TINY_CONFIG), str(ckpt)
