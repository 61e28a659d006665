"""Time one forward of the denoising network (one sampling step's network call); prints a table and JSON.

    python benchmarks/bench_network.py                  # reference size: 8 layers, width 256, 8 heads,
                                                        # 16x16 tokens, K=1024, 77x512 text, batch 4
    python benchmarks/bench_network.py --quick          # tiny sizes, to check that it runs
    python benchmarks/bench_network.py --repeats 10 --threads 2

Reports, in one run on the same inputs:
- the machine's measured fp32 matmul throughput (best of several 1024^3 and network-shaped matmuls);
- our ``Text2ImageTransformer`` forward, with the text's cross-attention keys/values computed inside the
  call (as a training step does) and taken from ``precompute_condition`` (as every sampling step does),
  its FLOPs (``torch.utils.flop_counter``) and the share of the matmul peak reached;
- the same-size diffusers ``Transformer2DModel`` (VQ-Diffusion layout: discrete input, AdaLayerNorm,
  GEGLU feed-forward) forward when ``diffusers`` imports, and the ratio against ours with the keys/values
  in the call (diffusers has no cache: the like-for-like pair).
Timings are the median of ``--repeats`` runs after warm-up; on a shared CPU they are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from vqdiff.modeling.transformers.networks import Text2ImageTransformer

EMB = "vqdiff.modeling.embeddings.dalle_mask_image_embedding.DalleMaskImageEmbedding"


def timed(fn: Callable[[], object], repeats: int, warmup: int = 2) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times)}


def matmul_peak(repeats: int) -> dict:
    """Best fp32 GFLOP/s over a square 1024^3 matmul and the network's MLP-shaped matmul."""
    best = {}
    for name, (m, k, n) in {"1024x1024x1024": (1024, 1024, 1024), "1024x256x1024": (1024, 256, 1024)}.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        t = timed(lambda: torch.mm(a, b), max(repeats, 10), warmup=3)
        best[name] = 2 * m * k * n / (t["min_ms"] / 1e3) / 1e9
    return {"gflops_by_shape": best, "peak_gflops": max(best.values())}


def build_ours(layers: int, width: int, heads: int, side: int, K: int, T: int, cond_dim: int, cond_len: int):
    emb = {"target": EMB, "params": {"num_embed": K, "spatial_size": [side, side], "embed_dim": width}}
    return Text2ImageTransformer(
        condition_seq_len=cond_len, n_layer=layers, n_embd=width, n_head=heads, content_seq_len=side * side,
        block_activate="GELU2", content_spatial_size=[side, side], condition_dim=cond_dim, diffusion_step=T,
        content_emb_config=emb,
    ).eval()


def build_diffusers(layers: int, width: int, heads: int, side: int, K: int, T: int, cond_dim: int):
    from diffusers import Transformer2DModel  # optional dependency (dev extras)

    return Transformer2DModel(
        num_attention_heads=heads, attention_head_dim=width // heads, num_layers=layers,
        cross_attention_dim=cond_dim, attention_bias=True, sample_size=side, num_vector_embeds=K + 1,
        activation_fn="geglu-approximate", num_embeds_ada_norm=T, norm_type="ada_norm",
    ).eval()


def flops_of(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats (a smoke run)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--no-diffusers", action="store_true", help="skip the diffusers comparison")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = dict(layers=8, width=256, heads=8, side=16, K=1024, T=100, cond_dim=512, cond_len=77, batch=4)
    if args.quick:
        size.update(layers=2, width=64, heads=4, side=8, K=64, cond_dim=64, batch=2)
        args.repeats = 2
    torch.manual_seed(0)
    B, N = size["batch"], size["side"] ** 2
    x = torch.randint(0, size["K"] + 1, (B, N))
    cond = torch.randn(B, size["cond_len"], size["cond_dim"])
    t = torch.randint(0, size["T"], (B,))

    results: dict = {
        "machine": {
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        },
        "size": size,
    }
    with torch.no_grad():
        peak = matmul_peak(args.repeats)
        results["matmul"] = peak
        ours = build_ours(**{k: size[k] for k in ("layers", "width", "heads", "side", "K", "T", "cond_dim", "cond_len")})
        cache = ours.precompute_condition(cond)
        rows = []
        for name, fn in {
            "ours (cached text k/v)": lambda: ours(x, cond, t, cond_cache=cache),
            "ours (k/v in the call)": lambda: ours(x, cond, t),
        }.items():
            tm = timed(fn, args.repeats)
            fl = flops_of(fn)
            rows.append({"name": name, **tm, "gflop": fl / 1e9, "gflops": fl / 1e9 / (tm["median_ms"] / 1e3)})
        if not args.no_diffusers:
            try:
                theirs = build_diffusers(**{k: size[k] for k in ("layers", "width", "heads", "side", "K", "T", "cond_dim")})
            except Exception as e:  # not installed, or an API change: report, do not fail
                results["diffusers_error"] = f"{type(e).__name__}: {e}"
            else:
                # diffusers' AdaLayerNorm takes one timestep for the whole batch (as a sampling step)
                fn = lambda: theirs(hidden_states=x, encoder_hidden_states=cond, timestep=t[0]).sample  # noqa: E731
                out = fn()
                if tuple(out.shape) != (B, size["K"], N):
                    results["diffusers_error"] = f"unexpected output shape {tuple(out.shape)}"
                tm = timed(fn, args.repeats)
                fl = flops_of(fn)
                rows.append({"name": "diffusers Transformer2DModel", **tm, "gflop": fl / 1e9,
                             "gflops": fl / 1e9 / (tm["median_ms"] / 1e3)})
    for r in rows:
        r["share_of_matmul_peak"] = r["gflops"] / peak["peak_gflops"]
    results["forward"] = rows
    by = {r["name"]: r for r in rows}
    if "diffusers Transformer2DModel" in by:
        # like for like: diffusers computes the text keys/values in every call, so compare with ours doing so too
        results["speedup_vs_diffusers_uncached"] = (by["diffusers Transformer2DModel"]["median_ms"]
                                                    / by["ours (k/v in the call)"]["median_ms"])

    print(f"machine: {results['machine']}")
    print(f"size: {size}")
    print(f"fp32 matmul peak: {peak['peak_gflops']:.1f} GFLOP/s  ({', '.join(f'{k}: {v:.1f}' for k, v in peak['gflops_by_shape'].items())})")
    print(f"{'network forward':34s} {'median ms':>10s} {'min ms':>9s} {'GFLOP':>7s} {'GFLOP/s':>8s} {'% peak':>7s}")
    for r in rows:
        print(f"{r['name']:34s} {r['median_ms']:10.1f} {r['min_ms']:9.1f} {r['gflop']:7.2f} {r['gflops']:8.1f} "
              f"{100 * r['share_of_matmul_peak']:6.0f}%")
    if "speedup_vs_diffusers_uncached" in results:
        print(f"diffusers / ours, both computing the text k/v in the call (median): "
              f"{results['speedup_vs_diffusers_uncached']:.2f}x (random weights on each side; the same weights "
              f"and sampling: benchmarks/bench_diffusers.py)")
    if "diffusers_error" in results:
        print(f"diffusers: {results['diffusers_error']}")
    print("JSON " + json.dumps(results))


if __name__ == "__main__":
    main()
