"""Mixed precision settings for training: what ``--amp`` means on this device.

Official ``--amp``: fp16 autocast with a ``GradScaler`` (``torch.cuda.amp``). Here ``--amp`` is that;
``--amp --amp_dtype bf16`` (or ``solver.amp_dtype: bf16``) is bf16 autocast, which needs no loss scaling;
``--amp_dtype auto`` is bf16 where the device runs it natively and otherwise fp16 on CUDA, fp32 on the CPU
(the rules of sampling's ``precision``: ``vqdiff.utils.precision``). On the CPU, bf16 autocast is used when
asked for (``bf16``, or ``auto`` on a CPU with AMX or AVX512-BF16; on a CPU without them it is emulated and
slower than fp32, and the log says so); fp16 is CUDA-only and is ignored on the CPU (training stays fp32).

One deliberate difference: the official solver clips the *scaled* gradients (it never calls
``scaler.unscale_``), so under fp16 its ``max_norm`` acts on ``loss_scale x grad``; here gradients are
unscaled before clipping, so ``max_norm`` means the same with and without ``--amp``. The released models
were trained without ``--amp`` (the official launchers do not pass it), so none depends on that quirk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from vqdiff.utils.precision import native_bf16

__all__ = ["AmpSettings", "resolve_amp", "AMP_DTYPES", "AMP_DTYPE_NAMES"]

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
AMP_DTYPE_NAMES = ("fp16", "bf16", "auto")
"""The values of ``--amp_dtype`` / ``solver.amp_dtype``."""


@dataclass(frozen=True)
class AmpSettings:
    """``enabled``: autocast on; ``dtype``: its dtype; ``use_scaler``: a GradScaler (fp16 only)."""

    enabled: bool
    dtype: torch.dtype
    note: Optional[str] = None  # why a requested AMP is off

    @property
    def use_scaler(self) -> bool:
        return self.enabled and self.dtype == torch.float16

    @property
    def name(self) -> str:
        return next(k for k, v in AMP_DTYPES.items() if v == self.dtype) if self.enabled else "fp32"


def resolve_amp(flag: Any, dtype_name: str, device: torch.device | str) -> AmpSettings:
    """The AMP settings on ``device`` for ``--amp`` value ``flag`` (False/None: off; True: ``dtype_name``;
    'fp16'/'bf16'/'auto': that), ``dtype_name`` being ``--amp_dtype`` or ``solver.amp_dtype``.

    ``auto``: bf16 where :func:`~vqdiff.utils.precision.native_bf16` holds, else fp16 on CUDA and fp32 on the
    CPU. On the CPU fp16 is ignored (fp32) and bf16 runs (with a note when the CPU only emulates it)."""
    if flag in (None, False, "", "none", "off"):
        return AmpSettings(False, torch.float32)
    name = dtype_name if flag is True else str(flag)
    if name not in AMP_DTYPE_NAMES:
        raise ValueError(f"--amp must be fp16, bf16 or auto, got {flag!r}")
    kind = torch.device(device).type
    if name == "auto":
        native, reason = native_bf16(device)
        if native:
            return AmpSettings(True, torch.bfloat16, note=f"--amp auto -> bf16: {reason}")
        if kind == "cuda":
            return AmpSettings(True, torch.float16, note=f"--amp auto -> fp16: {reason}")
        return AmpSettings(False, torch.float32, note=f"--amp auto -> fp32 on {kind}: {reason}")
    if kind == "cpu" and name == "bf16":
        native, reason = native_bf16(device)
        return AmpSettings(True, torch.bfloat16, note=None if native else f"--amp bf16 on this CPU: {reason}")
    if kind != "cuda":
        return AmpSettings(False, torch.float32, note=f"--amp {name} is ignored on {kind}: training stays in fp32")
    return AmpSettings(True, AMP_DTYPES[name])
