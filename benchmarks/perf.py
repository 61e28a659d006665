"""Measurement helpers for the benchmarks: timers, matmul peak, peak memory, machine description.

Benchmark support, not library code: the scripts beside it import it as ``perf`` when run by path and as
``benchmarks.perf`` when imported (tests; nothing in ``vqdiff`` imports it).

Nothing here changes global state except where a function says so (``matmul_peak`` runs matmuls;
``set_fast_math`` flips TF32 on CUDA only when asked). Every helper takes an explicit device.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from typing import Any, Callable, Optional

import torch

__all__ = [
    "timed",
    "matmul_peak",
    "peak_rss_mib",
    "peak_memory_mib",
    "measure_peak_memory",
    "machine_description",
    "reference_size",
    "build_text2image_diffusion",
    "set_fast_math",
]


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    fn: Callable[[], Any], repeats: int = 3, warmup: int = 1, device: torch.device | str | None = None
) -> dict:
    """Run ``fn`` ``warmup`` times, then ``repeats`` timed times (``perf_counter``, CUDA synchronised).

    Returns ``{'median_s', 'min_s', 'times_s'}``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times}


def matmul_peak(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, repeats: int = 10,
    shapes: Optional[dict[str, tuple[int, int, int]]] = None,
) -> dict:
    """Measured matmul throughput (GFLOP/s, ``2 m k n / time``, best of ``repeats``) per shape and the best.

    Default shapes: a square 1024^3 and the network's MLP-like 1024x256x1024.
    """
    shapes = shapes or {"1024x1024x1024": (1024, 1024, 1024), "1024x256x1024": (1024, 256, 1024)}
    out = {}
    for name, (m, k, n) in shapes.items():
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        t = timed(lambda: torch.mm(a, b), repeats=repeats, warmup=3, device=device)
        out[name] = 2 * m * k * n / t["min_s"] / 1e9
    return {"gflops_by_shape": out, "peak_gflops": max(out.values()), "dtype": str(dtype).replace("torch.", "")}


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB), from ``resource.getrusage`` (never decreases)."""
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru / (1024 * 1024) if sys.platform == "darwin" else ru / 1024  # bytes on macOS, KiB on Linux


def peak_memory_mib(device: torch.device | str = "cpu") -> float:
    """Peak memory so far: ``torch.cuda.max_memory_allocated`` on CUDA, the process peak RSS on CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib()


def measure_peak_memory(fn: Callable[[], Any], device: torch.device | str = "cpu") -> dict:
    """Peak memory of one call of ``fn``.

    CUDA: ``max_memory_allocated`` after a reset (exact, MiB). CPU: the largest total size of tensors
    allocated during the call and still live, from ``torch.profiler`` memory records
    (``profile_memory=True``; an allocation counts from the start of the op that made it, so the figure
    is a slight over-estimate); the process RSS peak is returned beside it (it never goes down, so it is
    only an upper bound of the process, not of ``fn``).
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return {"peak_mib": (torch.cuda.max_memory_allocated(device) - base) / 2**20, "method": "cuda allocator"}
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live, peak = 0, 0
    events = []
    for ev in prof.events():
        # allocations are charged to the op that made them (self bytes, at its start); frees outside
        # any op come as "[memory]" events with negative bytes. Ordered by time: the live total.
        nbytes = ev.cpu_memory_usage if ev.name == "[memory]" else getattr(ev, "self_cpu_memory_usage", 0)
        if nbytes:
            events.append((ev.time_range.start, nbytes))
    for _, nbytes in sorted(events):
        live += nbytes
        peak = max(peak, live)
    return {"peak_mib": peak / 2**20, "method": "profiler memory events (CPU)", "process_peak_rss_mib": peak_rss_mib()}


def machine_description(device: torch.device | str = "cpu") -> dict:
    """CPU model (``/proc/cpuinfo``), cores, torch threads, torch/python versions, GPU name when CUDA."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count()
    out = {
        "cpu": cpu, "cpu_count": os.cpu_count(), "usable_cores": affinity, "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": str(device),
    }
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(device)
    try:
        out["load_average"] = os.getloadavg()
    except (AttributeError, OSError):
        pass
    return out


def reference_size(quick: bool = False) -> dict:
    """The reference benchmark size (8 layers, width 256, 8 heads, 16x16 tokens, K=1024, 77x512 text, batch 4,
    T=100); ``quick``: a tiny size that runs in seconds."""
    size = dict(layers=8, width=256, heads=8, side=16, K=1024, T=100, cond_dim=512, cond_len=77, batch=4)
    if quick:
        size.update(layers=2, width=64, heads=4, side=8, K=64, T=10, cond_dim=64, cond_len=16, batch=2)
    return size


def build_text2image_diffusion(size: dict, checkpoint: bool = False, **diffusion_kwargs: Any):
    """A ``DiffusionTransformer`` around a ``Text2ImageTransformer`` of ``size`` (see :func:`reference_size`),
    with the released auxiliary-loss settings; ``checkpoint`` turns on activation checkpointing."""
    from vqdiff.modeling.diffusion import DiffusionTransformer

    side = size["side"]
    net = {
        "target": "vqdiff.modeling.transformers.networks.Text2ImageTransformer",
        "params": dict(
            attn_type="selfcross", n_layer=size["layers"], condition_seq_len=size["cond_len"],
            content_seq_len=side * side, content_spatial_size=[side, side], n_embd=size["width"],
            condition_dim=size["cond_dim"], n_head=size["heads"], attn_pdrop=0.0, resid_pdrop=0.0,
            block_activate="GELU2", timestep_type="adalayernorm", mlp_hidden_times=4, checkpoint=checkpoint,
        ),
    }
    emb = {
        "target": "vqdiff.modeling.embeddings.dalle_mask_image_embedding.DalleMaskImageEmbedding",
        "params": dict(num_embed=size["K"], spatial_size=[side, side], embed_dim=size["width"], trainable=True,
                       pos_emb_type="embedding"),
    }
    kw = dict(auxiliary_loss_weight=5e-4, adaptive_auxiliary_loss=True)
    kw.update(diffusion_kwargs)
    return DiffusionTransformer(content_emb_config=emb, transformer_config=net, diffusion_step=size["T"], **kw)


def set_fast_math(device: torch.device | str, enable: bool = True) -> dict:
    """GPU fast paths: TF32 matmuls/convolutions on CUDA (a process-wide torch setting, so only on request).

    On CPU this does nothing and says so. Returns the settings now in force. Untested on GPU here.
    """
    if torch.device(device).type != "cuda":
        return {"tf32": False, "note": "TF32 is a CUDA setting; nothing changed on CPU"}
    torch.backends.cuda.matmul.allow_tf32 = bool(enable)
    torch.backends.cudnn.allow_tf32 = bool(enable)
    return {"tf32": bool(enable)}
