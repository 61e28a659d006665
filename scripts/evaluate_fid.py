#!/usr/bin/env python
"""FID (and Inception Score, optionally CLIP score) between two image folders; weights from paths you give.

    python scripts/evaluate_fid.py --real data/real_256 --fake RESULT \
        --inception-weights OUTPUT/pretrained_model/inception_v3.pth --image-size 256

- ``--real`` / ``--fake``: folders searched recursively for .png/.jpg; ``--fake`` may be the inference
  layout ``RESULT/<caption>/000000.png``.
- ``--inception-weights``: a torchvision ``inception_v3`` state dict (nothing is downloaded).
- ``--clip-weights``: optional OpenAI-CLIP ViT weights; then the CLIP score of ``--fake`` against the
  captions its sub-folder names give is reported too.
- ``--image-size``: resize the short side and centre-crop every image to this size first (the official
  validation preprocessing uses 256); needed when the images differ in size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vqdiff.evaluation.fid import (  # noqa: E402
    FeatureStatistics,
    InceptionFeatureExtractor,
    frechet_distance,
    inception_score,
)
from vqdiff.evaluation.image_folder import caption_folders, image_batches, list_images  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", type=Path, required=True, help="folder of real images")
    p.add_argument("--fake", type=Path, required=True, help="folder of generated images")
    p.add_argument("--inception-weights", type=Path, required=True,
                   help="torchvision inception_v3 state dict (.pth); never downloaded")
    p.add_argument("--clip-weights", type=Path, default=None, help="OpenAI-CLIP ViT weights for the CLIP score")
    p.add_argument("--image-size", type=int, default=None, help="short-side resize + centre crop to this size")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--splits", type=int, default=10, help="Inception Score splits")
    p.add_argument("--max-images", type=int, default=None, help="use at most this many images per folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    import torch
    from tqdm.auto import tqdm

    args = parse_args(argv)
    if not args.inception_weights.is_file():
        raise SystemExit(f"Inception weights not found: {args.inception_weights} (see docs/evaluation.md)")
    real_paths, fake_paths = list_images(args.real), list_images(args.fake)
    if args.max_images:
        real_paths, fake_paths = real_paths[: args.max_images], fake_paths[: args.max_images]
    print(f"{len(real_paths)} real images from {args.real}, {len(fake_paths)} generated from {args.fake}")
    extractor = InceptionFeatureExtractor(args.inception_weights, device=args.device)

    real_stats, fake_stats, probs = FeatureStatistics(), FeatureStatistics(), []
    n_batches = lambda n: (n + args.batch_size - 1) // args.batch_size  # noqa: E731
    for batch in tqdm(image_batches(real_paths, args.batch_size, args.image_size), total=n_batches(len(real_paths)),
                      desc="Inception (real)"):
        real_stats.update(extractor(batch)["pool"])
    for batch in tqdm(image_batches(fake_paths, args.batch_size, args.image_size), total=n_batches(len(fake_paths)),
                      desc="Inception (generated)"):
        out = extractor(batch)
        fake_stats.update(out["pool"])
        probs.append(out["logits"].double().softmax(-1).cpu())
    result = {
        "fid": frechet_distance(real_stats.mean, real_stats.cov, fake_stats.mean, fake_stats.cov),
        "num_real": real_stats.n,
        "num_fake": fake_stats.n,
    }
    splits = min(args.splits, fake_stats.n)
    is_mean, is_std = inception_score(torch.cat(probs), splits=splits)
    result.update({"inception_score": is_mean, "inception_score_std": is_std, "is_splits": splits})

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
