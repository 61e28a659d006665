"""Training throughput of train.py's Solver (images/s, tokens/s, peak memory), with and without the token cache.

    python benchmarks/bench_train.py                  # tiny text config, 20 iterations each way (CPU, ~1 min)
    python benchmarks/bench_train.py --iters 50 --batch 8

Uses configs/tiny_text_shapes.yaml with tiny random parts (a CLIP text tower with the real vocabulary and a
taming VQModel) written into a temporary folder. "images" = the dataloader renders shapes and the frozen
VQ-VAE encodes them every step; "token cache" = the training images are encoded once by
vqdiff.data.token_cache.write_token_cache and the trainer reads content_token. The first 3 iterations are
warm-up and not timed. Prints a table and one JSON line; peak memory is the process's max RSS (and the
CUDA peak when on GPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import resource
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def _loader(config, seed):
    from vqdiff.data.build import build_dataloader

    return build_dataloader(config, distributed=False, seed=seed, epoch_generator=torch.Generator().manual_seed(seed))


def bench(config: dict, out: Path, iters: int, warmup: int = 3) -> dict:
    from vqdiff.engine.solver import Solver
    from vqdiff.utils.config import instantiate_from_config

    torch.manual_seed(0)
    model = instantiate_from_config(config["model"], key_path="model")
    loaders = _loader(config, 0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args = types.SimpleNamespace(save_dir=str(out), log_frequency=10 ** 9, seed=0, amp=False, progress_bar=False,
                                 device=device)
    logger = logging.getLogger("bench_train")
    solver = Solver(config, args, model, loaders, logger)
    batches, it = [], iter(loaders["train_loader"])
    times = []
    n_tok = int(config["model"]["params"]["diffusion_config"]["params"]["transformer_config"]["params"]["content_seq_len"])
    bs = int(config["dataloader"]["batch_size"])
    t_prev = time.perf_counter()
    for i in range(warmup + iters):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loaders["train_loader"])
            batch = next(it)
        solver.last_iter += 1
        solver.step(batch, 0)
        if device == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        if i >= warmup:
            times.append(now - t_prev)
        t_prev = now
    sec = sum(times)
    res = {"iters": iters, "batch": bs, "images_per_s": iters * bs / sec, "tokens_per_s": iters * bs * n_tok / sec,
           "ms_per_iter": 1000 * sec / iters, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "cuda":
        res["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return res


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--images", type=int, default=64, help="training images (shapes, 16x16)")
    a = p.parse_args(argv)
    from test_train import write_tiny_parts
    from vqdiff.data.synthetic import ShapesDataset
    from vqdiff.data.token_cache import write_token_cache
    from vqdiff.utils.config import instantiate_from_config, load_yaml_config

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_tiny_parts(tmp)
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            cfg = load_yaml_config(REPO / "configs" / "tiny_text_shapes.yaml")
            cfg["dataloader"]["batch_size"] = a.batch
            cfg["dataloader"]["train_datasets"][0]["params"]["num_samples"] = a.images
            cfg["dataloader"]["validation_datasets"] = []
            rows = {"images": bench(copy.deepcopy(cfg), tmp / "run_img", a.iters)}
            codec = instantiate_from_config(cfg["model"]["params"]["content_codec_config"], key_path="codec")
            cache = write_token_cache(ShapesDataset(**cfg["dataloader"]["train_datasets"][0]["params"]), codec,
                                      tmp / "cache", batch_size=32)
            cfg_c = copy.deepcopy(cfg)
            cfg_c["dataloader"]["train_datasets"] = [{"target": "vqdiff.data.token_cache.TokenCacheDataset",
                                                      "params": {"cache_dir": str(cache)}}]
            rows["token cache"] = bench(cfg_c, tmp / "run_cache", a.iters)
        finally:
            os.chdir(cwd)
    print(f"{'input':12s} {'img/s':>8s} {'tok/s':>9s} {'ms/iter':>8s} {'peak RSS MB':>12s}")
    for k, r in rows.items():
        print(f"{k:12s} {r['images_per_s']:8.1f} {r['tokens_per_s']:9.0f} {r['ms_per_iter']:8.1f} {r['peak_rss_mb']:12.0f}")
    print(json.dumps({"bench": "train", "device": "cuda" if torch.cuda.is_available() else "cpu", **rows}))
    return rows


if __name__ == "__main__":
    main()
