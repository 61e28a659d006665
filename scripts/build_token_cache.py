#!/usr/bin/env python
"""Encode a data set once with a frozen image codec into a token cache (see vqdiff/data/token_cache.py).

    python scripts/build_token_cache.py --config configs/coco.yaml --out OUTPUT/cache/coco_train \
        --batch-size 16 dataloader.data_root=data/MSCOCO_Caption

--config is a training config: the codec is model.params.content_codec_config, the data set(s)
dataloader.train_datasets (or --split validation for dataloader.validation_datasets; several are encoded
in order, as one ConcatDataset), with dataloader.data_root overriding each data set's data_root.
--codec-config instead takes a YAML with the codec node at the top, under content_codec_config or under
model.params.content_codec_config (then --config still supplies the data). Trailing KEY=VALUE arguments
override the config as train.py's opts do. Train on the cache with a dataloader entry
{target: vqdiff.data.token_cache.TokenCacheDataset, params: {cache_dir: <out>}}.

COCO, CUB-200 and ImageNet readers are encoded image by image: the centre crop plus --crops random crops
of the official train preprocessing (default 4 for --split train, 0 for validation), every caption kept.
--encoding train (default for --split train) encodes as training steps do (the Gumbel codecs sample
codes, as the official training saw them); eval (default for validation) takes the argmax.
Caption/label dropout (drop_caption_rate) is never stored: the reader applies it.

Shards: when the data set is WebDataset shards (vqdiff.data.web_shards.WebShardsImageText), --out becomes a
folder of token shards, one per input shard with the same name (vqdiff.data.token_shards), so the job
runs in parallel and resumes per shard: --jobs N --job-index J writes shards J, J+N, ...; a shard already
written is kept (--overwrite rewrites). Train on them with {target: vqdiff.data.token_shards.TokenShardsDataset,
params: {urls: '<out>/*.tar', samples_per_epoch: ...}}.

    python scripts/build_token_cache.py --config configs/cc.yaml --out OUTPUT/cache/cc3m_tokens \
        --jobs 8 --job-index 0 dataloader.train_datasets.0.params.urls='data/cc3m/{00000..00331}.tar'
"""

from __future__ import annotations

import argparse
import sys

import torch

from vqdiff.data.build import build_datasets
from vqdiff.data.token_cache import TokenCacheDataset, write_token_cache
from vqdiff.data.token_shards import write_token_shards
from vqdiff.data.web_shards import WebShardsImageText
from vqdiff.utils.config import ConfigError, instantiate_from_config, load_yaml_config, merge_opts_to_config


def find_codec_node(cfg: dict, source: str) -> dict:
    for path in (("model", "params", "content_codec_config"), ("content_codec_config",)):
        node = cfg
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and "target" in node:
            return node
    if "target" in cfg:
        return cfg
    raise ConfigError(f"{source}: no codec node (looked at model.params.content_codec_config, "
                      f"content_codec_config and the top level)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="training config (data, and the codec unless --codec-config)")
    ap.add_argument("--codec-config", default=None, help="YAML with the codec node")
    ap.add_argument("--out", required=True, help="cache folder to write")
    ap.add_argument("--split", choices=("train", "validation"), default="train")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--crops", type=int, default=None,
                    help="random train crops per image besides the centre crop (default: 4 train, 0 validation)")
    ap.add_argument("--encoding", choices=("train", "eval"), default=None,
                    help="train: the codec's training encoding (Gumbel: sampled); eval: its default (argmax). "
                         "Default: train for --split train, eval for validation")
    ap.add_argument("--seed", type=int, default=0, help="seeds the crops and the sampled codes")
    ap.add_argument("--jobs", type=int, default=1, help="shard data sets: number of parallel jobs")
    ap.add_argument("--job-index", type=int, default=0, help="shard data sets: this job's index (0..jobs-1)")
    ap.add_argument("opts", nargs="*", default=[], help="config overrides KEY=VALUE")
    args = ap.parse_args(argv)

    cfg = merge_opts_to_config(load_yaml_config(args.config), args.opts)
    codec_node = (find_codec_node(load_yaml_config(args.codec_config), args.codec_config) if args.codec_config
                  else find_codec_node(cfg, args.config))
    dl = cfg.get("dataloader") or {}
    key = f"{args.split}_datasets"
    dataset = build_datasets(dl.get(key), dl.get("data_root"), f"dataloader.{key}")
    if dataset is None:
        raise ConfigError(f"{args.config}: 'dataloader.{key}' is empty")
    codec = instantiate_from_config(codec_node, key_path="content_codec_config")
    train_split = args.split == "train"
    crops = args.crops if args.crops is not None else (4 if train_split else 0)
    encoding = args.encoding or ("train" if train_split else "eval")
    if isinstance(dataset, WebShardsImageText):
        report = write_token_shards(dataset, codec, args.out, crops=crops, batch_size=args.batch_size,
                                    device=args.device, codec_config=codec_node, for_training=encoding == "train",
                                    seed=args.seed, jobs=args.jobs, job_index=args.job_index,
                                    overwrite=args.overwrite)
        print(f"wrote {len(report['written'])} token shards ({report['samples']} samples, {report['bad_samples']} "
              f"bad skipped), kept {len(report['kept'])} finished ones, x {1 + crops} views x {codec.token_shape} "
              f"tokens, encoding '{encoding}', to {args.out}")
        return 0
    out = write_token_cache(dataset, codec, args.out, batch_size=args.batch_size, num_workers=args.num_workers,
                            device=args.device, codec_config=codec_node, overwrite=args.overwrite, crops=crops,
                            for_training=encoding == "train", seed=args.seed)
    meta = TokenCacheDataset(out).meta
    print(f"wrote {meta['num_items']} samples of {meta['num_images']} images x {meta['num_views']} views "
          f"({', '.join(meta['view_kinds'][:2])}{', ...' if meta['num_views'] > 2 else ''}) x {codec.token_shape} "
          f"tokens, encoding '{meta['encoding']}', to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
