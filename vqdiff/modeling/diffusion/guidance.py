"""Classifier-free guidance scales per diffusion step (arXiv 2205.16007 Eq. 9-10, with ``s = s(t)``).

A guidance scale is a number (the same at every step) or a schedule over the steps; :func:`guidance_scales`
turns either into the list of T scales and is the one range check of a scale (finite, else ValueError).
Whether guidance is on is decided once, by ``SamplingOptions.is_guided``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Optional

import torch

__all__ = ["guidance_number", "guidance_scales"]

_GUIDANCE_KINDS = ("constant", "linear", "cosine")


def guidance_number(spec) -> Optional[float]:
    """``spec`` as a float when it is a plain number (int, float, numpy scalar, 0-d tensor), else None."""
    if isinstance(spec, bool):
        return None
    if isinstance(spec, numbers.Real):
        return float(spec)
    if torch.is_tensor(spec) and spec.dim() == 0:
        return float(spec)
    return None


def guidance_scales(spec, num_timesteps: int) -> list[float]:
    """The guidance scale at each diffusion step ``t = 0 .. T-1`` (list index t); every scale must be
    finite (a NaN or infinite scale would turn every sampled token into noise): ValueError otherwise.

    ``spec``: a number (constant); ``'constant:s'``; ``'linear:a:b'`` / ``'cosine:a:b'`` going from ``a``
    at the first, noisiest step ``t = T-1`` to ``b`` at the last step ``t = 0``, with progress
    ``p = (T-1-t)/(T-1)``: linear ``a + (b-a) p``, cosine ``a + (b-a) (1 - cos(pi p))/2``; a mapping
    ``{'kind', 'start', 'end'}`` (or ``'scale'`` for constant); a callable ``p -> scale``; or a sequence
    of T scales. Skip-step and MaskGIT samplers use the scale of the step ``t`` they feed the network.
    """
    scales = _guidance_scale_list(spec, num_timesteps)
    bad = [(t, s) for t, s in enumerate(scales) if not math.isfinite(s)]
    if bad:
        raise ValueError(f"guidance scale must be finite, got {bad[0][1]} (at step t={bad[0][0]}) from {spec!r}")
    return scales


def _guidance_scale_list(spec, num_timesteps: int) -> list[float]:
    T = int(num_timesteps)
    prog = [1.0 if T == 1 else (T - 1 - t) / (T - 1) for t in range(T)]
    if isinstance(spec, bool):
        raise ValueError(f"guidance scale must be a number or a schedule, got {spec!r}")
    if guidance_number(spec) is not None:
        return [guidance_number(spec)] * T
    if callable(spec):
        return [float(spec(p)) for p in prog]
    if isinstance(spec, str):
        parts = spec.split(":")
        kind = parts[0].strip().lower()
        try:
            vals = [float(v) for v in parts[1:]]
        except ValueError:
            raise ValueError(f"guidance schedule {spec!r}: cannot read the numbers") from None
        if kind == "constant" and len(vals) == 1:
            vals = vals * 2
        if kind not in _GUIDANCE_KINDS or len(vals) != 2:
            raise ValueError(f"guidance schedule {spec!r}: expected 'constant:s', 'linear:a:b' or 'cosine:a:b'")
        spec = {"kind": kind, "start": vals[0], "end": vals[1]}
    if isinstance(spec, Mapping):
        kind = str(spec.get("kind", "constant")).lower()
        if kind not in _GUIDANCE_KINDS:
            raise ValueError(f"guidance schedule kind {kind!r} unknown; expected one of {_GUIDANCE_KINDS}")
        a = float(spec.get("start", spec.get("scale", 1.0)))
        b = float(spec.get("end", a))
        if kind == "constant":
            return [a] * T
        if kind == "linear":
            return [a + (b - a) * p for p in prog]
        return [a + (b - a) * (1 - math.cos(math.pi * p)) / 2 for p in prog]
    if isinstance(spec, (list, tuple)) or torch.is_tensor(spec):
        vals = [float(v) for v in spec]
        if len(vals) != T:
            raise ValueError(f"a guidance scale list needs one value per step ({T}), got {len(vals)}")
        return vals
    raise ValueError(f"guidance scale must be a number or a schedule, got {type(spec).__name__} {spec!r}")
