"""vqdiff against diffusers' VQ-Diffusion with the same weights, in one process: prints a markdown table and a JSON line.

    python benchmarks/bench_diffusers.py                  # the tiny-but-realistic model, then the reference size
    python benchmarks/bench_diffusers.py --sizes reference  # one size
    python benchmarks/bench_diffusers.py --quick          # a tiny smoke run (seconds)

For each size a vqdiff ``DiffusionTransformer`` (random weights, seeded) is exported with
``vqdiff.inference.diffusers_export.transformer_to_diffusers`` and loaded into diffusers' ``Transformer2DModel``
(strict); the scheduler is ``VQDiffusionScheduler`` from ``scheduler_config``. Then, alternating ours / theirs
in each round (medians over ``--repeats`` / ``--sampling-repeats`` rounds; the forward rows after one warm-up
call each, the sampling rows without one, as each sampling run makes T network calls):

- **network forward, both uncached**: ours ``transformer(x, cond, t)`` without the precomputed text keys/values,
  theirs ``Transformer2DModel(x, encoder_hidden_states=cond, timestep=t)`` -- the like-for-like ratio;
- network forward, ours cached (text keys/values precomputed, as vqdiff's sampler runs every step): a second row,
  not a ratio against an uncached diffusers;
- **sampling, seconds per image**: the same steps (all T), the same batch, the same truncation rate and guidance:
  ours ``DiffusionTransformer.sample`` (as users call it: cached, denormals flushed on CPU) and, as a second row,
  with the cache turned off; theirs the denoising loop of ``VQDiffusionPipeline.__call__`` piece by piece
  (``Transformer2DModel``, guidance, ``VQDiffusionPipeline.truncate``, clamp, ``VQDiffusionScheduler.step``).
  Text encoding and VQ-VAE decoding are left out on both sides (the same CLIP features go to both);
- denormals (``--denormals``): ``library`` (default) as each library runs -- vqdiff's ``sample`` flushes fp32
  denormals on the CPU, diffusers does not, the forward rows run with the process setting (not flushed);
  ``flush-all`` flushes for every timed call on both sides; ``keep`` flushes nowhere (``flush_denormals=False``);
- **agreement**: max |log p_ours(x_0|x_t) - log p_theirs(x_0|x_t)| (both clamped at -70, the value every
  sampler clamps to) on the same partly masked tokens, text and step.

Timings on a shared machine are noisy: quote them with the machine and the load (the JSON has both).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

from vqdiff.utils.denormals import flush_denormals

if __package__:  # imported as benchmarks.bench_diffusers (tests; python -m benchmarks.bench_diffusers)
    from benchmarks import perf
else:  # run as python benchmarks/bench_diffusers.py: Python puts benchmarks/ first on sys.path
    import perf

SIZES: dict[str, dict[str, Any]] = {
    # the released token grid (32x32 from 256x256 images), the released 2887-entry codebook and the CLIP text shape,
    # with a small network: realistic tensor shapes for the sampler, small enough for a CPU
    "tiny": dict(layers=2, width=128, heads=4, side=32, K=2887, T=100, cond_dim=512, cond_len=77, batch=1),
    "reference": perf.reference_size(),
    "quick": {**perf.reference_size(quick=True), "T": 6},
}
CLAMP = -70.0  # log(0) stand-in of both libraries


class _Exportable(nn.Module):
    """The layout ``transformer_to_diffusers`` reads: ``model.transformer`` is the DiffusionTransformer."""

    def __init__(self, diffusion: nn.Module):
        super().__init__()
        self.transformer = diffusion


def build_pair(size: dict, seed: int = 0):
    """``(ours DiffusionTransformer, theirs Transformer2DModel, VQDiffusionScheduler)`` with the same weights."""
    from diffusers import Transformer2DModel, VQDiffusionScheduler

    from vqdiff.inference.diffusers_export import scheduler_config, transformer_to_diffusers

    torch.manual_seed(seed)
    ours = perf.build_text2image_diffusion(size).eval()
    config, state = transformer_to_diffusers(_Exportable(ours))
    theirs = Transformer2DModel.from_config(config).eval()
    theirs.load_state_dict(state, strict=True)
    scheduler = VQDiffusionScheduler.from_config(scheduler_config(_Exportable(ours)))
    return ours, theirs, scheduler


def inputs(size: dict, seed: int = 1) -> dict[str, torch.Tensor]:
    """Normalised text features (as both pipelines feed them), partly masked tokens and a middle step."""
    g = torch.Generator().manual_seed(seed)
    B, N, K = size["batch"], size["side"] ** 2, size["K"]
    cond = torch.randn(B, size["cond_len"], size["cond_dim"], generator=g)
    uncond = torch.randn(B, size["cond_len"], size["cond_dim"], generator=g)
    x = torch.randint(0, K, (B, N), generator=g)
    x[torch.rand(B, N, generator=g) < 0.5] = K  # half the tokens [MASK]
    return {"cond": cond / cond.norm(dim=-1, keepdim=True), "uncond": uncond / uncond.norm(dim=-1, keepdim=True),
            "x": x, "t": torch.full((B,), size["T"] // 2, dtype=torch.long)}


def agreement(ours, theirs, data: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max abs difference of the log-probabilities (B, K, N) on the same inputs; ours cached and uncached."""
    with torch.no_grad():
        lp_ours = ours._net_log_probs(data["x"], data["cond"], data["t"])
        lp_cached = ours._net_log_probs(data["x"], data["cond"], data["t"], ours.precompute_condition(data["cond"]))
        out = theirs(data["x"], encoder_hidden_states=data["cond"], timestep=data["t"][0]).sample
        lp_theirs = out.float().clamp(CLAMP, 0)
    return {"max_abs_diff_log_probs": float((lp_ours - lp_theirs).abs().max()),
            "max_abs_diff_ours_cached_vs_uncached": float((lp_cached - lp_ours).abs().max())}


