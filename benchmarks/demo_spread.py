#!/usr/bin/env python
"""The CPU demo's figures as a spread over seeds: mean and min-max, with sample counts.

    python benchmarks/demo_spread.py --preset quick --seeds 0,1,2            # then README's quick-demo table
    python benchmarks/demo_spread.py --preset full --seeds 0,1,2 --editing   # the full demo + editing demo

Runs ``running_command/run_demo_shapes.py --preset P --seed S --output ROOT/P_sS`` for every seed (a
finished run's ``results.json`` is read instead, so an interrupted sweep resumes and runs made by hand
in those folders count), optionally ``run_demo_editing.py`` on each trained model (its
``editing_results.json`` is read likewise), and prints one table: for every
row of the demo (codec ceiling, generated with the caption, generated with the empty caption) and every
attribute, the mean over seeds and the smallest and largest seed. One seed's figure proves little: a
recipe whose figures swing by tens of points between seeds or CPUs is on a knife edge.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


ROWS = {
    "ceiling": "VQ-VAE reconstructions (ceiling)",
    "with text": "generated, with text",
    "empty text": "generated, empty text",
}
ATTRS = ("color", "shape", "position", "all")
EDIT_KEYS = ("asked_colour_rate", "original_colour_rate", "shape_kept_rate", "position_kept_rate")


def spread(values: list[float]) -> str:
    return f"{sum(values) / len(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def summarize(results: list[dict], edits: list[dict]) -> dict:
    """``{row: {attr: [per-seed values]}}`` plus the editing variants' rates per seed."""
    table = {row: {a: [r["accuracy"][key][a] for r in results] for a in ATTRS} for row, key in ROWS.items()}
    edit_table: dict = {}
    for e in edits:
        for name, variant in e.get("inpainting_variants", {"reported": e["inpainting"]}).items():
            for k in EDIT_KEYS:
                edit_table.setdefault(name, {}).setdefault(k, []).append(variant[k])
    return {"demo": table, "editing": edit_table}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--root", default="OUTPUT/demo_spread")
    parser.add_argument("--editing", action="store_true", help="also run run_demo_editing.py on every model")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from vqdiff.demo import editing, shapes
    from vqdiff.demo.presets import get_preset

    seeds = [int(s) for s in args.seeds.split(",")]
    results, edits = [], []
    for seed in seeds:
        out = Path(args.root) / f"{args.preset}_s{seed}"
        cmd = ["--preset", args.preset, "--seed", str(seed), "--output", str(out)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        done = out / "results.json"
        results.append(json.loads(done.read_text()) if done.is_file() else shapes.main(cmd))
        if args.editing:
            edited = out / "editing_results.json"
            edits.append(json.loads(edited.read_text()) if edited.is_file()
                         else editing.main(["--output", str(out), "--seed", str(seed)]))
    summary = summarize(results, edits)
    samples = len(results[0]["heldout_captions"]) * get_preset(args.preset).per_caption
    print(f"\npreset {args.preset}, seeds {seeds}: mean (min-max) over {len(seeds)} seeds, "
          f"{samples} samples per seed and row")
    print(f"{'':12s} " + " ".join(f"{a:>20s}" for a in ATTRS))
    for row, values in summary["demo"].items():
        print(f"{row:12s} " + " ".join(f"{spread(values[a]):>20s}" for a in ATTRS))
    for name, values in summary["editing"].items():
        n = edits[0]["inpainting"]["num_images"]
        print(f"inpainting, {name} ({n} images per seed): " +
              ", ".join(f"{k} {spread(values[k])}" for k in EDIT_KEYS))
    if args.json:
        Path(args.json).write_text(json.dumps({"preset": args.preset, "seeds": seeds, **summary}, indent=2))
    return summary


if __name__ == "__main__":
    main()
