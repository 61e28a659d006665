#!/usr/bin/env python
"""Floating-point operations of one codec training step per image, counted (not timed) for a codec config.

    python benchmarks/codec_flops.py --config configs/vqgan_256_custom.yaml

``torch.utils.flop_counter.FlopCounterMode`` counts the matrix products and convolutions (the work that
matters) of one generator step (encoder, quantizer, decoder, LPIPS on input and reconstruction, the
discriminator on the reconstruction, the adaptive weight's two gradients, and the backward pass) and of one
discriminator step, on the ``meta`` device: no weights are read and nothing is computed, so it runs in
seconds whatever the model size. Missing VGG/LPIPS files are replaced by random tensors of the same shapes
(the count does not depend on the values). Prints JSON: GFLOPs per image for each step, and the
training run's total ``max_steps x global batch x per-image FLOPs`` for a given number of processes.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path
from unittest import mock


import torch
from torch.utils.flop_counter import FlopCounterMode

from vqdiff.utils.config import instantiate_from_config, load_yaml_config


def _random_vgg_files(folder: Path) -> tuple[str, str]:
    """A torchvision vgg16 features state dict and LPIPS heads with random values (for counting only)."""
    from torchvision.models import vgg16

    vgg = folder / "vgg16_features.pth"
    torch.save({k: v for k, v in vgg16(weights=None).state_dict().items() if k.startswith("features.")}, vgg)
    lpips = folder / "lpips_heads.pth"
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))},
               lpips)
    return str(vgg), str(lpips)


def count(config: dict, batch: int) -> dict:
    """GFLOPs per image of one generator step and one discriminator step (GAN on)."""
    model_node = copy.deepcopy(config["model"])
    loss_node = model_node["params"].get("lossconfig")
    res = int(model_node["params"]["ddconfig"]["resolution"])
    with tempfile.TemporaryDirectory() as tmp:
        if loss_node is not None:
            params = loss_node.setdefault("params", {})
            if params.get("perceptual_weight", 1.0) > 0 and params.get("vgg_path"):
                if not Path(params["vgg_path"]).is_file() or not Path(params.get("lpips_path") or "").is_file():
                    params["vgg_path"], params["lpips_path"] = _random_vgg_files(Path(tmp))
        codec = instantiate_from_config(model_node).train().to("meta")
        loss = instantiate_from_config(loss_node).train().to("meta") if loss_node is not None else None
    disc_step = int(getattr(loss, "discriminator_iter_start", 0) or 0)
    x = torch.randn(batch, 3, res, res, device="meta")
    # the perplexity's bincount has a data-dependent shape the meta device cannot give: count without it
    with mock.patch("vqdiff.modeling.codecs.image.quantizers._perplexity", lambda idx, n: torch.zeros(())):
        with FlopCounterMode(display=False) as gen:
            quant, qloss, _ = codec.quantize(codec.encode_to_prequant(x))
            xrec = codec.decode(quant)
            if loss is None:
                total = (x - xrec).abs().mean() + qloss
            else:
                total, _ = loss(qloss, x, xrec, 0, disc_step, last_layer=codec.get_last_layer())
            total.backward()
    out = {"resolution": res, "generator_gflops_per_image": gen.get_total_flops() / batch / 1e9}
    if getattr(loss, "discriminator", None) is not None:
        with FlopCounterMode(display=False) as disc:
            d_loss, _ = loss(qloss.detach(), x, xrec.detach(), 1, disc_step)
            d_loss.backward()
        out["discriminator_gflops_per_image"] = disc.get_total_flops() / batch / 1e9
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/vqgan_256_custom.yaml")
    p.add_argument("--processes", type=int, default=8, help="processes (GPUs) of the run, for the run's total")
    p.add_argument("--batch", type=int, default=2, help="images per counted step (the count is per image)")
    args = p.parse_args(argv)
    config = load_yaml_config(args.config)
    out = count(config, args.batch)
    solver = config.get("solver") or {}
    steps, per_process = int(solver.get("max_steps", 1000)), int(solver.get("batch_size", 16))
    disc_start = int(config["model"]["params"].get("lossconfig", {}).get("params", {}).get("disc_start", steps))
    images = steps * per_process * args.processes
    gan_images = max(0, steps - disc_start) * per_process * args.processes
    # before disc_start the generator step skips the discriminator's terms: counted with the GAN on, an upper bound
    out.update({"max_steps": steps, "global_batch": per_process * args.processes, "images_seen": images,
                "run_pflops_upper_bound": (images * out["generator_gflops_per_image"]
                                           + gan_images * out.get("discriminator_gflops_per_image", 0.0)) / 1e6})
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
