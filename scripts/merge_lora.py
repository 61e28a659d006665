"""Merge a LoRA adapter into its base model and write a plain checkpoint (official layout, official keys).

    python scripts/merge_lora.py --config configs/ithq.yaml --ckpt OUTPUT/pretrained_model/ithq_learnable.pth \
        --lora OUTPUT/my_subject/checkpoint/last_lora --scale 1.0 --out OUTPUT/my_subject/merged.pth

The base is loaded as inference loads it (EMA weights win), the adapter is added at ``--scale`` and peft's
``merge()`` folds ``scale * alpha / rank * B A`` into each wrapped weight; the layers are then plain Linears again.
The file holds ``model`` (the whole model) and ``ema`` (its DiffusionTransformer, the same merged weights), so
``VQ_Diffusion(config, path=merged.pth)``, the official loader and ``scripts/export_diffusers.py`` read it like
any checkpoint; ``lora_merged`` records the adapter and the base. Samples of the merged model agree with the
unmerged adapter up to float rounding (the sum ``W + s B A`` is rounded once, in another order).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from vqdiff.engine.checkpoint import save_checkpoint
from vqdiff.adapters.lora import merge_lora
from vqdiff.inference.api import VQ_Diffusion


def merge_to_file(config: str, ckpt: str, lora: str, out: str, scale: float = 1.0, allow_base_mismatch: bool = False,
                  allow_unsafe_pickle: bool = False) -> Path:
    """Load ``ckpt`` + the adapter ``lora`` at ``scale``, merge, and write the plain checkpoint ``out``."""
    engine = VQ_Diffusion(config, ckpt, device="cpu", allow_unsafe_pickle=allow_unsafe_pickle, lora=lora,
                          lora_scale=scale, lora_allow_base_mismatch=allow_base_mismatch)
    merged = merge_lora(engine.model)
    model = engine.model
    record = {k: v for k, v in (engine.lora_record or {}).items() if isinstance(v, (str, int, float))}
    state = {"model": model.state_dict(), "ema": model.get_ema_model().state_dict(), "last_epoch": engine.epoch,
             "lora_merged": {**record, "adapter": str(Path(lora).resolve()), "scale": float(scale),
                             "layers_merged": merged}}
    return save_checkpoint(state, out, primary_only=False)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="merge a LoRA adapter into its base checkpoint")
    p.add_argument("--config", required=True, help="the model YAML of the base")
    p.add_argument("--ckpt", required=True, help="the base checkpoint the adapter was trained on")
    p.add_argument("--lora", required=True, help="the adapter folder (OUTPUT/<run>/checkpoint/last_lora)")
    p.add_argument("--scale", type=float, default=1.0, help="adapter strength merged in (default 1)")
    p.add_argument("--out", required=True, help="the merged checkpoint to write (.pth)")
    p.add_argument("--allow-base-mismatch", action="store_true",
                   help="merge into a base whose SHA-256 differs from the adapter's record (default: refused)")
    p.add_argument("--allow-unsafe-pickle", action="store_true")
    args = p.parse_args(argv)
    out = merge_to_file(args.config, args.ckpt, args.lora, args.out, args.scale, args.allow_base_mismatch, args.allow_unsafe_pickle)
    print(f"wrote merged checkpoint {out}")
    return 0


if __name__ == "__main__":
    from vqdiff.utils.cli_errors import run_cli

    sys.exit(run_cli(main, None, "merge_lora.py"))
