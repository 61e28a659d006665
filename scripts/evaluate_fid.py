#!/usr/bin/env python
"""FID and Inception Score (optionally KID and CLIP score) between two image folders; weights from paths you give.

    python scripts/evaluate_fid.py --real data/real_256 --fake RESULT \
        --inception-weights OUTPUT/pretrained_model/weights-inception-2015-12-05-6726825d.pth --image-size 256

- ``--real`` / ``--fake``: folders searched recursively for .png/.jpg; ``--fake`` may be the inference
  layout ``RESULT/<caption>/000000.png``.
- ``--inception-weights`` (alias ``--feature-extractor-weights-path``): torch-fidelity's port of the
  TensorFlow FID Inception, the network papers use; nothing is downloaded. The metrics are torchmetrics'
  (``vqdiff.evaluation.fid``).
- ``--clip-weights``: optional OpenAI-CLIP ViT weights; then the CLIP score of ``--fake`` against the
  captions its sub-folder names give is reported too.
- ``--image-size``: resize the short side (bicubic) and centre-crop every image to this size first;
  needed when the images differ in size.

The MSCOCO protocol (docs/evaluation.md, sections 2 and 4): 30,000 generated 256x256 images, one per
val2014 caption, against the real val2014 images of those captions short-side resized to 256 (bicubic) and
centre-cropped (``--image-size 256``); inside the metric every image is resized to 299x299 with the TF1
bilinear resize of the TF Inception graph; IS over 10 splits. ``scripts/eval_coco_protocol.py`` runs all
of it. Fewer images give a higher (biased) FID: compare only numbers computed on equal counts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vqdiff.evaluation.fid import InceptionMetrics, InceptionMetricsConfig
from vqdiff.evaluation.image_folder import caption_folders, image_batches, list_images


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", type=Path, required=True, help="folder of real images")
    p.add_argument("--fake", type=Path, required=True, help="folder of generated images")
    p.add_argument("--inception-weights", "--feature-extractor-weights-path", dest="inception_weights", type=Path,
                   required=True, help="torch-fidelity's TF-FID Inception weights (.pth); never downloaded")
    p.add_argument("--clip-weights", type=Path, default=None, help="OpenAI-CLIP ViT weights for the CLIP score")
    p.add_argument("--image-size", type=int, default=None, help="short-side resize + centre crop to this size")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--splits", type=int, default=10, help="Inception Score splits")
    p.add_argument("--kid", action="store_true", help="also the Kernel Inception Distance")
    p.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size (at most the image count)")
    p.add_argument("--max-images", type=int, default=None, help="use at most this many images per folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    from tqdm.auto import tqdm

    args = parse_args(argv)
    real_paths, fake_paths = list_images(args.real), list_images(args.fake)
    if args.max_images:
        real_paths, fake_paths = real_paths[: args.max_images], fake_paths[: args.max_images]
    print(f"{len(real_paths)} real images from {args.real}, {len(fake_paths)} generated from {args.fake}")
    splits = min(args.splits, len(fake_paths))
    config = InceptionMetricsConfig(
        feature_extractor_weights_path=args.inception_weights, kid=args.kid, is_splits=splits,
        kid_subset_size=min(args.kid_subset_size, len(real_paths), len(fake_paths)), device=args.device)
    try:
        metrics = InceptionMetrics(config)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"--inception-weights: {err}") from err

    n_batches = lambda n: (n + args.batch_size - 1) // args.batch_size  # noqa: E731
    for paths, real, desc in ((real_paths, True, "Inception (real)"), (fake_paths, False, "Inception (generated)")):
        batches = image_batches(paths, args.batch_size, args.image_size)
        metrics.update_all(tqdm(batches, total=n_batches(len(paths)), desc=desc), real=real)
    result = metrics.compute()
    result["is_splits"] = splits

    if args.clip_weights is not None:
        from vqdiff.evaluation.clip_score import CLIPModel, compute_clip_score, load_clip_state_dict

        clip = CLIPModel.from_state_dict(load_clip_state_dict(args.clip_weights)).to(args.device)
        pairs = ((batch, [caption] * len(batch)) for caption, files in caption_folders(args.fake)
                 for batch in image_batches(files, args.batch_size, args.image_size))  # lazy: streams
        result["clip_score"] = compute_clip_score(clip, pairs)

    for k, v in result.items():
        print(f"{k:>22}: {v:.4f}" if isinstance(v, float) else f"{k:>22}: {v}")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
