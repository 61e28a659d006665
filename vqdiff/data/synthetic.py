"""Deterministic captioned shapes: the data every test and the CPU demo use, no files needed.

Each sample is one coloured shape on a gray background, in one of four quadrants, with a caption that
says exactly what is drawn ("a red circle at the top left on a gray background"), a class label (colour x
shape, for class-conditional models) and its attributes (for the text-following evaluation).

Sample ``i`` of a dataset depends only on ``(seed, i)``, so two datasets built alike are identical.
With ``captions="partial"`` an item's ``text`` is the list of its :func:`partial_captions` (one, two or all
three attributes), for a token cache that draws one per epoch, so each word is also seen on its own.
A fixed set of (colour, shape, position) combinations is held out of the ``train`` split and forms the
``heldout`` split: a model that draws them correctly composes attributes it never saw together.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "COLORS",
    "SHAPES",
    "POSITIONS",
    "BACKGROUND",
    "ShapeSpec",
    "all_combinations",
    "heldout_combinations",
    "render_shape",
    "make_caption",
    "partial_captions",
    "CAPTION_MODES",
    "class_label",
    "num_classes",
    "ShapesDataset",
]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 210, 40),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
BACKGROUND: tuple[int, int, int] = (128, 128, 128)


@dataclass(frozen=True)
class ShapeSpec:
    color: str
    shape: str
    position: str

    @property
    def indices(self) -> tuple[int, int, int]:
        return list(COLORS).index(self.color), SHAPES.index(self.shape), POSITIONS.index(self.position)


def all_combinations() -> list[ShapeSpec]:
    return [ShapeSpec(c, s, p) for c, s, p in itertools.product(COLORS, SHAPES, POSITIONS)]


def heldout_combinations() -> list[ShapeSpec]:
    """Eight of the 48 combinations, chosen so every colour, shape and position still occurs in training.

    Rule: (3*colour + 5*shape + 7*position) % 6 == 0 -- a fixed, documented choice.
    """
    out = []
    for spec in all_combinations():
        c, s, p = spec.indices
        if (3 * c + 5 * s + 7 * p) % 6 == 0:
            out.append(spec)
    return out


def make_caption(spec: ShapeSpec) -> str:
    return f"a {spec.color} {spec.shape} at the {spec.position} on a gray background"


def partial_captions(spec: ShapeSpec) -> list[str]:
    """Every caption of ``spec`` naming a non-empty subset of its colour, shape and position, ordered by
    how many attributes it names, then colour before shape before position; the last is :func:`make_caption`
    (7 captions: "a red shape on a gray background", "a circle on a gray background", "a shape at the top
    left on a gray background", "a red circle on a gray background", ..., the full caption)."""
    out = []
    for size in (1, 2, 3):
        for named in itertools.combinations(("color", "shape", "position"), size):
            noun = f"{spec.color} " if "color" in named else ""
            noun += spec.shape if "shape" in named else "shape"
            where = f" at the {spec.position}" if "position" in named else ""
            out.append(f"a {noun}{where} on a gray background")
    return out


CAPTION_MODES = ("full", "partial")
"""``ShapesDataset(captions=...)``: ``'full'`` one caption (str) per item, ``'partial'`` the list of
:func:`partial_captions`."""


def num_classes() -> int:
    return len(COLORS) * len(SHAPES)


def class_label(spec: ShapeSpec) -> int:
    """Class id of colour x shape (position is free), in ``0 .. num_classes()-1``."""
    c, s, _ = spec.indices
    return c * len(SHAPES) + s


def render_shape(spec: ShapeSpec, resolution: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Draw ``spec`` as a uint8 ``(H, W, 3)`` array; ``rng`` adds a small jitter of centre and size."""
    res = int(resolution)
    img = np.empty((res, res, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    _, _, p = spec.indices
    row, col = divmod(p, 2)
    cy, cx = (row + 0.5) * res / 2, (col + 0.5) * res / 2
    radius = res * 0.17
    if rng is not None:
        cy += rng.uniform(-1, 1) * res / 24
        cx += rng.uniform(-1, 1) * res / 24
        radius *= rng.uniform(0.85, 1.15)
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float64) + 0.5
    dy, dx = yy - cy, xx - cx
    if spec.shape == "circle":
        mask = dy**2 + dx**2 <= radius**2
    elif spec.shape == "square":
        half = radius * 0.85
        mask = (np.abs(dy) <= half) & (np.abs(dx) <= half)
    elif spec.shape == "triangle":
        # apex up: the half-width grows linearly from 0 at the top to `radius` at the base
        top, bottom = cy - radius, cy + radius * 0.8
        frac = (yy - top) / (bottom - top)
        mask = (frac >= 0) & (frac <= 1) & (np.abs(dx) <= frac * radius)
    else:
        raise ValueError(f"unknown shape {spec.shape!r}; known: {SHAPES}")
    img[mask] = COLORS[spec.color]
    return img


class ShapesDataset(Dataset):
    """Captioned shapes in the official batch format.

    Items: ``{'image': float32 (3, H, W) in [0, 255], 'text': str, 'label': int,
    'color': int, 'shape': int, 'position': int}`` (``'text'`` a list of str with ``captions='partial'``).

    Args:
        num_samples: dataset length.
        resolution: image side in pixels.
        split: ``'train'`` (held-out combinations excluded), ``'heldout'`` (only those), or ``'all'``.
        seed: base seed; sample ``i`` is drawn from ``(seed, i)`` alone.
        jitter: vary centre and size a little.
        drop_caption_rate: probability of an empty caption (for learnable classifier-free guidance),
            decided deterministically per index.
        captions: one of ``CAPTION_MODES``: ``'full'`` (default) the caption naming all three attributes;
            ``'partial'`` the list of :func:`partial_captions` (a token cache stores them all and draws one
            per epoch; the models take one str per item, so train such a set through the cache).
    """

    def __init__(
        self,
        num_samples: int = 1000,
        resolution: int = 32,
        split: str = "train",
        seed: int = 0,
        jitter: bool = True,
        drop_caption_rate: float = 0.0,
        data_root: str | None = None,
        captions: str = "full",
    ):
        if captions not in CAPTION_MODES:
            raise ValueError(f"ShapesDataset: captions must be one of {CAPTION_MODES}, got {captions!r}")
        if split not in ("train", "heldout", "all"):
            raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.num_samples = int(num_samples)
        self.resolution = int(resolution)
        self.split = split
        self.seed = int(seed)
        self.jitter = jitter
        self.drop_caption_rate = float(drop_caption_rate)
        self.captions = captions
        held = set(heldout_combinations())
        combos = all_combinations()
        if split == "train":
            self.combinations = [c for c in combos if c not in held]
        elif split == "heldout":
            self.combinations = [c for c in combos if c in held]
        else:
            self.combinations = combos

    def __len__(self) -> int:
        return self.num_samples

    def spec(self, index: int) -> ShapeSpec:
        rng = self._rng(index)
        return self.combinations[int(rng.integers(len(self.combinations)))]

    def _rng(self, index: int) -> np.random.Generator:
        split_id = ("train", "heldout", "all").index(self.split)
        return np.random.default_rng([self.seed, split_id, int(index)])

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        rng = self._rng(index)
        spec = self.combinations[int(rng.integers(len(self.combinations)))]
        image = render_shape(spec, self.resolution, rng if self.jitter else None)
        text = make_caption(spec) if self.captions == "full" else partial_captions(spec)
        if self.drop_caption_rate > 0 and rng.random() < self.drop_caption_rate:
            text = ""
        c, s, p = spec.indices
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1).float(),
            "text": text,
            "label": class_label(spec),
            "color": c,
            "shape": s,
            "position": p,
        }
