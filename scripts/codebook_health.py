#!/usr/bin/env python
"""Codebook health of an image codec on a data set: token usage, perplexity, dead and top codes; optionally
the remapping file (official quantize_number format) for the codes the data set uses.

    python scripts/codebook_health.py --codec_config OUTPUT/tiny_vqvae_shapes/configs/codec.yaml \
        --num_samples 2000 --report OUTPUT/codebook_health.json --out_mapping help_folder/statistics/my_map.pt

--codec_config: a YAML with a codec node (target/params) at the top, under content_codec_config or under
model.params.content_codec_config. --dataset_config: a YAML with a dataset node (default: the synthetic
shapes at --resolution). Full-codebook indices are counted (a codec's own remapping is bypassed) unless
--remapped is given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vqdiff.evaluation.codebook import (
    build_mapping_from_counts,
    count_codec_tokens,
    save_mapping,
    usage_statistics,
)
from vqdiff.utils.config import ConfigError, instantiate_from_config, load_yaml_config


def codec_node(config: dict, path: str) -> dict:
    """The codec's target/params node of a codec, model or training YAML."""
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    for node in (config, config.get("content_codec_config"), (model.get("params") or {}).get("content_codec_config")):
        if isinstance(node, dict) and "target" in node and "codec" in str(node["target"]).lower():
            return node
    raise ConfigError(f"{path}: no codec node at the top, under 'content_codec_config' or "
                      f"'model.params.content_codec_config'")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codec_config", required=True)
    ap.add_argument("--dataset_config", default=None)
    ap.add_argument("--resolution", type=int, default=32, help="shapes resolution when no --dataset_config")
    ap.add_argument("--num_samples", type=int, default=2000)
    ap.add_argument("--key", default="image", help="the image entry of the data set's items")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--min_count", type=int, default=1, help="a code used fewer times is dead / unmapped")
    ap.add_argument("--remapped", action="store_true", help="count the codec's remapped ids, not full codes")
    ap.add_argument("--report", default=None, help="write the statistics (and counts) as JSON here")
    ap.add_argument("--out_mapping", default=None, help="write the remapping of the used codes here")
    args = ap.parse_args(argv)

    codec = instantiate_from_config(codec_node(load_yaml_config(args.codec_config), args.codec_config))
    if args.dataset_config:
        dataset = instantiate_from_config(load_yaml_config(args.dataset_config))
    else:
        from vqdiff.data.synthetic import ShapesDataset

        dataset = ShapesDataset(num_samples=args.num_samples, resolution=args.resolution, split="all")
    counts = count_codec_tokens(codec, dataset, raw=not args.remapped, key=args.key, max_images=args.num_samples)
    stats = usage_statistics(counts, top=args.top, min_count=args.min_count)
    print(f"{stats['used']}/{stats['num_codes']} codes used ({100 * stats['usage']:.1f}%), perplexity "
          f"{stats['perplexity']:.2f} of {stats['num_codes']}, {stats['dead']} dead, {stats['total']} tokens")
    print("top codes: " + ", ".join(f"{k}:{c} ({100 * s:.1f}%)" for k, c, s in stats["top_codes"]))
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps({**stats, "counts": counts.tolist()}, indent=1))
    if args.out_mapping:
        mapping, qn = build_mapping_from_counts(counts, args.min_count)
        save_mapping(args.out_mapping, mapping)
        print(f"saved {args.out_mapping}: set quantize_number: {qn} and mapping_path: {args.out_mapping}")
        stats["quantize_number"] = qn
    return stats


if __name__ == "__main__":
    main()
