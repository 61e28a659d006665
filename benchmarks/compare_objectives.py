#!/usr/bin/env python
"""VQ-Diffusion's objective against the masked-diffusion ELBO (MD4 / MDLM) on the same network, data and compute.

    python benchmarks/compare_objectives.py --threads 1               # the README table (quick preset, 3 seeds)
    python benchmarks/compare_objectives.py --tiny                    # seconds: the test suite's run

One VQ-VAE, one random CLIP text tower and one token cache (seed 0, from the shapes demo's own functions in
``running_command/run_demo_shapes.py``) are shared; for each seed and objective (``vq_diffusion``,
``masked_elbo``) a diffusion model is trained through train.py for the same iterations on

* ``text``: the shapes demo (captions, learnable null text, held-out colour/shape/position combinations),
  sampled through the notebook API for the held-out captions with the text and with an empty caption
  (guidance 3, truncation 0.85, as the demo); scored by the shapes attribute classifier;
* ``class``: the same images with their class label (colour x shape, 12 classes; position free), sampled per
  class without guidance and scored for colour and shape;

and its negative ELBO on held-out tokens is estimated in bits per token (``validation_bound.py``; both
objectives bound the same likelihood). Sampling is the default of each objective: 100 ancestral steps (T).
The table gives the mean and min-max over the seeds, the sample counts and the training wall time.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path


import numpy as np
import torch

from vqdiff.data.synthetic import ShapesDataset, class_label, heldout_combinations, num_classes
from vqdiff.demo import recipe
from vqdiff.demo.presets import PRESETS, DemoPreset
from vqdiff.demo.shapes import sample_heldout
from vqdiff.utils.config import save_yaml_config

OBJECTIVES = ("vq_diffusion", "masked_elbo")
TINY = DemoPreset(vq_steps=2, iters=3, batch=4, layers=1, width=32, heads=2, train_images=32, per_caption=1)
TRUNCATION, GUIDANCE = 0.85, 3.0


def log(msg: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------------
# shared parts and configs
# --------------------------------------------------------------------------------------------------
def shared_parts(out: Path, p: DemoPreset) -> tuple[dict, Path, Path]:
    """(codec config, CLIP path, token cache dir), made once with seed 0 (the demo's steps 1-3; the demo keeps
    its token-cache step inside ``_train_all``, so it is repeated here)."""
    from vqdiff.data.token_cache import write_token_cache
    from vqdiff.utils.config import instantiate_from_config

    clip = recipe.make_random_clip(out / "pretrained" / "clip_tiny_random.pt", seed=0)
    codec_cfg = recipe.train_codec(out / "vqvae", p.vq_steps, 0)
    cache = out / "token_cache"
    if not (cache / "tokens.npy").is_file():
        codec = instantiate_from_config(codec_cfg, key_path="codec")
        cache = Path(write_token_cache(ShapesDataset(p.train_images, 32, split="train", seed=0), codec, cache,
                                       batch_size=64, codec_config=codec_cfg, overwrite=True))
    return codec_cfg, clip, cache


def text_config(codec_cfg: dict, clip: Path, cache: Path, p: DemoPreset, seed: int, objective: str, steps: int) -> dict:
    cfg = recipe.diffusion_config(codec_cfg, clip, cache, p, seed)
    params = cfg["model"]["params"]["diffusion_config"]["params"]
    params["objective"] = objective
    params["diffusion_step"] = steps
    return cfg


def class_config(text_cfg: dict) -> dict:
    """The demo's config turned class-conditional (C_DALLE, 12 classes, no null label: no guidance)."""
    cfg = copy.deepcopy(text_cfg)
    model = cfg["model"]
    model["target"] = "vqdiff.modeling.models.conditional_dalle.C_DALLE"
    mp = model["params"]
    mp["condition_info"] = {"key": "label"}
    mp.pop("condition_codec_config")
    mp["learnable_cf"] = False
    dp = mp["diffusion_config"]["params"]
    dp["learnable_cf"] = False
    net = dp["transformer_config"]["params"]
    width = net["n_embd"]
    dp["transformer_config"] = {
        "target": "vqdiff.modeling.transformers.networks.Condition2ImageTransformer",
        "params": {k: v for k, v in net.items() if k not in ("condition_seq_len", "condition_dim")}
        | {"attn_type": "selfcondition", "class_type": "adalayernorm", "class_number": num_classes(),
           "mlp_type": "fc"},
    }
    dp["condition_emb_config"] = {"target": "vqdiff.modeling.embeddings.class_embedding.ClassEmbedding",
                                  "params": {"num_embed": num_classes(), "embed_dim": width, "identity": True}}
    cfg["dataloader"]["train_datasets"][0]["params"]["drop_caption_rate"] = 0.0
    return cfg


