#!/usr/bin/env python
"""Write the random tiny parts that configs/tiny_text_shapes.yaml needs (vqdiff.utils.tiny_parts), then
train the tiny text-to-image model on CPU in seconds:

    python scripts/make_tiny_parts.py
    python train.py --config_file configs/tiny_text_shapes.yaml --name tiny --seed 0

The parts go to <root>/OUTPUT/tiny_parts/ (--root, default: the working directory, where train.py reads them).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vqdiff.utils.tiny_parts import write_tiny_parts


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description="write the tiny random parts of configs/tiny_text_shapes.yaml")
    p.add_argument("--root", type=str, default=".", help="folder holding OUTPUT/tiny_parts (default: .)")
    parts = write_tiny_parts(p.parse_args(argv).root)
    print(f"wrote {', '.join(sorted(f.name for f in parts.iterdir()))} to {parts}")
    return parts


if __name__ == "__main__":
    main()
