"""ImageNet reader (official ``ImageNetDataset``), class-conditional.

Layout under ``data_root``: ``<input_file>`` (e.g. ``ILSVRC2012_name_train.txt``) listing ``<wnid>/<file>``
one a line, images at ``{phase}/<wnid>/<file>``.

Labels: the official code reads a class index JSON ``{"0": ["n01440764", "tench"], ...}`` from a path
relative to the working directory. Here pass ``class_index_path`` to use such a file; without it the
labels are the ranks of the sorted wnid folder names under ``{data_root}/train`` (for the full ImageNet
this is the same order as the official index, which lists the wnids sorted).
Items: ``{'image': float32 (3, S, S) in [0, 255], 'label': int}``; in the train phase the label becomes
``null_label`` (1000, the classifier-free "no class") with probability ``drop_caption_rate``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .image_groups import ImageGroups, labelled_images
from .image_files import ImageFileDataset, require_dir, require_file

__all__ = ["ImageNetDataset", "load_class_index", "class_index_from_folders"]


def load_class_index(path: str | Path) -> dict[str, int]:
    """``wnid -> label`` from a JSON ``{"<label>": ["<wnid>", "<name>"], ...}``."""
    path = require_file(path, "ImageNet class index")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"ImageNet class index '{path}': expected a JSON object, got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        if not (isinstance(value, (list, tuple)) and value):
            raise ValueError(f"ImageNet class index '{path}': entry {key!r} must be [wnid, name], got {value!r}")
        out[str(value[0])] = int(key)
    return out


def class_index_from_folders(train_folder: str | Path) -> dict[str, int]:
    """``wnid -> rank`` of the sorted sub-folder names of ``train_folder``."""
    folder = require_dir(train_folder, "ImageNet train folder (used for the class index)")
    wnids = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not wnids:
        raise ValueError(f"ImageNet train folder '{folder}' has no class sub-folders")
    return {w: i for i, w in enumerate(wnids)}


class ImageNetDataset(ImageFileDataset):
    def __init__(
        self,
        data_root: str,
        input_file: str,
        phase: str = "train",
        im_preprocessor_config: Mapping | None = None,
        drop_caption_rate: float = 0.0,
        class_index_path: str | None = None,
        null_label: int = 1000,
        on_bad_image: str = "skip",
    ):
        super().__init__(im_preprocessor_config, on_bad_image)
        if not 0.0 <= float(drop_caption_rate) <= 1.0:
            raise ValueError(f"ImageNetDataset: drop_caption_rate must be in [0, 1], got {drop_caption_rate}")
        self.root = require_dir(data_root, "ImageNetDataset data_root")
        self.phase = phase
        self.drop_caption_rate = float(drop_caption_rate)
        self.null_label = int(null_label)
        list_path = require_file(self.root / input_file, "ImageNetDataset input_file")
        self.image_folder = require_dir(self.root / phase, f"ImageNetDataset image folder for phase '{phase}'")
        self.wnid_to_label = (load_class_index(class_index_path) if class_index_path is not None
                              else class_index_from_folders(self.root / "train"))
        self.entries: list[tuple[str, int]] = []
        for n, line in enumerate(list_path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            wnid = line.split("/", 1)[0]
            if wnid not in self.wnid_to_label:
                raise ValueError(f"ImageNetDataset: '{list_path}' line {n}: class {wnid!r} is not in the class index")
            self.entries.append((line, self.wnid_to_label[wnid]))
        if not self.entries:
            raise ValueError(f"ImageNetDataset: '{list_path}' lists no images")

    def __len__(self) -> int:
        return len(self.entries)

    def image_path(self, index: int) -> Path:
        return self.image_folder / self.entries[index][0]

    def make_item(self, index: int, image: Any) -> dict:
        label = self.entries[index][1]
        if self.phase == "train" and self.drop_caption_rate > 0 and np.random.random() < self.drop_caption_rate:
            label = self.null_label
        return {"image": image, "label": label}

    def image_groups(self) -> ImageGroups:
        """Every listed image with its label, one sample each (for the token cache; no label dropped)."""
        return labelled_images([label for _, label in self.entries])
