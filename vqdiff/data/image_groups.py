"""What a file-backed data set shows the token-cache writer: its distinct images, every condition of each,
and how the official reader iterates over them.

The official readers differ in what one sample is: COCO yields one sample per caption annotation (an
image with 5 captions is seen 5 times an epoch, each time with a new random crop), CUB-200 one sample per
image with one of its 10 captions drawn at each access, ImageNet one per image with its label. A token
cache that stored one row per sample would freeze one crop, one Gumbel draw and (CUB) one caption; with
:class:`ImageGroups` it encodes each image once per view and keeps every caption, and the reader draws
among them each epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Optional, Sequence, Union

__all__ = ["ImageGroups", "RANDOM_CAPTION", "group_captioned_rows", "labelled_images"]

RANDOM_CAPTION = -1
"""Caption index of a sample whose caption is drawn among all of its image's captions at each access."""


@dataclass
class ImageGroups:
    """Images, conditions and samples of a data set, in the official iteration order.

    Attributes:
        representative: for each distinct image, an item index of the data set whose ``image_path`` is it.
        captions: for each image, every caption (lower-cased as the reader returns them, never dropped),
            or None for a data set without text.
        labels: for each image, its class label, or None.
        samples: the data set's samples as ``(image, caption index)``; the caption index is
            :data:`RANDOM_CAPTION` when the official reader draws one caption per access (CUB-200) or the
            data set has no text.
    """

    representative: list[int]
    captions: Optional[list[list[str]]]
    labels: Optional[list[int]]
    samples: list[tuple[int, int]]

    def __post_init__(self) -> None:
        n = len(self.representative)
        for name, values in (("captions", self.captions), ("labels", self.labels)):
            if values is not None and len(values) != n:
                raise ValueError(f"ImageGroups: {len(values)} {name} entries for {n} images")
        if self.captions is not None:
            for i, caps in enumerate(self.captions):
                if not caps:
                    raise ValueError(f"ImageGroups: image {i} has no caption")
        for image, cap in self.samples:
            if not 0 <= image < n:
                raise ValueError(f"ImageGroups: sample image {image} out of range for {n} images")
            if cap != RANDOM_CAPTION and (self.captions is None or not 0 <= cap < len(self.captions[image])):
                raise ValueError(f"ImageGroups: caption index {cap} out of range for image {image}")


def group_captioned_rows(rows: Sequence[tuple[Hashable, Union[str, list[str]]]]) -> ImageGroups:
    """Group a reader's rows ``(image key, caption)`` into images, in order of first row, one sample per row.

    A row with one caption (COCO's annotations, a ``metadata.jsonl`` line) is that caption of its image; a
    row with a list of captions is a sample whose caption is drawn among them at each access
    (:data:`RANDOM_CAPTION`). Captions are lower-cased, as the readers return them.
    """
    group_of: dict[Hashable, int] = {}
    representative: list[int] = []
    captions: list[list[str]] = []
    samples: list[tuple[int, int]] = []
    for index, (key, caption) in enumerate(rows):
        if key not in group_of:
            group_of[key] = len(representative)
            representative.append(index)
            captions.append([])
        g = group_of[key]
        if isinstance(caption, list):
            samples.append((g, RANDOM_CAPTION))
            captions[g].extend(c.lower() for c in caption)
        else:
            samples.append((g, len(captions[g])))
            captions[g].append(caption.lower())
    return ImageGroups(representative, captions, None, samples)


def labelled_images(labels: Sequence[int]) -> ImageGroups:
    """One image per sample with its class label (ImageNet, class folders; no label dropped)."""
    n = len(labels)
    return ImageGroups(list(range(n)), None, list(labels), [(i, RANDOM_CAPTION) for i in range(n)])
