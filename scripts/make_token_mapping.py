#!/usr/bin/env python
"""Build a codebook mapping (the official help_folder/statistics/taming_vqvae_*.pt format) for a codec.

Encodes a data set with the codec, counts how often each codebook index occurs, keeps the codes used at
least --min_count times (consecutive compact ids in increasing codebook order, unused codes -> 0) and saves
the LongTensor (num_tokens,). Then set the codec's quantize_number to the printed number and mapping_path
to the output file.

    python scripts/make_token_mapping.py --codec_config OUTPUT/tiny_vqvae_shapes/configs/codec.yaml \
        --out help_folder/statistics/tiny_vqvae_shapes_map.pt

--codec_config is a YAML holding a codec node (target/params) at the top, under content_codec_config,
or under model.params.content_codec_config. --dataset_config is a YAML with a dataset node (default:
the synthetic shapes). Remapping in the codec is switched off while counting.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vqdiff.modeling.codecs.image.token_mapping import build_token_mapping, count_tokens
from vqdiff.utils.config import ConfigError, instantiate_from_config, load_yaml_config


def find_codec_node(config: dict, path: str) -> dict:
    for candidate in (config, config.get("content_codec_config"),
                      (config.get("model") or {}).get("params", {}).get("content_codec_config")):
        if isinstance(candidate, dict) and "target" in candidate and "codec" in candidate["target"].lower():
            return candidate
    raise ConfigError(f"{path}: no codec node found at the top, 'content_codec_config' or "
                      f"'model.params.content_codec_config'")


def main(argv: list[str] | None = None) -> tuple[torch.Tensor, int]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codec_config", required=True)
    parser.add_argument("--dataset_config", default=None)
    parser.add_argument("--resolution", type=int, default=32, help="shapes resolution when no dataset config")
    parser.add_argument("--num_samples", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--min_count", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    node = dict(find_codec_node(load_yaml_config(args.codec_config), args.codec_config))
    params = dict(node.get("params") or {})
    params.update(quantize_number=0, mapping_path=None)
    codec = instantiate_from_config({"target": node["target"], "params": params})
    if args.dataset_config:
        dataset = instantiate_from_config(load_yaml_config(args.dataset_config))
    else:
        from vqdiff.data.synthetic import ShapesDataset

        dataset = ShapesDataset(num_samples=args.num_samples, resolution=args.resolution, split="all")
    n = min(len(dataset), args.num_samples)
    counts = torch.zeros(codec.num_tokens, dtype=torch.long)
    for start in tqdm(range(0, n, args.batch_size), desc="counting tokens"):
        images = torch.stack([dataset[i]["image"] for i in range(start, min(n, start + args.batch_size))])
        counts += count_tokens(codec.get_tokens(images)["token"].cpu(), codec.num_tokens)
    mapping, quantize_number = build_token_mapping(counts, args.min_count)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(mapping, args.out)
    print(f"{quantize_number} of {codec.num_tokens} codes used; saved {args.out}: set quantize_number: "
          f"{quantize_number} and mapping_path: {args.out}")
    return mapping, quantize_number


if __name__ == "__main__":
    main()
