#!/usr/bin/env python
"""Why a trained shapes demo does or does not follow its captions: sampling-only measurements.

    python benchmarks/demo_diagnose.py --run OUTPUT/demo_shapes [--per-caption 8] [--json out.json]

On the model a demo run trained (``--run``: the folder ``run_demo_shapes.py --output`` wrote), with no
training at all, this scores with the demo's own classifier (``shapes_classifier.pt``):

* **fidelity vs composition**: eight *training* captions next to the eight held-out ones, same sampler;
  a model that draws the training captions right but not the held-out ones fails to compose, one that
  misses both fails to draw;
* **guidance x truncation**: the held-out captions at guidance 1 / 3 / 5 and truncation 0.85 / 1.0;
* **the empty caption** both ways: ``''`` through the text tower (what the demo's "empty text" row
  does) and the learned null embedding itself as the condition (what training shows for a dropped
  caption, ``learnable_cf``).

Every row uses the same seeds per caption, so rows differ only by what the row changes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from vqdiff.data.synthetic import all_combinations, heldout_combinations, make_caption, partial_captions
from vqdiff.evaluation.shapes_classifier import load_shapes_classifier, text_following_report
from vqdiff.modeling.diffusion.sampling import learned_null_embedding, sample_tokens

ATTRS = ("color", "shape", "position", "all")


def training_specs(count: int = 8) -> list:
    """``count`` training combinations spread over the list (every 5th of the 40), fixed for every run."""
    held = set(heldout_combinations())
    train = [s for s in all_combinations() if s not in held]
    step = max(1, len(train) // count)
    return train[::step][:count]


def attribute_parts(spec) -> str:
    """The held-out caption as three one-attribute parts, "a red shape ... AND a circle ... AND a shape at
    the top left ..." (composable guidance: each part was a training caption of its own under
    ``captions='partial'``)."""
    one_attribute = [c for c in partial_captions(spec)[:3]]
    return " AND ".join(one_attribute)


def _to_tensor(pil) -> torch.Tensor:
    return torch.from_numpy(np.array(pil.convert("RGB"))).permute(2, 0, 1).float()


def sample_captions(api, specs, per_caption: int, seed: int, *, guidance: float, truncation: float,
                    condition: str = "caption") -> tuple[torch.Tensor, list[str]]:
    """Images ``(len(specs) * per_caption, 3, H, W)`` and the caption each was asked for.

    ``condition``: ``'caption'`` (the caption through the text tower), ``'empty'`` (``''`` through the
    tower), ``'learned_null'`` (the learned null embedding as the condition) or ``'parts'`` (the caption's
    three one-attribute captions as composable-guidance parts, each with weight ``guidance``)."""
    images, captions = [], []
    model = api.model
    for i, spec in enumerate(specs):
        caption = make_caption(spec)
        if condition == "learned_null":
            options = model.sampling_options(None, truncation_rate=truncation, guidance_scale=guidance,
                                             generator=torch.Generator().manual_seed(seed + i))
            with torch.no_grad(), model._eval_mode():
                null = learned_null_embedding(model.transformer, per_caption)
                if null is None:
                    raise ValueError("the model has no learned null embedding (learnable_cf is off)")
                tokens = sample_tokens(model.transformer, options, condition_embed=null, uncond_emb=null)
                batch = model._decode(tokens)
            images.append(batch.float().cpu())
        else:
            prompt = {"caption": caption, "empty": "", "parts": attribute_parts(spec)}[condition]
            pil = api.inference_generate_sample_with_condition(
                prompt, truncation_rate=truncation, save_root=None, batch_size=per_caption,
                guidance_scale=guidance, seed=seed + i)
            images.append(torch.stack([_to_tensor(p) for p in pil]))
        captions.extend([caption] * per_caption)
    return torch.cat(images), captions


def diagnose(run: Path, per_caption: int = 8, seed: int = 0, only: list | None = None) -> dict:
    """Score the rows of the module docstring (``only``: the names of the rows to run, None: all)."""
    from inference_VQ_Diffusion import VQ_Diffusion

    api = VQ_Diffusion(config=str(run / "configs" / "demo_text_shapes.yaml"),
                       path=str(run / "diffusion" / "checkpoint" / "last.pth"), device="cpu")
    clf = load_shapes_classifier(run / "shapes_classifier.pt")
    held, train = heldout_combinations(), training_specs()
    plan = [
        ("train captions, g3 t0.85", train, 3.0, 0.85, "caption"),
        ("held-out, g3 t0.85 (demo)", held, 3.0, 0.85, "caption"),
        ("train captions, g1 t1.0", train, 1.0, 1.0, "caption"),
        ("held-out, g1 t1.0", held, 1.0, 1.0, "caption"),
        ("held-out, g1 t0.85", held, 1.0, 0.85, "caption"),
        ("held-out, g3 t1.0", held, 3.0, 1.0, "caption"),
        ("held-out, g5 t0.85", held, 5.0, 0.85, "caption"),
        ("held-out, g5 t1.0", held, 5.0, 1.0, "caption"),
        ("empty '' via tower, g3 t0.85", held, 3.0, 0.85, "empty"),
        ("learned null, g1 t0.85", held, 1.0, 0.85, "learned_null"),
        ("held-out as 3 parts, w1 t0.85", held, 1.0, 0.85, "parts"),
        ("held-out as 3 parts, w3 t0.85", held, 3.0, 0.85, "parts"),
    ]
    if only:
        unknown = set(only) - {row[0] for row in plan}
        if unknown:
            raise ValueError(f"unknown rows {sorted(unknown)}; known: {[row[0] for row in plan]}")
        plan = [row for row in plan if row[0] in only]
    table = {}
    for name, specs, g, tr, cond in plan:
        t = time.time()
        imgs, caps = sample_captions(api, specs, per_caption, seed, guidance=g, truncation=tr, condition=cond)
        acc = text_following_report(clf, imgs, caps, name)["accuracy"]
        table[name] = {**{a: float(acc[a]) for a in ATTRS}, "samples": len(caps), "seconds": time.time() - t}
        print(f"{name:34s} " + " ".join(f"{a} {acc[a]:.3f}" for a in ATTRS) + f"  (n={len(caps)})", flush=True)
    return table


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a folder written by run_demo_shapes.py --output")
    parser.add_argument("--per-caption", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--rows", default=None, help="row names to run, separated by ';' (default: all)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    table = diagnose(Path(args.run), args.per_caption, args.seed, [r.strip() for r in args.rows.split(";")] if args.rows else None)
    if args.json:
        Path(args.json).write_text(json.dumps({"run": args.run, "threads": torch.get_num_threads(), "rows": table},
                                              indent=2))
    return table


if __name__ == "__main__":
    main()
