"""Export a text-to-image VQ-Diffusion model to the diffusers ``VQDiffusionPipeline`` folder layout.

    python scripts/export_diffusers.py --config OUTPUT/pretrained_model/config_text.yaml \
        --ckpt OUTPUT/pretrained_model/coco_learnable.pth --out vq-diffusion-coco

Run it from the folder the config's relative paths start from (as for inference). Writes a complete
pipeline folder: ``transformer/``, ``vqvae/``, ``text_encoder/`` (CLIPTextModel from the model's CLIP),
``tokenizer/`` (CLIPTokenizer files from its BPE), ``scheduler/``,
``learned_classifier_free_sampling_embeddings/`` and ``model_index.json``, which
``VQDiffusionPipeline.from_pretrained(out)`` loads offline. A Gumbel codec (COCO, CUB) needs
``--allow-inexact-encoder``: diffusers decodes it exactly but cannot encode with it. See docs/inference.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from vqdiff.inference.api import VQ_Diffusion
from vqdiff.inference.diffusers_export import export_diffusers


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="VQ-Diffusion model -> diffusers VQDiffusionPipeline folder")
    p.add_argument("--config", required=True)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--allow-unsafe-pickle", action="store_true")
    p.add_argument("--allow-inexact-encoder", action="store_true",
                   help="export a Gumbel codec (diffusers' VQModel decodes it exactly but encodes by nearest code)")
    args = p.parse_args(argv)
    engine = VQ_Diffusion(args.config, args.ckpt, device="cpu", allow_unsafe_pickle=args.allow_unsafe_pickle)
    out = export_diffusers(engine.model, args.out, allow_inexact_encoder=args.allow_inexact_encoder)
    print(f"wrote diffusers folder {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
