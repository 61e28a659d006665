"""FFHQ reader (official ``FFHQDataset``): every image under ``data_root``, unconditional.

The official class wraps torchvision's ``ImageFolder`` (so images sit one folder deep, e.g.
``<root>/00000/00042.png``); here every image file under ``data_root`` at any depth is used, in sorted
path order. ``drop_caption_rate`` is accepted and ignored: the official ``ffhq.yaml`` passes it, which
makes the official class raise a TypeError.
Items: ``{'image': float32 (3, S, S) in [0, 255]}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .image_files import IMAGE_EXTENSIONS, ImageFileDataset, list_image_files, require_dir

__all__ = ["FFHQDataset", "IMAGE_EXTENSIONS"]


class FFHQDataset(ImageFileDataset):
    def __init__(
        self,
        data_root: str,
        im_preprocessor_config: Mapping | None = None,
        drop_caption_rate: float | None = None,
        on_bad_image: str = "skip",
    ):
        super().__init__(im_preprocessor_config, on_bad_image)
        self.root = require_dir(data_root, "FFHQDataset data_root")
        self.files = list_image_files(self.root)
        if not self.files:
            raise FileNotFoundError(f"FFHQDataset: no images ({', '.join(IMAGE_EXTENSIONS)}) under '{self.root}'")

    def __len__(self) -> int:
        return len(self.files)

    def image_path(self, index: int) -> Path:
        return self.files[index]

    def make_item(self, index: int, image: Any) -> dict:
        return {"image": image}
