"""Teach the trained CPU demo model a new concept with a LoRA adapter, against full fine-tuning.

    python running_command/run_demo_shapes.py --quick --output OUTPUT/demo_shapes_quick   # the base, once
    python running_command/run_demo_lora.py --base OUTPUT/demo_shapes_quick --output OUTPUT/demo_lora

The new concept is a fifth position, "at the center" (:mod:`vqdiff.data.centre_shapes`): the base only ever drew
the four quadrants. Steps (all under --output):
  1. check that the base's VQ-VAE can represent centred shapes (real vs reconstructed centre images, scored),
  2. a few hundred fine-tuning images (centre shapes on 8 of the 12 colour x shape combinations, plus a share of
     ordinary quadrant images as replay) into a token cache,
  3. per seed, two train.py runs from the base checkpoint on the same images, iterations, batch and schedule:
     ``solver.lora`` (the default targets, rank and alpha) and full fine-tuning, each in its own process (its
     peak resident memory is measured; both import peft first, so the figure compares training, not imports),
  4. samples of the 4 held-out centre captions (never in the fine-tuning set) and of the base demo's 8 held-out
     quadrant captions, from the base and from each fine-tuned model with the same sampling seeds; scored by
     :mod:`vqdiff.evaluation.centre_position` and the shapes attribute classifier.
Results: ``results.json`` and a table (mean and min-max over the seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vqdiff.utils.config import load_yaml_config, save_yaml_config

# the child process: import peft first (both methods alike), train, report the peak resident memory
_RUNNER = """
import json, resource
import peft  # noqa: F401
import train
result = train.main({argv!r})
print("RESULT " + json.dumps({{"maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                               "losses": result["losses"][-20:]}}))
"""


def log(msg: str) -> None:
    print(f"[lora demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _to_tensor(images) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).float() for im in images])


def check_codec(codec, classifier, seed: int) -> dict:
    from vqdiff.data.centre_shapes import CentreShapesDataset
    from vqdiff.evaluation.centre_position import centre_accuracy

    data = CentreShapesDataset(64, 32, split="heldout", seed=seed + 1)
    items = [data[i] for i in range(len(data))]
    real = torch.stack([x["image"] for x in items])
    colors, shapes = [x["color"] for x in items], [x["shape"] for x in items]
    with torch.no_grad():
        recon = codec.decode(codec.get_tokens(real)["token"]).clamp(0, 255)
    return {"real": centre_accuracy(classifier, real, colors, shapes),
            "reconstructed": centre_accuracy(classifier, recon, colors, shapes), "images": len(items)}


def finetune_config(base_cfg: dict, cache_dir: Path, args: argparse.Namespace, lora: bool) -> dict:
    cfg = json.loads(json.dumps(base_cfg))
    lr = args.lora_lr if lora else args.full_lr
    cfg["solver"].update({
        "base_lr": lr, "max_epochs": 10**6, "max_iterations": args.iters, "save_epochs": 10**6,
        "validation_epochs": 10**6, "sample_iterations": 10**9,
        "ema": {"decay": 0.95, "update_interval": 1, "device": "cpu"},
    })
    sched = cfg["solver"]["optimizers_and_schedulers"][0]["scheduler"]["params"]
    sched.update({"min_lr": lr / 10, "warmup_lr": lr, "warmup": max(1, args.iters // 10), "T_max": args.iters})
    if lora:
        cfg["solver"]["lora"] = {}  # the defaults (lora_config): rank 16, alpha 32, attention + MLP linears
    cfg["dataloader"]["batch_size"] = args.batch
    cfg["dataloader"]["train_datasets"] = [{"target": "vqdiff.data.token_cache.TokenCacheDataset",
                                            "params": {"cache_dir": str(cache_dir), "drop_caption_rate": 0.1}}]
    return cfg


def run_training(cfg_path: Path, name: str, out: Path, base_ckpt: Path, seed: int, threads: int) -> dict:
    argv = ["--config_file", str(cfg_path), "--name", name, "--output", str(out), "--seed", str(seed),
            "--load_path", str(base_ckpt), "--no_progress_bar", "--log_frequency", "10", "--overwrite"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))  # the child imports the installed vqdiff and train.py
    code = _RUNNER.format(argv=argv)
    t = time.time()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"training {name} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    report = json.loads(next(line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")))
    text = (out / name / "logs" / "log.txt").read_text()
    per_iter = [float(v) for v in re.findall(r"([0-9.]+) s/iter", text)]
    report.update({"wall_s": time.time() - t, "s_per_iter": float(np.median(per_iter[1:] or per_iter))})
    return report


def checkpoint_figures(ckpt_dir: Path, lora: bool) -> dict:
    last = ckpt_dir / "last.pth"
    ck = torch.load(last, map_location="cpu", weights_only=True)
    state = ck["optimizer_and_scheduler"]["none"]["optimizer"]["module"]["state"]
    opt_bytes = sum(v.numel() * v.element_size() for s in state.values() for v in s.values() if torch.is_tensor(v))
    trainable = sum(s["exp_avg"].numel() for s in state.values())
    out = {"trainable_params": trainable, "optimizer_state_bytes": opt_bytes, "last_pth_bytes": last.stat().st_size}
    if lora:
        folder = ckpt_dir / "last_lora"
        out["adapter_folder_bytes"] = sum(p.stat().st_size for p in folder.iterdir())
    return out


def sample_and_score(api, classifier, per_new: int, per_old: int, args: argparse.Namespace) -> dict:
    from vqdiff.data.centre_shapes import centre_caption, heldout_centre_combinations
    from vqdiff.data.synthetic import COLORS, SHAPES, heldout_combinations, make_caption
    from vqdiff.evaluation.centre_position import centre_accuracy
    from vqdiff.evaluation.shapes_classifier import text_following_report

    kw = dict(truncation_rate=args.truncation_rate, guidance_scale=args.guidance_scale, save_root=None)
    new_images, colors, shapes = [], [], []
    for i, (c, s) in enumerate(heldout_centre_combinations()):
        new_images += api.inference_generate_sample_with_condition(centre_caption(c, s), batch_size=per_new,
                                                                   seed=10_000 + i, **kw)
        colors += [list(COLORS).index(c)] * per_new
        shapes += [SHAPES.index(s)] * per_new
    old_images, captions = [], []
    for i, spec in enumerate(heldout_combinations()):
        old_images += api.inference_generate_sample_with_condition(make_caption(spec), batch_size=per_old,
                                                                   seed=20_000 + i, **kw)
        captions += [make_caption(spec)] * per_old
    return {"new": centre_accuracy(classifier, _to_tensor(new_images), colors, shapes), "new_images": len(new_images),
            "old": text_following_report(classifier, _to_tensor(old_images), captions)["accuracy"],
            "old_images": len(old_images)}


def summarise(values: list) -> dict:
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values)),
            "n": len(values)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="a finished run_demo_shapes.py output folder")
    p.add_argument("--output", default="OUTPUT/demo_lora")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--images", type=int, default=300, help="fine-tuning images")
    p.add_argument("--replay", type=float, default=0.3, help="share of ordinary quadrant images among them")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lora-lr", type=float, default=1e-3)
    p.add_argument("--full-lr", type=float, default=1e-4)
    p.add_argument("--per-new", type=int, default=8, help="samples per held-out centre caption (4 captions)")
    p.add_argument("--per-old", type=int, default=4, help="samples per held-out quadrant caption (8 captions)")
    p.add_argument("--truncation-rate", type=float, default=0.85)
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    base = Path(args.base)
    base_cfg_path = base / "configs" / "demo_text_shapes.yaml"
    base_ckpt = base / "diffusion" / "checkpoint" / "last.pth"
    if not base_cfg_path.is_file() or not base_ckpt.is_file():
        raise FileNotFoundError(f"--base needs a finished demo run: {base_cfg_path} and {base_ckpt}")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    base_cfg = load_yaml_config(base_cfg_path)

    from inference_VQ_Diffusion import VQ_Diffusion
    from vqdiff.evaluation.shapes_classifier import train_shapes_classifier

    log("1/4 can the base's VQ-VAE represent centred shapes?")
    classifier = train_shapes_classifier(resolution=32, num_samples=1500, steps=250, seed=0, split="train",
                                         progress=False)
    base_api = VQ_Diffusion(config=str(base_cfg_path), path=str(base_ckpt), device="cpu")
    codec_check = check_codec(base_api.model.content_codec, classifier, seed=0)
    log(f"centre images, real: {codec_check['real']}; through the VQ-VAE: {codec_check['reconstructed']}")
    if codec_check["reconstructed"]["position"] < 0.9:
        raise SystemExit("the VQ-VAE does not keep centred shapes in the centre: "
                         "no model over its tokens can learn them")

    log(f"2/4 {args.images} fine-tuning images ({args.replay:.0%} replay of quadrant images) -> token cache")
    from vqdiff.data.centre_shapes import CentreShapesDataset
    from vqdiff.data.token_cache import write_token_cache

    codec_cfg = base_cfg["model"]["params"]["content_codec_config"]
    cache = write_token_cache(CentreShapesDataset(args.images, 32, split="train", seed=0, replay=args.replay),
                              base_api.model.content_codec, out / "token_cache", batch_size=64,
                              codec_config=codec_cfg, overwrite=True, progress=False)

    log("3/4 the base model on the held-out captions")
    t = time.time()
    sampling = {k: getattr(args, k) for k in ("per_new", "per_old", "truncation_rate", "guidance_scale")}
    cached = out / "base_scores.json"  # the base's samples depend only on these and the base checkpoint
    key = {**sampling, "base_bytes": base_ckpt.stat().st_size, "base_mtime": base_ckpt.stat().st_mtime}
    if cached.is_file() and json.loads(cached.read_text())["key"] == key:
        base_scores = json.loads(cached.read_text())["scores"]
    else:
        base_scores = sample_and_score(base_api, classifier, args.per_new, args.per_old, args)
        cached.write_text(json.dumps({"key": key, "scores": base_scores}))
    log(f"base: new {base_scores['new']}, old {base_scores['old']} ({time.time() - t:.0f} s)")
    del base_api

    runs: dict = {"lora": [], "full": []}
    for seed in args.seeds:
        for method in ("lora", "full"):
            name = f"{method}_seed{seed}"
            cfg_path = out / "configs" / f"{method}.yaml"
            save_yaml_config(finetune_config(base_cfg, Path(cache), args, lora=method == "lora"), cfg_path)
            ckpt_dir = out / name / "checkpoint"
            run_key = {**{k: v for k, v in vars(args).items() if k not in ("seeds", "output")}, "base_key": key}
            done = out / name / "report.json"  # a finished run of the same settings is not trained again
            if done.is_file() and json.loads(done.read_text())["key"] == run_key:
                report = json.loads(done.read_text())["report"]
                log(f"4/4 {name}: reusing the finished run")
                runs[method].append(report)
                continue
            log(f"4/4 {name}: {args.iters} iterations")
            report = run_training(cfg_path, name, out, base_ckpt, seed, args.threads)
            report.update(checkpoint_figures(ckpt_dir, method == "lora"))
            if method == "lora":
                api = VQ_Diffusion(config=str(base_cfg_path), path=str(base_ckpt), device="cpu",
                                   lora=str(ckpt_dir / "last_lora"), lora_scale=1.0, lora_strict=True)
            else:
                api = VQ_Diffusion(config=str(cfg_path), path=str(ckpt_dir / "last.pth"), device="cpu")
            scores = sample_and_score(api, classifier, args.per_new, args.per_old, args)
            report.update(scores, old_drop_all=base_scores["old"]["all"] - scores["old"]["all"])
            done.write_text(json.dumps({"key": run_key, "report": report}))
            log(f"{name}: new-concept {scores['new']}, old {scores['old']}, drop {report['old_drop_all']:+.3f}, "
                f"{report['s_per_iter']:.3f} s/iter, peak RSS {report['maxrss_kib'] / 1024:.0f} MiB")
            runs[method].append(report)

    table = {}
    for method, reports in runs.items():
        table[method] = {
            "new_concept_all": summarise([r["new"]["all"] for r in reports]),
            "new_concept_position": summarise([r["new"]["position"] for r in reports]),
            "old_all": summarise([r["old"]["all"] for r in reports]),
            "old_drop_all": summarise([r["old_drop_all"] for r in reports]),
            "trainable_params": reports[0]["trainable_params"],
            "optimizer_state_bytes": reports[0]["optimizer_state_bytes"],
            "last_pth_bytes": reports[0]["last_pth_bytes"],
            "adapter_folder_bytes": reports[0].get("adapter_folder_bytes"),
            "s_per_iter": summarise([r["s_per_iter"] for r in reports]),
            "peak_rss_mib": summarise([r["maxrss_kib"] / 1024 for r in reports]),
        }
    results = {"args": vars(args), "codec_check": codec_check, "base": base_scores, "runs": runs, "table": table,
               "base_checkpoint_bytes": base_ckpt.stat().st_size}
    (out / "results.json").write_text(json.dumps(results, indent=2))

    def fmt(s: dict, scale: float = 1.0, digits: int = 3) -> str:
        return f"{s['mean'] * scale:.{digits}f} ({s['min'] * scale:.{digits}f}-{s['max'] * scale:.{digits}f})"

    print(f"\nbase: new-concept all {base_scores['new']['all']:.3f} ({base_scores['new_images']} images), "
          f"old held-out all {base_scores['old']['all']:.3f} ({base_scores['old_images']} images)")
    print(f"{'':34s} {'LoRA':>24s} {'full fine-tuning':>24s}")
    rows = [("new concept, all three", lambda t: fmt(t["new_concept_all"])),
            ("new concept, position", lambda t: fmt(t["new_concept_position"])),
            ("old held-out all three", lambda t: fmt(t["old_all"])),
            ("drop on old held-out (all three)", lambda t: fmt(t["old_drop_all"])),
            ("trainable parameters", lambda t: f"{t['trainable_params']:,}"),
            ("optimizer state (bytes)", lambda t: f"{t['optimizer_state_bytes']:,}"),
            ("last.pth (bytes)", lambda t: f"{t['last_pth_bytes']:,}"),
            ("adapter folder (bytes)", lambda t: f"{t['adapter_folder_bytes'] or 0:,}"),
            ("step time (s/iter)", lambda t: fmt(t["s_per_iter"])),
            ("peak RSS of the run (MiB)", lambda t: fmt(t["peak_rss_mib"], digits=0))]
    for label, get in rows:
        print(f"{label:34s} {get(table['lora']):>24s} {get(table['full']):>24s}")
    log(f"results: {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
