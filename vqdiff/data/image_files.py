"""The reader base classes of the file-backed data sets and what they share: the one list of image file
extensions and the one image lister, path checks, image loading, bad-image handling.

A folder reader subclasses :class:`ImageFileDataset` (or :class:`CaptionedImageDataset` for captions) and
implements ``__len__``, ``image_path(index)`` and ``make_item(index, image)``; the hooks the trainer and the
token cache may look for are written in :mod:`vqdiff.data.protocols`.

The official readers either crash on an unreadable image (or one over PIL's pixel limit) or (ImageNet) return a *random* other item. Here
an unreadable, truncated or missing (listed but absent) image is, with ``on_bad_image='skip'``, logged once as a warning, counted in
``bad_images`` (per process: each DataLoader worker keeps its own count) and replaced by the next readable
index (``index + 1``, ``index + 2``, ... wrapping around), so the replacement is deterministic.
With ``on_bad_image='raise'`` the error propagates as :class:`BadImageError` naming the file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..utils.config import instantiate_from_config

__all__ = ["IMAGE_EXTENSIONS", "BadImageError", "MissingImageError", "ImageFileDataset", "CaptionedImageDataset",
           "build_preprocessor", "is_image_file", "list_image_files", "load_rgb", "require_dir", "require_file"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".pgm", ".tif", ".tiff")
"""The image files every reader, shard reader and evaluation folder accepts (lower-cased suffixes; the formats
torchvision's folder datasets take). Shards key an image by the same names without the dot, in this order."""


def is_image_file(path: str | Path) -> bool:
    """Whether ``path``'s suffix (any case) is one of :data:`IMAGE_EXTENSIONS` (the file is not opened)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_image_files(folder: str | Path, recursive: bool = True) -> list[Path]:
    """The image files (:func:`is_image_file`) under ``folder`` (its sub-folders too with ``recursive``), sorted;
    empty when there is none (each caller says what it expected)."""
    entries = Path(folder).rglob("*") if recursive else Path(folder).iterdir()
    return sorted(p for p in entries if is_image_file(p) and p.is_file())

ON_BAD_IMAGE = ("skip", "raise")


class BadImageError(OSError):
    """An image file that cannot be read: truncated, corrupt, not an image, or missing."""


class MissingImageError(BadImageError, FileNotFoundError):
    """An image the annotations list but that is not on disk (skipped like an unreadable one)."""


def require_dir(path: str | Path, what: str) -> Path:
    """``path`` as a Path; FileNotFoundError naming ``what`` and the path when it is not a folder."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{what} not found: '{p}' is not a directory")
    return p


def require_file(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: '{p}' does not exist")
    return p


def load_rgb(path: str | Path) -> Image.Image:
    """Open and fully decode an image as RGB; :class:`BadImageError` (naming the file) if it cannot be."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now: truncated files fail here, not later in a worker
            return im.convert("RGB")
    except FileNotFoundError as err:
        raise MissingImageError(f"image '{path}' is listed in the annotations but does not exist") from err
    except Exception as err:  # PIL raises many types for broken files (DecompressionBombError: none of OSError/ValueError)
        raise BadImageError(f"cannot read image '{path}': {type(err).__name__}: {err}") from err


def build_preprocessor(config: Mapping | None) -> Any:
    """The preprocessor from an ``{target, params}`` node, or ``None`` (keep the image's own size)."""
    if config is None:
        return None
    return instantiate_from_config(config)


class ImageFileDataset(Dataset):
    """Base of the file-backed readers: subclasses implement ``__len__``, ``image_path(index)`` and
    ``make_item(index, image_tensor)``; this class loads, preprocesses and handles bad images. It has the
    ``preprocessor`` of :class:`vqdiff.data.protocols.HasPreprocessor`.

    Args:
        im_preprocessor_config: config node of the preprocessor (``DalleTransformerPreprocessor``); ``None``
            returns the image at its own size.
        on_bad_image: ``'skip'`` (warn, count, use the next readable index) or ``'raise'``.
    """

    def __init__(self, im_preprocessor_config: Mapping | None = None, on_bad_image: str = "skip"):
        if on_bad_image not in ON_BAD_IMAGE:
            raise ValueError(f"on_bad_image must be one of {ON_BAD_IMAGE}, got {on_bad_image!r}")
        self.on_bad_image = on_bad_image
        self.preprocessor = build_preprocessor(im_preprocessor_config)
        self.bad_images = 0
        self.bad_paths: list[str] = []

    def image_path(self, index: int) -> Path:  # pragma: no cover - abstract
        raise NotImplementedError

    def make_item(self, index: int, image: Any) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_image(self, index: int) -> Any:
        """The preprocessed image of ``index``: float32 ``(3, H, W)`` in [0, 255]."""
        img = load_rgb(self.image_path(index))
        if self.preprocessor is None:
            return torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32))
        return self.preprocessor(img)

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items of {type(self).__name__}")
        index = index % n
        for step in range(n):
            i = (index + step) % n
            try:
                return self.make_item(i, self.load_image(i))
            except BadImageError as err:
                if self.on_bad_image == "raise":
                    raise
                self.bad_images += 1
                self.bad_paths.append(str(self.image_path(i)))
                logger.warning("%s: skipping unreadable image (%d so far): %s", type(self).__name__,
                               self.bad_images, err)
        raise BadImageError(f"{type(self).__name__}: none of the {n} images could be read")


class CaptionedImageDataset(ImageFileDataset):
    """Base of the caption readers (COCO, CUB-200): ``data_root`` checked, ``phase`` kept, and captions
    dropped to ``''`` in the train phase with probability ``drop_caption_rate`` (learnable classifier-free
    guidance, IVQD Sec. 3.2; process-global NumPy RNG, as officially; :class:`vqdiff.data.protocols.CaptionDropout`)."""

    def __init__(
        self,
        data_root: str,
        phase: str = "train",
        im_preprocessor_config: Mapping | None = None,
        drop_caption_rate: float = 0.0,
        on_bad_image: str = "skip",
    ):
        super().__init__(im_preprocessor_config, on_bad_image)
        name = type(self).__name__
        if not 0.0 <= float(drop_caption_rate) <= 1.0:
            raise ValueError(f"{name}: drop_caption_rate must be in [0, 1], got {drop_caption_rate}")
        self.root = require_dir(data_root, f"{name} data_root")
        self.phase = phase
        self.drop_caption_rate = float(drop_caption_rate)

    def caption_item(self, image: Any, text: str) -> dict:
        """``{'image', 'text'}`` with the caption lower-cased, or ``''`` when it is dropped."""
        if self.phase == "train" and self.drop_caption_rate > 0 and np.random.random() < self.drop_caption_rate:
            return {"image": image, "text": ""}
        return {"image": image, "text": text.lower()}
