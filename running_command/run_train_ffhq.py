#!/usr/bin/env python
"""Train on ffhq with configs/ffhq.yaml: runs train.py (same Python) and passes every extra argument on.

    python running_command/run_train_ffhq.py                                  # one process / one GPU
    python running_command/run_train_ffhq.py --tensorboard dataloader.data_root=/data/ffhq
    torchrun --nproc_per_node=8 train.py --config_file configs/ffhq.yaml      # several GPUs

Extra arguments are train.py flags (--amp, --auto_resume, --output ...) and config overrides.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_command(extra: list[str]) -> list[str]:
    cmd = [sys.executable, str(REPO / "train.py"), "--name", "ffhq", "--config_file", str(REPO / "configs" / "ffhq.yaml")]
    if not any(a in ("--tensorboard",) for a in extra):
        cmd.append("--tensorboard")
    return cmd + list(extra)


if __name__ == "__main__":
    sys.exit(subprocess.call(build_command(sys.argv[1:])))
