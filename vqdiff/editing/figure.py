"""A picture of an inpainting request: input | mask | result, one row per image."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["inpaint_figure", "save_inpaint_figure"]


def inpaint_figure(image: torch.Tensor, mask: torch.Tensor, result: torch.Tensor, gap: int = 2) -> np.ndarray:
    """A uint8 (H_total, W_total, 3) array: per row the input, the input with the repainted region in
    translucent red, and the result. ``image``/``result`` (B, 3, H, W) in [0, 255]; ``mask`` (B, H, W) or
    (H, W) bool (resized to the image size with nearest neighbours when it differs)."""
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if result.dim() == 3:
        result = result.unsqueeze(0)
    if image.shape != result.shape:
        raise ValueError(f"input {tuple(image.shape)} and result {tuple(result.shape)} differ in shape")
    B, _, H, W = image.shape
    m = mask.bool()
    if m.dim() == 2:
        m = m.unsqueeze(0)
    m = m.expand(B, -1, -1) if m.shape[0] == 1 else m
    if tuple(m.shape[-2:]) != (H, W):
        m = F.interpolate(m[:, None].float(), size=(H, W), mode="nearest")[:, 0] > 0.5
    img = image.detach().float().cpu().clamp(0, 255)
    red = torch.tensor([255.0, 0.0, 0.0]).view(1, 3, 1, 1)
    overlay = torch.where(m.cpu()[:, None], 0.45 * img + 0.55 * red, 0.6 * img)
    res = result.detach().float().cpu().clamp(0, 255)
    rows = []
    sep = torch.full((B, 3, H, gap), 255.0)
    grid = torch.cat([img, sep, overlay, sep, res], dim=3)  # (B, 3, H, 3W + 2gap)
    for b in range(B):
        rows.append(grid[b])
        if b + 1 < B:
            rows.append(torch.full((3, gap, grid.shape[-1]), 255.0))
    full = torch.cat(rows, dim=1)
    return full.round().to(torch.uint8).permute(1, 2, 0).numpy()


def save_inpaint_figure(path: Union[str, Path], image: torch.Tensor, mask: torch.Tensor, result: torch.Tensor) -> Path:
    """Write :func:`inpaint_figure` as a PNG (folders created); returns the path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(inpaint_figure(image, mask, result)).save(path)
    return path
