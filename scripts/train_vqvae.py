#!/usr/bin/env python
"""Train a taming-style codec (VQ-VAE / VQGAN / Gumbel / FSQ) from a config on the diffusion trainer's engine.

    python scripts/train_vqvae.py --config configs/tiny_vqvae_shapes.yaml --output OUTPUT/tiny_vqvae_shapes
    torchrun --nproc_per_node 2 scripts/train_vqvae.py --config configs/tiny_vqvae_shapes.yaml \\
        --output OUTPUT/vq2 solver.batch_size=8
    python scripts/train_vqvae.py --config configs/tiny_vqvae_shapes.yaml --output OUTPUT/vq2 \\
        --auto_resume solver.max_steps=2000          # continue OUTPUT/vq2/checkpoint/last.pth

Writes OUTPUT/<name>/checkpoint/last.pth (taming's {'state_dict', 'global_step'} and the engine's resume
entries), configs/config.yaml (the merged config), configs/model.yaml (the taming YAML), configs/codec.yaml
(a content_codec_config for TamingVQVAE / TamingGumbelVQVAE) and logs/ (log.txt, TensorBoard events with
--tensorboard). Paths are relative to the working directory. Trailing KEY=VALUE arguments override the config
(e.g. solver.max_steps=300). Under torchrun every process trains on its share of each epoch (gloo on CPU,
NCCL on GPUs); solver.batch_size is per process. SIGTERM/SIGINT save last.pth and exit with 128 + signal.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from vqdiff.engine.codec_training import train_vqvae
from vqdiff.utils.config import load_yaml_config, merge_opts_to_config


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny_vqvae_shapes.yaml")
    parser.add_argument("--output", default=None, help="output folder (default OUTPUT/<config name>)")
    parser.add_argument("--max_steps", type=int, default=None, help="same as solver.max_steps=N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--auto_resume", action="store_true", help="continue from OUTPUT/<name>/checkpoint/last.pth")
    parser.add_argument("--overwrite", action="store_true", help="start again although the folder holds a run")
    parser.add_argument("--load_path", default=None, help="fine-tune from this taming checkpoint (e.g. a released one)")
    parser.add_argument("--allow_unsafe_load", action="store_true",
                        help="allow checkpoints that need full unpickling (Lightning .ckpt); trusted files only")
    parser.add_argument("--tensorboard", action="store_true", help="TensorBoard events in OUTPUT/<name>/logs")
    parser.add_argument("--amp", action="store_true", help="mixed precision (fp16 + GradScaler on CUDA)")
    parser.add_argument("--amp_dtype", choices=["fp16", "bf16", "auto"], default=None)
    parser.add_argument("--no_progress_bar", action="store_true")
    parser.add_argument("--debug", action="store_true", help="errors show their full traceback")
    parser.add_argument("opts", nargs="*", help="config overrides KEY=VALUE")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = merge_opts_to_config(load_yaml_config(args.config), args.opts)
    output = Path(args.output or Path("OUTPUT") / Path(args.config).stem)
    result = train_vqvae(config, output_dir=output, max_steps=args.max_steps, seed=args.seed,
                         progress=not args.no_progress_bar, auto_resume=args.auto_resume, overwrite=args.overwrite,
                         load_path=args.load_path, allow_unsafe_load=args.allow_unsafe_load,
                         tensorboard=args.tensorboard, amp=args.amp, amp_dtype=args.amp_dtype)
    if result["history"] and os.environ.get("RANK", "0") == "0":
        print(f"reconstruction L1 (images in [-1, 1]): first batch {result['first']:.4f} -> last batch "
              f"{result['last']:.4f} in {result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    from vqdiff.utils.cli_errors import run_cli

    run_cli(main, None, "train_vqvae.py")
