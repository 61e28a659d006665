#!/usr/bin/env python
"""Train VQ-Diffusion on MSCOCO captions 2014 with ``configs/coco.yaml`` (the official hyper-parameters).

    python running_command/run_train_coco.py                                   # one process / all local GPUs
    python running_command/run_train_coco.py --tensorboard dataloader.data_root=/data/mscoco
    python running_command/run_train_coco.py --auto_resume                     # continue OUTPUT/coco

Every extra argument goes to ``train.py`` unchanged (flags first, then dotted config overrides). For several
GPUs or nodes use torchrun directly: ``torchrun --nproc_per_node=8 train.py --config_file configs/coco.yaml``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/coco.yaml"
NAME = "coco"


def build_command(extra: Sequence[str]) -> list[str]:
    """``[python, train.py, --name, --config_file, *extra]``; ``--name`` in ``extra`` wins."""
    cmd = [sys.executable, str(REPO / "train.py"), "--config_file", str(REPO / CONFIG)]
    if "--name" not in extra and "--resume_name" not in extra:
        cmd += ["--name", NAME]
    return cmd + list(extra)


def main(argv: Sequence[str] | None = None) -> int:
    return subprocess.call(build_command(sys.argv[1:] if argv is None else list(argv)))


if __name__ == "__main__":
    sys.exit(main())
