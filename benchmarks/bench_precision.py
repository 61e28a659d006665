"""Sampling speed per precision, paired in one process with the official code and diffusers.

    python benchmarks/bench_precision.py --official-root /path/to/VQ-Diffusion   # reference size, CPU
    python benchmarks/bench_precision.py --quick                                  # tiny, seconds (a test runs it)
    python benchmarks/bench_precision.py --device cuda --official-root ...        # the GPU row

``--official-root`` is a checkout of microsoft/VQ-Diffusion (the folder holding ``image_synthesis``); its
``DiffusionTransformer`` is built with the same configuration and loaded with the same weights as ours. Without
it the official column says "not measured". diffusers' side is ``Transformer2DModel`` + ``VQDiffusionScheduler``
loaded with the same weights through ``diffusers_export`` (``bench_diffusers.build_pair``).

Columns (one network, the same weights): vqdiff fp32 (the default), vqdiff bf16, vqdiff ``precision='auto'``
(what it resolved to is printed), vqdiff ``auto`` + ``compile``, the official code (fp32 on the CPU; its fp16
AMP, ``DiffusionTransformer.amp``, on CUDA), diffusers (fp32). Rows:

- network forward (ours with the text keys/values cached, as the sampler runs it; the official code and
  diffusers have no such cache);
- one sampling step: network, truncation 0.86, posterior, Gumbel draw (ours ``sample_ancestral`` over one
  step; official ``p_sample`` under its own ``top0.86r`` wrapper; diffusers the pipeline's step:
  transformer, ``truncate``, ``VQDiffusionScheduler.step``);
- T-step sampling of the batch from all-[MASK];
- max |log p(x_0|x_t) - fp32| of bf16 and of the compiled network on one input.

Every row alternates the systems in each round (rotated order; medians over ``--repeats`` rounds, the
sampling row over ``--sampling-repeats``); denormals are flushed for every timed call on every side
(``--denormals library``: as each library runs, only vqdiff's ``sample`` flushes). The compile time of
the compiled column (first call of each shape) is reported apart and kept out of the timings.
Timings on a shared machine are noisy: quote them with the machine and the load (both printed).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from vqdiff.modeling.diffusion import samplers as S
from vqdiff.modeling.diffusion.log_ops import index_to_log_onehot
from vqdiff.modeling.diffusion.sampling_options import SamplingOptions
from vqdiff.utils.precision import native_bf16, resolve_precision

if __package__:  # imported as benchmarks.bench_precision (tests; python -m benchmarks.bench_precision)
    from benchmarks import perf
    from benchmarks.bench_diffusers import alternating, build_pair, diffusers_sample
else:  # run as python benchmarks/bench_precision.py: Python puts benchmarks/ first on sys.path
    import perf
    from bench_diffusers import alternating, build_pair, diffusers_sample

TRUNCATION = 0.86
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_fp16")


def cpu_description() -> dict:
    """CPU model, the bf16-related flags of ``/proc/cpuinfo`` and torch's own native-bf16 verdict."""
    flags: set = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    native, reason = native_bf16("cpu")
    return {"flags": {f: f in flags for f in CPU_FLAGS}, "native_bf16": native, "reason": reason,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def import_official_package(root: Path) -> types.ModuleType:
    """The official ``image_synthesis`` package of the checkout ``root``, registered under its own name so that
    its modules' ``image_synthesis.*`` imports resolve inside that folder (nothing is added to sys.path)."""
    folder = root / "image_synthesis"
    if not folder.is_dir():
        raise SystemExit(f"--official-root {root}: no image_synthesis folder there (a microsoft/VQ-Diffusion checkout)")
    init = folder / "__init__.py"
    spec = (importlib.util.spec_from_file_location("image_synthesis", init, submodule_search_locations=[str(folder)])
            if init.is_file() else importlib.machinery.ModuleSpec("image_synthesis", None, is_package=True))
    spec.submodule_search_locations = [str(folder)]
    package = importlib.util.module_from_spec(spec)
    sys.modules["image_synthesis"] = package
    if spec.loader is not None:
        spec.loader.exec_module(package)
    return package


def build_official(root: Path, ours: Any, size: dict, device: torch.device) -> Any:
    """The official ``DiffusionTransformer`` from the checkout ``root``, same config and weights as ``ours``, with
    the official ``top{r}r`` truncation wrapper installed as its ``generate_content`` does."""
    import_official_package(root)
    from image_synthesis.modeling.models.dalle import DALLE
    from image_synthesis.modeling.transformers.diffusion_transformer import DiffusionTransformer

    side = size["side"]
    emb = {"target": "image_synthesis.modeling.embeddings.dalle_mask_image_embedding.DalleMaskImageEmbedding",
           "params": dict(num_embed=size["K"], spatial_size=[side, side], embed_dim=size["width"], trainable=True,
                          pos_emb_type="embedding")}
    net = {"target": "image_synthesis.modeling.transformers.transformer_utils.Text2ImageTransformer",
           "params": dict(attn_type="selfcross", n_layer=size["layers"], condition_seq_len=size["cond_len"],
                          content_seq_len=side * side, content_spatial_size=[side, side], n_embd=size["width"],
                          condition_dim=size["cond_dim"], n_head=size["heads"], attn_pdrop=0.0, resid_pdrop=0.0,
                          block_activate="GELU2", timestep_type="adalayernorm", mlp_hidden_times=4)}
    official = DiffusionTransformer(content_emb_config=emb, transformer_config=net, diffusion_step=size["T"],
                                    alpha_init_type="alpha1", auxiliary_loss_weight=5e-4, adaptive_auxiliary_loss=True)
    missing, unexpected = official.load_state_dict(ours.state_dict(), strict=False)
    if missing or unexpected:
        raise SystemExit(f"the official model did not take our weights: missing {missing}, unexpected {unexpected}")
    official.to(device).eval()
    official.cf_predict_start = DALLE.predict_start_with_truncation(None, official.predict_start, f"top{TRUNCATION}r")
    official.amp = device.type == "cuda"  # the official mixed precision: fp16 autocast, CUDA only
    return official


class _CudaCallsStayOnCpu:
    """The official network calls ``t.cuda()`` on its step tensor (``transformer_utils.py``), so on the CPU the
    official calls run with ``Tensor.cuda`` as the identity; restored on exit. Nothing of ours runs inside."""

    def __enter__(self):
        self.saved = torch.Tensor.cuda
        torch.Tensor.cuda = lambda tensor, *args, **kwargs: tensor

    def __exit__(self, *exc):
        torch.Tensor.cuda = self.saved


def _official_call(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    if device.type == "cuda":
        return fn

    def call():
        with _CudaCallsStayOnCpu():
            return fn()

    return call


def vqdiff_columns(d: Any, device: torch.device, backend: str) -> dict[str, SamplingOptions]:
    """The vqdiff columns as sampling options (the generator is set per call)."""
    base = SamplingOptions(truncation_rate=TRUNCATION)
    return {"vqdiff fp32": base, "vqdiff bf16": base.replace(precision="bf16"),
            "vqdiff auto": base.replace(precision="auto"),
            "vqdiff auto+compile": base.replace(precision="auto", compile=True, compile_backend=backend)}


def _progress(msg: str) -> None:
    print(f"[bench_precision {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def measure(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
    size = perf.reference_size(quick=args.quick)
    B, N, K, T = size["batch"], size["side"] ** 2, size["K"], size["T"]
    torch.manual_seed(0)
    ours = perf.build_text2image_diffusion(size).to(device).eval()
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(B, size["cond_len"], size["cond_dim"], generator=g).to(device)
    x = torch.randint(0, K, (B, N), generator=g)
    x[torch.rand(B, N, generator=g) < 0.5] = K
    x, t = x.to(device), torch.full((B,), T // 2, dtype=torch.long, device=device)
    columns = vqdiff_columns(ours, device, args.compile_backend)
    auto = resolve_precision("auto", device)
    res: dict[str, Any] = {"machine": perf.machine_description(device), "cpu": cpu_description(), "size": size,
                           "auto": {"chosen": auto.name, "reason": auto.reason}, "denormals": args.denormals,
                           "truncation_rate": TRUNCATION, "compile_backend": args.compile_backend}
    with torch.no_grad():  # as sampling builds them: the condition caches need no gradient
        denoisers = {name: S.Denoiser(ours, cond, None, o.for_device(device)) for name, o in columns.items()}

    # compile first, outside the timings: one forward per shape the rows use (the batch, and the step's)
    start = time.perf_counter()
    with torch.no_grad():
        denoisers["vqdiff auto+compile"](x, t)
    res["compile_seconds"] = time.perf_counter() - start
    _progress(f"compiled ({args.compile_backend}) in {res['compile_seconds']:.1f} s")

    # agreement of the reduced / compiled networks with fp32 on one input: log p(x_0|x_t) before truncation
    def log_p(name: str) -> torch.Tensor:
        den = denoisers[name]
        return ours._net_log_probs(x, cond, t, den.cache, den.network)

    with torch.no_grad():
        ref = log_p("vqdiff fp32")
        res["max_abs_diff_log_p_vs_fp32"] = {name: float((log_p(name) - ref).abs().max())
                                             for name in denoisers if name != "vqdiff fp32"}

    official = None
    if args.official_root:
        official = build_official(Path(args.official_root), ours, size, device)
    theirs = scheduler = None
    try:
        _, theirs, scheduler = build_pair(size)  # same seed and builder: the same weights as `ours`
        theirs.to(device)
        scheduler.set_timesteps(T)
        res["diffusers"] = "ok"
    except ImportError as err:
        res["diffusers"] = f"not measured: {err}"

    def run_network(name: str) -> Callable[[], Any]:
        den = denoisers[name]
        return lambda: den.network(x, cond, t, cond_cache=den.cache)

    forward = {name: run_network(name) for name in columns}
    step = {name: (lambda den=den: S.sample_ancestral(den, x, [T // 2], den.options)) for name, den in denoisers.items()}
    flush = args.denormals == "flush-all"

    def full(o: SamplingOptions) -> Callable[[], Any]:
        return lambda: ours.sample(condition_embed=cond, filter_ratio=0, options=o.replace(
            generator=torch.Generator(device=device).manual_seed(0)))

    sampling = {name: full(o) for name, o in columns.items()}
    if official is not None:
        log_x = index_to_log_onehot(x, K + 1)
        forward["official"] = _official_call(lambda: official.transformer(x, cond, t), device)
        step["official"] = _official_call(lambda: official.p_sample(log_x, cond, t), device)
        sampling["official"] = _official_call(
            lambda: official.sample(None, None, cond, filter_ratio=0, batch_size=B), device)
    if theirs is not None:
        from diffusers import VQDiffusionPipeline

        def diffusers_step():
            log_p = theirs(x, encoder_hidden_states=cond, timestep=t[0]).sample
            log_p = VQDiffusionPipeline.truncate(None, log_p, TRUNCATION).clamp(-70.0)
            return scheduler.step(log_p, timestep=t[0], sample=x, generator=torch.Generator(device=device)).prev_sample

        forward["diffusers"] = lambda: theirs(x, encoder_hidden_states=cond, timestep=t[0]).sample
        step["diffusers"] = diffusers_step
        sampling["diffusers"] = lambda: diffusers_sample(theirs, scheduler, cond, None, TRUNCATION, 1.0,
                                                         torch.Generator(device=device).manual_seed(0))
    with torch.no_grad():
        res["forward_s"] = _medians(alternating(forward, args.repeats, flush))
        _progress(f"forward row done: {res['forward_s']}")
        res["step_s"] = _medians(alternating(step, args.repeats, flush))
        _progress(f"step row done: {res['step_s']}")
        res["sampling_s"] = {}
        if args.sampling_repeats > 0:
            res["sampling_s"] = _medians(alternating(sampling, args.sampling_repeats, flush, warmup=0))
    return res


def _medians(timings: dict[str, dict]) -> dict[str, float]:
    return {name: v["median_s"] for name, v in timings.items()}


def table(res: dict) -> str:
    """The paired table (markdown) and the lines naming the machine."""
    names = list(res["forward_s"])
    T, B = res["size"]["T"], res["size"]["batch"]
    cpu = res["cpu"]
    flags = ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in cpu["flags"].items())
    m = res["machine"]
    lines = [f"Machine: {m['cpu']} ({flags}); {m['usable_cores']} usable cores, torch {m['torch']} "
             f"({m['torch_threads']} threads), device {m['device']}, load average {m.get('load_average')}",
             f"Native bf16: {cpu['native_bf16']} ({cpu['reason']}); precision='auto' -> {res['auto']['chosen']}",
             f"Size: {res['size']}; truncation {res['truncation_rate']}; denormals {res['denormals']}; compile backend "
             f"{res['compile_backend']}, compile time {res['compile_seconds']:.1f} s (first call, not in the rows)",
             "", "| what | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, key, scale, fmt in (("network forward (ms)", "forward_s", 1e3, "{:.1f}"),
                                   ("one sampling step (ms)", "step_s", 1e3, "{:.1f}"),
                                   (f"{T}-step sampling of {B} images (s)", "sampling_s", 1, "{:.2f}")):
        row = res[key]
        lines.append(f"| {label} | " + " | ".join(fmt.format(scale * row[n]) if n in row else "not measured"
                                                  for n in names) + " |")
    diffs = res["max_abs_diff_log_p_vs_fp32"]
    lines.append("| max abs diff of log p(x_0 given x_t) vs fp32 | " + " | ".join(
        f"{diffs[n]:.1e}" if n in diffs else ("0" if n == "vqdiff fp32" else "–") for n in names) + " |")
    if not res["sampling_s"]:
        lines.append("\nthe sampling row: not measured (--sampling-repeats 0)")
    if "official" not in names:
        lines.append("\nofficial: not measured (give --official-root, a microsoft/VQ-Diffusion checkout)")
    if res["machine"]["device"].startswith("cpu"):
        lines.append("GPU row: not measured in this run (python benchmarks/bench_precision.py --device cuda)")
    for key, label in (("step_s", "one sampling step"), ("sampling_s", f"{T}-step sampling")):
        ref = res[key]
        for other in ("official", "diffusers", "vqdiff fp32"):
            if other in ref:
                lines.append(f"{label}, {other} / vqdiff auto+compile: {ref[other] / ref['vqdiff auto+compile']:.2f}x; "
                             f"{other} / vqdiff auto: {ref[other] / ref['vqdiff auto']:.2f}x")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the tiny size, one round, aot_eager compile (seconds)")
    ap.add_argument("--device", default="cpu", help="'cpu' or 'cuda[:i]'")
    ap.add_argument("--official-root", default=None, help="a microsoft/VQ-Diffusion checkout (holds image_synthesis)")
    ap.add_argument("--repeats", type=int, default=5, help="rounds of the forward and step rows")
    ap.add_argument("--sampling-repeats", type=int, default=2, help="rounds of the T-step sampling row (0: skip it)")
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; "
                    "--quick: aot_eager, which needs no C++ build)")
    ap.add_argument("--denormals", choices=("flush-all", "library"), default="flush-all",
                    help="flush-all: every timed call flushes fp32 denormals (the same for every side); library: "
                         "as each library runs (only vqdiff's sample() flushes)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats, args.sampling_repeats = 1, 1
    if args.compile_backend is None:
        args.compile_backend = "aot_eager" if args.quick else "inductor"
    res = measure(args)
    print(table(res))
    print("JSON " + json.dumps(res, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str), encoding="utf-8")
    return res


if __name__ == "__main__":
    main()