def diffusers_sample(theirs, scheduler, cond, uncond, truncation_rate: float, guidance_scale: float, generator):
    """The denoising loop of ``VQDiffusionPipeline.__call__`` (diffusers 0.42), from all-[MASK] to tokens."""
    from diffusers import VQDiffusionPipeline

    guided = guidance_scale > 1.0
    embeds = torch.cat([uncond, cond]) if guided else cond
    sample = torch.full((cond.shape[0], theirs.num_latent_pixels), theirs.config.num_vector_embeds - 1, dtype=torch.long)
    scheduler.set_timesteps(scheduler.config.num_train_timesteps)
    for t in scheduler.timesteps:
        model_input = torch.cat([sample] * 2) if guided else sample
        log_p = theirs(model_input, encoder_hidden_states=embeds, timestep=t).sample
        if guided:
            log_u, log_c = log_p.chunk(2)
            log_p = log_u + guidance_scale * (log_c - log_u)
            log_p = log_p - torch.logsumexp(log_p, dim=1, keepdim=True)
        log_p = VQDiffusionPipeline.truncate(None, log_p, truncation_rate).clamp(CLAMP)
        sample = scheduler.step(log_p, timestep=t, sample=sample, generator=generator).prev_sample
    return sample


def alternating(fns: dict[str, Callable[[], Any]], repeats: int, flush_all: bool = False,
                warmup: int = 1) -> dict[str, dict]:
    """``warmup`` untimed calls of each, then ``repeats`` rounds running every function once per round (order
    rotated); ``flush_all``: every call inside :func:`flush_denormals`."""
    if flush_all:
        fns = {name: (lambda f=f: _flushed(f)) for name, f in fns.items()}
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {n: {"median_s": statistics.median(v), "min_s": min(v), "times_s": v} for n, v in times.items()}


def _flushed(fn: Callable[[], Any]) -> Any:
    with flush_denormals():
        return fn()


def _uncached(diffusion):
    """``diffusion`` with the per-request text key/value cache turned off (an instance attribute, removed after)."""

    class _Ctx:
        def __enter__(self):
            diffusion.precompute_condition = lambda cond: None

        def __exit__(self, *exc):
            del diffusion.precompute_condition

    return _Ctx()


