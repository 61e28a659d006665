"""The demo's training step with the caption in 77 positions (no padding mask) against 16 with the mask.

    python benchmarks/bench_demo_context.py [--steps 30] [--rounds 3] [--threads 1]

Builds the demo's text-to-image diffusion model twice from ``vqdiff.demo.recipe.diffusion_config`` (the
quick preset, once with ``context_length=77, padding_mask=False`` as the old recipe, once as the preset
is now), with the same random weights for the shared parts, and times forward + backward + an AdamW step
on batches of the demo's size (32 full captions, 8x8 tokens of a 64-code codec), alternating between the
two in each round, same process. Prints seconds per step per round and one JSON line with the CPU
(``/proc/cpuinfo``), the torch threads and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from vqdiff.data.synthetic import all_combinations, make_caption
from vqdiff.demo.presets import PRESETS
from vqdiff.demo.recipe import diffusion_config, make_random_clip
from vqdiff.utils.config import instantiate_from_config

if __package__:  # imported as benchmarks.<name> (tests)
    from benchmarks import perf
else:  # run as python benchmarks/<name>.py: Python puts benchmarks/ first on sys.path
    import perf

CODEC = {"target": "vqdiff.modeling.codecs.base_codec.BaseCodec", "params": {"num_tokens": 64, "token_shape": [8, 8]}}
ARMS = {"77 positions, no mask": dict(context_length=77, padding_mask=False),
        "16 positions, padding mask": dict(context_length=16, padding_mask=True)}


def build(clip: Path, **recipe) -> tuple:
    """(diffusion model, tokenizer) of the quick preset with ``recipe`` fields changed."""
    cfg = diffusion_config(CODEC, clip, Path("unused"), PRESETS["quick"].replace(**recipe), seed=0)
    params = cfg["model"]["params"]
    torch.manual_seed(0)
    model = instantiate_from_config(params["diffusion_config"], key_path="diffusion_config")
    return model, instantiate_from_config(params["condition_codec_config"], key_path="condition_codec_config")


def time_steps(model, batch: dict, steps: int) -> float:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    start = time.perf_counter()
    for _ in range(steps):
        loss = model(batch, return_loss=True, return_logits=False)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per arm and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    captions = [make_caption(s) for s in all_combinations()][:32]
    gen = torch.Generator().manual_seed(0)
    content = torch.randint(0, 64, (len(captions), 64), generator=gen)
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_random_clip(Path(tmp) / "clip.pt")
        arms = {}
        for name, recipe in ARMS.items():
            model, tokenizer = build(clip, **recipe)
            tok = tokenizer.get_tokens(captions)
            arms[name] = (model, {"content_token": content, "condition_token": tok["token"],
                                  "condition_mask": tok["mask"]})
            time_steps(*arms[name], steps=2)  # warm-up
        times = {name: [] for name in arms}
        for _ in range(args.rounds):
            for name, (model, batch) in arms.items():
                times[name].append(time_steps(model, batch, args.steps))
    for name, per_round in times.items():
        print(f"{name:28s} " + "  ".join(f"{t:.4f}" for t in per_round) + " s/step")
    old, new = (min(times[n]) for n in ARMS)
    result = {"machine": perf.machine_description("cpu"), "threads": torch.get_num_threads(),
              "load_average": os.getloadavg(), "steps": args.steps, "rounds": args.rounds,
              "seconds_per_step": times, "speed_up_of_best_rounds": old / new}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
