#!/usr/bin/env python
"""Teach the trained CPU demo model a new concept with a LoRA adapter, against full fine-tuning.

    python running_command/run_demo_shapes.py --quick --output OUTPUT/demo_shapes_quick   # the base, once
    python running_command/run_demo_lora.py --base OUTPUT/demo_shapes_quick --output OUTPUT/demo_lora

The steps and options are in ``vqdiff.demo.lora`` (``--help``).
"""

from vqdiff.demo.lora import main

if __name__ == "__main__":
    main()
