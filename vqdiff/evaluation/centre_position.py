"""Scoring images of the fifth position ("at the center", :mod:`vqdiff.data.centre_shapes`).

Position: the centroid of the foreground (pixels whose summed absolute difference from the gray background
exceeds ``threshold``) is assigned to the nearest of the five shape centres (four quadrant centres and the
image centre); an image with no foreground has no position. Colour and shape: the image is moved back by a
quarter side (the inverse of :func:`render_centre`) and given to the shapes attribute classifier, which knows
shapes in the top-left quadrant. ``all``: the three at once.
"""

from __future__ import annotations

from typing import Sequence

import torch

from vqdiff.data.centre_shapes import CENTRE_INDEX
from vqdiff.data.synthetic import BACKGROUND
from vqdiff.evaluation.shapes_classifier import ShapesAttributeClassifier, classify

__all__ = ["foreground_positions", "centre_accuracy"]


def foreground_positions(images: torch.Tensor, threshold: float = 60.0) -> torch.Tensor:
    """(B, 3, H, W) in [0, 255] -> (B,) long: nearest shape centre of the foreground centroid (0-3 quadrants
    as ``POSITIONS``, 4 the centre), -1 without foreground."""
    B, _, H, W = images.shape
    background = torch.tensor(BACKGROUND, dtype=images.dtype).view(1, 3, 1, 1)
    fg = (images - background).abs().sum(1) > threshold  # (B, H, W)
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5,
                            indexing="ij")
    centres = torch.tensor([[H / 4, W / 4], [H / 4, 3 * W / 4], [3 * H / 4, W / 4], [3 * H / 4, 3 * W / 4],
                            [H / 2, W / 2]], dtype=torch.float64)
    out = torch.full((B,), -1, dtype=torch.long)
    for i in range(B):
        n = fg[i].sum()
        if n == 0:
            continue
        cy, cx = (yy * fg[i]).sum() / n, (xx * fg[i]).sum() / n
        out[i] = int(((centres - torch.stack([cy, cx])) ** 2).sum(1).argmin())
    return out


def centre_accuracy(classifier: ShapesAttributeClassifier, images: torch.Tensor, colors: Sequence[int],
                    shapes: Sequence[int]) -> dict[str, float]:
    """Share of centre images drawn at the centre with the asked colour and shape (and all three)."""
    if len(images) == 0 or len(images) != len(colors) or len(colors) != len(shapes):
        raise ValueError(f"need one colour and shape per image: {len(images)} images, {len(colors)} colours, "
                         f"{len(shapes)} shapes")
    shift = images.shape[-1] // 4
    moved_back = torch.roll(images, (-shift, -shift), dims=(2, 3))
    pred = classify(classifier, moved_back)
    right = {"color": pred["color"] == torch.as_tensor(colors).long(),
             "shape": pred["shape"] == torch.as_tensor(shapes).long(),
             "position": foreground_positions(images) == CENTRE_INDEX}
    acc = {k: float(v.float().mean()) for k, v in right.items()}
    acc["all"] = float((right["color"] & right["shape"] & right["position"]).float().mean())
    return acc
