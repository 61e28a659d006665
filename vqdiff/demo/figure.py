"""The demo's picture: one column per held-out caption, the caption above it, samples with the caption over
samples of the same column drawn with the empty caption.

    heldout_figure(with_text, empty, captions, per_caption, rows=8).save("heldout_figure.png")
"""

from __future__ import annotations

import textwrap
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = ["heldout_figure"]

_GAP = 4          # pixels between cells
_BAND = 14        # height of the band that names the two halves
_BACKGROUND = (255, 255, 255)
_INK = (0, 0, 0)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def heldout_figure(with_text: Sequence[Image.Image], empty: Sequence[Image.Image], captions: Sequence[str],
                   per_caption: int, rows: int = 8, scale: int = 2) -> Image.Image:
    """The grid as one RGB image.

    Args:
        with_text / empty: samples in caption order, ``per_caption`` consecutive images per caption (as
            ``vqdiff.demo.shapes.sample_heldout`` returns them), with the caption and with ``''``.
        captions: the distinct captions, one per column.
        rows: samples shown per caption and half (at most ``per_caption``).
        scale: each sample is enlarged by this integer factor (nearest neighbour: the tokens stay visible).
    """
    if len(with_text) != len(captions) * per_caption or len(empty) != len(with_text):
        raise ValueError(f"{len(with_text)} / {len(empty)} samples for {len(captions)} captions x {per_caption}")
    rows = min(rows, per_caption)
    side = with_text[0].width * scale
    lines = [textwrap.wrap(c.replace(" on a gray background", ""), width=max(8, side // 6)) for c in captions]
    head = 2 + 11 * max(len(ls) for ls in lines)
    width = len(captions) * (side + _GAP) + _GAP
    height = head + 2 * (_BAND + rows * (side + _GAP)) + _GAP
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(10)
    for col, wrapped in enumerate(lines):
        x = _GAP + col * (side + _GAP)
        for i, line in enumerate(wrapped):
            draw.text((x, 1 + 11 * i), line, fill=_INK, font=font)
    for half, (title, images) in enumerate((("with the caption", with_text), ("with the empty caption", empty))):
        top = head + half * (_BAND + rows * (side + _GAP))
        draw.text((_GAP, top + 1), title, fill=_INK, font=font)
        for col in range(len(captions)):
            for row in range(rows):
                im = images[col * per_caption + row].convert("RGB").resize((side, side), Image.NEAREST)
                canvas.paste(im, (_GAP + col * (side + _GAP), top + _BAND + row * (side + _GAP)))
    return canvas
