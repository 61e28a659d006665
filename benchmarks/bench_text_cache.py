"""Training steps with the frozen CLIP text tower run on every batch vs. its features cached per caption.

    python benchmarks/bench_text_cache.py             # the demo's tower and a ViT-B/32-sized one (< 1 min)
    python benchmarks/bench_text_cache.py --skip-big  # the demo's tower only (seconds)

A training step of ``DiffusionTransformer`` (the demo's network: 2 layers, width 128, 8x8 tokens, 64
codes): forward, backward and an Adam step, with ``condition_feature_cache`` off and on. Both text towers
have random weights (the timing does not depend on them): the demo's (width 64, 2 layers; batches of 32
drawn from the shapes' partial captions, 48 combinations x 7 = 336 rows, 99 distinct captions) and one of
ViT-B/32's size (width 512, 12 layers, 8 heads; batches of 8 from the 48 full captions, which keeps its
one-time fill short). The cached arm is timed once the cache holds the pool's captions. That is a run's
steady state: the demo's 2000 steps of 32 captions draw each of its 99 captions hundreds of times. The
one-time cost of filling the cache (one tower pass per distinct caption) is printed beside. Prints a table
and one JSON line with the CPU (``/proc/cpuinfo``), the torch threads and the load average.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch


from vqdiff.data.synthetic import all_combinations, partial_captions
from vqdiff.modeling.codecs.text.tokenize import Tokenize
from vqdiff.modeling.diffusion import DiffusionTransformer
from vqdiff.modeling.embeddings.clip_text_embedding import CLIPTextEmbedding
from vqdiff.modeling.embeddings.text_feature_cache import TextFeatureCache
from vqdiff.utils.tiny_parts import random_clip_text_tower

if __package__:  # imported as benchmarks.<name> (tests)
    from benchmarks import perf
else:  # run as python benchmarks/<name>.py: Python puts benchmarks/ first on sys.path
    import perf

TOKENS, CODES = (8, 8), 64


def build(clip_file: Path, width: int, cache: int) -> DiffusionTransformer:
    torch.manual_seed(0)
    h, w = TOKENS
    return DiffusionTransformer(
        content_emb_config={"target": "vqdiff.modeling.embeddings.dalle_mask_image_embedding.DalleMaskImageEmbedding",
                            "params": {"num_embed": CODES, "spatial_size": [h, w], "embed_dim": 128,
                                       "trainable": True, "pos_emb_type": "embedding"}},
        condition_emb_config=CLIPTextEmbedding(clip_path=str(clip_file), num_embed=49408, normalize=True,
                                               pick_last_embedding=False, embed_dim=width),
        transformer_config={"target": "vqdiff.modeling.transformers.networks.Text2ImageTransformer", "params": {
            "attn_type": "selfcross", "n_layer": 2, "condition_seq_len": 77, "content_seq_len": h * w,
            "content_spatial_size": [h, w], "n_embd": 128, "condition_dim": width, "n_head": 4,
            "attn_pdrop": 0.0, "resid_pdrop": 0.0, "block_activate": "GELU2", "timestep_type": "adalayernorm",
            "mlp_hidden_times": 2}},
        diffusion_step=100, auxiliary_loss_weight=5e-4, adaptive_auxiliary_loss=True,
        condition_feature_cache=cache)


def run(model: DiffusionTransformer, pool: torch.Tensor, batch: int, steps: int, seed: int) -> float:
    """Seconds per training step over ``steps`` steps (batches drawn from ``pool`` with ``seed``)."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        rows = torch.randint(0, pool.shape[0], (batch,), generator=g)
        inp = {"condition_token": pool[rows], "content_token": torch.randint(0, CODES, (batch, TOKENS[0] * TOKENS[1]),
                                                                             generator=g)}
        loss = model(inp, return_loss=True, return_logits=False, generator=g)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def fill(cache: TextFeatureCache, tower: CLIPTextEmbedding, pool: torch.Tensor, batch: int) -> float:
    """Seconds to run the tower once over every caption of ``pool`` into ``cache``."""
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, pool.shape[0], batch):
            cache(pool[i:i + batch], tower)
    return time.perf_counter() - start


def bench(name: str, width: int, layers: int, pool: torch.Tensor, batch: int, steps: int, tmp: Path) -> dict:
    clip_file = tmp / f"clip_{width}x{layers}.pt"
    torch.save(random_clip_text_tower(width, layers, seed=0).state_dict(), clip_file)
    off = build(clip_file, width, 0)
    on = build(clip_file, width, pool.shape[0])
    run(off, pool, batch, 1, seed=99)  # warm-up (allocator, kernels), untimed
    fill_s = fill(on.condition_feature_cache, on.condition_emb, pool, batch)
    run(on, pool, batch, 1, seed=99)
    step_off = run(off, pool, batch, steps, seed=0)
    step_on = run(on, pool, batch, steps, seed=0)
    cache = on.condition_feature_cache
    return {"tower": name, "width": width, "layers": layers, "batch": batch, "steps": steps,
            "pool_rows": int(pool.shape[0]), "distinct_captions": len(on.condition_feature_cache),
            "step_s_uncached": step_off, "step_s_cached": step_on,
            "speedup": step_off / step_on, "fill_s": fill_s, "cache_hits": cache.hits, "cache_misses": cache.misses}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-big", action="store_true", help="only the demo's tower")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    texts = [c for spec in all_combinations() for c in partial_captions(spec)]
    tok = Tokenize(context_length=77, add_start_and_end=True, with_mask=True, pad_value=0, clip_embedding=False,
                   tokenizer_config={"target": "vqdiff.modeling.codecs.text.bpe.SimpleTokenizer",
                                     "params": {"end_idx": 49152}})
    pool = tok.get_tokens(texts)["token"]  # (336, 77)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(bench("demo (64 x 2)", 64, 2, pool, 32, 20, Path(tmp)))
        if not args.skip_big:
            full = pool[6::7]  # the 48 full captions (the last of each shape's 7): a quicker fill
            rows.append(bench("ViT-B/32 size (512 x 12)", 512, 12, full, 8, 4, Path(tmp)))
    print(f"{'tower':26s} {'batch':>5s} {'captions':>8s} {'uncached s/step':>15s} {'cached s/step':>13s} "
          f"{'speed-up':>8s} {'fill s':>7s}")
    for r in rows:
        print(f"{r['tower']:26s} {r['batch']:5d} {r['distinct_captions']:8d} {r['step_s_uncached']:15.4f} "
              f"{r['step_s_cached']:13.4f} {r['speedup']:7.2f}x {r['fill_s']:7.2f}")
    print(json.dumps({"machine": perf.machine_description(), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
