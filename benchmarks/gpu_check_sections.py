"""Sections 1-4 of ``benchmarks/gpu_check.py``: device agreement, mixed-precision training,
``torch.compile`` and the distributed launch. Each returns a list of ``gpu_check_result.Check``.

The compile check and the one-rank DDP check run in child processes (``gpu_check.py --_child NAME``): a
compile that does not finish is killed at the section's cap, and a process group gets a process of its
own (rank variables in its environment), so it cannot leave state behind in the parent.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

if __package__:  # imported as benchmarks.gpu_check_sections (tests; python -m benchmarks.gpu_check)
    from benchmarks import perf
    from benchmarks.gpu_check_result import Check, Context, check_from_values
    from benchmarks.gpu_check_tiny import (AMP_DTYPES, REPO, amp_flags, apply_solver_settings, model_autocast_probe,
                                           perturb_, tiny_diffusions, tiny_text_training_config, train_help_text)
else:  # run through python benchmarks/gpu_check.py (also its children): benchmarks/ is first on sys.path
    import perf
    from gpu_check_result import Check, Context, check_from_values
    from gpu_check_tiny import (AMP_DTYPES, REPO, amp_flags, apply_solver_settings, model_autocast_probe, perturb_,
                                tiny_diffusions, tiny_text_training_config, train_help_text)

GPU_CHECK = Path(__file__).resolve().parent / "gpu_check.py"
AGREE_TOL = 1e-4  # fp32 device vs CPU, log-probabilities
COMPILE_TOL = 1e-3  # compiled vs eager under bf16 autocast, probabilities
TRAIN_ITERS = 50


# ------------------------------------------------------------------------------------ 1. agreement
def _gumbel(shape: tuple, seed: int) -> torch.Tensor:
    """Gumbel noise drawn on the CPU, so both devices sample with the same noise."""
    u = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    return -torch.log(-torch.log(u.clamp_min(1e-20)).clamp_min(1e-20))


@torch.no_grad()
def _forward_and_step(d, cond: Any, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, device) -> tuple:
    """On ``device``: log p(x_0 | x_t) (network), the posterior log p(x_{t-1} | x_t) of one ancestral step
    (Eq. 11; no truncation, whose threshold could flip on 1e-7 differences) and the token drawn with
    ``noise``. Returned on the CPU."""
    d = copy.deepcopy(d).to(device)
    mv = (lambda v: v.to(device) if torch.is_tensor(v) else v)
    x, t, cond, noise = mv(x), mv(t), mv(cond), mv(noise)
    log_x0 = d.predict_start_index(x, cond, t)
    from vqdiff.modeling.diffusion.samplers import Denoiser
    from vqdiff.modeling.diffusion.sampling_options import SamplingOptions

    log_post = d.q_posterior_index(Denoiser(d, cond, None, SamplingOptions(truncation_rate=None))(x, t), x, t)
    tokens = (log_post + noise).argmax(dim=1)
    return log_x0.cpu(), log_post.cpu(), tokens.cpu()


def _one_at_a_time(d, cond, x, t, noise) -> tuple:
    rows = [_forward_and_step(d, None if cond is None else cond[i:i + 1], x[i:i + 1], t[i:i + 1],
                              noise[i:i + 1], "cpu") for i in range(x.shape[0])]
    return tuple(torch.cat(parts) for parts in zip(*rows))


def agreement(ctx: Context) -> list[Check]:
    """fp32 on the device == fp32 on the CPU (1e-4), for the tiny text, class and unconditional models."""
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    reference = "cpu fp32" if ctx.cuda else "cpu fp32, one image at a time (no second device)"
    checks = []
    try:
        for kind, (d, cond) in tiny_diffusions(batch=3).items():
            K1, N = d.num_classes, d.content_seq_len
            x = torch.randint(0, K1, (3, N), generator=torch.Generator().manual_seed(1))
            t = torch.tensor([0, d.num_timesteps // 2, d.num_timesteps - 1])
            noise = _gumbel((3, K1, N), seed=2)
            ref = (_forward_and_step(d, cond, x, t, noise, "cpu") if ctx.cuda else _one_at_a_time(d, cond, x, t, noise))
            got = _forward_and_step(d, cond, x, t, noise, ctx.device)
            net_diff = float((ref[0] - got[0]).abs().max())
            step_diff = float((ref[1] - got[1]).abs().max())
            same = float((ref[2] == got[2]).float().mean())
            checks.append(check_from_values(
                f"{kind}: network fp32 vs {reference}", net_diff <= AGREE_TOL,
                f"max |log p difference| {net_diff:.3g} > {AGREE_TOL}", max_abs_diff=net_diff, tol=AGREE_TOL))
            checks.append(check_from_values(
                f"{kind}: one sampling step vs {reference}", step_diff <= AGREE_TOL and same == 1.0,
                f"posterior max diff {step_diff:.3g} (tol {AGREE_TOL}), same token {same:.4f}",
                max_abs_diff=step_diff, tol=AGREE_TOL, same_token_fraction=same))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return checks


# ----------------------------------------------------------------------------- 2. mixed precision
def _loss_summary(losses: list[float]) -> dict:
    finite = [v for v in losses if math.isfinite(v)]
    n = min(10, max(1, len(finite) // 2))
    first = sum(finite[:n]) / n if finite else float("nan")
    last = sum(finite[-n:]) / n if finite else float("nan")
    return {"iterations": len(losses), "nonfinite_steps": len(losses) - len(finite), "loss_first10": first,
            "loss_last10": last, "loss_fell": bool(last < first)}


def _training_verdict(name: str, s: dict) -> Check:
    """Pass: all iterations ran, none non-finite, and ``loss_fell``: the fixed-batch loss fell where it was
    measured (the loops), else the mean logged loss of the last 10 iterations is below the first 10's."""
    ok = s["iterations"] == TRAIN_ITERS and s["nonfinite_steps"] == 0 and s["loss_fell"]
    first, last = (("fixed_batch_loss_before", "fixed_batch_loss_after") if "fixed_batch_loss_after" in s
                   else ("loss_first10", "loss_last10"))
    why = (f"{s['iterations']}/{TRAIN_ITERS} iterations, {s['nonfinite_steps']} non-finite, "
           f"{first.replace('_before', '').replace('_first10', '')} {s[first]:.4g} -> {s[last]:.4g}")
    return check_from_values(name, ok, why, **s)


