"""Flushing denormal floats to zero on the CPU for the duration of a call, and restoring the setting after.

From all-[MASK] inputs the diffusion network's activations fall into the fp32 denormal range (|x| < 2^-126),
which x86 CPUs process in microcode, several times slower (docs/benchmarks.md). Flush-to-zero / denormals-
are-zero (``torch.set_flush_denormal(True)``) skips that. The setting is a per-thread CPU flag for the whole
process, so sampling turns it on only inside the call and puts the previous value back after, also when the
call raises: the caller's numerics outside sampling never change.

Changing values below 1.2e-38 to zero changes nothing a sampler can see (they are far below the
float32 resolution of any probability or activation that matters). PyTorch offers no getter for the
flag: :func:`flush_denormal_enabled` reads it by a tiny denormal multiplication.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import torch

__all__ = ["flush_denormal_enabled", "flush_denormals", "flushes_denormals_on_cpu"]

_DENORMAL = 1e-39  # below float32's smallest normal number, 1.18e-38
F = TypeVar("F", bound=Callable[..., Any])


def flush_denormal_enabled() -> bool:
    """Whether fp32 denormals are flushed to zero on this thread now (a denormal times 1 comes out 0)."""
    return bool((torch.tensor([_DENORMAL], dtype=torch.float32) * 1.0).item() == 0.0)


@contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[bool]:
    """Flush denormals to zero inside the ``with`` block when ``enabled``; restore the earlier setting after.

    Yields whether flushing is in force inside (False where the CPU does not support it, e.g. without SSE3).
    ``enabled=False`` leaves the setting as it is.
    """
    if not enabled:
        yield flush_denormal_enabled()
        return
    previous = flush_denormal_enabled()
    supported = torch.set_flush_denormal(True)
    try:
        yield bool(supported)
    finally:
        torch.set_flush_denormal(previous)


def flushes_denormals_on_cpu(method: F) -> F:
    """Decorator for a module method (e.g. ``sample``): runs it inside :func:`flush_denormals` when the module
    is on the CPU. The method gains a keyword ``flush_denormals`` (default True; False keeps denormals, e.g. to
    measure their cost)."""

    @functools.wraps(method)
    def wrapper(self, *args: Any, flush_denormals: bool = True, **kwargs: Any) -> Any:
        device = self.device if hasattr(self, "device") else next(self.parameters()).device
        on_cpu = torch.device(device).type == "cpu"
        with _flush(enabled=bool(flush_denormals) and on_cpu):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


_flush = flush_denormals  # the decorator's keyword shadows the context manager's name inside it
