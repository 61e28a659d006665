"""A folder of captioned images, in either of the two forms people already have on disk.

Detected from the folder ``data_root``:

1. The Hugging Face ``imagefolder`` form: ``metadata.jsonl`` (one JSON object a line) or, without it,
   ``metadata.csv`` (with a header row). Each row has ``file_name`` (the image's path relative to
   ``data_root``; sub-folders allowed) and a caption column (``text`` by default, ``caption_column``
   otherwise). A row is one sample, as COCO's annotations: an image listed in 5 rows is seen 5 times an
   epoch, with each of its captions. A caption column holding a list of strings makes one sample whose
   caption is drawn among them at each access.
2. Sidecar text files (no metadata file): every image ``<name>.jpg|jpeg|png|webp|bmp`` under ``data_root``
   (searched recursively, sorted by path) with ``<name>.txt`` beside it, one caption a line (blank lines
   ignored); each access draws one line (process-global NumPy RNG), as CUB-200. An image without its
   ``.txt`` is an error naming it.

Items: ``{'image': float32 (3, S, S) in [0, 255], 'text': str}`` (lower-cased; ``''`` in the train phase
with probability ``drop_caption_rate``). A listed image that is missing or unreadable is skipped as by the
other readers (``on_bad_image``, :mod:`vqdiff.data.image_files`). ``image_groups()`` gives the token cache every
caption of every image.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .image_files import IMAGE_EXTENSIONS, CaptionedImageDataset, list_image_files
from .image_groups import ImageGroups, group_captioned_rows

__all__ = ["ImageTextFolder", "FOLDER_IMAGE_EXTENSIONS"]

FOLDER_IMAGE_EXTENSIONS = IMAGE_EXTENSIONS
"""The folder readers' image files: the one list, ``image_files.IMAGE_EXTENSIONS`` (this name is kept)."""


def _caption_value(value: Any, where: str) -> list[str] | str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return [v.strip() for v in value]
    raise ValueError(f"{where}: the caption must be a non-empty string or list of strings, got {value!r}")


class ImageTextFolder(CaptionedImageDataset):
    """Captioned images from a ``metadata.jsonl`` / ``metadata.csv`` folder or a sidecar-``.txt`` folder.

    Args:
        data_root: the folder.
        phase: ``'train'`` applies ``drop_caption_rate``; other phases never drop.
        im_preprocessor_config: the preprocessor node (``DalleTransformerPreprocessor``); None keeps the size.
        drop_caption_rate: probability of ``''`` as the caption in the train phase.
        on_bad_image: ``'skip'`` or ``'raise'`` (see :mod:`vqdiff.data.image_files`).
        caption_column: the metadata column holding the caption (``text``, the ``imagefolder`` default).
    """

    def __init__(
        self,
        data_root: str,
        phase: str = "train",
        im_preprocessor_config: Mapping | None = None,
        drop_caption_rate: float = 0.0,
        on_bad_image: str = "skip",
        caption_column: str = "text",
    ):
        super().__init__(data_root, phase, im_preprocessor_config, drop_caption_rate, on_bad_image)
        self.caption_column = str(caption_column)
        jsonl, table = self.root / "metadata.jsonl", self.root / "metadata.csv"
        if jsonl.is_file():
            self.convention = "metadata.jsonl"
            rows = self._jsonl_rows(jsonl)
        elif table.is_file():
            self.convention = "metadata.csv"
            rows = self._csv_rows(table)
        else:
            self.convention = "sidecar"
            rows = self._sidecar_rows()
        # samples: (relative image path, caption or list of captions to draw from)
        self.samples: list[tuple[str, list[str] | str]] = rows

    # ------------------------------------------------------------------ the two conventions
    def _row(self, row: Mapping, where: str) -> tuple[str, list[str] | str]:
        if "file_name" not in row:
            raise ValueError(f"ImageTextFolder: {where} has no 'file_name'")
        if self.caption_column not in row:
            raise ValueError(f"ImageTextFolder: {where} has no caption column {self.caption_column!r} "
                             f"(it has {sorted(row)}); set caption_column")
        name = str(row["file_name"]).strip()
        if not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"ImageTextFolder: {where}: file_name {name!r} must be a path inside the folder")
        return name, _caption_value(row[self.caption_column], where)

    def _jsonl_rows(self, path: Path) -> list[tuple[str, list[str] | str]]:
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"ImageTextFolder: '{path}' line {n} is not JSON: {err}") from err
            if not isinstance(row, dict):
                raise ValueError(f"ImageTextFolder: '{path}' line {n} is not a JSON object")
            rows.append(self._row(row, f"'{path}' line {n}"))
        if not rows:
            raise ValueError(f"ImageTextFolder: '{path}' lists no images")
        return rows

    def _csv_rows(self, path: Path) -> list[tuple[str, list[str] | str]]:
        with open(path, encoding="utf-8", newline="") as f:
            rows = [self._row(row, f"'{path}' row {n}") for n, row in enumerate(csv.DictReader(f), 2)]
        if not rows:
            raise ValueError(f"ImageTextFolder: '{path}' lists no images")
        return rows

    def _sidecar_rows(self) -> list[tuple[str, list[str] | str]]:
        images = list_image_files(self.root)
        if not images:
            raise FileNotFoundError(f"ImageTextFolder: '{self.root}' has no metadata.jsonl, no metadata.csv and "
                                    f"no images ({', '.join(IMAGE_EXTENSIONS)}) with .txt captions")
        rows = []
        for image in images:
            text = image.with_suffix(".txt")
            if not text.is_file():
                raise FileNotFoundError(f"ImageTextFolder: image '{image}' has no caption file '{text}' (a folder "
                                        f"without metadata.jsonl/metadata.csv needs one .txt per image)")
            lines = [ln.strip() for ln in text.read_text(encoding="utf-8").splitlines() if ln.strip()]
            if not lines:
                raise ValueError(f"ImageTextFolder: caption file '{text}' is empty")
            rows.append((image.relative_to(self.root).as_posix(), lines))
        return rows

    # ------------------------------------------------------------------ the data set
    def __len__(self) -> int:
        return len(self.samples)

    def image_path(self, index: int) -> Path:
        return self.root / self.samples[index][0]

    def make_item(self, index: int, image: Any) -> dict:
        caption = self.samples[index][1]
        if isinstance(caption, list):
            caption = caption[int(np.random.randint(len(caption)))]
        return self.caption_item(image, caption)

    def image_groups(self) -> ImageGroups:
        """Distinct images (in order of first row) with all their captions; one sample per row, a listed
        caption drawn at each access (for the token cache)."""
        return group_captioned_rows(self.samples)
