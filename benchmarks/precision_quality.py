"""Does sampling in bf16 change what the models draw? (issue 25) Prints tables and a JSON line.

    python benchmarks/precision_quality.py fixtures --fixtures ../shared/fixtures   # official-made model + released size
    python benchmarks/precision_quality.py demo --output OUTPUT/demo_shapes        # a trained CPU demo model

``fixtures``:
  - the official-made ``official_tiny_ithq`` model (PatchVQGAN tokens, CLIP text, learned null text): its
    fp32 tokens for the fixture's seed first checked equal to the official code's (``sample_tokens``), then,
    per seed, the share of sampled tokens that bf16 (and fp16) draws equal to fp32 with the same seed
    (truncation 0.85, guidance 1 and 3), beside the share two fp32 runs with different seeds agree on (the
    sampling noise), and the largest |log p(x_0|x_t) bf16 - fp32| at the fixture's x_t, t;
  - a released-size network (the COCO / CUB config: 19 layers, width 1024, 16 heads, 32x32 tokens,
    K = 2887, 77x512 text; random weights, as no released weights can be downloaded here): the largest
    and the 99.9th-percentile |log p(x_0|x_t) bf16 - fp32| at a few steps, over the tokens whose fp32
    probability is above 1e-4 and over all.
``demo``: held-out accuracy (colour / shape / position / all three) of the demo's samples in fp32 and in bf16
  for ``--seeds`` (the demo's own classifier and sampling settings), with sample counts.

bf16 here is emulated on CPUs without AMX / AVX512-BF16 (slow but numerically the same rounding as native).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]

if __package__:  # imported as benchmarks.<name> (tests)
    from benchmarks import perf
else:  # run as python benchmarks/<name>.py: Python puts benchmarks/ first on sys.path
    import perf
from vqdiff.modeling.diffusion.network_runner import NetworkRunner
from vqdiff.modeling.diffusion.sampling import sample_tokens
from vqdiff.modeling.diffusion.sampling_options import SamplingOptions
from vqdiff.utils.precision import resolve_precision

RELEASED_SIZE = dict(layers=19, width=1024, heads=16, side=32, K=2887, T=100, cond_dim=512, cond_len=77, batch=1)


def log_p_in(diffusion: Any, precision: str, x: torch.Tensor, cond: Any, t: torch.Tensor) -> torch.Tensor:
    """``log p(x_0|x_t)`` (B, K, N) with the network in ``precision`` (fp32 result), as sampling computes it."""
    runner = NetworkRunner(diffusion, resolve_precision(precision, diffusion.device))
    with torch.no_grad():
        with runner.autocast():
            cache = diffusion.precompute_condition(cond)
        return diffusion._net_log_probs(x, cond, t, cache, runner)


def fixture_agreement(fixtures: Path, seeds: list[int], precisions: list[str]) -> dict:
    from vqdiff.inference.loading import build_model, load_model_weights
    from vqdiff.utils.config import load_yaml_config

    work = Path(tempfile.mkdtemp(prefix="precision_quality_"))
    folder = work / "official_tiny_ithq"
    shutil.copytree(fixtures / "official_tiny_ithq", folder)
    old_cwd = Path.cwd()
    try:
        import os

        os.chdir(folder)  # the config's codec and CLIP paths are relative
        model = build_model(load_yaml_config(folder / "config_tiny_ithq.yaml"))
        ckpt = torch.load(folder / "tiny_ithq_official.pth", map_location="cpu", weights_only=True)
        load_model_weights(model, ckpt["model"], ckpt.get("ema"), source="tiny_ithq_official.pth")
        model.eval()
        exp = torch.load(folder / "expected.pt", map_location="cpu", weights_only=False)
        torch.manual_seed(int(exp["sample_seed"]))
        out = model.generate_content(batch={"text": exp["sample_captions"]}, filter_ratio=0, sample_type="top0.85r",
                                     guidance_scale=1.0)
        res: dict[str, Any] = {"fp32_equals_official_tokens": bool(torch.equal(out["content_token"],
                                                                                exp["sample_tokens"]))}
        d = model.transformer
        cond = d.condition_emb(exp["condition_token"]).float()
        tokens = exp["condition_token"]
        uncond = d.empty_text_embed.float().unsqueeze(0).expand(tokens.shape[0], -1, -1)
        res["tokens_per_run"] = int(tokens.shape[0] * d.content_seq_len)
        def run(scale: float, precision: str, seed: int) -> torch.Tensor:
            o = SamplingOptions(truncation_rate=0.85, guidance_scale=scale, precision=precision,
                                generator=torch.Generator().manual_seed(seed))
            return sample_tokens(d, o, condition_token=tokens, uncond_emb=uncond if scale != 1.0 else None)

        for scale in (1.0, 3.0):
            fp32 = {seed: run(scale, "fp32", seed) for seed in seeds + [seeds[-1] + 1]}
            # the yardstick: two fp32 runs whose seeds differ (the sampling noise itself)
            res[f"token_agreement_fp32_next_seed_guidance{scale:g}"] = [
                float((fp32[seed] == fp32[seed + 1]).float().mean()) if seed + 1 in fp32 else None for seed in seeds]
            for prec in precisions:
                res[f"token_agreement_{prec}_guidance{scale:g}"] = [
                    float((run(scale, prec, seed) == fp32[seed]).float().mean()) for seed in seeds]
        x, t = exp["x_t"] if "x_t" in exp else None, exp.get("t")
        if x is not None and t is not None:
            ref = log_p_in(d, "fp32", x, cond[: x.shape[0]], t)
            for prec in precisions:
                res[f"max_abs_diff_log_p_{prec}"] = float((log_p_in(d, prec, x, cond[: x.shape[0]], t) - ref).abs().max())
        return res
    finally:
        os.chdir(old_cwd)
        shutil.rmtree(work, ignore_errors=True)


def released_size_diff(steps: list[int], precisions: list[str], seed: int = 0) -> dict:
    """|log p bf16 - fp32| on a released-size network with random weights, at ``steps``."""
    torch.manual_seed(seed)
    size = RELEASED_SIZE
    d = perf.build_text2image_diffusion(size).eval()
    g = torch.Generator().manual_seed(seed + 1)
    N, K, T = size["side"] ** 2, size["K"], size["T"]
    cond = torch.randn(1, size["cond_len"], size["cond_dim"], generator=g)
    cond = cond / cond.norm(dim=-1, keepdim=True)
    x0 = torch.randint(0, K, (1, N), generator=g)
    out: dict[str, Any] = {"size": size}
    for step in steps:
        t = torch.tensor([step])
        x = d.q_sample_index(x0, t, g)  # masked / replaced as the forward process does at this step
        ref = log_p_in(d, "fp32", x, cond, t)
        likely = ref > -4 * torch.log(torch.tensor(10.0))  # fp32 probability > 1e-4
        for prec in precisions:
            diff = (log_p_in(d, prec, x, cond, t) - ref).abs()
            out[f"t{step}_{prec}"] = {"max_all": float(diff.max()), "max_p_above_1e-4": float(diff[likely].max()),
                                      "q999_all": float(torch.quantile(diff.flatten()[::7], 0.999)),
                                      "masked_share": float((x == K).float().mean())}
    return out


def demo_accuracy(output: Path, seeds: list[int], precisions: list[str], per_caption: int,
                  truncation_rate: float, guidance_scale: float) -> dict:
    import numpy as np

    from inference_VQ_Diffusion import VQ_Diffusion
    from vqdiff.data.synthetic import heldout_combinations, make_caption
    from vqdiff.evaluation.shapes_classifier import text_following_report, train_shapes_classifier

    cfg, ckpt = output / "configs" / "demo_text_shapes.yaml", output / "diffusion" / "checkpoint" / "last.pth"
    api = VQ_Diffusion(config=str(cfg), path=str(ckpt), device="cpu")
    clf = train_shapes_classifier(resolution=32, num_samples=1500, steps=250, seed=0, split="train")
    to_tensor = lambda pil: torch.from_numpy(np.asarray(pil.convert("RGB"))).permute(2, 0, 1).float()  # noqa: E731
    acc: dict[str, list] = {p: [] for p in precisions}
    tokens_equal = []
    for seed in seeds:
        images = {}
        for prec in precisions:
            imgs, caps = [], []
            for i, spec in enumerate(heldout_combinations()):
                caption = make_caption(spec)
                pil = api.inference_generate_sample_with_condition(
                    caption, truncation_rate=truncation_rate, save_root=None, batch_size=per_caption,
                    guidance_scale=guidance_scale, seed=seed * 1000 + i, precision=prec)
                imgs.extend(pil)
                caps.extend([caption] * len(pil))
            batch = torch.stack([to_tensor(x) for x in imgs])
            images[prec] = batch
            acc[prec].append(text_following_report(clf, batch, caps, prec)["accuracy"])
        if len(precisions) > 1:
            tokens_equal.append(float((images[precisions[0]] == images[precisions[1]]).all(dim=(1, 2, 3)).float().mean()))
    summary = {}
    for prec, runs in acc.items():
        summary[prec] = {k: {"mean": statistics.mean(r[k] for r in runs), "min": min(r[k] for r in runs),
                             "max": max(r[k] for r in runs)} for k in runs[0]}
    return {"seeds": seeds, "samples_per_seed": len(heldout_combinations()) * per_caption, "per_seed": acc,
            "summary": summary, "identical_images_share": tokens_equal,
            "sampling": {"truncation_rate": truncation_rate, "guidance_scale": guidance_scale}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("fixtures", "demo"))
    ap.add_argument("--fixtures", default=str(REPO.parent / "shared" / "fixtures"))
    ap.add_argument("--output", default="OUTPUT/demo_shapes", help="the demo folder (demo)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--precisions", default="bf16", help="compared with fp32, comma-separated")
    ap.add_argument("--steps", default="10,50,90", help="released-size network: diffusion steps t (fixtures)")
    ap.add_argument("--no-released-size", action="store_true")
    ap.add_argument("--per-caption", type=int, default=4, help="demo samples per held-out caption and seed")
    ap.add_argument("--truncation-rate", type=float, default=0.85)
    ap.add_argument("--guidance-scale", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    seeds = [int(s) for s in args.seeds.split(",")]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    res: dict[str, Any] = {"machine": perf.machine_description("cpu")}
    if args.what == "fixtures":
        res["official_tiny_ithq"] = fixture_agreement(Path(args.fixtures), seeds, precisions)
        if not args.no_released_size:
            res["released_size"] = released_size_diff([int(s) for s in args.steps.split(",")], precisions)
    else:
        res["demo"] = demo_accuracy(Path(args.output), seeds, ["fp32"] + precisions, args.per_caption,
                                    args.truncation_rate, args.guidance_scale)
    print(json.dumps(res, indent=1, default=str))
    print("JSON " + json.dumps(res, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str), encoding="utf-8")
    return res


if __name__ == "__main__":
    main()
