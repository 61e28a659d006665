"""Which floating-point precision the network runs in: ``auto | fp32 | bf16 | fp16``, and whether this device
runs bf16 natively (fast) or only emulates it (slow).

``auto`` picks bf16 where the device computes it natively and fp32 elsewhere:

* CUDA: ``torch.cuda.is_bf16_supported(including_emulation=False)`` (compute capability 8.0+);
* CPU: AMX tiles or the AVX512-BF16 instructions, as torch itself detects them
  (``torch.cpu._is_amx_tile_supported()``, ``torch.cpu._is_avx512_bf16_supported()``; they read CPUID,
  the same flags as ``amx_tile`` / ``avx512_bf16`` in ``/proc/cpuinfo``).

Two checks that look right and are not: ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is True on any
AVX-512 CPU (oneDNN then *emulates* bf16 with fp32 arithmetic, several times slower than fp32), and
``torch.backends.cpu.get_cpu_capability()`` names the vector ISA torch's kernels were dispatched for
(``'AVX512'`` on CPUs with and without native bf16). Neither is used.

fp16 is never chosen by ``auto`` (its range needs loss scaling in training and it has no native CPU path
short of AMX-FP16); it is there to be asked for (the official code's fp16 AMP on GPUs). The same rules
serve sampling (``SamplingOptions.precision``) and training (``solver.amp_dtype``, ``vqdiff.engine.amp``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["PRECISIONS", "PRECISION_DTYPES", "Precision", "native_bf16", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""The values of a precision option; ``auto`` is resolved per device by :func:`resolve_precision`."""

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` (``fp32``/``bf16``/``fp16``), its ``dtype``, what was ``requested`` and
    ``reason`` (one line saying why, for the log)."""

    name: str
    requested: str
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return PRECISION_DTYPES[self.name]

    @property
    def reduced(self) -> bool:
        """Whether the network runs under autocast (anything but fp32)."""
        return self.name != "fp32"

    def __str__(self) -> str:
        if self.requested == self.name:
            return self.name
        return f"{self.name} ({self.requested}: {self.reason})"


def _cpu_bf16_checks() -> dict[str, bool]:
    """torch's own CPUID checks of native CPU bf16 (False where this torch build lacks the function)."""
    out = {}
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check: Optional[Callable[[], bool]] = getattr(torch.cpu, name, None)
        out[f"torch.cpu.{name}()"] = bool(check()) if check is not None else False
    return out


def native_bf16(device: torch.device | str) -> tuple[bool, str]:
    """``(whether device computes bf16 natively, a one-line reason naming the check)``."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "CUDA is not available"
        ok = bool(torch.cuda.is_bf16_supported(including_emulation=False))
        name = torch.cuda.get_device_name(device)
        return ok, f"{name}: torch.cuda.is_bf16_supported(including_emulation=False) is {ok}"
    if device.type == "cpu":
        checks = _cpu_bf16_checks()
        found = [name for name, ok in checks.items() if ok]
        if found:
            return True, f"CPU with native bf16 ({' and '.join(found)} True)"
        return False, ("CPU without AMX or AVX512-BF16 (" + ", ".join(f"{n} False" for n in checks)
                       + "): bf16 would be emulated, slower than fp32")
    return False, f"no native-bf16 check for device type {device.type!r}"


def resolve_precision(requested: str, device: torch.device | str, what: str = "precision") -> Precision:
    """The precision to run on ``device`` for ``requested`` (one of :data:`PRECISIONS`): ``auto`` becomes bf16
    where :func:`native_bf16` holds, else fp32; an explicit value is kept as asked. ``what`` names the option
    in the error for a bad value."""
    if requested not in PRECISIONS:
        raise ValueError(f"{what} must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return Precision(requested, requested, "as asked")
    ok, reason = native_bf16(device)
    return Precision("bf16" if ok else "fp32", "auto", reason)
