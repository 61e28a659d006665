"""The demo's recipes, one typed preset each: what a run trains and how it samples.

A preset is a frozen dataclass, so a recipe experiment changes one field by name
(``PRESETS["quick"].replace(iters=3000)``) and a typo is an error, not a silently ignored key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vqdiff.data.synthetic import CAPTION_MODES

__all__ = ["DemoPreset", "PRESETS", "get_preset"]


@dataclass(frozen=True)
class DemoPreset:
    """One recipe of the shapes demo.

    Attributes:
        vq_steps: VQ-VAE training steps (batch 16, ``configs/tiny_vqvae_shapes.yaml``).
        iters: diffusion training iterations.
        batch: diffusion batch size.
        layers, width, heads: the text-to-image network (``Text2ImageTransformer``).
        train_images: distinct training images (the held-out combinations excluded).
        per_caption: samples drawn per held-out caption when scoring.
        lr: peak learning rate (linear warm-up over a tenth of the run, cosine decay to ``lr / 20``).
        captions: ``'full'`` (every training image says colour, shape and position) or ``'partial'`` (one of
            its seven captions naming one, two or all three attributes, drawn per epoch).
        padding_mask: the cross-attention ignores the caption's padding (``condition_padding_mask``).
        context_length: caption tokens (start and end included); the demo's longest caption has 13.
        truncation_rate, guidance_scale: the sampler's defaults for the held-out captions.
    """

    vq_steps: int
    iters: int
    batch: int = 32
    layers: int = 2
    width: int = 128
    heads: int = 4
    train_images: int = 2000
    per_caption: int = 8
    lr: float = 1e-3
    captions: str = "full"
    padding_mask: bool = False
    context_length: int = 77
    truncation_rate: float = 0.85
    guidance_scale: float = 3.0

    def __post_init__(self) -> None:
        positive = ("vq_steps", "iters", "batch", "layers", "width", "heads", "train_images", "per_caption")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"demo preset: {name} must be a positive int, got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"demo preset: width {self.width} is not a multiple of heads {self.heads}")
        if self.captions not in CAPTION_MODES:
            raise ValueError(f"demo preset: captions must be one of {CAPTION_MODES}, got {self.captions!r}")
        if not 13 <= self.context_length <= 77:
            raise ValueError(f"demo preset: context_length must be in 13 .. 77 (the longest caption has 13 "
                             f"tokens; the text tower has 77 positions), got {self.context_length}")
        if not 0 < self.truncation_rate <= 1 or not self.lr > 0 or not self.guidance_scale > 0:
            raise ValueError(f"demo preset: truncation_rate in (0, 1], lr > 0 and guidance_scale > 0, got "
                             f"{self.truncation_rate}, {self.lr}, {self.guidance_scale}")

    def replace(self, **changes) -> "DemoPreset":
        """A copy with ``changes`` (field names; an unknown one is a TypeError naming it)."""
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, DemoPreset] = {
    # The recipe (docs/beyond.md, "Why the demo did not compose"): the caption's 13 tokens with the padding
    # masked out of the cross-attention (77 positions, 64 of them identical padding, drowned the four words
    # that matter and cost 2.6x the time), and twice the iterations; partial captions and 4 layers measured
    # worse on the same seed and codec.
    "full": DemoPreset(vq_steps=1000, iters=8000, per_caption=16, padding_mask=True, context_length=16),
    "quick": DemoPreset(vq_steps=1000, iters=4000, padding_mask=True, context_length=16),
    # the test suite's run: it only has to show that held-out text is followed far better than empty text.
    # A shorter codec run keeps colour and position (shape blurs), and half the quick preset's iterations
    "ci": DemoPreset(vq_steps=400, iters=2000, per_caption=4, padding_mask=True, context_length=16),
}


def get_preset(name: str) -> DemoPreset:
    """The preset called ``name`` (a ValueError lists the known ones)."""
    if name not in PRESETS:
        raise ValueError(f"unknown demo preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]
