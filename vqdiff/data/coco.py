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

import numpy as np

from .robust import ImageFileDataset, require_dir, require_file

__all__ = ["CocoDataset"]


class CocoDataset(ImageFileDataset):
    def __init__(
        self,
        data_root: str,
        phase: str = "train",
        im_preprocessor_config: Mapping | None = None,
        drop_caption_rate: float = 0.0,
        on_bad_image: str = "skip",
    ):
        super().__init__(im_preprocessor_config, on_bad_image)
        if not 0.0 <= float(drop_caption_rate) <= 1.0:
            raise ValueError(f"CocoDataset: drop_caption_rate must be in [0, 1], got {drop_caption_rate}")
        self.root = require_dir(data_root, "CocoDataset data_root")
        self.phase = phase
        self.drop_caption_rate = float(drop_caption_rate)
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
        text = self.annotations[index][1].lower()
        if self.phase == "train" and self.drop_caption_rate > 0 and np.random.random() < self.drop_caption_rate:
            text = ""
        return {"image": image, "text": text}