def _solver_run(ctx: Context, dtype: str, help_text: str) -> Check:
    """``train.py`` (the Solver) with the flags that ask for ``dtype`` autocast, in this process."""
    import train
    from vqdiff.modeling.diffusion import DiffusionTransformer
    from vqdiff.utils.config import save_yaml_config

    flags, settings = amp_flags(dtype, help_text)
    name = f"train.py {' '.join(flags)}" + "".join(f" (solver.{k}: {v})" for k, v in settings.items())
    work = ctx.workdir / f"solver_{dtype}"
    cfg = apply_solver_settings(tiny_text_training_config(work, TRAIN_ITERS), settings)
    save_yaml_config(cfg, work / "config.yaml")
    argv = ["--config_file", str(work / "config.yaml"), "--name", f"amp_{dtype}", "--output", str(work / "OUTPUT"),
            "--seed", "0", "--no_progress_bar", "--log_frequency", "10", *flags]
    if ctx.cuda:
        argv += ["--gpu", str(ctx.device.index or 0)]
    handle, seen = model_autocast_probe(DiffusionTransformer)
    try:
        res = train.main(argv)
    finally:
        handle.remove()
    s = _loss_summary([float(v) for v in res["losses"]])
    s["autocast_in_forward"] = seen.get("dtype")
    want = str(AMP_DTYPES[dtype]).replace("torch.", "")
    if not seen.get("enabled"):
        if ctx.cuda:
            return Check(name, "fail", "train.py did not turn autocast on in the model's forward", s)
        return Check(name, "skipped", "needs CUDA: train.py's --amp leaves CPU training in fp32 (autocast was "
                     f"off in the model's forward); the fp32 run: loss {s['loss_first10']:.4g} -> "
                     f"{s['loss_last10']:.4g}", s)
    if seen["dtype"] != want:
        return Check(name, "fail", f"autocast dtype in the model's forward was {seen['dtype']}, expected {want}", s)
    return _training_verdict(name, s)


