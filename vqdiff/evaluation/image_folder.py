"""Reading image folders for evaluation: the inference layout ``save_root/<caption>/000000.png`` and plain folders.

Images come out as float tensors ``(B, 3, H, W)`` in ``[0, 255]`` (the project convention).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from vqdiff.data.image_files import IMAGE_EXTENSIONS, list_image_files

__all__ = ["IMAGE_SUFFIXES", "list_images", "caption_folders", "load_image", "image_batches"]

IMAGE_SUFFIXES: tuple[str, ...] = IMAGE_EXTENSIONS
"""The images read: the data readers' one list, ``vqdiff.data.image_files.IMAGE_EXTENSIONS`` (this name is kept)."""


def list_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Sorted image files under ``folder``; a missing or empty folder is an error naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = list_image_files(folder, recursive)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return files


def caption_folders(save_root: str | Path) -> list[tuple[str, list[Path]]]:
    """``save_root/<caption>/*.png`` (as ``inference_generate_sample_with_condition`` writes) ->
    ``[(caption, [image paths])]`` sorted by caption. Sub-folders without images are skipped."""
    save_root = Path(save_root)
    if not save_root.is_dir():
        raise FileNotFoundError(f"generated-images folder not found: {save_root}")
    out = []
    for sub in sorted(p for p in save_root.iterdir() if p.is_dir()):
        files = list_image_files(sub, recursive=False)
        if files:
            out.append((sub.name, files))
    if not out:
        raise FileNotFoundError(f"no <caption>/<image> folders under {save_root}")
    return out


def load_image(path: str | Path, size: int | None = None) -> torch.Tensor:
    """One image as ``(3, H, W)`` float in [0, 255] (RGB).

    ``size``: resize the short side to ``size`` (bicubic) and centre-crop ``size x size`` -- the
    validation preprocessing of the official data sets (short side -> 256, centre crop 256).
    """
    with Image.open(path) as im:
        im = im.convert("RGB")
        if size is not None:
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), Image.BICUBIC)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
        arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float()


def image_batches(paths: Sequence[str | Path], batch_size: int, size: int | None = None) -> Iterator[torch.Tensor]:
    """``(B, 3, H, W)`` batches of the images at ``paths``; without ``size`` they must share one size."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for start in range(0, len(paths), batch_size):
        imgs = [load_image(p, size) for p in paths[start:start + batch_size]]
        shapes = {tuple(im.shape) for im in imgs}
        if len(shapes) > 1:
            raise ValueError(f"images of different sizes {sorted(shapes)} near {paths[start]}; pass a size "
                             f"(e.g. --image-size 256) to resize and centre-crop them")
        yield torch.stack(imgs)
