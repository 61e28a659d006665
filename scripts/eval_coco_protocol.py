#!/usr/bin/env python
"""The MSCOCO text-to-image evaluation protocol: 30k val2014 captions -> generate -> FID vs. real val images.

Protocol (the one the VQ-Diffusion papers report; see docs/evaluation.md):
1. Sample ``--num-captions`` (30,000) captions from ``annotations/captions_val2014.json`` with a fixed seed,
   at most one per image when there are enough images (COCO val2014 has 40,504 images, ~5 captions each).
2. Generate one 256x256 image per caption with the notebook API ``inference_VQ_Diffusion.VQ_Diffusion``
   (VQ-Diffusion: ``--truncation-rate 0.86``; Improved VQ-Diffusion with learnable classifier-free
   guidance: ``--truncation-rate 1.0 --guidance-scale 3.0``, as the official README recommends for COCO).
3. FID between the generated images and the real images of the sampled captions, both short-side resized
   to 256 and centre-cropped (the official validation preprocessing), with Inception-v3 weights from
   ``--inception-weights`` (torch-fidelity's port of the TensorFlow FID Inception, the one papers use; the
   metrics are torchmetrics'); inside the metric images are resized to 299x299 with the TF1 bilinear resize.
   The Inception Score (10 splits) of the generated images comes with it; optionally the CLIP score
   (``--clip-weights``).

Expected layout (the official one):
    COCO_ROOT/annotations/captions_val2014.json
    COCO_ROOT/val2014/val2014/COCO_val2014_000000000042.jpg ...

Generation is resumable: image ``i`` is stored under ``OUT/generated/<i:06d>/<caption>/000000.png`` and
skipped when present. Nothing runs unless every input is present; otherwise the script lists what is
missing. ``--dry-run`` only checks inputs and writes the caption list.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coco-root", type=Path, required=True, help="MSCOCO_Caption folder (official layout)")
    p.add_argument("--config", type=Path, required=True, help="model config, e.g. OUTPUT/pretrained_model/config_text.yaml")
    p.add_argument("--checkpoint", type=Path, required=True, help="e.g. OUTPUT/pretrained_model/coco_learnable.pth")
    p.add_argument("--inception-weights", "--feature-extractor-weights-path", dest="inception_weights", type=Path,
                   required=True, help="torch-fidelity's TF-FID Inception weights (weights-inception-2015-12-05-6726825d.pth)")
    p.add_argument("--clip-weights", type=Path, default=None, help="OpenAI-CLIP ViT weights (adds the CLIP score)")
    p.add_argument("--out-dir", type=Path, default=Path("OUTPUT/eval_coco"))
    p.add_argument("--num-captions", type=int, default=30000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truncation-rate", type=float, default=0.86)
    p.add_argument("--guidance-scale", type=float, default=1.0)
    p.add_argument("--learnable-cf", action="store_true", help="checkpoint has a learned null text embedding")
    p.add_argument("--infer-speed", type=float, default=None, help="the API's infer_speed (e.g. 2 = fast)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32, help="Inception / CLIP batch size")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dry-run", action="store_true", help="check inputs and write the captions, generate nothing")
    return p.parse_args(argv)


def missing_inputs(args: argparse.Namespace) -> list[str]:
    """Every required input that is absent, each with what it should be."""
    need = [
        (args.coco_root / "annotations" / "captions_val2014.json", "COCO val2014 caption annotations"),
        (args.coco_root / "val2014" / "val2014", "COCO val2014 images folder"),
        (args.config, "model config"),
        (args.checkpoint, "model checkpoint"),
        (args.inception_weights, "TF-FID Inception weights (torch-fidelity's weights-inception-2015-12-05-6726825d.pth)"),
    ]
    if args.clip_weights is not None:
        need.append((args.clip_weights, "CLIP weights"))
    out = [f"{what}: {path}" for path, what in need if not path.exists()]
    try:
        import inference_VQ_Diffusion  # noqa: F401
    except ImportError as err:
        out.append(f"inference API: cannot import inference_VQ_Diffusion ({err})")
    return out


def sample_captions(annotation_file: Path, num: int, seed: int) -> list[dict]:
    """``num`` (image_id, caption) pairs: one random caption per image over a seeded random set of images,
    then (only if ``num`` exceeds the number of images) further captions of already used images."""
    data = json.loads(annotation_file.read_text())
    by_image: dict[int, list[str]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(int(ann["image_id"]), []).append(ann["caption"].strip())
    rng = random.Random(seed)
    image_ids = sorted(by_image)
    rng.shuffle(image_ids)
    for image_id in image_ids:  # a seeded caption order per image
        rng.shuffle(by_image[image_id])
    total = sum(len(v) for v in by_image.values())
    if num > total:
        raise ValueError(f"{annotation_file} has only {total} captions, {num} requested")
    chosen: list[dict] = []
    round_ = 0
    while len(chosen) < num:  # round r takes the r-th caption of every image that has one
        for image_id in image_ids:
            if round_ < len(by_image[image_id]) and len(chosen) < num:
                chosen.append({"image_id": image_id, "caption": by_image[image_id][round_]})
        round_ += 1
    return chosen


def real_image_path(coco_root: Path, image_id: int) -> Path:
    return coco_root / "val2014" / "val2014" / f"COCO_val2014_{image_id:012d}.jpg"


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    missing = missing_inputs(args)
    if missing:
        print("cannot run the COCO protocol; missing:\n  - " + "\n  - ".join(missing), file=sys.stderr)
        print("see docs/evaluation.md for what goes where", file=sys.stderr)
        raise SystemExit(2)

    from tqdm.auto import tqdm

    from vqdiff.evaluation.fid import InceptionMetrics, InceptionMetricsConfig, resolve_inception_weights
    from vqdiff.evaluation.image_folder import image_batches, list_images

    resolve_inception_weights(args.inception_weights)  # a wrong weights file fails now, not after the generation
    args.out_dir.mkdir(parents=True, exist_ok=True)
    captions = sample_captions(args.coco_root / "annotations" / "captions_val2014.json", args.num_captions, args.seed)
    (args.out_dir / "captions.json").write_text(json.dumps(captions, indent=0))
    print(f"{len(captions)} captions -> {args.out_dir / 'captions.json'}")
    if args.dry_run:
        return None

    from inference_VQ_Diffusion import VQ_Diffusion

    model = VQ_Diffusion(config=str(args.config), path=str(args.checkpoint))
    gen_root = args.out_dir / "generated"
    kwargs = {"truncation_rate": args.truncation_rate, "batch_size": 1, "guidance_scale": args.guidance_scale,
              "learnable_cf": args.learnable_cf}
    if args.infer_speed is not None:
        kwargs["infer_speed"] = args.infer_speed
    for i, item in enumerate(tqdm(captions, desc="generate")):
        slot = gen_root / f"{i:06d}"
        if slot.is_dir() and any(slot.rglob("*.png")):
            continue  # resumable
        model.inference_generate_sample_with_condition(item["caption"], save_root=str(slot), **kwargs)

    fake_paths = list_images(gen_root)
    real_paths = [real_image_path(args.coco_root, c["image_id"]) for c in captions]
    absent = [p for p in real_paths if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"{len(absent)} real images missing, e.g. {absent[0]}")
    metrics = InceptionMetrics(InceptionMetricsConfig(feature_extractor_weights_path=args.inception_weights,
                                                      is_splits=min(10, len(fake_paths)), device=args.device))
    metrics.update_all(tqdm(image_batches(real_paths, args.batch_size, args.image_size), desc="Inception (real)"),
                       real=True)
    metrics.update_all(tqdm(image_batches(fake_paths, args.batch_size, args.image_size), desc="Inception (generated)"),
                       real=False)
    result = {
        **metrics.compute(),
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    if args.clip_weights is not None:
        from vqdiff.evaluation.clip_score import CLIPModel, compute_clip_score, load_clip_state_dict

        clip = CLIPModel.from_state_dict(load_clip_state_dict(args.clip_weights)).to(args.device)

        def pairs():
            for i, item in enumerate(captions):
                files = list_images(gen_root / f"{i:06d}")
                yield next(image_batches(files[:1], 1, args.image_size)), [item["caption"]]

        result["clip_score"] = compute_clip_score(clip, pairs())
    (args.out_dir / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=2))
    return result


if __name__ == "__main__":
    main()
