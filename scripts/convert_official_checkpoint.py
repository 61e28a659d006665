"""Convert an official VQ-Diffusion checkpoint to a vqdiff checkpoint and/or a safetensors weight file.

    python scripts/convert_official_checkpoint.py OUTPUT/pretrained_model/coco_learnable.pth \
        --out coco_learnable_vqdiff.pth --safetensors coco_learnable.safetensors

The vqdiff checkpoint keeps ``model``, ``ema``, ``last_epoch`` and ``last_iter`` (readable with
``torch.load(weights_only=True)``; optimizer state dropped). The safetensors file holds the weights
inference uses (EMA folded into the model state dict). Both load with ``VQ_Diffusion(config, path)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from vqdiff.inference.conversion import convert_file


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="official VQ-Diffusion checkpoint -> vqdiff checkpoint / safetensors")
    p.add_argument("src", help="official .pth checkpoint")
    p.add_argument("--out", help="vqdiff checkpoint to write (default: <src stem>_vqdiff.pth beside it)")
    p.add_argument("--safetensors", help="also write the merged (EMA) weights as this .safetensors file")
    p.add_argument("--allow-unsafe-pickle", action="store_true",
                   help="read a legacy file that needs full unpickling (trusted files only)")
    args = p.parse_args(argv)
    src = Path(args.src)
    out = Path(args.out) if args.out else src.with_name(src.stem + "_vqdiff.pth")
    ckpt = convert_file(src, out, args.safetensors, allow_unsafe_pickle=args.allow_unsafe_pickle)
    print(f"wrote {out} ({len(ckpt['model'])} model tensors, ema: {'ema' in ckpt}, epoch {ckpt['last_epoch']})")
    if args.safetensors:
        print(f"wrote {args.safetensors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
