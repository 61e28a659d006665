"""The shapes world: a CPU demo that trains a small text-to-image VQ-Diffusion and measures how well it
follows captions it never saw (``python running_command/run_demo_shapes.py``).

* :mod:`~vqdiff.demo.presets`: the named recipes (``full``, ``quick``, ``ci``) as typed presets;
* :mod:`~vqdiff.demo.recipe`: the parts a run builds (random CLIP tower, codec, the diffusion config);
* :mod:`~vqdiff.demo.shapes`: the run itself (train, sample the held-out captions, score) and its CLI;
* :mod:`~vqdiff.demo.editing`: inpainting and equal-budget sampler comparison on a trained demo;
* :mod:`~vqdiff.demo.lora`: LoRA against full fine-tuning on a new caption vocabulary.

The data (:mod:`vqdiff.data.synthetic`) and the attribute classifier that scores samples
(:mod:`vqdiff.evaluation.shapes_classifier`) live with their kind, since tests and other tools use them too.
"""
