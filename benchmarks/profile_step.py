"""Profile one full sampling step and one training step from tokens with ``torch.profiler``.

    python benchmarks/profile_step.py                 # reference size (8 layers, width 256, K=1024, 16x16, batch 4)
    python benchmarks/profile_step.py --quick         # tiny sizes
    python benchmarks/profile_step.py --what train    # only the training step

Prints the top operators by self CPU time, and the share of the step spent outside the network
(everything not under the ``network`` record_function range).
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from vqdiff.modeling.diffusion import samplers as S
from vqdiff.modeling.diffusion.sampling_options import SamplingOptions

if __package__:  # imported as benchmarks.profile_step (tests; python -m benchmarks.profile_step)
    from benchmarks.perf import build_text2image_diffusion, reference_size
else:  # run as python benchmarks/profile_step.py: Python puts benchmarks/ first on sys.path
    from perf import build_text2image_diffusion, reference_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--what", choices=["sample", "train", "both"], default="both")
    ap.add_argument("--rows", type=int, default=18)
    args = ap.parse_args()
    size = reference_size(quick=args.quick)
    torch.manual_seed(0)
    d = build_text2image_diffusion(size).eval()
    B, N, K, T = size["batch"], size["side"] ** 2, size["K"], size["T"]
    cond = torch.randn(B, size["cond_len"], size["cond_dim"])
    net = d.transformer
    orig_forward = net.forward

    def traced_forward(*a, **kw):
        with record_function("network"):
            return orig_forward(*a, **kw)

    net.forward = traced_forward  # profiling only: marks the network's share
    if args.what in ("sample", "both"):
        options = SamplingOptions(truncation_rate=0.86, generator=torch.Generator().manual_seed(0))
        denoise = S.Denoiser(d, cond, None, options)
        x = torch.randint(0, K + 1, (B, N))
        step = lambda: S.sample_ancestral(denoise, x, [T // 2], options)  # noqa: E731
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                step()
        _report(prof, "one full sampling step (x2)", args.rows)
    if args.what in ("train", "both"):
        d.train()
        opt = torch.optim.AdamW([p for p in d.parameters() if p.requires_grad], lr=1e-4)
        x0 = torch.randint(0, K, (B, N))

        def train_step():
            loss = d({"content_token": x0, "condition_embed_token": cond}, return_loss=True)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        train_step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            train_step()
        _report(prof, "training step from tokens", args.rows)


def _report(prof, title: str, rows: int) -> None:
    avg = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in avg)
    net = next((e.cpu_time_total for e in avg if e.key == "network"), 0.0)
    print(f"== {title}: total self CPU {total / 1e3:.1f} ms, network (forward) {net / 1e3:.1f} ms, "
          f"outside the network forward {(total - net) / 1e3:.1f} ms ({100 * (total - net) / max(total, 1):.0f}%)")
    print(avg.table(sort_by="self_cpu_time_total", row_limit=rows))


if __name__ == "__main__":
    main()
