#!/usr/bin/env python
"""The CPU demo: teach a small VQ-Diffusion to draw captioned shapes, then measure how well it follows text.

    python running_command/run_demo_shapes.py            # full demo (see README for time and results)
    python running_command/run_demo_shapes.py --quick    # CI-sized run, a few minutes

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
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from vqdiff.data.synthetic import ShapesDataset, heldout_combinations, make_caption  # noqa: E402
from vqdiff.utils.config import load_yaml_config, save_yaml_config  # noqa: E402

PRESETS = {
    # name: VQ-VAE steps, diffusion iterations, batch, layers, width, heads, training images, samples per caption
    "full": dict(vq_steps=1000, iters=4000, batch=32, layers=4, width=128, heads=4, train_images=4000, per_caption=16, lr=1e-3, captions="full"),
    "quick": dict(vq_steps=1000, iters=2000, batch=32, layers=2, width=128, heads=4, train_images=2000, per_caption=8, lr=1e-3, captions="full"),
    # the test suite's run: it only has to show that held-out text is followed far better than empty text.
    # A shorter codec run keeps colour and position (shape blurs); 1,000 diffusion iterations did not
    # follow the colour yet on 2 of 2 seeds (0.19 / 0.31), 2,000 did on every seed tried
    "ci": dict(vq_steps=400, iters=2000, batch=32, layers=2, width=128, heads=4, train_images=2000, per_caption=4, lr=1e-3, captions="full"),
}


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_random_clip(path: Path, width: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A CLIP text tower with the real 49408-token vocabulary and random weights, saved as a state dict.

    The token embeddings are drawn large (std 1) next to the other weights (std 0.02), so each output
    position stays mostly its own word: with CLIP's own scale (0.02) the causal attention and MLPs of a
    random tower mix the whole prefix into every later word, and the words said last (the position, after
    colour and shape) come out as new vectors for every unseen colour/shape/position combination -- the
    opposite of what a trained CLIP gives and of what the held-out test needs.
    """
    from vqdiff.utils.tiny_parts import random_clip_text_tower

    model = random_clip_text_tower(width, layers, seed=seed, other_std=0.01, token_std=1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def train_codec(out: Path, steps: int, seed: int) -> dict:
    """Train (or, when a finished run is in ``out``, reuse) the VQ-VAE; returns its content_codec_config."""
    from vqdiff.engine.codec_training import train_vqvae

    if (out / "configs" / "codec.yaml").is_file() and (out / "checkpoint" / "last.pth").is_file():
        log(f"VQ-VAE: reusing the finished run in {out}")
        return load_yaml_config(out / "configs" / "codec.yaml")["content_codec_config"]
    config = load_yaml_config(REPO / "configs" / "tiny_vqvae_shapes.yaml")
    result = train_vqvae(config, output_dir=out, max_steps=steps, seed=seed)
    log(f"VQ-VAE: reconstruction L1 {result['first']:.3f} -> {result['last']:.3f} in {result['seconds']:.0f} s")
    return load_yaml_config(out / "configs" / "codec.yaml")["content_codec_config"]


def diffusion_config(codec_cfg: dict, clip_path: Path, cache_dir: Path, p: dict, seed: int) -> dict:
    """The text-to-image config of the demo, in the official layout with vqdiff targets."""
    codec_params = codec_cfg["params"] if "params" in codec_cfg else codec_cfg
    K = int(codec_params.get("quantize_number") or codec_params["num_tokens"])
    h, w = codec_params["token_shape"]
    clip_width = int(torch.load(clip_path, weights_only=True)["positional_embedding"].shape[1])
    return {
        "model": {
            "target": "vqdiff.modeling.models.dalle.DALLE",
            "params": {
                "content_info": {"key": "image"},
                "condition_info": {"key": "text"},
                "learnable_cf": True,
                "content_codec_config": codec_cfg,
                "condition_codec_config": {
                    "target": "vqdiff.modeling.codecs.text.tokenize.Tokenize",
                    "params": {"context_length": 77, "add_start_and_end": True, "with_mask": True, "pad_value": 0,
                               "clip_embedding": False,
                               "tokenizer_config": {"target": "vqdiff.modeling.codecs.text.bpe.SimpleTokenizer",
                                                    "params": {"end_idx": 49152}}},
                },
                "diffusion_config": {
                    "target": "vqdiff.modeling.diffusion.diffusion_transformer.DiffusionTransformer",
                    "params": {
                        "diffusion_step": 100, "alpha_init_type": "alpha1", "auxiliary_loss_weight": 5.0e-4,
                        "adaptive_auxiliary_loss": True, "mask_weight": [1, 1], "learnable_cf": True,
                        "condition_emb_config": {
                            "target": "vqdiff.modeling.embeddings.clip_text_embedding.CLIPTextEmbedding",
                            "params": {"clip_name": "ViT-B/32", "clip_path": str(clip_path), "num_embed": 49408,
                                       "normalize": True, "pick_last_embedding": False, "keep_seq_len_dim": False,
                                       "additional_last_embedding": False, "embed_dim": clip_width},
                        },
                        "transformer_config": {
                            "target": "vqdiff.modeling.transformers.networks.Text2ImageTransformer",
                            "params": {"attn_type": "selfcross", "n_layer": p["layers"], "condition_seq_len": 77,
                                       "content_seq_len": h * w, "content_spatial_size": [h, w], "n_embd": p["width"],
                                       "condition_dim": clip_width, "n_head": p["heads"], "attn_pdrop": 0.0,
                                       "resid_pdrop": 0.0, "block_activate": "GELU2",
                                       "timestep_type": "adalayernorm", "mlp_hidden_times": 4},
                        },
                        "content_emb_config": {
                            "target": "vqdiff.modeling.embeddings.dalle_mask_image_embedding.DalleMaskImageEmbedding",
                            "params": {"num_embed": K, "spatial_size": [h, w], "embed_dim": p["width"],
                                       "trainable": True, "pos_emb_type": "embedding"},
                        },
                    },
                },
            },
        },
        "solver": {
            "base_lr": p["lr"] / 10, "adjust_lr": "none", "max_epochs": 1000, "max_iterations": p["iters"],
            "save_epochs": 1000, "validation_epochs": 1000, "sample_iterations": 10**9,
            # a short run: average over the last ~100 steps, not over the whole run since random init
            "ema": {"decay": 0.99, "update_interval": 1, "device": "cpu"},
            "clip_grad_norm": {"target": "vqdiff.engine.clip_grad_norm.ClipGradNorm",
                               "params": {"start_iteration": 0, "end_iteration": -1, "max_norm": 1.0}},
            "optimizers_and_schedulers": [{
                "name": "none",
                "optimizer": {"target": "torch.optim.AdamW", "params": {"betas": [0.9, 0.96], "weight_decay": 0.01}},
                "scheduler": {"step_iteration": 1,
                              "target": "vqdiff.engine.lr_scheduler.CosineAnnealingLRWithWarmup",
                              "params": {"min_lr": p["lr"] / 20, "warmup_lr": p["lr"], "warmup": max(1, p["iters"] // 10),
                                         "T_max": p["iters"]}},
            }],
        },
        "dataloader": {
            "batch_size": p["batch"], "num_workers": 0,
            "train_datasets": [{"target": "vqdiff.data.token_cache.TokenCacheDataset",
                                "params": {"cache_dir": str(cache_dir), "drop_caption_rate": 0.1}}],
            "validation_datasets": [],
        },
    }


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
    parser.add_argument("--truncation-rate", type=float, default=0.85,
                        help="sampling keeps the most likely tokens up to this probability mass (official 0.85)")
    parser.add_argument("--guidance-scale", type=float, default=3.0,
                        help="classifier-free guidance with the learned null text (1 = off)")
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
    p = PRESETS[args.preset]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
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


def _train_all(out: Path, p: dict, seed: int, timings: dict, data: str = "cache") -> dict:
    """Stages 1-4: CLIP, VQ-VAE, token cache, diffusion training."""
    log("1/6 tiny random CLIP text encoder")
    clip_path = make_random_clip(out / "pretrained" / "clip_tiny_random.pt", seed=seed)

    log("2/6 VQ-VAE on 32x32 shapes")
    t = time.time()
    codec_cfg = train_codec(out / "vqvae", p["vq_steps"], seed)
    timings["vqvae_s"] = time.time() - t

    log("3/6 token cache of the training images")
    t = time.time()
    from vqdiff.data.token_cache import write_token_cache
    from vqdiff.utils.config import instantiate_from_config

    codec = instantiate_from_config(codec_cfg, key_path="codec")
    train_set = ShapesDataset(p["train_images"], 32, split="train", seed=seed, captions=p["captions"])
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


def _evaluate(out: Path, cfg_path: Path, ckpt: Path, p: dict, args: argparse.Namespace, timings: dict, t0: float) -> dict:
    """Stages 5-6: sample the held-out captions with and without text, score them."""
    log("5/6 sample the held-out captions, with and without the text")
    t = time.time()
    from inference_VQ_Diffusion import VQ_Diffusion

    api = VQ_Diffusion(config=str(cfg_path), path=str(ckpt), device="cpu")
    kw = dict(truncation_rate=args.truncation_rate, guidance_scale=args.guidance_scale)
    gen_text, captions = sample_heldout(api, out / "samples_text", p["per_caption"], args.seed, with_text=True, **kw)
    # the empty caption: the model's own prior, where guidance has nothing to push towards
    gen_none, _ = sample_heldout(api, out / "samples_notext", p["per_caption"], args.seed, with_text=False, **kw)
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

    grid = make_grid(torch.stack([to_tensor(x) for x in gen_text]) / 255.0, nrow=p["per_caption"], padding=1)
    save_image(grid, out / "heldout_grid.png")
    timings["total_s"] = time.time() - t0
    trained_iters = int(torch.load(ckpt, map_location="cpu", weights_only=True).get("last_iter", -1)) + 1
    results = {"preset": args.preset, "seed": args.seed, "data": args.data, "threads": torch.get_num_threads(),
               "trained_iterations": trained_iters,
               "planned_iterations": p["iters"], "sampling": kw, "accuracy": rows, "timings": timings,
               "heldout_captions": [make_caption(s) for s in heldout_combinations()], "grid": str(out / "heldout_grid.png")}
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