def _fixed_batch_loss(model: torch.nn.Module, batch: dict, seed: int = 0, draws: int = 8) -> float:
    """The fp32 training loss of one batch averaged over ``draws`` seeded draws of (t, x_t), with the loss
    history put back after: the per-step loss moves with the t it happens to draw (a factor of several
    between steps), so "the loss fell" is judged on this fixed measure, not on a window of step losses."""
    diffusion = model.transformer
    history = (diffusion.Lt_history.clone(), diffusion.Lt_count.clone())
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        value = sum(float(model(batch, return_loss=True)["loss"]) for _ in range(draws)) / draws
    diffusion.Lt_history.copy_(history[0])
    diffusion.Lt_count.copy_(history[1])
    return value


def _autocast_loop(ctx: Context, dtype: str) -> Check:
    """The same model and data in a plain loop: ``torch.autocast(dtype)``, GradScaler for fp16, AdamW."""
    from torch.utils.data import DataLoader

    from vqdiff.data.build import collate_batch
    from vqdiff.utils.config import instantiate_from_config

    cfg = tiny_text_training_config(ctx.workdir / f"loop_{dtype}", TRAIN_ITERS)
    torch.manual_seed(0)
    model = instantiate_from_config(cfg["model"], key_path="model").to(ctx.device).train()
    data = instantiate_from_config(cfg["dataloader"]["train_datasets"][0])
    loader = DataLoader(data, batch_size=cfg["dataloader"]["batch_size"], shuffle=False, collate_fn=collate_batch,
                        drop_last=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["solver"]["base_lr"], betas=(0.9, 0.96), weight_decay=4.5e-2,
                            **({"fused": True} if ctx.cuda else {}))
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=dtype == "fp16")
    losses, skipped = [], 0
    on_device = lambda b: {k: (v.to(ctx.device) if torch.is_tensor(v) else v) for k, v in b.items()}  # noqa: E731
    probe = on_device(next(iter(loader)))
    before = _fixed_batch_loss(model, probe)
    for i, batch in enumerate(loader):
        batch = on_device(batch)
        with torch.autocast(ctx.device.type, dtype=AMP_DTYPES[dtype]):
            loss = model(batch, return_loss=True, step=i)["loss"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        scaler.step(opt)
        scaler.update()
        skipped += int(scaler.is_enabled() and scaler.get_scale() < scale)
        losses.append(float(loss))
    s = _loss_summary(losses)
    s["fixed_batch_loss_before"], s["fixed_batch_loss_after"] = before, _fixed_batch_loss(model, probe)
    s["loss_fell"] = bool(s["fixed_batch_loss_after"] < before)
    s["scaler_skipped_steps"] = skipped
    s["params_finite"] = all(bool(torch.isfinite(p).all()) for p in params)
    scaler_note = ", GradScaler" if dtype == "fp16" else ""
    check = _training_verdict(f"autocast loop {dtype}{scaler_note}", s)
    if check.status == "pass" and not s["params_finite"]:
        return Check(check.name, "fail", "non-finite parameters after training", s)
    return check


def amp_training(ctx: Context) -> list[Check]:
    """50 iterations of the tiny text config under fp16 (+ GradScaler) and bf16: via train.py, via a loop."""
    help_text = train_help_text()
    runs = {"train.py": lambda dtype: _solver_run(ctx, dtype, help_text),
            "autocast loop": lambda dtype: _autocast_loop(ctx, dtype)}
    checks = []
    for dtype in ("fp16", "bf16"):
        for label, run in runs.items():
            checks.append(ctx.over_cap(f"{label} {dtype}") or run(dtype))
    return checks


# ---------------------------------------------------------------------------------- child processes
def _run_killable(cmd: list[str], env: dict, timeout: float, cwd: Path) -> subprocess.CompletedProcess:
    """``subprocess.run`` in its own process group, all of which is killed at ``timeout`` (a compile's
    worker processes or torchrun's ranks would otherwise outlive their parent)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(cwd),
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _child_env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def _run_child(ctx: Context, name: str, cmd: list[str], out: Path, env: Optional[dict] = None) -> list[Check]:
    """Run ``cmd`` (a child writing its checks to ``out``) until the section's cap; failures are checks."""
    timeout = max(5.0, ctx.time_left())
    try:
        proc = _run_killable(cmd, {**_child_env(), **(env or {})}, timeout, ctx.workdir)
    except subprocess.TimeoutExpired:
        return [Check(name, "fail", f"did not finish within the section's cap ({timeout:.0f} s)")]
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stdout + proc.stderr)[-1500:]
        return [Check(name, "fail", f"exit code {proc.returncode}", {"output_tail": tail})]
    return [Check(**c) for c in json.loads(out.read_text())]


