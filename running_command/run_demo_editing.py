#!/usr/bin/env python
"""Editing and sampler comparison on the trained CPU demo (run ``run_demo_shapes.py`` first).

    python running_command/run_demo_editing.py --output OUTPUT/demo_shapes

The steps and options are in ``vqdiff.demo.editing`` (``--help``).
"""

from vqdiff.demo.editing import main

if __name__ == "__main__":
    main()
