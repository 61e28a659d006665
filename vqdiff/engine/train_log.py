"""What the solver writes while training: the progress line, TensorBoard tags, sample-grid file names.

Names follow the official solver so that its tools and habits carry over:
- TensorBoard (event files in ``OUTPUT/<name>/logs`` beside ``log.txt``): ``train/<optimizer>/<loss key>``,
  ``train/<optimizer>_lr``, ``val/<optimizer>/loss`` (step = epoch); vqdiff adds
  ``train/<optimizer>/grad_norm``, ``train/images_per_s`` and ``val/<optimizer>/loss_ema``.
- Sample grids: ``images/train/<key>/e{epoch:010d}_itr{iteration in epoch:010d}_rank{rank}[_ema].jpg``,
  TensorBoard image tag ``train/{epoch}e_{iteration in epoch}itr/<key>``.

The progress line counts iterations up to the end the run will really reach (``max_iterations`` when it
stops the run before ``max_epochs``), gives the seconds per iteration and the remaining time (ETA) from
the iterations done since this process started, and shows losses averaged over all ranks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

__all__ = ["format_seconds", "ProgressLine", "average_losses_over_ranks", "sample_image_path", "sample_image_tag",
           "save_sample_grids"]


def format_seconds(seconds: float) -> str:
    """``[Dd ]HH:MM:SS`` for a duration in seconds (negative durations count as 0)."""
    s = int(max(0.0, seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    text = f"{hours:02d}:{minutes:02d}:{s:02d}"
    return f"{days}d {text}" if days else text


def average_losses_over_ranks(logs: Mapping, distributed: bool) -> dict:
    """``logs`` with every float entry whose key ends in ``loss`` replaced by its mean over ranks
    (a collective: every rank calls it at the same iteration; official ``reduce_dict``)."""
    out = dict(logs)
    if not distributed:
        return out
    keys = sorted(k for k, v in logs.items() if isinstance(v, float) and k.endswith("loss"))
    if not keys:
        return out
    values = torch.tensor([logs[k] for k in keys], dtype=torch.float64,
                          device="cuda" if torch.distributed.get_backend() == "nccl" else "cpu")
    torch.distributed.all_reduce(values)
    values /= torch.distributed.get_world_size()
    out.update({k: float(v) for k, v in zip(keys, values.tolist())})
    return out


@dataclass
class ProgressLine:
    """Builds the log line; ``start_iter`` is the last finished iteration when this process began."""

    total_iterations: int
    max_epochs: int
    start_iter: int = -1
    start_time: float = field(default_factory=time.time)

    def seconds_per_iteration(self, last_iter: int, now: Optional[float] = None) -> float:
        done = last_iter - self.start_iter
        return ((now if now is not None else time.time()) - self.start_time) / max(done, 1)

    def format(self, epoch: int, last_iter: int, logs: Mapping, lrs: Mapping, images_per_s: float,
               now: Optional[float] = None) -> str:
        per_it = self.seconds_per_iteration(last_iter, now)
        left = max(0, self.total_iterations - (last_iter + 1))
        parts = [f"epoch {epoch}/{self.max_epochs}", f"iter {last_iter + 1}/{self.total_iterations}"]
        parts += [f"{k} {v:.4f}" for k, v in logs.items() if isinstance(v, float)]
        parts += [f"lr[{n}] {v:.3e}" for n, v in lrs.items()]
        parts += [f"{images_per_s:.1f} img/s", f"{per_it:.3f} s/iter", f"ETA {format_seconds(per_it * left)}"]
        return " | ".join(parts)


def sample_image_path(image_dir: Path, key: str, epoch: int, iteration_in_epoch: int, rank: int, ema: bool) -> Path:
    """Official sample-grid file: ``images/train/<key>/e{epoch:010d}_itr{it:010d}_rank{r}[_ema].jpg``."""
    suffix = "_ema" if ema else ""
    return Path(image_dir) / "train" / key / f"e{epoch:010d}_itr{iteration_in_epoch:010d}_rank{rank}{suffix}.jpg"


def sample_image_tag(key: str, epoch: int, iteration_in_epoch: int) -> str:
    """Official TensorBoard image tag of a sample grid."""
    return f"train/{epoch}e_{iteration_in_epoch}itr/{key}"


def save_sample_grids(out: Mapping, image_dir: Path, epoch: int, iteration_in_epoch: int, rank: int, ema: bool,
                      tb_writer: Any = None, global_step: int = 0) -> list:
    """One grid file (and TensorBoard image) per ``*image`` entry of ``out`` (``(N, C, H, W)``, values in
    [0, 1] or [0, 255]); returns the paths written."""
    from torchvision.utils import make_grid, save_image

    paths = []
    for key, value in out.items():
        if not (torch.is_tensor(value) and value.dim() == 4 and key.endswith("image")):
            continue
        im = value.detach().float().cpu()
        if im.max() > 1.5:
            im = im / 255.0
        grid = make_grid(im.clamp(0, 1), nrow=min(4, im.shape[0]))
        path = sample_image_path(image_dir, key, epoch, iteration_in_epoch, rank, ema=ema)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        paths.append(path)
        if tb_writer is not None:
            tb_writer.add_image(sample_image_tag(key, epoch, iteration_in_epoch), grid, global_step)
    return paths
