"""CUB-200 reader (official ``Cub200Dataset``).

Layout under ``data_root``: ``{phase}/filenames.pickle`` (a pickled list of ``'<class>/<name>'``, bytes or
str; read by ``safe_index.read_name_list``, which imports nothing), ``images/<name>.jpg`` and captions
``text/text/<name>.txt`` (one caption a line). The captions are read once at construction; each access
picks one line at random (process-global NumPy RNG).
Items: ``{'image': float32 (3, S, S) in [0, 255], 'text': str}`` (lower-cased, newline stripped).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .image_groups import RANDOM_CAPTION, ImageGroups
from .image_files import CaptionedImageDataset, require_dir, require_file
from .safe_index import read_name_list

__all__ = ["Cub200Dataset"]


class Cub200Dataset(CaptionedImageDataset):
    def __init__(
        self,
        data_root: str,
        phase: str = "train",
        im_preprocessor_config: Mapping | None = None,
        drop_caption_rate: float = 0.0,
        on_bad_image: str = "skip",
    ):
        super().__init__(data_root, phase, im_preprocessor_config, drop_caption_rate, on_bad_image)
        split = require_file(self.root / phase / "filenames.pickle", f"Cub200Dataset split file for phase '{phase}'")
        self.image_folder = require_dir(self.root / "images", "Cub200Dataset image folder")
        text_folder = require_dir(self.root / "text" / "text", "Cub200Dataset caption folder")
        self.names = read_name_list(split)  # a restricted unpickler: a crafted file cannot run code
        if not self.names:
            raise ValueError(f"Cub200Dataset: '{split}' lists no images")
        self.captions: dict[str, list[str]] = {}
        for name in self.names:
            path = require_file(text_folder / f"{name}.txt", "Cub200Dataset caption file")
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
            lines = [ln for ln in lines if ln]
            if not lines:
                raise ValueError(f"Cub200Dataset: caption file '{path}' is empty")
            self.captions[name] = lines

    def __len__(self) -> int:
        return len(self.names)

    def image_path(self, index: int) -> Path:
        return self.image_folder / f"{self.names[index]}.jpg"

    def make_item(self, index: int, image: Any) -> dict:
        lines = self.captions[self.names[index]]
        return self.caption_item(image, lines[int(np.random.randint(len(lines)))])

    def image_groups(self) -> ImageGroups:
        """Every image with all its caption lines; one sample per image whose caption is drawn at each
        access, as this reader does (for the token cache)."""
        captions = [[ln.lower() for ln in self.captions[name]] for name in self.names]
        return ImageGroups(list(range(len(self.names))), captions, None,
                           [(i, RANDOM_CAPTION) for i in range(len(self.names))])
