"""Turning generated images into files and PIL images: safe folder names, numbered PNGs, grids.

Images at the model boundary are float tensors (B, 3, H, W) in [0, 255] (architecture.md); they are
saved as uint8 (truncated like the official ``astype(np.uint8)`` after clamping to [0, 255]).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["safe_name", "to_uint8", "to_pil_images", "save_images", "make_grid"]

_UNSAFE = re.compile(r"[^A-Za-z0-9 ._,()+\-']+")
_MAX_NAME = 120


def safe_name(condition: object, max_len: int = _MAX_NAME) -> str:
    """A file-system-safe folder name for a caption or label.

    Characters outside letters, digits, space and ``._,()+-'`` become ``_``; leading/trailing dots and
    spaces are stripped (no ``..`` escapes, no hidden folders); names longer than ``max_len`` are cut
    and given a short hash so that different long captions stay apart; an empty result is ``'empty_'`` plus
    the hash of the condition, so that ``''``, ``'..'`` and the caption ``'empty'`` get three folders.
    """
    import hashlib

    text = str(condition)
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
    name = _UNSAFE.sub("_", text).strip(" .")
    if len(name) > max_len:
        name = name[: max_len - 9].rstrip(" .") + "_" + digest
    return name or f"empty_{digest}"


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) floats in [0, 255] -> (B, H, W, 3) uint8 (clamped, truncated)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (B, 3, H, W), got shape {tuple(images.shape)}")
    arr = images.detach().float().clamp(0, 255).permute(0, 2, 3, 1).cpu().numpy()
    return arr.astype(np.uint8)


def to_pil_images(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) floats in [0, 255] -> a list of B RGB PIL images."""
    arr = to_uint8(images)
    if arr.shape[-1] == 1:
        return [Image.fromarray(a[..., 0], mode="L") for a in arr]
    return [Image.fromarray(a) for a in arr]


def save_images(images: Sequence[Image.Image], folder: str | Path, start: int = 0, ext: str = "png") -> list[Path]:
    """Save ``images`` as ``folder/000000.png``, ``000001.png``, … (the official numbering)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        p = folder / f"{start + i:06d}.{ext}"
        im.save(p)
        paths.append(p)
    return paths


def make_grid(images: Sequence[Image.Image] | torch.Tensor, nrow: Optional[int] = None, padding: int = 2,
              fill: int = 255) -> Image.Image:
    """Tile images into one picture, ``nrow`` per row (default: about square), ``padding`` pixels apart."""
    if torch.is_tensor(images):
        images = to_pil_images(images)
    images = list(images)
    if not images:
        raise ValueError("make_grid needs at least one image")
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    n = len(images)
    ncol = int(nrow) if nrow else int(math.ceil(math.sqrt(n)))
    if ncol < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    nrows = int(math.ceil(n / ncol))
    grid = Image.new("RGB", (ncol * w + (ncol + 1) * padding, nrows * h + (nrows + 1) * padding), (fill,) * 3)
    for i, im in enumerate(images):
        r, c = divmod(i, ncol)
        grid.paste(im.convert("RGB"), (padding + c * (w + padding), padding + r * (h + padding)))
    return grid
