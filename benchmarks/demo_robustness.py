#!/usr/bin/env python
"""Does the demo codec keep every colour, shape and position on every seed and float order?

    python benchmarks/demo_robustness.py                          # seeds 0-4, 1 and 2 threads, both presets
    python benchmarks/demo_robustness.py --seeds 0,1 --threads 1 --presets quick --json OUT.json

Trains the demo's VQ-VAE (``configs/tiny_vqvae_shapes.yaml`` with the preset's step count, exactly as
``running_command/run_demo_shapes.py`` does) once per (preset, seed, thread count). The thread count is a
cheap stand-in for another CPU: it changes the float summation order of every reduction, and a recipe
whose result depends on that order gives a different codec on every machine.

Each codec round-trips held-out images (colour/shape/position combinations never in its training set),
and the demo's attribute classifier (one ruler for every run, trained once on real images; its own
accuracy is printed first) reads the attributes back: the "ceiling" any diffusion model over these
tokens can reach. Beside it: the mean per-pixel |x - x^| (0-255 scale) over all pixels and over the shape's
pixels, the mean intensity of reconstructions vs inputs (a codec can keep the attributes and still shift
intensities, which a downstream metric notices), and how many codes the held-out images use.
Exit code 1 when a row is below ``--min-ceiling`` (default 0.97) on any attribute.

``--from-runs DIR [DIR ...]`` adds the codecs that demo runs already trained (``DIR/vqvae``, with the seed
and thread count their ``results.json`` records) instead of training them again; ``--from-codecs DIR ...``
adds codecs trained by ``scripts/train_vqvae.py`` (``DIR/configs/model.yaml`` + ``DIR/checkpoint/last.pth``),
e.g. under ``torchrun`` with 2 processes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vqdiff.data.synthetic import BACKGROUND, ShapesDataset
from vqdiff.demo.presets import PRESETS
from vqdiff.demo.recipe import CODEC_CONFIG
from vqdiff.evaluation.shapes_classifier import text_following_report, train_shapes_classifier
from vqdiff.engine.codec_training import train_vqvae
from vqdiff.utils.config import load_yaml_config

ATTRS = ("color", "shape", "position")


def _int_list(text: str) -> list[int]:
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return out


def heldout_images(num: int, seed: int = 1000) -> tuple[torch.Tensor, list[str]]:
    """``num`` real held-out images ``(num, 3, 32, 32)`` in [0, 255] and their captions."""
    data = ShapesDataset(num, 32, split="heldout", seed=seed)
    items = [data[i] for i in range(num)]
    return torch.stack([it["image"] for it in items]), [it["text"] for it in items]


@torch.no_grad()
def codec_report(model: torch.nn.Module, clf: torch.nn.Module, images: torch.Tensor, captions: list[str]) -> dict:
    """Ceiling accuracies and pixel statistics of ``model``'s round trip of ``images`` (0-255)."""
    model.eval()
    indices = model.encode_to_indices(images / 127.5 - 1.0)
    recon = ((model.decode_indices(indices).clamp(-1, 1) + 1.0) * 127.5)
    acc = text_following_report(clf, recon, captions, "recon")["accuracy"]
    error = (recon - images).abs()  # (B, 3, H, W)
    background = torch.tensor(BACKGROUND, dtype=images.dtype).view(1, 3, 1, 1)
    shape_pixels = (images != background).any(dim=1, keepdim=True).expand_as(images)
    return {
        **{a: float(acc[a]) for a in (*ATTRS, "all")},
        "pixel_l1": float(error.mean()),
        "shape_pixel_l1": float(error[shape_pixels].mean()),
        "mean_intensity_recon": float(recon.mean()),
        "mean_intensity_input": float(images.mean()),
        "codes_used": int(indices.unique().numel()),
    }


def format_row(row: dict, tail: str) -> str:
    """One line of the table printed under the header of :func:`main`."""
    return (f"{row['preset']:10s} {row['seed']:4d} {row['threads']:3d} {row['color']:6.3f} {row['shape']:6.3f} "
            f"{row['position']:6.3f} {row['all']:6.3f} {row['pixel_l1']:6.2f} {row['shape_pixel_l1']:8.2f} "
            f"{row['mean_intensity_recon']:6.1f}/{row['mean_intensity_input']:5.1f} {row['codes_used']:5d} {tail}")


def load_codec_run(folder: Path) -> torch.nn.Module:
    """The VQ-VAE of a ``scripts/train_vqvae.py`` output folder (``configs/model.yaml``, ``checkpoint/last.pth``)."""
    from vqdiff.modeling.codecs.image.vqgan import build_first_stage_from_yaml

    model_yaml = folder / "configs" / "model.yaml"
    if not model_yaml.is_file():
        raise SystemExit(f"{folder} is not a finished codec run (needs {model_yaml})")
    model = build_first_stage_from_yaml(model_yaml)
    state = torch.load(folder / "checkpoint" / "last.pth", map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("loss.")})
    return model.eval()


