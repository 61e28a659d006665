"""A fifth position for the captioned shapes: "at the center", the new concept the LoRA demo teaches.

The base demo model only ever saw the four quadrants (:mod:`vqdiff.data.synthetic`); here the same shapes and
colours are drawn in the middle of the image, captioned "a red circle at the center on a gray background".
Four of the twelve colour x shape combinations (one per colour: shape index = colour index mod 3) are held out
of the ``train`` split, so the fine-tuned model is scored on centre captions it never saw. ``replay`` mixes in
that share of ordinary quadrant images (the base's own ``train`` split) so that fine-tuning keeps the old
concepts (prior preservation). Sample ``i`` depends only on ``(seed, split, i)``.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch.utils.data import Dataset

from vqdiff.data.synthetic import COLORS, SHAPES, ShapesDataset, ShapeSpec, class_label, render_shape

__all__ = ["CENTRE", "CENTRE_INDEX", "centre_combinations", "heldout_centre_combinations", "centre_caption",
           "render_centre", "CentreShapesDataset"]

CENTRE = "center"
CENTRE_INDEX = 4  # the position index after the four quadrants


def centre_combinations() -> list[tuple[str, str]]:
    return list(itertools.product(COLORS, SHAPES))


def heldout_centre_combinations() -> list[tuple[str, str]]:
    """One combination per colour: the shape with index ``colour index mod 3``."""
    return [(c, s) for c, s in centre_combinations() if SHAPES.index(s) == list(COLORS).index(c) % len(SHAPES)]


def centre_caption(color: str, shape: str) -> str:
    return f"a {color} {shape} at the {CENTRE} on a gray background"


def render_centre(color: str, shape: str, resolution: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """The top-left drawing of :func:`render_shape` moved by a quarter of the side in both axes: (H, W, 3) uint8
    centred on the image (the background is uniform, and the shape stays a quarter side away from the edges)."""
    image = render_shape(ShapeSpec(color, shape, "top left"), resolution, rng)
    shift = int(resolution) // 4
    return np.roll(image, (shift, shift), axis=(0, 1))


class CentreShapesDataset(Dataset):
    """Items as :class:`ShapesDataset` (``position`` = :data:`CENTRE_INDEX` for centre images).

    Args:
        num_samples: dataset length; resolution: image side in pixels.
        split: ``'train'`` (held-out centre combinations excluded) or ``'heldout'`` (only those).
        seed: base seed. replay: share of items that are ordinary quadrant images of the base's ``train`` split.
    """

    def __init__(self, num_samples: int = 300, resolution: int = 32, split: str = "train", seed: int = 0,
                 replay: float = 0.0):
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if not 0.0 <= replay < 1.0:
            raise ValueError(f"replay must be in [0, 1), got {replay}")
        self.num_samples, self.resolution, self.split = int(num_samples), int(resolution), split
        self.seed, self.replay = int(seed), float(replay)
        held = set(heldout_centre_combinations())
        self.combinations = [c for c in centre_combinations() if (c in held) == (split == "heldout")]
        self.old = ShapesDataset(num_samples, resolution, split="train", seed=seed + 7919)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        rng = np.random.default_rng([self.seed, ("train", "heldout").index(self.split), int(index), 5])
        if self.replay > 0 and rng.random() < self.replay:
            return self.old[index]
        color, shape = self.combinations[int(rng.integers(len(self.combinations)))]
        image = render_centre(color, shape, self.resolution, rng)
        return {"image": torch.from_numpy(image).permute(2, 0, 1).float(), "text": centre_caption(color, shape),
                "label": class_label(ShapeSpec(color, shape, "top left")), "color": list(COLORS).index(color),
                "shape": SHAPES.index(shape), "position": CENTRE_INDEX}