def bench_size(name: str, size: dict, repeats: int, sampling_repeats: int, truncation_rate: float,
               guidance_scale: float, denormals: str = "library") -> dict:
    ours, theirs, scheduler = build_pair(size)
    data = inputs(size)
    B, T = size["batch"], size["T"]
    res: dict[str, Any] = {"size": {"name": name, **size}, "denormals": denormals,
                           "agreement": agreement(ours, theirs, data)}
    flush_all = denormals == "flush-all"
    x, cond, t = data["x"], data["cond"], data["t"]
    cache = ours.precompute_condition(cond)
    with torch.no_grad():
        fwd = alternating({
            "ours_uncached": lambda: ours.transformer(x, cond, t),
            "diffusers": lambda: theirs(x, encoder_hidden_states=cond, timestep=t[0]).sample,
            "ours_cached": lambda: ours.transformer(x, cond, t, cond_cache=cache),
        }, repeats, flush_all)
    res["forward"] = {k: v["median_s"] for k, v in fwd.items()}
    res["forward"]["ratio_uncached"] = fwd["diffusers"]["median_s"] / fwd["ours_uncached"]["median_s"]

    g_ours, g_theirs = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    uncond = data["uncond"] if guidance_scale > 1.0 else None

    def ours_sample():
        return ours.sample(condition_embed=cond, filter_ratio=0.0, truncation_rate=truncation_rate,
                           guidance_scale=guidance_scale, uncond_emb=uncond, generator=g_ours,
                           flush_denormals=denormals != "keep")

    def ours_sample_uncached():
        with _uncached(ours):
            return ours_sample()

    with torch.no_grad():
        samp = alternating({
            "ours": ours_sample,
            "diffusers": lambda: diffusers_sample(theirs, scheduler, cond, data["uncond"], truncation_rate,
                                                  guidance_scale, g_theirs),
            "ours_uncached": ours_sample_uncached,
        }, sampling_repeats, flush_all, warmup=0)  # T network calls each: the first steps warm up
    res["sampling"] = {"steps": T, "batch": B, "truncation_rate": truncation_rate, "guidance_scale": guidance_scale,
                       **{f"{k}_s_per_image": v["median_s"] / B for k, v in samp.items()}}
    res["sampling"]["ratio"] = samp["diffusers"]["median_s"] / samp["ours"]["median_s"]
    res["sampling"]["ratio_uncached"] = samp["diffusers"]["median_s"] / samp["ours_uncached"]["median_s"]
    return res


def table(results: list[dict]) -> str:
    lines = ["| size | what | vqdiff | diffusers | diffusers / vqdiff |", "|---|---|---|---|---|"]
    for r in results:
        s, f, p = r["size"], r["forward"], r["sampling"]
        label = f"{s['name']} ({s['layers']}L, w{s['width']}, {s['side']}x{s['side']}, K={s['K']}, B={s['batch']})"
        lines += [
            f"| {label} | network forward, both uncached (ms) | {1e3 * f['ours_uncached']:.1f} | "
            f"{1e3 * f['diffusers']:.1f} | {f['ratio_uncached']:.2f}x |",
            f"| {label} | network forward, vqdiff text k/v cached (ms) | {1e3 * f['ours_cached']:.1f} | – | – |",
            f"| {label} | {p['steps']}-step sampling, s/image (vqdiff cached) | {p['ours_s_per_image']:.2f} | "
            f"{p['diffusers_s_per_image']:.2f} | {p['ratio']:.2f}x |",
            f"| {label} | {p['steps']}-step sampling, s/image (both uncached) | {p['ours_uncached_s_per_image']:.2f} | "
            f"{p['diffusers_s_per_image']:.2f} | {p['ratio_uncached']:.2f}x |",
            f"| {label} | max abs diff of log p(x_0 given x_t) | – | – | {r['agreement']['max_abs_diff_log_probs']:.1e} |",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,reference", help=f"comma-separated, from {', '.join(SIZES)}")
    ap.add_argument("--quick", action="store_true", help="the 'quick' size, one repeat (a smoke run)")
    ap.add_argument("--repeats", type=int, default=5, help="rounds of the network-forward timing")
    ap.add_argument("--sampling-repeats", type=int, default=2, help="rounds of the full-sampling timing")
    ap.add_argument("--truncation-rate", type=float, default=0.86)
    ap.add_argument("--guidance-scale", type=float, default=1.0, help="> 1: classifier-free guidance on both sides")
    ap.add_argument("--denormals", choices=("library", "flush-all", "keep"), default="library",
                    help="library: vqdiff's sample() flushes (its default), diffusers does not; flush-all / keep: "
                         "both sides the same")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = ["quick"] if args.quick else [n.strip() for n in args.sizes.split(",") if n.strip()]
    unknown = [n for n in names if n not in SIZES]
    if unknown:
        raise SystemExit(f"--sizes: unknown {unknown}; known: {', '.join(SIZES)}")
    repeats, sampling_repeats = (1, 1) if args.quick else (args.repeats, args.sampling_repeats)
    results = [bench_size(n, SIZES[n], repeats, sampling_repeats, args.truncation_rate, args.guidance_scale,
                          args.denormals) for n in names]
    import diffusers

    out = {"machine": perf.machine_description("cpu"), "diffusers": diffusers.__version__, "results": results}
    print(table(results))
    print("JSON " + json.dumps(out))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
