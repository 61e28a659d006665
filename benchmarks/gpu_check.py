"""Issue 19: the CUDA path in one run. Prints a table, writes JSON, exits non-zero when a check fails.

    python benchmarks/gpu_check.py --device cuda --json gpu_check.json    # the GPU run (under 8 minutes)
    python benchmarks/gpu_check.py --device cpu --quick --json out.json   # CI: every section, reduced

Sections (each with its own time cap, ``CAPS_S``; a section that reaches its cap reports the rest of
its checks as skipped with that reason):
1. ``agreement``: the tiny text, class and unconditional models: fp32 network log-probs and one sampling
   step (posterior, and the token drawn with the same Gumbel noise) on the device equal the CPU ones
   (1e-4; TF32 off). On CPU the reference is the same model run one image at a time.
2. ``amp_training``: 50 iterations of ``configs/tiny_text_shapes.yaml`` under fp16 (+ GradScaler) and
   bf16, through ``train.py``'s flags (the Solver) and through a plain autocast loop: no non-finite
   step, the loss falls (mean of the last 10 below the mean of the first 10).
3. ``compile``: ``torch.compile`` of the network agrees with eager under bf16 autocast (probabilities
   p(x_0 | x_t), 1e-3) and its speed-up (child process, killed at the cap).
4. ``distributed``: ``torchrun --nproc_per_node=1 train.py`` (fp16 ``--amp`` on CUDA) trains and
   checkpoints; ``train.py`` forms no process group for a world of one, so a one-rank process group
   (NCCL on CUDA, gloo on CPU) then runs DDP training steps and an all-reduce in a child process.
5. ``paper_speed``: images/s of 100-step sampling and of training, fp16 and bf16, peak memory, for the
   paper's 24-layer/512 and 19-layer/1024 networks (32x32 tokens, random weights). ``--quick`` on CPU
   runs a small stand-in through the same code and reports the paper sizes as skipped.

Status per check: pass, fail, or skipped with its reason (never a silent pass).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import torch

if __package__:  # imported as benchmarks.gpu_check (tests; python -m benchmarks.gpu_check)
    from benchmarks import gpu_check_sections, gpu_check_speed, perf
    from benchmarks.gpu_check_result import Check, Context, section_status
else:  # run as python benchmarks/gpu_check.py (also the children it starts): benchmarks/ is first on sys.path
    import gpu_check_sections
    import gpu_check_speed
    import perf
    from gpu_check_result import Check, Context, section_status

CAPS_S = {"agreement": 45, "amp_training": 90, "compile": 120, "distributed": 90, "paper_speed": 135}


def run_section(name: str, fn: Callable[[Context], list[Check]], ctx: Context) -> dict:
    """Run one section; an exception becomes a failed check named after the section."""
    t0 = time.monotonic()
    try:
        checks = fn(ctx)
    except Exception as e:  # a crash is a result (the other sections still run)
        tb = traceback.format_exc(limit=-3)
        checks = [Check(name, "fail", f"{type(e).__name__}: {e}", {"traceback": tb})]
    finally:
        if ctx.cuda:
            torch.cuda.empty_cache()
    return {"status": section_status(checks), "seconds": round(time.monotonic() - t0, 2), "cap_s": ctx.cap_s,
            "checks": [asdict(c) for c in checks]}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def print_header(result: dict) -> None:
    m = result["machine"]
    print(f"Machine: {m.get('gpu', m.get('cpu'))}, torch {m['torch']}, device {m['device']}, "
          f"quick={result['options']['quick']}")
    print("| section | check | status | values / reason |")
    print("|---|---|---|---|", flush=True)


def print_rows(sname: str, sec: dict) -> None:
    """The section's table rows, printed as soon as it ends (a run killed later keeps them in its log)."""
    for c in sec["checks"]:
        vals = ", ".join(f"{k}={_fmt(v)}" for k, v in c["values"].items()
                         if not isinstance(v, (list, dict)) and k not in ("traceback", "output_tail"))
        text = "; ".join(x for x in (c["reason"], vals) if x)
        print(f"| {sname} | {c['name']} | {c['status']} | {text} |", flush=True)


def print_summary(result: dict) -> None:
    for sname, sec in result["sections"].items():
        print(f"{sname}: {sec['status']} in {sec['seconds']:.1f} s (cap {sec['cap_s']:.0f} s)")
    print(f"overall: {result['status']} in {result['seconds']:.1f} s")


def sections() -> dict[str, Callable[[Context], list[Check]]]:
    s = gpu_check_sections
    return {"agreement": s.agreement, "amp_training": s.amp_training, "compile": s.compile_check,
            "distributed": s.distributed, "paper_speed": gpu_check_speed.paper_speed}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="'cuda[:i]' or 'cpu' (explicit; nothing falls back)")
    ap.add_argument("--quick", action="store_true", help="reduced sizes (the CPU CI form; on CUDA: 10-step sampling, small compile size, "
                    "shorter torchrun run)")
    ap.add_argument("--json", default=None, help="write the result here")
    ap.add_argument("--only", nargs="+", default=None, choices=sorted(CAPS_S), help="run only these sections")
    ap.add_argument("--compile-backend", default=None,
                    help="torch.compile backend (default: inductor; aot_eager with --quick on CPU, where "
                         "inductor's C++ build alone takes longer than the whole quick run)")
    ap.add_argument("--cap-scale", type=float, default=1.0, help="multiply every section's time cap")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.compile_backend is None:
        args.compile_backend = "aot_eager" if (args.quick and args.device == "cpu") else "inductor"
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine (use --device cpu --quick)")
    if args._child is not None:  # a child process of one section: its checks as JSON in --_out
        gpu_check_sections.run_child(args._child, device, args.quick, args.compile_backend, Path(args._out))
        return 0
    t0 = time.monotonic()
    result: dict = {"machine": perf.machine_description(device), "sections": {},
                    "options": {"device": str(device), "quick": args.quick, "compile_backend": args.compile_backend}}
    print_header(result)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for name, fn in sections().items():
            if args.only and name not in args.only:
                continue
            ctx = Context(device, args.quick, Path(tmp) / name, args.compile_backend, CAPS_S[name] * args.cap_scale)
            ctx.workdir.mkdir(parents=True)
            print(f"[gpu_check] {name} (cap {ctx.cap_s:.0f} s) ...", file=sys.stderr, flush=True)
            result["sections"][name] = run_section(name, fn, ctx)
            print_rows(name, result["sections"][name])
            if args.json:  # after every section: a run killed from outside keeps what it measured
                Path(args.json).write_text(json.dumps({**result, "status": "incomplete"}, indent=2, default=str))
    statuses = [s["status"] for s in result["sections"].values()]
    result["status"] = "fail" if "fail" in statuses else "pass"
    result["seconds"] = round(time.monotonic() - t0, 2)
    print_summary(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 1 if result["status"] == "fail" else 0


if __name__ == "__main__":
    sys.exit(main())
