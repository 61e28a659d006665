"""Image preprocessing of the official data sets (``DalleTransformerPreprocessor``), without albumentations.

Semantics (official ``image_synthesis/data/utils/image_preprocessor.py``):

- ``train``: take a square of side ``s = min(h, w)`` at a random offset drawn uniformly from
  ``[3(h-s)//8, max(3(h-s)//8 + 1, 5(h-s)//8))`` (the same for the width), resize it (PIL bicubic) to a
  random side ``t = int(U(size, max(min(s, round(9/8 * size)), size) + 1))``, then crop ``size x size``
  at a uniformly random position. No flips.
- ``val``: resize the shorter side to ``size`` (the longer to ``int(long * size / short)``), centre crop.

The output is a float32 tensor ``(3, size, size)`` with values in ``[0, 255]`` (the model convention).
Randomness comes from an optional ``numpy.random.Generator`` or ``torch.Generator``; without one the
process-global NumPy RNG is used (which :func:`vqdiff.utils.seed.worker_init_fn` seeds per worker).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image

__all__ = ["DalleTransformerPreprocessor", "to_pil_rgb"]



def to_pil_rgb(image: Any) -> Image.Image:
    """A PIL RGB image from a PIL image or a uint8-like ``(H, W, 3)`` / ``(H, W)`` array."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        return Image.fromarray(np.asarray(image).astype(np.uint8)).convert("RGB")
    raise TypeError(f"expected a PIL image or an (H, W, 3) array, got {type(image).__name__}")


def _uniform(lo: float, hi: float, generator: Any) -> float:
    """One draw of U(lo, hi) from ``generator`` (numpy or torch) or the global numpy RNG."""
    if isinstance(generator, torch.Generator):
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
    elif generator is not None:
        u = float(generator.random())
    else:
        u = float(np.random.random())
    return lo + (hi - lo) * u


class DalleTransformerPreprocessor:
    """Square random crop + random rescale + random crop (train) or resize + centre crop (val).

    Args:
        size: output side in pixels.
        phase: ``'train'`` (random) or ``'val'`` / ``'test'`` (deterministic).
        additional_targets: names of extra images (e.g. ``{'image2': 'image'}``) that receive the same
            geometric transform; pass them as keyword arguments to :meth:`__call__`.
    """

    def __init__(self, size: int = 256, phase: str = "train", additional_targets: Mapping[str, str] | None = None):
        if int(size) <= 0:
            raise ValueError(f"DalleTransformerPreprocessor: size must be positive, got {size}")
        if phase not in ("train", "val", "test"):
            raise ValueError(f"DalleTransformerPreprocessor: phase must be 'train', 'val' or 'test', got {phase!r}")
        self.size = int(size)
        self.phase = phase
        self.additional_targets = dict(additional_targets or {})

    # -- geometry --------------------------------------------------------------------------------
    def _train_params(self, w: int, h: int, generator: Any) -> dict:
        s = min(h, w)
        offs = []
        for extent in (w, h):
            lo = 3 * (extent - s) // 8
            hi = max(lo + 1, 5 * (extent - s) // 8)
            offs.append(int(_uniform(lo, hi, generator)))
        t_max = max(min(s, round(9 / 8 * self.size)), self.size)
        t = int(_uniform(self.size, t_max + 1, generator))
        t = min(t, t_max)  # U(a, b) may return b itself in floating point
        # a uniform crop start in 0 .. t - size (albumentations RandomCrop: int((t - size + 1) * U[0, 1)))
        y0 = min(int((t - self.size + 1) * _uniform(0.0, 1.0, generator)), t - self.size)
        x0 = min(int((t - self.size + 1) * _uniform(0.0, 1.0, generator)), t - self.size)
        return {"square": (offs[0], offs[1], s), "t": t, "crop": (x0, y0)}

    def _apply_train(self, img: Image.Image, p: dict) -> np.ndarray:
        ox, oy, s = p["square"]
        img = img.crop((ox, oy, ox + s, oy + s)).resize((p["t"], p["t"]), Image.BICUBIC)
        x0, y0 = p["crop"]
        arr = np.asarray(img, dtype=np.uint8)
        return arr[y0:y0 + self.size, x0:x0 + self.size]

    def _apply_val(self, img: Image.Image) -> np.ndarray:
        w, h = img.size
        if w < h:
            new_w, new_h = self.size, int(h * self.size / w)
        else:
            new_h, new_w = self.size, int(w * self.size / h)
        arr = np.asarray(img.resize((new_w, new_h), Image.BICUBIC), dtype=np.uint8)
        y0, x0 = (new_h - self.size) // 2, (new_w - self.size) // 2
        return arr[y0:y0 + self.size, x0:x0 + self.size]

    @staticmethod
    def _to_tensor(arr: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(arr).transpose(2, 0, 1).astype(np.float32))

    # -- API -------------------------------------------------------------------------------------
    def __call__(self, image: Any, generator: Any = None, **extra: Any) -> Any:
        """Transform ``image`` (PIL or ``(H, W, 3)`` uint8) to a float32 ``(3, size, size)`` tensor in [0, 255].

        With extra images (named in ``additional_targets``), returns ``{'image': ..., name: ...}`` with the
        same crop and scale applied to each.
        """
        for name in extra:
            if name not in self.additional_targets:
                raise ValueError(f"DalleTransformerPreprocessor: unexpected image {name!r}; declare it in "
                                 f"additional_targets (have {sorted(self.additional_targets)})")
        img = to_pil_rgb(image)
        others = {k: to_pil_rgb(v) for k, v in extra.items()}
        for k, v in others.items():
            if v.size != img.size:
                raise ValueError(f"DalleTransformerPreprocessor: {k!r} is {v.size}, the image is {img.size}")
        if self.phase == "train":
            params = self._train_params(img.size[0], img.size[1], generator)
            out = {"image": self._to_tensor(self._apply_train(img, params))}
            out.update({k: self._to_tensor(self._apply_train(v, params)) for k, v in others.items()})
        else:
            out = {"image": self._to_tensor(self._apply_val(img))}
            out.update({k: self._to_tensor(self._apply_val(v)) for k, v in others.items()})
        return out if extra else out["image"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, phase={self.phase!r})"
