#!/usr/bin/env python
"""Reconstruction metrics of an image codec as JSON: rFID, PSNR, L1, codebook usage and perplexity.

    python scripts/evaluate_codec.py --config OUTPUT/vq/configs/codec.yaml --ckpt OUTPUT/vq/checkpoint/last.pth \\
        [--inception-weights OUTPUT/pretrained_model/weights-inception-2015-12-05-6726825d.pth]

``--config`` is a file holding a ``content_codec_config`` (what ``scripts/train_vqvae.py`` writes as
``configs/codec.yaml``, or any codec node of a diffusion config, the released codecs included); ``--ckpt``
replaces its ``ckpt_path``. The images are the ``dataloader.validation_datasets`` (else ``train_datasets``)
of ``--data`` (default: the training config ``configs/config.yaml`` beside ``--config``). Every image is
encoded to tokens and decoded (``get_tokens`` / ``decode``: the codec as the diffusion model uses it), and
compared with its input (``vqdiff.evaluation.codec_metrics``). ``rfid`` needs the TF-FID Inception weights,
given as ``scripts/evaluate_fid.py`` takes them; without them ``rfid`` is null and ``rfid_note`` says why.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


import torch

from vqdiff.utils.config import ConfigError, load_yaml_config


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, required=True, help="a YAML with a content_codec_config")
    p.add_argument("--ckpt", type=Path, default=None, help="the codec weights (replaces the config's ckpt_path)")
    p.add_argument("--data", type=Path, default=None,
                   help="a config with dataloader.validation_datasets / train_datasets (default: configs/config.yaml "
                        "beside --config)")
    p.add_argument("--inception-weights", "--feature-extractor-weights-path", dest="inception_weights", type=Path,
                   default=None, help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth (for rfid)")
    p.add_argument("--max-images", type=int, default=0, help="use at most this many images (0: all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--allow_unsafe_load", action="store_true",
                   help="allow a checkpoint that needs full unpickling (trusted files only)")
    p.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--debug", action="store_true", help="errors show their full traceback")
    return p.parse_args(argv)


def _data_nodes(args: argparse.Namespace) -> tuple[list, Path]:
    data = args.data or args.config.parent / "config.yaml"
    if not data.is_file():
        raise FileNotFoundError(f"--data: no data config at '{data}'; give a config with "
                                f"dataloader.validation_datasets (or train_datasets)")
    dl = load_yaml_config(data).get("dataloader") or {}
    nodes = dl.get("validation_datasets") or dl.get("train_datasets")
    if not nodes:
        raise ConfigError(f"{data}: dataloader.validation_datasets and train_datasets are both empty")
    return nodes, data


def main(argv=None) -> dict:
    from torch.utils.data import DataLoader

    from vqdiff.data.build import build_datasets, collate_batch
    from vqdiff.evaluation.codec_metrics import CodecMetrics
    from vqdiff.utils.config import instantiate_from_config

    args = parse_args(argv)
    node = load_yaml_config(args.config).get("content_codec_config")
    if node is None:
        raise ConfigError(f"--config {args.config}: no 'content_codec_config' node")
    params = dict(node.get("params") or {})
    if args.ckpt is not None:
        params["ckpt_path"] = str(args.ckpt)
    if args.allow_unsafe_load:
        params["allow_unsafe_pickle"] = True
    codec = instantiate_from_config({"target": node["target"], "params": params}, key_path="content_codec_config")
    codec = codec.to(args.device).eval()
    nodes, data_config = _data_nodes(args)
    dataset = build_datasets(nodes, None, "dataloader.validation_datasets")
    metrics = CodecMetrics(codec.get_number_of_tokens(), str(args.inception_weights) if args.inception_weights else None,
                           device=args.device)
    seen = 0
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=args.batch_size, collate_fn=collate_batch):
            images = batch["image"].float().to(args.device)
            if args.max_images:
                images = images[: args.max_images - seen]
            tokens = codec.get_tokens(images)["token"]
            metrics.update(images, codec.decode(tokens), tokens)
            seen += images.shape[0]
            if args.max_images and seen >= args.max_images:
                break
    result = {**metrics.compute(), "config": str(args.config), "ckpt": params.get("ckpt_path"),
              "data": str(data_config)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    from vqdiff.utils.cli_errors import run_cli

    run_cli(main, None, "evaluate_codec.py")
