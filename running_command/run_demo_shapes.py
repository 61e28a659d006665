#!/usr/bin/env python
"""The CPU demo: teach a small VQ-Diffusion to draw captioned shapes, then measure how well it follows text.

    python running_command/run_demo_shapes.py            # the full preset
    python running_command/run_demo_shapes.py --quick    # the quick preset, a few minutes

The recipe and the run live in the package (``vqdiff.demo``: presets, recipe, the run); ``--help`` lists
the options.
"""

from vqdiff.demo.shapes import main

if __name__ == "__main__":
    main()