# --------------------------------------------------------------------------------------------------
# one run: train, sample, score, bound
# --------------------------------------------------------------------------------------------------
def train_run(cfg: dict, out: Path, name: str, seed: int) -> tuple[Path, Path, float]:
    import train as train_entry

    cfg_path = out / "configs" / f"{name}.yaml"
    save_yaml_config(cfg, cfg_path)
    t = time.time()
    train_entry.main(["--config_file", str(cfg_path), "--name", name, "--output", str(out), "--seed", str(seed),
                      "--log_frequency", "100", "--overwrite", "--no_progress_bar"])
    return cfg_path, out / name / "checkpoint" / "last.pth", time.time() - t


def to_tensor(pil) -> torch.Tensor:
    return torch.from_numpy(np.asarray(pil.convert("RGB"))).permute(2, 0, 1).float()


@torch.no_grad()
def validation_bits(model, kind: str, n: int, seed: int, passes: int) -> float:
    """Negative ELBO in bits per token on ``n`` held-out images (text: their captions; class: their label)."""
    from vqdiff.modeling.diffusion.condition_input import training_condition
    from vqdiff.modeling.diffusion.validation_bound import bits_per_token, negative_elbo

    data = ShapesDataset(n, 32, split="heldout", seed=1000 + seed)
    items = [data[i] for i in range(n)]
    content = model.prepare_content({"image": torch.stack([it["image"] for it in items])})
    if kind == "text":
        cond = model.prepare_condition({"text": [it["text"] for it in items]})
    else:
        cond = {"condition_token": torch.tensor([it["label"] for it in items])}
    d = model.transformer
    cond_emb, cond_mask = training_condition(d, {**content, **cond})
    g = torch.Generator().manual_seed(seed)
    nats = torch.cat([negative_elbo(d, content["content_token"], cond_emb, g, cond_mask) for _ in range(passes)])
    return bits_per_token(nats, content["content_token"].shape[1])


def score_text(api, clf, per_caption: int, seed: int, out: Path) -> dict:
    from vqdiff.evaluation.shapes_classifier import text_following_report

    rows = {}
    for label, with_text in (("text", True), ("empty text", False)):
        ims, caps = sample_heldout(api, out / f"samples_{with_text}", per_caption, seed, with_text,
                                        truncation_rate=TRUNCATION, guidance_scale=GUIDANCE)
        rep = text_following_report(clf, torch.stack([to_tensor(x) for x in ims]), caps, label)
        rows[label] = {**rep["accuracy"], "n": len(ims)}
    return rows


def score_class(api, clf, per_class: int, seed: int) -> dict:
    from vqdiff.evaluation.shapes_classifier import classify

    images, colors, shapes = [], [], []
    for spec in heldout_combinations():
        ims = api.inference_generate_sample_with_class(label=class_label(spec), truncation_rate=TRUNCATION,
                                                       save_root=None, batch_size=per_class, seed=seed)
        images += [to_tensor(x) for x in ims]
        c, s, _ = spec.indices
        colors += [c] * len(ims)
        shapes += [s] * len(ims)
    pred = classify(clf, torch.stack(images))
    right_c = pred["color"] == torch.tensor(colors)
    right_s = pred["shape"] == torch.tensor(shapes)
    return {"class": {"color": right_c.float().mean().item(), "shape": right_s.float().mean().item(),
                      "all": (right_c & right_s).float().mean().item(), "n": len(images)}}