def _child_cmd(ctx: Context, child: str, out: Path) -> list[str]:
    cmd = [str(GPU_CHECK), "--_child", child, "--device", str(ctx.device), "--_out", str(out),
           "--compile-backend", ctx.compile_backend]
    return cmd + (["--quick"] if ctx.quick else [])


def compile_check(ctx: Context) -> list[Check]:
    """In a child process killed at the cap; in this process for the CPU ``--quick`` run (``aot_eager``
    compiles in about a second there, and a second interpreter would cost more than the check)."""
    if ctx.quick and not ctx.cuda and ctx.compile_backend != "inductor":
        return _compile_child(ctx.device, ctx.quick, ctx.compile_backend)
    out = ctx.workdir / "compile.json"
    return _run_child(ctx, f"torch.compile ({ctx.compile_backend})", [sys.executable, *_child_cmd(ctx, "compile", out)],
                      out)


def _compile_child(device: torch.device, quick: bool, backend: str) -> list[Check]:
    size = perf.reference_size(quick=quick)
    if not quick:
        size["batch"] = 32
    torch.manual_seed(0)
    net = perturb_(perf.build_text2image_diffusion(size)).transformer.to(device).eval()
    B, N = size["batch"], size["side"] ** 2
    x = torch.randint(0, size["K"] + 1, (B, N), device=device)
    cond = torch.randn(B, size["cond_len"], size["cond_dim"], device=device)
    t = torch.randint(0, size["T"], (B,), device=device)
    compiled = torch.compile(net, backend=backend)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        start = time.perf_counter()
        y_c = compiled(x, cond, t).float()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        compile_s = time.perf_counter() - start
        y_e = net(x, cond, t).float()
        p_diff = float((y_c.softmax(1) - y_e.softmax(1)).abs().max())
        logit_diff = float((y_c - y_e).abs().max())
        repeats = 3 if quick else 20
        te = perf.timed(lambda: net(x, cond, t), repeats, device=device)["median_s"]
        tc = perf.timed(lambda: compiled(x, cond, t), repeats, device=device)["median_s"]
    agree = check_from_values(
        "compiled vs eager, bf16 autocast", p_diff <= COMPILE_TOL,
        f"max |p(x_0|x_t) difference| {p_diff:.3g} > {COMPILE_TOL}", max_abs_prob_diff=p_diff, tol=COMPILE_TOL,
        max_abs_logit_diff=logit_diff, first_call_s=compile_s, size=f"{size['layers']}x{size['width']}, batch {B}")
    speed = {"eager_ms": 1e3 * te, "compiled_ms": 1e3 * tc, "speedup": te / tc}
    if device.type != "cuda" or backend != "inductor":
        return [agree, Check("compile speed-up", "skipped",
                             f"needs CUDA and inductor (this run: {device.type}, {backend}); timings kept", speed)]
    return [agree, Check("compile speed-up (eager / compiled forward time)", "pass", "", speed)]


