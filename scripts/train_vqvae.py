#!/usr/bin/env python
"""Train a taming-style VQ-VAE / VQGAN from a config (e.g. configs/tiny_vqvae_shapes.yaml).

    python scripts/train_vqvae.py --config configs/tiny_vqvae_shapes.yaml --output OUTPUT/tiny_vqvae_shapes

Writes OUTPUT/<name>/checkpoint/last.pth ({'state_dict': …} as taming), configs/model.yaml (the taming YAML)
and configs/codec.yaml (a content_codec_config for TamingVQVAE / TamingGumbelVQVAE). Paths are relative to
the working directory. Trailing KEY=VALUE arguments override the config (e.g. solver.max_steps=300).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from vqdiff.modeling.codecs.image.training import train_vqvae  # noqa: E402
from vqdiff.utils.config import load_yaml_config, merge_opts_to_config  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny_vqvae_shapes.yaml")
    parser.add_argument("--output", default=None, help="output folder (default OUTPUT/<config name>)")
    parser.add_argument("--max_steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("opts", nargs="*", help="config overrides KEY=VALUE")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = merge_opts_to_config(load_yaml_config(args.config), args.opts)
    output = Path(args.output or Path("OUTPUT") / Path(args.config).stem)
    result = train_vqvae(config, output_dir=output, max_steps=args.max_steps, seed=args.seed)
    print(f"reconstruction L1 (images in [-1, 1]): first batch {result['first']:.4f} -> last batch "
          f"{result['last']:.4f} in {result['seconds']:.0f} s")
    print(f"checkpoint: {output / 'checkpoint' / 'last.pth'}\ncodec config: {output / 'configs' / 'codec.yaml'}")
    return result


if __name__ == "__main__":
    main()
