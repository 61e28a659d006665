"""Command line sampling: ``python -m vqdiff.sample --config C --ckpt P --text "…" -n 8 --out DIR``.

``--text`` may be a composed prompt (composable guidance, arXiv 2206.01714): parts separated by `` AND ``, each
with an optional ``:weight`` (default ``--guidance-scale``), e.g. ``--text "a red shape:3 AND a circle:2"``; the
images then go to the folder named by the parts with their weights. ``--label N`` samples a class model,
neither ``--text`` nor ``--label`` an unconditional one; ``--lora ADAPTER --lora-scale S`` adds a LoRA
adapter folder to the checkpoint. Images go to ``DIR/<condition>/000000.png`` … (``.jpg`` for class labels,
as the official API saves them; plus ``grid.png`` with ``--grid``); a progress bar follows the diffusion steps.
An input error prints one line and a hint; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from vqdiff.modeling.diffusion.prompt_parts import format_prompt_parts, prompt_parts_of
from vqdiff.modeling.diffusion.sampling_options import DEFAULT_TRUNCATION_RATE
from vqdiff.utils.precision import PRECISIONS

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vqdiff.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="model YAML (official or vqdiff), or a diffusers "
                   "VQDiffusionPipeline folder (then no --ckpt)")
    p.add_argument("--ckpt", help="checkpoint (.pth official/vqdiff, or .safetensors)")
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--text", help="caption (text-to-image models); composable guidance: parts separated by "
                      "' AND ', each with an optional ':weight' (default --guidance-scale), e.g. "
                      "'a red shape:3 AND a circle:2'")
    cond.add_argument("--label", type=int, help="class index (class-conditional models)")
    p.add_argument("-n", "--num", type=int, default=4, help="number of images (default 4)")
    p.add_argument("--out", default="RESULT", help="output folder (default RESULT)")
    p.add_argument("--truncation", type=float, default=DEFAULT_TRUNCATION_RATE,
                   help=f"truncation rate r of 'top{{r}}r' (default {DEFAULT_TRUNCATION_RATE}, as the API)")
    p.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance scale (1: none)")
    p.add_argument("--fast", type=int, default=0, help="visit every k-th diffusion step (k >= 2)")
    p.add_argument("--infer-speed", type=float, default=0,
                   help="Improved VQ-Diffusion speed: >= 2 skips steps, < 1 reveals fewer tokens per step")
    p.add_argument("--prior-rule", type=int, default=0, help="0 v1, 1 high-quality, 2 purity prior")
    p.add_argument("--prior-weight", type=float, default=0.0, help="purity prior weight r")
    p.add_argument("--no-learnable-cf", action="store_true", help="guide with CLIP('') even if a null text is learned")
    p.add_argument("--imagenet-cf", action="store_true", help="1001-class network (learned null class)")
    p.add_argument("--seed", type=int, default=None, help="random seed (reproducible images)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda when available)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="the network's precision (default fp32: the official tokens for a seed); auto: bf16 where "
                        "the GPU or CPU runs it natively (AMX / AVX512-BF16), else fp32; the choice is logged")
    p.add_argument("--compile", action="store_true", help="run the network through torch.compile (first call "
                   "of a shape pays the compile time)")
    p.add_argument("--grid", action="store_true", help="also save all images as one grid.png")
    p.add_argument("--allow-unsafe-pickle", action="store_true",
                   help="allow a legacy checkpoint that needs full unpickling (trusted files only)")
    p.add_argument("--lora", default=None, help="a LoRA adapter folder (checkpoint/last_lora of a solver.lora run)")
    p.add_argument("--lora-scale", type=float, default=1.0, help="adapter strength (0: the base model, 1: as trained)")
    p.add_argument("--lora-allow-base-mismatch", action="store_true",
                   help="use an adapter whose recorded base SHA-256 differs from --ckpt (default: refused)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="on an error, show the full traceback (default: one line)")
    return p


def _total_steps(model, options) -> int:
    """The progress bar's length: the callbacks of one sampling call (one per visited step)."""
    from vqdiff.modeling.diffusion.samplers import timesteps

    return len(timesteps(model.transformer.num_timesteps, options.skip_step))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from vqdiff.inference.api import VQ_Diffusion, request_options
    from vqdiff.inference.diffusers_import import is_diffusers_folder
    from vqdiff.inference.images import make_grid, safe_name

    if args.ckpt is None and not is_diffusers_folder(args.config):
        parser.error("--ckpt is required unless --config is a diffusers folder (one with model_index.json)")

    options = request_options(args.truncation, args.fast, args.infer_speed, precision=args.precision,
                              compile=args.compile)  # validate early
    parts = prompt_parts_of(args.text, args.guidance_scale)  # a composed prompt's errors, before loading
    engine = VQ_Diffusion(config=args.config, path=args.ckpt, imagenet_cf=args.imagenet_cf, device=args.device,
                          allow_unsafe_pickle=args.allow_unsafe_pickle, lora=args.lora, lora_scale=args.lora_scale,
                          lora_allow_base_mismatch=args.lora_allow_base_mismatch)
    bar = None
    callback = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=_total_steps(engine.model, options), desc="diffusion steps", unit="step")

        def callback(info: dict) -> None:
            bar.update(1)

    common = dict(truncation_rate=args.truncation, save_root=args.out, batch_size=args.num, fast=args.fast,
                  infer_speed=args.infer_speed, seed=args.seed, callback=callback, precision=args.precision,
                  compile=args.compile)
    try:
        if args.text is not None:
            images = engine.inference_generate_sample_with_condition(
                args.text, guidance_scale=args.guidance_scale, prior_rule=args.prior_rule,
                prior_weight=args.prior_weight, learnable_cf=not args.no_learnable_cf, **common)
            name = args.text if parts is None else format_prompt_parts(parts)
        elif args.label is not None:
            images = engine.inference_generate_sample_with_class(args.label, guidance_scale=args.guidance_scale, **common)
            name = str(args.label)
        else:
            images = engine.inference_generate_sample_unconditional(**common)
            name = "unconditional"
    finally:
        if bar is not None:
            bar.close()
    folder = Path(args.out) / safe_name(name)
    if args.grid:
        make_grid(images).save(folder / "grid.png")
    print(f"saved {len(images)} images to {folder} ({images[0].info.get('sampling_options', '')})")
    return 0


if __name__ == "__main__":
    from vqdiff.utils.cli_errors import run_cli

    sys.exit(run_cli(main, None, "python -m vqdiff.sample"))
