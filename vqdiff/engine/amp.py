"""Mixed precision settings for training: what ``--amp`` means on this device.

Official ``--amp``: fp16 autocast with a ``GradScaler`` (``torch.cuda.amp``). Here ``--amp`` is that;
``--amp --amp_dtype bf16`` (or ``solver.amp_dtype: bf16``) is bf16 autocast, which needs no loss scaling.
On CPU training stays fp32 whatever the flag says.

One deliberate difference: the official solver clips the *scaled* gradients (it never calls
``scaler.unscale_``), so under fp16 its ``max_norm`` acts on ``loss_scale x grad``; here gradients are
unscaled before clipping, so ``max_norm`` means the same with and without ``--amp``. The released models
were trained without ``--amp`` (the official launchers do not pass it), so none depends on that quirk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

__all__ = ["AmpSettings", "resolve_amp", "AMP_DTYPES"]

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


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
    'fp16'/'bf16': that dtype), ``dtype_name`` being ``--amp_dtype`` or ``solver.amp_dtype``."""
    if flag in (None, False, "", "none", "off"):
        return AmpSettings(False, torch.float32)
    name = dtype_name if flag is True else str(flag)
    if name not in AMP_DTYPES:
        raise ValueError(f"--amp must be fp16 or bf16, got {flag!r}")
    if torch.device(device).type != "cuda":
        return AmpSettings(False, torch.float32, note=f"--amp {name} is ignored on {torch.device(device).type}: "
                                                      "training stays in fp32")
    return AmpSettings(True, AMP_DTYPES[name])
