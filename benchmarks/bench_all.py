"""All reference-size figures in one run: prints a markdown table (paste it into docs/benchmarks.md) and a JSON line.

    python benchmarks/bench_all.py                      # reference size, CPU, fp32 (a few minutes on 2 cores)
    python benchmarks/bench_all.py --quick              # tiny sizes, seconds (checks that it runs)
    python benchmarks/bench_all.py --no-full-sampling   # skip the 100-step sampling of 4 images
    python benchmarks/bench_all.py --device cuda --bf16 --compile --fused-adamw --tf32   # GPU path (untested here)

Size (the reference size): Text2ImageTransformer, 8 layers, width 256, 8 heads, 16x16 = 256 tokens, K = 1024, 77x512
text condition, batch 4, T = 100, truncation 0.86. Rows:
- matmul peak (fp32, best of a 1024^3 and a 1024x256x1024 matmul) and the network's GFLOP/s share of it;
- network forward: ours (text keys/values cached, as every sampling step), ours uncached and diffusers
  ``Transformer2DModel`` of the same size (when diffusers imports), the ratio on the uncached pair (the
  like-for-like comparison with the same weights, sampling included, is benchmarks/bench_diffusers.py);
- one full sampling step (network + posterior + truncation + Gumbel), with our index posterior and with
  the reference one-hot posterior (the "full" form of the official code);
- 100-step sampling of 4 images (``sample``) and skip-step sampling (``sample_fast``, every 10th step);
- training step from tokens (forward, loss, backward, AdamW), plain and with activation checkpointing,
  each with its peak memory (profiler-tracked live tensors on CPU; ``max_memory_allocated`` on CUDA);
- bf16: on this CPU bf16 matmuls are ~100x slower than fp32, so only a 256^3 matmul is timed (ratio).
Timings: median of ``--repeats`` after one warm-up. A shared CPU makes them noisy: say so when quoting.
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode

from vqdiff.modeling.diffusion import samplers as S
from vqdiff.modeling.diffusion.log_ops import index_to_log_onehot
from vqdiff.modeling.diffusion.sampling_options import SamplingOptions

if __package__:  # imported as benchmarks.bench_all (tests; python -m benchmarks.bench_all)
    from benchmarks import perf
    from benchmarks.one_hot_posterior import one_hot_q_posterior
else:  # run as python benchmarks/bench_all.py: Python puts benchmarks/ first on sys.path
    import perf
    from one_hot_posterior import one_hot_q_posterior

# official time / vqdiff time, the official code run beside ours in one process with the same weights at the
# reference size (library defaults), measured by the project's maintainers on this 2-core CPU (issue 17, Nov 2026).
# Ratios, not times: the official absolute figures quoted in issue 8 came from another machine on another day.
OFFICIAL_RATIO = {
    "network forward (ms)": "1.31x", "one full sampling step (ms)": "1.36x",
    "100-step sampling of 4 images (s)": "1.40x", "training step from tokens (ms)": "1.36x",
}


class _OneHotPosterior(S.Denoiser):
    """The denoiser with the reference (one-hot ``q_posterior``) posterior, for the comparison."""

    def posterior(self, log_x0, x, t):
        return one_hot_q_posterior(self.diffusion, log_x0, index_to_log_onehot(x, self.num_classes), t)


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="'cpu' or 'cuda[:i]' (explicit; nothing moves by itself)")
    ap.add_argument("--no-full-sampling", action="store_true", help="skip the T-step sampling of the batch")
    ap.add_argument("--no-diffusers", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for the network (GPU path)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the network forward")
    ap.add_argument("--fused-adamw", action="store_true", help="AdamW(fused=True) (CUDA)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (CUDA)")
    ap.add_argument("--keep-denormals", action="store_true",
                    help="do not flush fp32 denormals to zero (CPU); from all-[MASK] the network then runs ~7x slower")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
    fast_math = perf.set_fast_math(device, args.tf32) if args.tf32 else {"tf32": False}
    # denormal fp32 values appear in the network from all-[MASK] inputs and cost ~7x on x86 CPUs
    fast_math["flush_denormal"] = bool(torch.set_flush_denormal(not args.keep_denormals)) and not args.keep_denormals
    size = perf.reference_size(quick=args.quick)
    if args.quick:
        args.repeats = 1
    B, N, K, T = size["batch"], size["side"] ** 2, size["K"], size["T"]
    torch.manual_seed(0)
    d = perf.build_text2image_diffusion(size).to(device).eval()
    if args.compile:
        d.transformer.forward = torch.compile(d.transformer.forward)
    cond = torch.randn(B, size["cond_len"], size["cond_dim"], device=device)
    x = torch.randint(0, K + 1, (B, N), device=device)
    t = torch.full((B,), T // 2, device=device)
    R = args.repeats
    res: dict = {"machine": perf.machine_description(device), "size": size, "options": {
        "bf16": args.bf16, "compile": args.compile, "fused_adamw": args.fused_adamw, **fast_math}}
    rows: list[tuple[str, str, str]] = []  # (what, ours, note)

    # --bf16: the network rows and sampling under bf16 autocast (the sampler's own math stays fp32)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
        peak = perf.matmul_peak(device, repeats=max(R, 5))
        res["matmul"] = peak
        rows.append(("fp32 matmul peak (GFLOP/s)", f"{peak['peak_gflops']:.0f}", "best of 1024^3, 1024x256x1024"))
        cache = d.precompute_condition(cond)
        fwd = lambda: d.transformer(x, cond, t, cond_cache=cache)  # noqa: E731
        tm = perf.timed(fwd, R, device=device)
        gflop = _flops(fwd) / 1e9
        gflops = gflop / tm["median_s"]
        res["network_forward"] = {**tm, "gflop": gflop, "gflops": gflops, "share_of_peak": gflops / peak["peak_gflops"]}
        rows.append(("network forward (ms)", f"{1e3 * tm['median_s']:.0f}",
                     f"{gflop:.1f} GFLOP, {gflops:.0f} GFLOP/s = {100 * gflops / peak['peak_gflops']:.0f}% of peak; text k/v cached"))
        if not args.no_diffusers:
            try:
                from diffusers import Transformer2DModel

                theirs = Transformer2DModel(
                    num_attention_heads=size["heads"], attention_head_dim=size["width"] // size["heads"],
                    num_layers=size["layers"], cross_attention_dim=size["cond_dim"], attention_bias=True,
                    sample_size=size["side"], num_vector_embeds=K + 1, activation_fn="geglu-approximate",
                    num_embeds_ada_norm=T, norm_type="ada_norm",
                ).to(device).eval()
                tmd = perf.timed(lambda: theirs(hidden_states=x, encoder_hidden_states=cond, timestep=t[0]).sample,
                                 R, device=device)
                # like for like: diffusers has no text key/value cache, so ours runs without it here too
                tmu = perf.timed(lambda: d.transformer(x, cond, t), R, device=device)
                res["diffusers_forward"], res["network_forward_uncached"] = tmd, tmu
                ratio = tmd["median_s"] / tmu["median_s"]
                res["speedup_vs_diffusers_uncached"] = ratio
                rows.append(("network forward, text k/v not cached (ms)", f"{1e3 * tmu['median_s']:.0f}",
                             "as diffusers runs"))
                rows.append(("diffusers Transformer2DModel forward (ms)", f"{1e3 * tmd['median_s']:.0f}",
                             f"random weights, not ours; {ratio:.2f}x ours uncached "
                             f"(same weights: benchmarks/bench_diffusers.py)"))
            except Exception as e:  # optional dependency (dev extras) or an API change: report, go on
                res["diffusers_error"] = f"{type(e).__name__}: {e}"
                rows.append(("diffusers Transformer2DModel forward (ms)", "–", f"not run: {type(e).__name__}"))

        options = SamplingOptions(truncation_rate=0.86, generator=torch.Generator(device=device).manual_seed(0))
        step = lambda den: S.sample_ancestral(den, x, [T // 2], options)  # noqa: E731
        tfast = perf.timed(lambda: step(S.Denoiser(d, cond, None, options)), R, device=device)
        tref = perf.timed(lambda: step(_OneHotPosterior(d, cond, None, options)), R, device=device)
        res["sampling_step"] = {"index_posterior": tfast, "one_hot_posterior": tref}
        rows.append(("one full sampling step (ms)", f"{1e3 * tfast['median_s']:.0f}",
                     f"network + posterior + truncation 0.86 + Gumbel; with the one-hot posterior: "
                     f"{1e3 * tref['median_s']:.0f} ms"))
        if not args.no_full_sampling:
            gen = torch.Generator(device=device).manual_seed(0)
            flush = not args.keep_denormals  # sample() flushes on its own unless told not to
            tfull = perf.timed(lambda: d.sample(condition_embed=cond, filter_ratio=0, truncation_rate=0.86,
                                                generator=gen, flush_denormals=flush), 1, warmup=0, device=device)
            res["full_sampling"] = tfull
            rows.append((f"{T}-step sampling of {B} images (s)", f"{tfull['median_s']:.1f}",
                         f"{B / tfull['median_s']:.2f} images/s"))
            tskip = perf.timed(lambda: d.sample_fast(condition_embed=cond, filter_ratio=0, truncation_rate=0.86,
                                                     skip_step=9, generator=gen, flush_denormals=flush), 1,
                                 warmup=0, device=device)
            res["fast_sampling_skip9"] = tskip
            rows.append((f"sample_fast, skip_step=9 ({len(S.timesteps(T, 9))} calls), {B} images (s)",
                         f"{tskip['median_s']:.1f}", "not in the issue's table"))

    # -- training step from tokens -------------------------------------------------------------------
    x0 = torch.randint(0, K, (B, N), device=device)
    batch = {"content_token": x0, "condition_embed_token": cond}
    for ckpt in (False, True):
        m = perf.build_text2image_diffusion(size, checkpoint=ckpt).to(device).train()
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, **({"fused": True} if args.fused_adamw else {}))
        ctx = nullcontext()

        def train_step():
            with ctx:
                loss = m(batch, return_loss=True, autocast=args.bf16)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        tt = perf.timed(train_step, R, device=device)
        mem = perf.measure_peak_memory(train_step, device)
        key = "train_step_checkpointing" if ckpt else "train_step"
        res[key] = {**tt, "peak_memory": mem}
        label = "training step from tokens, activation checkpointing (ms)" if ckpt else "training step from tokens (ms)"
        rows.append((label, f"{1e3 * tt['median_s']:.0f}",
                     f"peak memory {mem['peak_mib']:.0f} MiB ({mem['method']}); forward, loss, backward, AdamW"))
        del m, opt

    # -- bf16 note ------------------------------------------------------------------------------------
    if device.type == "cpu":
        a, b = torch.randn(256, 256), torch.randn(256, 256)
        t32 = perf.timed(lambda: a @ b, 3, warmup=1)["min_s"]
        a16, b16 = a.bfloat16(), b.bfloat16()
        t16 = perf.timed(lambda: a16 @ b16, 1, warmup=1)["min_s"]
        res["bf16_vs_fp32_matmul_256"] = t16 / t32
        rows.append(("bf16 / fp32 time, 256^3 matmul", f"{t16 / t32:.2f}x",
                     "measured ratio; bf16 is a GPU path here, the network is not timed in bf16 on CPU"))

    official = {"network forward (ms)": OFFICIAL_RATIO["network forward (ms)"],
                "one full sampling step (ms)": OFFICIAL_RATIO["one full sampling step (ms)"],
                f"{T}-step sampling of {B} images (s)": OFFICIAL_RATIO["100-step sampling of 4 images (s)"],
                "training step from tokens (ms)": OFFICIAL_RATIO["training step from tokens (ms)"]}
    if args.quick:  # other sizes: the official ratios do not apply
        official = {}
    mach = res["machine"]
    print(f"Machine: {mach['cpu']}, {mach['usable_cores']} usable cores, torch {mach['torch']} "
          f"({mach['torch_threads']} threads), device {mach['device']}, load average {mach.get('load_average')}")
    print(f"Size: {size}; options: {res['options']}\n")
    print("| what | vqdiff (this run) | official / vqdiff (maintainers, issue 17) | note |")
    print("|---|---|---|---|")
    for what, ours, note in rows:
        print(f"| {what} | {ours} | {official.get(what, '–')} | {note} |")
    print("\nJSON " + json.dumps(res, default=str))


if __name__ == "__main__":
    main()
