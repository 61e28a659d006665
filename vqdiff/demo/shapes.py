"""The CPU demo: teach a small VQ-Diffusion to draw captioned shapes, then measure how well it follows text.

    python running_command/run_demo_shapes.py            # full demo (see docs/results.md for time and results)
    python running_command/run_demo_shapes.py --quick    # a few minutes

Steps (all under --output, default OUTPUT/demo_shapes):
  1. a tiny CLIP text encoder with random frozen weights and the real CLIP BPE vocabulary (no weights can
     be downloaded here; a frozen random text transformer still tells captions apart),
  2. a small VQ-VAE trained on 32x32 shapes (8x8 tokens),
  3. a token cache of the training images (the diffusion trainer then never runs the VQ-VAE encoder),
  4. a small text-to-image VQ-Diffusion model trained with train.py,
  5. samples for the held-out captions (colour/shape/position combinations never seen together in
     training) through the notebook API, with the text and without it (empty caption),
  6. a shapes attribute classifier (trained on real synthetic images) scores the samples: accuracy per
     attribute next to chance and next to the no-text baseline. Results go to results.json and a grid PNG.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

import torch

from vqdiff.data.synthetic import ShapesDataset, heldout_combinations, make_caption
from vqdiff.demo.presets import PRESETS, DemoPreset
from vqdiff.demo.recipe import diffusion_config, log, make_random_clip, train_codec
from vqdiff.utils.config import save_yaml_config

__all__ = ["main", "sample_heldout"]


def sample_heldout(model_api, root: Path, per_caption: int, seed: int, with_text: bool, *,
                   truncation_rate: float, guidance_scale: float) -> tuple[list, list]:
    images, captions = [], []
    for i, spec in enumerate(heldout_combinations()):
        caption = make_caption(spec)
        prompt = caption if with_text else ""
        pil = model_api.inference_generate_sample_with_condition(
            prompt, truncation_rate=truncation_rate, save_root=str(root) if with_text else None,
            batch_size=per_caption, guidance_scale=guidance_scale, seed=seed + i,
        )
        images.extend(pil)
        captions.extend([caption] * len(pil))
    return images, captions


def preset_with(preset: DemoPreset, assignments: list[str]) -> DemoPreset:
    """``preset`` with ``FIELD=VALUE`` assignments, each value read as its field's type (ValueError naming a
    bad field or value)."""
    fields = {f.name: f.type for f in dataclasses.fields(DemoPreset)}
    changes = {}
    for item in assignments:
        name, sep, raw = item.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        kind = fields[name]
        try:
            if kind == "bool":
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                changes[name] = raw.lower() in ("true", "1")
            else:
                changes[name] = {"int": int, "float": float, "str": str}[kind](raw)
        except ValueError:
            raise ValueError(f"--set {item!r}: {name} takes a {kind}") from None
    return preset.replace(**changes)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="full (default), quick (a few minutes) or ci (the test suite's smallest run)")
    parser.add_argument("--quick", action="store_true", help="the same as --preset quick")
    parser.add_argument("--data", choices=("cache", "shards"), default="cache",
                        help="train from the token cache (default) or from img2dataset-style .tar shards of the "
                             "same images (vqdiff.data.web_shards; the codec then encodes every batch)")
    parser.add_argument("--output", default="OUTPUT/demo_shapes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="change preset fields for a recipe experiment, e.g. --set iters=3000 padding_mask=true "
                             "(vqdiff.demo.presets.DemoPreset names them)")
    parser.add_argument("--codec-from", default=None, metavar="RUN",
                        help="reuse the trained VQ-VAE of another demo run (RUN/vqvae), so two recipes compare on "
                             "one codec")
    parser.add_argument("--truncation-rate", type=float, default=None,
                        help="sampling keeps the most likely tokens up to this probability mass (default: the "
                             "preset's)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="classifier-free guidance with the learned null text (1 = off; default: the preset's)")
    parser.add_argument("--eval-only", action="store_true",
                        help="skip training: sample and score the checkpoint already in --output "
                             "(e.g. of an interrupted run: SIGTERM/Ctrl-C saves last.pth)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # all-[MASK] inputs drive the CPU into denormal floats, which are ~7x slower (docs/benchmarks.md)
    torch.set_flush_denormal(True)
    if args.quick and args.preset not in (None, "quick"):
        parser.error(f"--quick contradicts --preset {args.preset}")
    args.preset = "quick" if args.quick else (args.preset or "full")
    try:
        p = preset_with(PRESETS[args.preset], args.set)
    except ValueError as err:
        parser.error(str(err))
    args.truncation_rate = p.truncation_rate if args.truncation_rate is None else args.truncation_rate
    args.guidance_scale = p.guidance_scale if args.guidance_scale is None else args.guidance_scale
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.codec_from and not (out / "vqvae").exists():
        source = Path(args.codec_from) / "vqvae"
        if not (source / "configs" / "codec.yaml").is_file():
            parser.error(f"--codec-from: '{source}' holds no finished VQ-VAE run (configs/codec.yaml)")
        shutil.copytree(source, out / "vqvae")
    t0 = time.time()
    timings: dict[str, float] = {}

    cfg_path = out / "configs" / "demo_text_shapes.yaml"
    ckpt = out / "diffusion" / "checkpoint" / "last.pth"
    if args.eval_only:
        if not cfg_path.is_file() or not ckpt.is_file():
            raise FileNotFoundError(f"--eval-only needs a trained demo in '{out}' ({cfg_path}, {ckpt})")
        log(f"--eval-only: scoring {ckpt}")
    else:
        trained = _train_all(out, p, args.seed, timings, data=args.data)
        if trained.get("signal"):  # SIGTERM/Ctrl-C: the checkpoint is saved; do not go on to sample for minutes
            log(f"training stopped by a signal; last.pth saved. Score it later with --eval-only --output {out}")
            raise SystemExit(128 + int(trained["signal"]))
    return _evaluate(out, cfg_path, ckpt, p, args, timings, t0)


def _train_all(out: Path, p: DemoPreset, seed: int, timings: dict, data: str = "cache") -> dict:
    """Stages 1-4: CLIP, VQ-VAE, token cache, diffusion training."""
    log("1/6 tiny random CLIP text encoder")
    clip_path = make_random_clip(out / "pretrained" / "clip_tiny_random.pt", seed=seed)

    log("2/6 VQ-VAE on 32x32 shapes")
    t = time.time()
    codec_cfg = train_codec(out / "vqvae", p.vq_steps, seed)
    timings["vqvae_s"] = time.time() - t

    log("3/6 token cache of the training images")
    t = time.time()
    from vqdiff.data.token_cache import write_token_cache
    from vqdiff.utils.config import instantiate_from_config

    codec = instantiate_from_config(codec_cfg, key_path="codec")
    train_set = ShapesDataset(p.train_images, 32, split="train", seed=seed, captions=p.captions)
    cache_dir = write_token_cache(train_set, codec, out / "token_cache", batch_size=64, codec_config=codec_cfg,
                                  overwrite=True)
    timings["token_cache_s"] = time.time() - t
    # codebook health: a collapsed codebook (shapes encoded as background) makes the rest pointless
    import numpy as np
    from vqdiff.evaluation.codebook import usage_statistics

    counts = np.bincount(np.asarray(np.load(Path(cache_dir) / "tokens.npy", mmap_mode="r")).ravel(),
                         minlength=codec.get_number_of_tokens())
    usage = usage_statistics(torch.from_numpy(counts))
    log(f"codebook usage on the training set: {usage['used']}/{usage['num_codes']} codes, "
        f"perplexity {usage['perplexity']:.1f}")
    if usage["used"] < 8:
        log("WARNING: the VQ-VAE uses very few codes (codebook collapse): samples will not show shapes")

    log("4/6 train the text-to-image diffusion model (train.py)")
    t = time.time()
    cfg = diffusion_config(codec_cfg, clip_path, Path(cache_dir), p, seed)
    if data == "shards":  # the same images as .tar shards (png: the very pixels the cache was built from)
        from vqdiff.data.layouts import shards_of_dataset

        node = shards_of_dataset(train_set, out / "shards", samples_per_shard=256, drop_caption_rate=0.1,
                                 image_format="png")
        node["params"]["seed"] = seed
        cfg["dataloader"]["train_datasets"] = [node]
    cfg_path = out / "configs" / "demo_text_shapes.yaml"
    save_yaml_config(cfg, cfg_path)
    import train as train_entry

    result = train_entry.main(["--config_file", str(cfg_path), "--name", "diffusion", "--output", str(out),
                               "--seed", str(seed), "--log_frequency", "50", "--overwrite"])
    timings["diffusion_train_s"] = time.time() - t
    return result


def _evaluate(out: Path, cfg_path: Path, ckpt: Path, p: DemoPreset, args: argparse.Namespace, timings: dict, t0: float) -> dict:
    """Stages 5-6: sample the held-out captions with and without text, score them."""
    log("5/6 sample the held-out captions, with and without the text")
    t = time.time()
    from inference_VQ_Diffusion import VQ_Diffusion

    api = VQ_Diffusion(config=str(cfg_path), path=str(ckpt), device="cpu")
    kw = dict(truncation_rate=args.truncation_rate, guidance_scale=args.guidance_scale)
    gen_text, captions = sample_heldout(api, out / "samples_text", p.per_caption, args.seed, with_text=True, **kw)
    # the empty caption: the model's own prior, where guidance has nothing to push towards
    gen_none, _ = sample_heldout(api, out / "samples_notext", p.per_caption, args.seed, with_text=False, **kw)
    timings["sampling_s"] = time.time() - t

    log("6/6 score with the shapes attribute classifier")
    from vqdiff.evaluation.shapes_classifier import (CHANCE, save_shapes_classifier, text_following_report,
                                                     train_shapes_classifier)
    import numpy as np

    clf = train_shapes_classifier(resolution=32, num_samples=1500, steps=250, seed=args.seed, split="train")
    save_shapes_classifier(clf, out / "shapes_classifier.pt")  # the ruler, for run_demo_editing.py and the app test
    real = ShapesDataset(len(captions), 32, split="heldout", seed=args.seed + 1)
    real_imgs = [real[i] for i in range(len(real))]
    to_tensor = lambda pil: torch.from_numpy(np.asarray(pil.convert("RGB"))).permute(2, 0, 1).float()  # noqa: E731
    real_batch, real_caps = torch.stack([r["image"] for r in real_imgs]), [r["text"] for r in real_imgs]
    with torch.no_grad():  # the codec's round trip bounds what any diffusion model over its tokens can draw
        codec = api.model.content_codec
        recon = codec.decode(codec.get_tokens(real_batch)["token"]).clamp(0, 255)
    rows = {
        "real held-out images (classifier check)": text_following_report(clf, real_batch, real_caps, "real")["accuracy"],
        "VQ-VAE reconstructions (ceiling)": text_following_report(clf, recon, real_caps, "recon")["accuracy"],
        "generated, with text": text_following_report(clf, torch.stack([to_tensor(x) for x in gen_text]), captions, "text")["accuracy"],
        "generated, empty text": text_following_report(clf, torch.stack([to_tensor(x) for x in gen_none]), captions, "none")["accuracy"],
        "chance": dict(CHANCE),
    }
    from torchvision.utils import make_grid, save_image

    grid = make_grid(torch.stack([to_tensor(x) for x in gen_text]) / 255.0, nrow=p.per_caption, padding=1)
    save_image(grid, out / "heldout_grid.png")
    from vqdiff.demo.figure import heldout_figure

    distinct = list(dict.fromkeys(captions))
    heldout_figure(gen_text, gen_none, distinct, p.per_caption).save(out / "heldout_figure.png")
    timings["total_s"] = time.time() - t0
    trained_iters = int(torch.load(ckpt, map_location="cpu", weights_only=True).get("last_iter", -1)) + 1
    results = {"preset": args.preset, "recipe": dataclasses.asdict(p), "seed": args.seed, "data": args.data, "threads": torch.get_num_threads(),
               "trained_iterations": trained_iters,
               "planned_iterations": p.iters, "sampling": kw, "accuracy": rows, "timings": timings,
               "heldout_captions": [make_caption(s) for s in heldout_combinations()], "grid": str(out / "heldout_grid.png"),
               "figure": str(out / "heldout_figure.png")}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    log("text-following accuracy on held-out combinations (per attribute):")
    header = f"{'':42s} {'color':>7s} {'shape':>7s} {'position':>9s} {'all':>7s}"
    print(header)
    for name, acc in rows.items():
        print(f"{name:42s} {acc['color']:7.3f} {acc['shape']:7.3f} {acc['position']:9.3f} {acc['all']:7.3f}")
    log(f"done in {timings['total_s'] / 60:.1f} min; grid: {out / 'heldout_grid.png'}; results: {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
