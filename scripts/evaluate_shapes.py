#!/usr/bin/env python
"""Text-following accuracy of generated synthetic-shapes images.

Each ``--generated NAME=DIR`` is a folder in the inference layout ``DIR/<caption>/000000.png`` (as
``VQ_Diffusion.inference_generate_sample_with_condition(caption, save_root=DIR, ...)`` writes it): every
image is scored against the caption of its folder. Give several (e.g. ``text=out/with_text
no_text=out/no_text``, where the no-text images were sampled with an empty caption but stored under the
caption they are scored against) to get one table row each, next to the classifier's own accuracy on
real held-out images and chance.

    python scripts/evaluate_shapes.py --generated text=OUTPUT/demo/samples --classifier OUTPUT/shapes_clf.pth

The classifier is loaded from ``--classifier`` when that file exists, else trained (seconds) and saved there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vqdiff.data.synthetic import ShapesDataset
from vqdiff.evaluation.image_folder import caption_folders, load_image
from vqdiff.evaluation.shapes_classifier import (
    attribute_accuracy,
    format_accuracy_table,
    load_shapes_classifier,
    save_shapes_classifier,
    text_following_report,
    train_shapes_classifier,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generated", nargs="*", default=[], metavar="NAME=DIR",
                   help="generated-image folders (DIR/<caption>/*.png), each named for its table row")
    p.add_argument("--classifier", type=Path, default=Path("OUTPUT/shapes_classifier.pth"),
                   help="classifier checkpoint: loaded if it exists, else trained and saved here")
    p.add_argument("--retrain", action="store_true", help="train the classifier even if --classifier exists")
    p.add_argument("--resolution", type=int, default=32, help="classifier input size (training data size)")
    p.add_argument("--train-samples", type=int, default=2000)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--real-samples", type=int, default=400, help="real held-out images to check the classifier on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for training (1 is best on busy CPUs)")
    p.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    runs = []
    for spec in args.generated:
        if "=" not in spec:
            raise SystemExit(f"--generated expects NAME=DIR, got {spec!r}")
        name, folder = spec.split("=", 1)
        runs.append((name, Path(folder)))

    if args.classifier.is_file() and not args.retrain:
        model = load_shapes_classifier(args.classifier, args.device)
        print(f"loaded shapes classifier from {args.classifier}")
    else:
        model = train_shapes_classifier(args.resolution, args.train_samples, args.train_steps, args.seed,
                                        args.device, num_threads=args.threads)
        save_shapes_classifier(model, args.classifier)
        print(f"trained shapes classifier, saved to {args.classifier}")

    # the ruler first: its accuracy on real images of the held-out combinations (a seed never trained on)
    real = ShapesDataset(num_samples=args.real_samples, resolution=model.resolution, split="heldout",
                         seed=args.seed + 1000)
    items = [real[i] for i in range(len(real))]
    rows = {"real (held-out)": attribute_accuracy(
        model, torch.stack([it["image"] for it in items]),
        {k: torch.tensor([it[k] for it in items]) for k in ("color", "shape", "position")})}
    counts = {}
    for name, folder in runs:
        images, captions = [], []
        for caption, files in caption_folders(folder):
            for f in files:
                images.append(load_image(f, None))
                captions.append(caption)
        sizes = {tuple(im.shape) for im in images}
        if len(sizes) > 1:  # the classifier resizes anyway; bring them to one size to batch them
            images = [torch.nn.functional.interpolate(im[None], size=(model.resolution,) * 2, mode="bilinear",
                                                      antialias=True)[0] for im in images]
        report = text_following_report(model, torch.stack(images), captions, name=name)
        rows[name] = report["accuracy"]
        counts[name] = report["num_images"]
    print(format_accuracy_table(rows))
    result = {"accuracy": rows, "num_images": counts, "classifier": str(args.classifier)}
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
