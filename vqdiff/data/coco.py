"""MSCOCO Captions 2014 reader (official ``CocoDataset``): one item per caption.

Layout under ``data_root``: ``annotations/captions_{phase}2014.json`` and
``{phase}2014/{phase}2014/COCO_{phase}2014_{image_id:012d}.jpg``.
Items: ``{'image': float32 (3, S, S) in [0, 255], 'text': str}`` (caption lower-cased; in the train phase
replaced by ``''`` with probability ``drop_caption_rate``, for learnable classifier-free guidance).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from .image_groups import ImageGroups, group_captioned_rows
from .image_files import CaptionedImageDataset, require_dir, require_file

__all__ = ["CocoDataset"]


class CocoDataset(CaptionedImageDataset):
    def __init__(
        self,
        data_root: str,
        phase: str = "train",
        im_preprocessor_config: Mapping | None = None,
        drop_caption_rate: float = 0.0,
        on_bad_image: str = "skip",
    ):
        super().__init__(data_root, phase, im_preprocessor_config, drop_caption_rate, on_bad_image)
        ann_path = require_file(self.root / "annotations" / f"captions_{phase}2014.json",
                                f"CocoDataset annotations for phase '{phase}'")
        self.image_folder = require_dir(self.root / f"{phase}2014" / f"{phase}2014",
                                        f"CocoDataset image folder for phase '{phase}'")
        with open(ann_path, encoding="utf-8") as f:
            data = json.load(f)
        if "annotations" not in data:
            raise ValueError(f"CocoDataset: '{ann_path}' has no 'annotations' list")
        self.annotations = [(int(a["image_id"]), str(a["caption"])) for a in data["annotations"]]
        if not self.annotations:
            raise ValueError(f"CocoDataset: '{ann_path}' lists no captions")

    def __len__(self) -> int:
        return len(self.annotations)

    def image_path(self, index: int) -> Path:
        image_id = self.annotations[index][0]
        return self.image_folder / f"COCO_{self.phase}2014_{image_id:012d}.jpg"

    def make_item(self, index: int, image: Any) -> dict:
        return self.caption_item(image, self.annotations[index][1])

    def image_groups(self) -> ImageGroups:
        """Distinct images (in order of first annotation) with all their captions; one sample per
        annotation, as this reader iterates (for the token cache)."""
        return group_captioned_rows(self.annotations)