# ------------------------------------------------------------------------------------ 4. distributed
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun_train(ctx: Context) -> Check:
    from vqdiff.utils.config import save_yaml_config

    iters = 6 if ctx.quick else 20
    work = ctx.workdir / "train_py"
    flags, settings = amp_flags("fp16", train_help_text()) if ctx.cuda else ([], {})
    cfg = apply_solver_settings(tiny_text_training_config(work, iters), settings)
    save_yaml_config(cfg, work / "config.yaml")
    name = "torchrun --nproc_per_node=1 train.py" + "".join(f" {f}" for f in flags) + "".join(
        f" (solver.{k}: {v})" for k, v in settings.items())
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    cmd = torchrun + [str(REPO / "train.py"), "--config_file", str(work / "config.yaml"), "--name", "torchrun",
                      "--output", str(work / "OUTPUT"), "--seed", "0", "--no_progress_bar", "--log_frequency", "1",
                      *flags]
    try:
        proc = _run_killable(cmd, _child_env(), max(5.0, ctx.time_left()), work)
    except subprocess.TimeoutExpired:
        return Check(name, "fail", "did not finish within the section's cap")
    run_dir = work / "OUTPUT" / "torchrun"
    log = (run_dir / "logs" / "log.txt").read_text() if (run_dir / "logs" / "log.txt").is_file() else ""
    losses = [float(v) for v in re.findall(r"/loss (\S+)", log)]
    args_txt = (run_dir / "configs" / "args.txt").read_text() if (run_dir / "configs" / "args.txt").is_file() else ""
    dist_flag = re.search(r"^distributed: (\S+)", args_txt, re.M)
    values = {"returncode": proc.returncode, "logged_losses": len(losses),
              "losses_finite": all(math.isfinite(v) for v in losses),
              "checkpoint": (run_dir / "checkpoint" / "last.pth").is_file(),
              "process_group": dist_flag.group(1) if dist_flag else None}
    ok = proc.returncode == 0 and values["checkpoint"] and len(losses) == iters and values["losses_finite"]
    if not ok:
        values["output_tail"] = (proc.stdout + proc.stderr)[-1500:]
    return check_from_values(name, ok, f"exit {proc.returncode}, {len(losses)}/{iters} finite losses logged, "
                             f"checkpoint {values['checkpoint']}", **values)


def _ddp_child(device: torch.device) -> list[Check]:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    backend = "nccl" if device.type == "cuda" else "gloo"
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    try:
        d, cond = tiny_diffusions(batch=4)["text"]
        d = d.to(device).train()
        model = DDP(d, device_ids=[device.index] if device.type == "cuda" else None)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x0 = torch.randint(0, d.num_classes - 1, (4, d.content_seq_len), device=device)
        batch = {"content_token": x0, "condition_embed_token": cond.to(device)}
        losses = []
        for _ in range(5):
            loss = model(batch, return_loss=True)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss))
        total = torch.tensor([float(dist.get_rank() + 1)], device=device)
        dist.all_reduce(total)
        world = dist.get_world_size()
        values = {"backend": dist.get_backend(), "world_size": world, "all_reduce": float(total),
                  "losses": losses}
        ok = all(math.isfinite(v) for v in losses) and float(total) == world * (world + 1) / 2
        return [check_from_values(f"DDP one rank, {backend} process group", ok,
                                  f"losses {losses}, all_reduce {float(total)}", **values)]
    finally:
        dist.destroy_process_group()


def distributed(ctx: Context) -> list[Check]:
    """``torchrun`` of ``train.py`` (one process), then a one-rank process group running DDP steps and an
    all-reduce (``train.py`` forms no process group for a world of one, so NCCL is exercised here)."""
    checks = [_torchrun_train(ctx)]
    out = ctx.workdir / "ddp.json"
    backend = "nccl" if ctx.cuda else "gloo"
    name = f"DDP one rank, {backend} process group"
    late = ctx.over_cap(name)
    # the launcher is tested by the train.py run above; here the rank variables are set directly (one
    # interpreter fewer than torchrun)
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port())}
    if late:
        return checks + [late]
    return checks + _run_child(ctx, name, [sys.executable, *_child_cmd(ctx, "ddp", out)], out, env)


def run_child(name: str, device: torch.device, quick: bool, backend: str, out: Path) -> None:
    """Entry point of ``gpu_check.py --_child NAME``: writes the checks as JSON to ``out`` (rank 0)."""
    from dataclasses import asdict

    if name == "compile":
        checks = _compile_child(device, quick, backend)
    elif name == "ddp":
        checks = _ddp_child(device)
    else:
        raise ValueError(f"unknown child {name!r}; expected 'compile' or 'ddp'")
    if int(os.environ.get("RANK", 0)) == 0:
        out.write_text(json.dumps([asdict(c) for c in checks], default=str))


