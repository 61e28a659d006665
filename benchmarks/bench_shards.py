"""Images/s of the data side of training from WebDataset shards: raw image shards vs token shards.

    python benchmarks/bench_shards.py             # 512 images of 256x256 a seed, 3 seeds
    python benchmarks/bench_shards.py --quick     # 64 images of 64x64, 1 seed (seconds)

For each seed: the synthetic shapes at --resolution written as img2dataset shards (JPEG quality 95,
--per-shard samples a shard, vqdiff.data.layouts.shards_of_dataset), then encoded into token shards
(vqdiff.data.token_shards.write_token_shards: centre + 4 random crops, 32x32 tokens of uint16, as the f8
codec gives at 256 px; the codec is a stand-in drawing random ids, as only the reading is timed). Timed:
one epoch of a DataLoader (batch --batch-size, num_workers 0, shuffle buffer 1000) over
WebShardsImageText (JPEG decode + the official train crop) and over TokenShardsDataset (npy read + a
view pick). The codec's forward, which training from raw shards also pays every step, is not included:
see bench_token_cache.py for it. Prints a table (mean and min-max over seeds) and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vqdiff.data.build import build_dataloader
from vqdiff.data.layouts import shards_of_dataset
from vqdiff.data.synthetic import ShapesDataset
from vqdiff.data.token_shards import write_token_shards
from vqdiff.utils.config import instantiate_from_config


class RandomIdCodec:
    """Stand-in codec for writing token shards: random ids of ``token_shape`` (only the reading is timed)."""

    def __init__(self, token_shape: tuple[int, int] = (32, 32), num_tokens: int = 8192):
        self.token_shape, self.num_tokens = list(token_shape), num_tokens
        self.generator = torch.Generator().manual_seed(0)

    def get_number_of_tokens(self) -> int:
        return self.num_tokens

    def get_tokens(self, images: torch.Tensor, **kw) -> dict:
        n = self.token_shape[0] * self.token_shape[1]
        return {"token": torch.randint(self.num_tokens, (images.shape[0], n), generator=self.generator)}


def epoch_images_per_s(node: dict, batch_size: int) -> float:
    cfg = {"dataloader": {"batch_size": batch_size, "num_workers": 0, "train_datasets": [node]}}
    loader = build_dataloader(cfg, seed=0)["train_loader"]
    loader.dataset.set_epoch(0)
    t0, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch["text"])
    return n / (time.perf_counter() - t0)


def one_seed(seed: int, args: argparse.Namespace, tmp: Path) -> dict:
    data = ShapesDataset(args.num_images, args.resolution, split="all", seed=seed)
    pre = {"target": "vqdiff.data.preprocess.DalleTransformerPreprocessor",
           "params": {"size": args.resolution, "phase": "train"}}
    raw = shards_of_dataset(data, tmp / f"raw{seed}", samples_per_shard=args.per_shard, im_preprocessor_config=pre)
    raw["params"]["seed"] = seed
    side = args.resolution // 8  # an f8 codec's token grid
    write_token_shards(instantiate_from_config(raw), RandomIdCodec((side, side)), tmp / f"tok{seed}", crops=4,
                       batch_size=64, seed=seed)
    tok = {"target": "vqdiff.data.token_shards.TokenShardsDataset",
           "params": {"urls": str(tmp / f"tok{seed}" / "*.tar"), "samples_per_epoch": args.num_images, "seed": seed}}
    return {"raw": epoch_images_per_s(raw, args.batch_size), "tokens": epoch_images_per_s(tok, args.batch_size)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-images", type=int, default=512)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--per-shard", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.num_images, args.resolution, args.per_shard, args.seeds = 64, 64, 16, 1
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        runs = [one_seed(s, args, Path(d)) for s in range(args.seeds)]
    rows = {}
    for key, label in (("raw", "raw image shards (JPEG decode + train crop)"),
                       ("tokens", "token shards (npy read + view pick)")):
        values = [r[key] for r in runs]
        rows[key] = {"mean": statistics.mean(values), "min": min(values), "max": max(values)}
        print(f"| {label} | {rows[key]['mean']:.0f} | {rows[key]['min']:.0f}-{rows[key]['max']:.0f} |")
    ratio = [r["tokens"] / r["raw"] for r in runs]
    print(f"token / raw: {statistics.mean(ratio):.1f}x (min {min(ratio):.1f}x, max {max(ratio):.1f}x) over "
          f"{len(runs)} seeds of {args.num_images} images at {args.resolution}px")
    result = {"args": vars(args), "images_per_s": rows, "ratio": ratio, "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__}
    print("JSON " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