def one_run(kind: str, objective: str, seed: int, shared: tuple, p: DemoPreset, args, clf, out: Path) -> dict:
    from inference_VQ_Diffusion import VQ_Diffusion

    codec_cfg, clip, cache = shared
    cfg = text_config(codec_cfg, clip, cache, p, seed, objective, args.steps)
    if kind == "class":
        cfg = class_config(cfg)
    name = f"{kind}_{objective}_s{seed}"
    cfg_path, ckpt, train_s = train_run(cfg, out, name, seed)
    api = VQ_Diffusion(config=str(cfg_path), path=str(ckpt), device="cpu")
    t = time.time()
    if kind == "text":
        rows = score_text(api, clf, p.per_caption, seed, out / name)
    else:
        rows = score_class(api, clf, p.per_caption, seed)
    sample_s = time.time() - t
    bits = validation_bits(api.model, kind, args.val_images, seed, args.val_passes)
    log(f"{name}: train {train_s:.0f} s, sample {sample_s:.0f} s, bound {bits:.3f} bits/token, {rows}")
    return {"kind": kind, "objective": objective, "seed": seed, "train_s": train_s, "sample_s": sample_s,
            "bits_per_token": bits, "accuracy": rows}


# --------------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------------
def spread(values: list, fmt: str = ".3f") -> str:
    return f"{statistics.mean(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def table(runs: list[dict]) -> str:
    """The markdown table: per set, objective and condition the mean (min-max) over the seeds' runs."""
    lines = ["| set | objective | condition | colour | shape | position | all | samples | bound (bits/token) | "
             "train wall s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for kind in ("text", "class"):
        for objective in OBJECTIVES:
            mine = [r for r in runs if r["kind"] == kind and r["objective"] == objective]
            if not mine:
                continue
            for cond in mine[0]["accuracy"]:
                accs = [r["accuracy"][cond] for r in mine]
                cells = [spread([a[k] for a in accs]) if k in accs[0] else "-"
                         for k in ("color", "shape", "position", "all")]
                lines.append(f"| {kind} | {objective} | {cond} | " + " | ".join(cells) +
                             f" | {len(mine)} x {accs[0]['n']} | {spread([r['bits_per_token'] for r in mine])} | "
                             f"{spread([r['train_s'] for r in mine], '.0f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a seconds-long run of every stage (tests)")
    parser.add_argument("--output", default="OUTPUT/compare_objectives")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iters", type=int, default=None, help="training iterations of every model "
                        "(default: the demo's quick preset)")
    parser.add_argument("--steps", type=int, default=None, help="diffusion steps T (default 100; --tiny 10)")
    parser.add_argument("--sets", nargs="+", default=["text", "class"], choices=["text", "class"])
    parser.add_argument("--val-images", type=int, default=None, help="held-out images of the bound (default 64)")
    parser.add_argument("--val-passes", type=int, default=None, help="Monte-Carlo passes of the bound (default 8)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    p = TINY if args.tiny else PRESETS["quick"]
    if args.iters:
        p = p.replace(iters=args.iters)
    args.steps = args.steps or (10 if args.tiny else 100)
    args.val_images = args.val_images or (4 if args.tiny else 64)
    args.val_passes = args.val_passes or (1 if args.tiny else 8)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    log("shared VQ-VAE, CLIP tower, token cache and attribute classifier (seed 0)")
    shared = shared_parts(out, p)
    from vqdiff.evaluation.shapes_classifier import train_shapes_classifier

    clf = train_shapes_classifier(resolution=32, num_samples=64 if args.tiny else 1500, steps=3 if args.tiny else 250,
                                  seed=0, split="train")
    runs = [one_run(kind, objective, seed, shared, p, args, clf, out)
            for kind in args.sets for seed in args.seeds for objective in OBJECTIVES]
    text = table(runs)
    result = {"preset": "tiny" if args.tiny else "quick", "iterations": p.iters, "diffusion_steps": args.steps,
              "seeds": args.seeds, "runs": runs, "table": text, "total_s": time.time() - t0,
              "command": "python benchmarks/compare_objectives.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(text)
    log(f"done in {result['total_s'] / 60:.1f} min; {out / 'results.json'}")
    return result


if __name__ == "__main__":
    main()