def load_demo_codec(run: Path) -> tuple[torch.nn.Module, dict]:
    """The VQ-VAE a demo run trained (``run/vqvae``) and ``{'preset', 'seed', 'threads'}`` of that run."""
    results = run / "results.json"
    if not results.is_file():
        raise SystemExit(f"{run} is not a finished demo run (needs {results})")
    meta = json.loads(results.read_text())
    return load_codec_run(run / "vqvae"), {"preset": f"{meta['preset']} run", "seed": int(meta.get("seed", -1)),
                                           "threads": int(meta.get("threads", -1))}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,3,7 ('' to score --from-runs only)")
    parser.add_argument("--threads", default="1,2", help="torch thread counts to train with")
    parser.add_argument("--presets", default="quick,full", help="demo presets (their VQ-VAE step counts)")
    parser.add_argument("--config", default=str(CODEC_CONFIG))
    parser.add_argument("--images", type=int, default=128, help="held-out images per codec")
    parser.add_argument("--min-ceiling", type=float, default=0.97)
    parser.add_argument("--max-steps", type=int, default=None, help="override the preset's steps (tests)")
    parser.add_argument("--classifier-steps", type=int, default=250, help="the ruler's training steps (as the demo)")
    parser.add_argument("--from-runs", nargs="*", default=[], help="demo output folders whose codec to score too")
    parser.add_argument("--from-codecs", nargs="*", default=[], help="scripts/train_vqvae.py output folders to score")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)

    torch.set_flush_denormal(True)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise SystemExit(f"unknown preset(s) {unknown}; known: {sorted(PRESETS)}")
    images, captions = heldout_images(args.images)
    clf = train_shapes_classifier(resolution=32, num_samples=1500, steps=args.classifier_steps, seed=0, split="train")
    ruler = text_following_report(clf, images, captions, "real")["accuracy"]
    print("classifier on the real held-out images: " + " / ".join(f"{a} {ruler[a]:.3f}" for a in ATTRS), flush=True)

    header = (f"{'preset':10s} {'seed':>4s} {'thr':>3s} {'color':>6s} {'shape':>6s} {'pos':>6s} {'all':>6s} "
              f"{'L1':>6s} {'L1 shape':>8s} {'mean rec/in':>13s} {'codes':>5s} {'s':>5s}")
    print(header, flush=True)
    rows = []
    config = load_yaml_config(args.config)
    by_steps: dict[int, list[str]] = {}  # presets that train the same codec are trained once
    for preset in presets:
        by_steps.setdefault(args.max_steps or PRESETS[preset].vq_steps, []).append(preset)
    for steps, names in by_steps.items():
        preset = "+".join(names)
        for seed in _int_list(args.seeds):
            for threads in _int_list(args.threads):
                previous = torch.get_num_threads()
                torch.set_num_threads(threads)
                t0 = time.time()
                try:
                    trained = train_vqvae(config, max_steps=steps, seed=seed, progress=False)
                    seconds = time.time() - t0
                    row = {"preset": preset, "seed": seed, "threads": threads, "steps": steps, "seconds": seconds,
                           **codec_report(trained["model"], clf, images, captions)}
                finally:
                    torch.set_num_threads(previous)
                rows.append(row)
                print(format_row(row, f"{seconds:5.0f}"), flush=True)
    for run in map(Path, args.from_runs):
        model, meta = load_demo_codec(run)
        row = {**meta, "steps": None, "seconds": None, **codec_report(model, clf, images, captions)}
        rows.append(row)
        print(format_row(row, f" (demo run {run})"), flush=True)
    for folder in map(Path, args.from_codecs):
        row = {"preset": f"codec {folder.name}", "seed": -1, "threads": -1, "steps": None, "seconds": None,
               **codec_report(load_codec_run(folder), clf, images, captions)}
        rows.append(row)
        print(format_row(row, f" (codec run {folder})"), flush=True)
    if not rows:
        raise SystemExit("no codec to score: give --seeds/--threads/--presets, --from-runs or --from-codecs")
    for attr in ATTRS:
        values = [r[attr] for r in rows]
        print(f"{attr:8s}: mean {sum(values) / len(values):.3f}, min {min(values):.3f}, max {max(values):.3f} "
              f"over {len(rows)} codecs x {args.images} images")
    if args.json:
        Path(args.json).write_text(json.dumps({"classifier_on_real": ruler, "rows": rows}, indent=2))
    failed = [r for r in rows if min(r[a] for a in ATTRS) < args.min_ceiling]
    if failed:
        print(f"{len(failed)} of {len(rows)} codecs below {args.min_ceiling} on some attribute", flush=True)
        raise SystemExit(1)
    return rows


if __name__ == "__main__":
    main()
