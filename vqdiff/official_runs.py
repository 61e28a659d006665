"""The official training launchers (``running_command/run_*.py``): their run names, configs and the
pretrained checkpoint each fine-tunes from, and the launch itself.

Each official launcher runs ``python train.py --name <run> --config_file configs/<x>.yaml --num_node 1
--tensorboard [--load_path OUTPUT/pretrained_model/<ckpt>.pth]`` from the repository root. Ours run the
same command (with this Python) and pass every extra argument on; before starting they check that the
files the command reads are there (the ``--load_path`` checkpoint, the codec weights, token maps and
CLIP named by the config) and otherwise stop with one line naming the missing files and the
``scripts/download_checkpoints.py --only …`` command. Paths in the configs and ``--load_path`` are
relative to the working directory, as in the official code: run the launchers from the repository root.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from vqdiff.utils.released_files import MissingReleasedFileError, check_released_files, files_needed_by_config

__all__ = ["OfficialRun", "OFFICIAL_RUNS", "build_command", "launch"]

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class OfficialRun:
    """One official launcher.

    Args:
        script: the launcher's file name under ``running_command/``.
        name: the official ``--name`` (outputs go to ``OUTPUT/<name>/``).
        config: the config, relative to the repository root.
        load_path: the official ``--load_path`` (weights only: no optimizer, epoch or iteration), or None.
        load_path_fallback: a second name for ``load_path`` (see ``run_tune_coco``), or None.
    """

    script: str
    name: str
    config: str
    load_path: Optional[str] = None
    load_path_fallback: Optional[str] = None

    def command(self) -> str:
        """The official command line, as the official launcher writes it."""
        cmd = f"python train.py --name {self.name} --config_file {self.config} --num_node 1 --tensorboard"
        return cmd + (f" --load_path {self.load_path}" if self.load_path else "")


_P = "OUTPUT/pretrained_model"
OFFICIAL_RUNS: dict[str, OfficialRun] = {r.script: r for r in (
    OfficialRun("run_train_coco.py", "coco_train", "configs/coco.yaml", f"{_P}/CC_pretrained.pth"),
    OfficialRun("run_train_cub.py", "cub200_train", "configs/cub200.yaml", f"{_P}/CC_pretrained.pth"),
    OfficialRun("run_train_imagenet.py", "imagenet_train", "configs/imagenet.yaml"),
    OfficialRun("run_train_ffhq.py", "ffhq_train", "configs/ffhq.yaml"),
    # The official launcher names COCO_pretrained.pth, the release (and its download script) writes
    # coco_pretrained.pth: the same file on a case-insensitive file system only. Either name is taken.
    OfficialRun("run_tune_coco.py", "coco_tune", "configs/coco_tune.yaml", f"{_P}/COCO_pretrained.pth",
                f"{_P}/coco_pretrained.pth"),
    # Not an official launcher: the Conceptual Captions pretraining behind CC_pretrained.pth, which the
    # official code has no launcher, config or reader for (configs/cc.yaml, from scratch: no --load_path).
    OfficialRun("run_train_cc.py", "cc_pretrain", "configs/cc.yaml"),
)}


def _effective_load_path(run: OfficialRun) -> Optional[str]:
    """``load_path`` when it exists, else the fallback name (which the missing-file message then names)."""
    if run.load_path and run.load_path_fallback and not Path(run.load_path).is_file():
        return run.load_path_fallback
    return run.load_path


def build_command(run: OfficialRun, extra: Sequence[str] = (), repo: Path = REPO) -> list[str]:
    """``[python, <repo>/train.py, --name, …, --num_node, 1, --tensorboard, (--load_path, …), *extra]``.

    Extra arguments come last, so a flag given again (``--name``, ``--load_path``) overrides the official one.
    """
    cmd = [sys.executable, str(repo / "train.py"), "--name", run.name, "--config_file", str(repo / run.config),
           "--num_node", "1", "--tensorboard"]
    load_path = _effective_load_path(run)
    if load_path:
        cmd += ["--load_path", load_path]
    return cmd + list(extra)


def needed_files(cmd: Sequence[str]) -> list[str]:
    """The files the training command reads before its first step: ``--load_path`` and what the config
    (with the command's overrides) names."""
    sys.path.insert(0, str(Path(cmd[1]).parent))
    try:
        import train
    finally:
        sys.path.pop(0)
    from vqdiff.utils.config import load_yaml_config, merge_opts_to_config

    args = train.get_args(list(cmd[2:]))
    config = load_yaml_config(args.config_file)
    try:
        merge_opts_to_config(config, args.opts)
    except Exception:  # a bad override: train.py reports it with its own message
        pass
    files = files_needed_by_config(config)
    return ([args.load_path] if args.load_path else []) + files


def launch(run: OfficialRun, argv: Sequence[str], repo: Path = REPO) -> int:
    """Run the official command with ``argv`` appended; ``--help`` also says what the launcher runs.

    Returns train.py's exit status, or 2 (one line on stderr) when a file it needs is missing.
    """
    cmd = build_command(run, argv, repo)
    if any(a in ("-h", "--help") for a in argv):
        print(f"{run.script}: the official recipe '{run.name}': {run.command()}\n"
              f"Extra arguments are passed on to train.py (flags, then key=value config overrides); "
              f"here: {' '.join(cmd[1:])}\n")
        sys.stdout.flush()
        return subprocess.call(cmd)
    try:
        check_released_files(needed_files(cmd))
    except MissingReleasedFileError as e:
        print(f"{run.script}: {e}", file=sys.stderr)
        return 2
    return subprocess.call(cmd)
