"""How one sampling request calls the network: in its precision (autocast) and, when asked, compiled.

:class:`NetworkRunner` is what the ``Denoiser`` calls in place of ``diffusion.transformer``. In fp32 without
``compile`` it *is* the plain call (no context, no wrapper): the default path is bit-identical to calling the
network directly. Otherwise:

* ``bf16`` / ``fp16``: the network (and its condition cache) runs under ``torch.autocast(device, dtype)``;
  its logits come back in that dtype and ``DiffusionTransformer._net_log_probs`` takes the log-softmax in
  fp32, so everything after (guidance, truncation, posterior, the Gumbel draw) is fp32;
* ``compile``: :class:`CompiledNetwork`, the network's ``forward`` through ``torch.compile(fullgraph=True,
  dynamic=False)``: one graph per input shape (and autocast dtype), no graph breaks (``fullgraph`` raises on
  one), the first call of each shape pays the compile time, which is logged and kept in ``compile_seconds``.
  One ``CompiledNetwork`` per model and backend lives in ``DiffusionTransformer.compiled_network`` (a plain
  attribute, not a submodule: it adds nothing to the state dict).
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from typing import Any, Callable

import torch
from torch import nn

from vqdiff.utils.precision import Precision

__all__ = ["CompiledNetwork", "NetworkRunner"]

logger = logging.getLogger("vqdiff.sampling")


def _signature(args: tuple, kwargs: dict) -> tuple:
    """Shapes and dtypes of the tensors in a call (nested in lists/tuples, e.g. the condition cache), plus the
    autocast state: the key under which a compiled graph is reused."""

    def sig(value: Any) -> Any:
        if torch.is_tensor(value):
            return (tuple(value.shape), str(value.dtype)) + (("requires_grad",) if value.requires_grad else ())
        if isinstance(value, (list, tuple)):
            return tuple(sig(v) for v in value)
        return type(value).__name__

    autocast = (torch.is_autocast_enabled("cpu"), str(torch.get_autocast_dtype("cpu")))
    if torch.cuda.is_available():
        autocast += (torch.is_autocast_enabled("cuda"), str(torch.get_autocast_dtype("cuda")))
    return sig(args), tuple(sorted((k, sig(v)) for k, v in kwargs.items())), autocast


class CompiledNetwork:
    """``torch.compile`` of ``network.forward`` (``fullgraph=True``, ``dynamic=False``): compiled on the first
    call of each input signature, which is timed and logged.

    Attributes:
        compile_seconds: ``{signature: seconds of its first (compiling) call}``.
        setup_seconds: the ``torch.compile`` call itself (importing the compiler, once); logged with, and
            added to, the first compile time.
    """

    def __init__(self, network: nn.Module, backend: str = "inductor"):
        self.backend = backend
        start = time.perf_counter()
        self.forward = torch.compile(network.forward, backend=backend, fullgraph=True, dynamic=False)
        self.setup_seconds = time.perf_counter() - start
        self.compile_seconds: dict[tuple, float] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        key = _signature(args, kwargs)
        if key in self.compile_seconds:
            return self.forward(*args, **kwargs)
        start = time.perf_counter()
        out = self.forward(*args, **kwargs)
        self.compile_seconds[key] = time.perf_counter() - start + (0.0 if self.compile_seconds else self.setup_seconds)
        logger.info("compiled the network (backend %s) for input shapes %s in %.1f s (first call of this shape)",
                    self.backend, key[0], self.compile_seconds[key])
        return out

    @property
    def last_compile_seconds(self) -> float:
        """The compile time of the most recent new shape (0 before any call)."""
        return next(reversed(self.compile_seconds.values()), 0.0)


class NetworkRunner:
    """The network of ``diffusion`` as one request runs it: ``runner(x_t, cond, t, cond_cache=...)`` under the
    request's precision and, optionally, compiled (``runner.autocast()`` is the precision's context, for the
    condition cache).

    Args:
        diffusion: the ``DiffusionTransformer`` (its ``transformer`` is the network).
        precision: the resolved :class:`~vqdiff.utils.precision.Precision`.
        compile: use ``diffusion.compiled_network(backend)``.
        backend: the ``torch.compile`` backend.
    """

    def __init__(self, diffusion: Any, precision: Precision, compile: bool = False, backend: str = "inductor"):
        self.precision = precision
        self.device_type = diffusion.device.type
        self.network: Callable[..., torch.Tensor] = (
            diffusion.compiled_network(backend) if compile else diffusion.transformer)

    def autocast(self):
        """``torch.autocast`` in the request's reduced precision, or no context at all for fp32."""
        if not self.precision.reduced:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.precision.dtype)

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with self.autocast():
            return self.network(*args, **kwargs)
