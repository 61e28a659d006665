"""Editing and sampler comparison on the trained CPU demo (run `run_demo_shapes.py` first).

    python running_command/run_demo_editing.py --output OUTPUT/demo_shapes   # launcher of this module

1. Inpainting: for real held-out images, the quadrant holding the shape is repainted with a caption that
   asks for another colour at the same place; the attribute classifier reads the colour of the result
   (asked colour vs. original colour), and the tokens outside the region are checked to be unchanged.
   Two regions on the same images, captions and draws: the quadrant alone, and the quadrant grown by a
   ring of one token (``--ring``: the codec's encoder sees past its own patch, so the background tokens
   next to the shape still carry its old colour; see docs/beyond.md). ``inpainting`` reports the
   ``--ring`` variant, ``inpainting_variants`` both.
2. Samplers at an equal budget of network calls: ancestral sampling with skipped steps (``fast``) and the
   confidence-ordered (MaskGIT-style) sampler, both with S calls, next to the full 100-step sampler.
Writes ``editing_results.json`` and ``inpaint_examples.png`` into --output.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vqdiff.data.synthetic import COLORS, ShapeSpec, ShapesDataset, heldout_combinations, make_caption

__all__ = ["RINGS", "main", "quadrant_token_mask"]


def log(msg: str) -> None:
    print(f"[editing {time.strftime('%H:%M:%S')}] {msg}", flush=True)


RINGS = (0, 1)  # inpainting regions measured: the quadrant, and the quadrant grown by one token


def quadrant_token_mask(position: int, token_shape: tuple[int, int]) -> torch.Tensor:
    """(h, w) bool mask of the quadrant ``position`` (0 TL, 1 TR, 2 BL, 3 BR) of the token grid."""
    h, w = token_shape
    row, col = divmod(position, 2)
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[row * h // 2:(row + 1) * h // 2, col * w // 2:(col + 1) * w // 2] = True
    return mask


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="OUTPUT/demo_shapes", help="the folder run_demo_shapes.py wrote")
    parser.add_argument("--num-images", type=int, default=48)
    parser.add_argument("--calls", type=int, default=10, help="network calls for the equal-budget comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance-scale", type=float, default=3.0,
                        help="classifier-free guidance for every sampler here (1 = off), as the demo samples")
    parser.add_argument("--ring", type=int, choices=RINGS, default=1,
                        help="tokens added around the shape's quadrant for the reported inpainting (0: the "
                             "quadrant alone; both are measured): the codec's encoder sees past its patch, so "
                             "kept tokens next to the region still carry the old colour")
    args = parser.parse_args(argv)
    out = Path(args.output)
    cfg, ckpt = out / "configs" / "demo_text_shapes.yaml", out / "diffusion" / "checkpoint" / "last.pth"
    if not cfg.is_file() or not ckpt.is_file():
        raise FileNotFoundError(f"no trained demo in '{out}' (need {cfg} and {ckpt}); run run_demo_shapes.py first")

    from inference_VQ_Diffusion import VQ_Diffusion
    from vqdiff.editing import dilate_token_mask, inpaint_tokens, save_inpaint_figure, token_mask_to_pixels
    from vqdiff.evaluation.shapes_classifier import (attribute_accuracy, classify, load_shapes_classifier,
                                                     train_shapes_classifier)

    api = VQ_Diffusion(config=str(cfg), path=str(ckpt), device="cpu")
    model, codec = api.model, api.model.content_codec
    token_shape = tuple(codec.token_shape)
    saved_ruler = out / "shapes_classifier.pt"  # the demo's own classifier when it saved one
    clf = (load_shapes_classifier(saved_ruler) if saved_ruler.is_file()
           else train_shapes_classifier(resolution=32, num_samples=1500, steps=250, seed=args.seed, split="train"))
    colors = list(COLORS)

    log("1/2 inpainting: repaint the shape's quadrant with another colour")
    real = ShapesDataset(args.num_images, 32, split="heldout", seed=args.seed + 7)
    items = [real[i] for i in range(len(real))]
    images = torch.stack([it["image"] for it in items])
    tokens = codec.get_tokens(images)["token"]
    new_color = torch.tensor([(it["color"] + 1 + i % 3) % len(colors) for i, it in enumerate(items)])
    quadrants = torch.stack([quadrant_token_mask(it["position"], token_shape).flatten() for it in items])
    texts = [make_caption(ShapeSpec(colors[int(c)], real.spec(i).shape, real.spec(i).position))
             for i, c in enumerate(new_color)]
    truth = {k: torch.tensor([it[k] for it in items]) for k in ("color", "shape", "position")}
    # the same images, captions and draws for every region: only the repainted tokens differ
    results_by_variant, shown = {}, None
    for ring in RINGS:
        name = f"quadrant + {ring}-token ring" if ring else "quadrant"
        masks = dilate_token_mask(quadrants, token_shape, ring)
        res = inpaint_tokens(model, tokens, masks, texts, sample_type="top0.85r", guidance_scale=args.guidance_scale,
                             generator=torch.Generator().manual_seed(args.seed))
        pred = classify(clf, res["content"])
        results_by_variant[name] = {
            "ring_tokens": ring,
            "guidance_scale": args.guidance_scale,
            "asked_colour_rate": float((pred["color"] == new_color).float().mean()),
            "original_colour_rate": float((pred["color"] == truth["color"]).float().mean()),
            "shape_kept_rate": float((pred["shape"] == truth["shape"]).float().mean()),
            "position_kept_rate": float((pred["position"] == truth["position"]).float().mean()),
            "tokens_outside_mask_unchanged": bool((res["content_token"][~masks] == tokens[~masks]).all()),
            "chance_colour": 1 / len(colors),
            "num_images": len(items),
        }
        log(f"inpainting, {name}: {results_by_variant[name]}")
        if ring == args.ring:
            inpaint, shown = results_by_variant[name], (masks, res)
    pix = token_mask_to_pixels(shown[0], token_shape, images.shape[-2:])
    save_inpaint_figure(out / "inpaint_examples.png", images[:6], pix[:6], shown[1]["content"][:6])

    log(f"2/2 samplers at {args.calls} network calls vs. 100 steps")
    specs = heldout_combinations()
    captions = [make_caption(s) for s in specs for _ in range(4)]
    targets = {k: torch.tensor([getattr(s, "indices")[j] for s in specs for _ in range(4)])
               for j, k in enumerate(("color", "shape", "position"))}
    samplers = {
        "ancestral, 100 steps": "top0.85r",
        f"ancestral, fast ({args.calls} calls)": f"top0.85r,fast{100 // args.calls - 1}",
        f"confidence (MaskGIT), {args.calls} calls": f"top0.85r,maskgit{args.calls}",
    }
    comparison = {}
    for name, sample_type in samplers.items():
        calls = []
        hook = model.transformer.transformer.register_forward_hook(lambda *a: calls.append(1))
        t = time.time()
        out_imgs = model.generate_content(batch={"text": captions}, filter_ratio=0, replicate=1,
                                          sample_type=sample_type, guidance_scale=args.guidance_scale,
                                          generator=torch.Generator().manual_seed(args.seed))
        hook.remove()
        acc = attribute_accuracy(clf, out_imgs["content"], targets)
        comparison[name] = {"network_calls": len(calls), "seconds": time.time() - t, **acc}
        log(f"{name}: {comparison[name]}")
    results = {"guidance_scale": args.guidance_scale, "inpainting": inpaint,
               "inpainting_variants": results_by_variant, "samplers": comparison}
    (out / "editing_results.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
