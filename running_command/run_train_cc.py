#!/usr/bin/env python
"""Conceptual Captions pretraining (configs/cc.yaml, from scratch), the run behind CC_pretrained.pth; not an
official launcher: the official code has none for it. Data: img2dataset WebDataset shards (docs/data.md).

    python running_command/run_train_cc.py                                    # with the shards at data/cc3m/
    python running_command/run_train_cc.py dataloader.train_datasets.0.params.urls=data/cc3m/{00000..00331}.tar
    python running_command/run_train_cc.py --help                            # what it runs, train.py's flags

Run from the repository root (config paths are relative to it). Extra arguments go to train.py after the
official ones (--amp, --auto_resume, --output …, then key=value overrides). A missing checkpoint or codec
stops it with one line naming the scripts/download_checkpoints.py command. Several GPUs:
torchrun --nproc_per_node=8 train.py with the same arguments (see running_command/README.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

from vqdiff.official_runs import OFFICIAL_RUNS, build_command as _build, launch

REPO = Path(__file__).resolve().parents[1]
RUN = OFFICIAL_RUNS[Path(__file__).name]


def build_command(extra: list[str]) -> list[str]:
    """The train.py command this launcher runs, with ``extra`` appended."""
    return _build(RUN, extra, REPO)


if __name__ == "__main__":
    sys.exit(launch(RUN, sys.argv[1:], REPO))
