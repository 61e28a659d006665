"""Class-conditional images from class folders: ``<data_root>/<class>/<image>`` (torchvision ``ImageFolder``).

The classes are the sub-folders that hold at least one image (``.jpg .jpeg .png .webp .bmp``, searched
recursively inside each class folder), sorted by name: label ``i`` is the ``i``-th name. The names are
saved with a training run (``OUTPUT/<name>/configs/class_names.json``, by :func:`save_class_names`), so a
label can be read back as a class. ``null_label`` (the classifier-free "no class" of a dropped label)
defaults to the number of classes, the index just past the last class, as ImageNet's 1000; the model's
class embedding must then have ``num_classes + 1`` entries.

Items: ``{'image': float32 (3, S, S) in [0, 255], 'label': int}``; in the train phase the label becomes
``null_label`` with probability ``drop_caption_rate`` (the official name of the option, shared with the
caption readers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from torch.utils.data import Dataset

from .image_files import IMAGE_EXTENSIONS, ImageFileDataset, list_image_files, require_dir
from .image_groups import ImageGroups, labelled_images

__all__ = ["ImageClassFolder", "save_class_names"]

CLASS_NAMES_FILE = "class_names.json"


class ImageClassFolder(ImageFileDataset):
    """Images of ``<data_root>/<class>/...`` labelled by the rank of their class folder's name.

    Args:
        data_root: the folder of class folders.
        phase: ``'train'`` applies ``drop_caption_rate``; other phases never drop.
        im_preprocessor_config: the preprocessor node; None keeps the image size.
        drop_caption_rate: probability of ``null_label`` in the train phase.
        null_label: the dropped label; None = the number of classes.
        on_bad_image: ``'skip'`` or ``'raise'`` (see :mod:`vqdiff.data.image_files`).
    """

    def __init__(
        self,
        data_root: str,
        phase: str = "train",
        im_preprocessor_config: Mapping | None = None,
        drop_caption_rate: float = 0.0,
        null_label: int | None = None,
        on_bad_image: str = "skip",
    ):
        super().__init__(im_preprocessor_config, on_bad_image)
        if not 0.0 <= float(drop_caption_rate) <= 1.0:
            raise ValueError(f"ImageClassFolder: drop_caption_rate must be in [0, 1], got {drop_caption_rate}")
        self.root = require_dir(data_root, "ImageClassFolder data_root")
        self.phase = phase
        self.drop_caption_rate = float(drop_caption_rate)
        per_class: dict[str, list[Path]] = {}
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            images = list_image_files(folder)
            if images:
                per_class[folder.name] = images
        if not per_class:
            raise FileNotFoundError(f"ImageClassFolder: '{self.root}' has no class folder with images "
                                    f"({', '.join(IMAGE_EXTENSIONS)})")
        self.class_names: list[str] = sorted(per_class)
        self.entries: list[tuple[Path, int]] = [(p, label) for label, name in enumerate(self.class_names)
                                                for p in per_class[name]]
        self.null_label = len(self.class_names) if null_label is None else int(null_label)
        if 0 <= self.null_label < len(self.class_names):
            raise ValueError(f"ImageClassFolder: null_label {self.null_label} is the label of class "
                             f"{self.class_names[self.null_label]!r}; use {len(self.class_names)} (the default)")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.entries)

    def image_path(self, index: int) -> Path:
        return self.entries[index][0]

    def make_item(self, index: int, image: Any) -> dict:
        label = self.entries[index][1]
        if self.phase == "train" and self.drop_caption_rate > 0 and np.random.random() < self.drop_caption_rate:
            label = self.null_label
        return {"image": image, "label": label}

    def image_groups(self) -> ImageGroups:
        """Every image with its label, one sample each (for the token cache; no label dropped)."""
        return labelled_images([label for _, label in self.entries])


def save_class_names(dataset: Dataset, folder: str | Path) -> Path | None:
    """Write ``class_names.json`` (``{"class_names": [...], "null_label": int}``) into ``folder`` when
    ``dataset`` (or a part of a ConcatDataset) is an :class:`ImageClassFolder`; returns the file or None."""
    from .token_cache_writer import leaf_datasets

    leaves = [d for d in leaf_datasets(dataset) if isinstance(d, ImageClassFolder)]
    if not leaves:
        return None
    path = Path(folder) / CLASS_NAMES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"class_names": leaves[0].class_names, "null_label": leaves[0].null_label},
                               indent=2), encoding="utf-8")
    return path
