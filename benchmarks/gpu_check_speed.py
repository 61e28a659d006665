"""Section 5 of ``benchmarks/gpu_check.py``: images/s of T-step sampling and of training for the paper's
text networks (24-layer/512 and 19-layer/1024 at 32x32 tokens, 77x512 text features, random weights),
under fp16 and bf16 autocast, with the peak memory of each phase.

Sampling: ``DiffusionTransformer.sample`` from all-[MASK] (T = 100 network calls, truncation 0.86) under
``torch.autocast(dtype)``, after a 2-call warm-up. Training: forward + loss + backward + AdamW (fused on
CUDA; GradScaler for fp16), 2 warm-up steps then 5 timed. TF32 is on for this section (the speed setting).
A batch that runs out of memory is halved and retried (the batch used is reported). On CPU with
``--quick`` the same code runs a small stand-in (T = 10, batch 1, one training step) and reports the paper
sizes as skipped: one forward of the 19-layer/1024 network (389 M parameters, 1024 tokens) is ~0.8 TFLOP
per image.
"""

from __future__ import annotations

import time

import torch

if __package__:  # imported as benchmarks.gpu_check_speed (tests; python -m benchmarks.gpu_check)
    from benchmarks import perf
    from benchmarks.gpu_check_result import Check, Context
    from benchmarks.gpu_check_tiny import AMP_DTYPES, paper_network_size, quick_stand_in_size
else:  # run through python benchmarks/gpu_check.py: benchmarks/ is first on sys.path
    import perf
    from gpu_check_result import Check, Context
    from gpu_check_tiny import AMP_DTYPES, paper_network_size, quick_stand_in_size

BATCHES = {"24x512": {"sample": 32, "train": 16}, "19x1024": {"sample": 16, "train": 8}}


def _peak_mib(device: torch.device) -> float:
    return perf.peak_memory_mib(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _with_oom_retry(fn, batch: int, device: torch.device) -> tuple[dict, int]:
    """``fn(batch)``, halving ``batch`` on CUDA out-of-memory; returns ``(result, batch used)``."""
    while True:
        try:
            return fn(batch), batch
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch //= 2
            torch.cuda.empty_cache()


def _sampling(d, size: dict, dtype: torch.dtype, batch: int, device: torch.device) -> dict:
    cond = torch.randn(batch, size["cond_len"], size["cond_dim"], device=device)
    g = torch.Generator(device=device).manual_seed(0)
    kw = dict(condition_embed=cond, filter_ratio=0, truncation_rate=0.86, generator=g, print_log=False)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
        d.sample(skip_step=max(1, size["T"] // 2), **kw)  # warm-up: 2 calls (kernels, allocator)
        _reset_peak(device)
        start = time.perf_counter()
        out = d.sample(**kw)["content_token"]
        _sync(device)
        sec = time.perf_counter() - start
    K = d.num_classes - 1
    valid = bool(((out >= 0) & (out < K)).all())
    return {"sample_s": sec, "sample_images_per_s": batch / sec, "sample_peak_mib": _peak_mib(device),
            "tokens_valid": valid}


def _training(d, size: dict, dtype: torch.dtype, batch: int, device: torch.device, steps: int, warmup: int) -> dict:
    d.train()
    params = [p for p in d.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, **({"fused": True} if device.type == "cuda" else {}))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    x0 = torch.randint(0, d.num_classes - 1, (batch, d.content_seq_len), device=device)
    data = {"content_token": x0, "condition_embed_token": torch.randn(batch, size["cond_len"], size["cond_dim"],
                                                                      device=device)}
    losses = []

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype):
            loss = d(data, return_loss=True)["loss"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.detach())

    try:
        for _ in range(warmup):
            step()
        _reset_peak(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        sec = (time.perf_counter() - start) / steps
    finally:
        opt.zero_grad(set_to_none=True)
        del opt
        d.eval()
    finite = all(bool(torch.isfinite(v)) for v in losses)
    return {"train_step_s": sec, "train_images_per_s": batch / sec, "train_peak_mib": _peak_mib(device),
            "train_losses_finite": finite}


def _measure(name: str, size: dict, ctx: Context, batches: dict, steps: int, warmup: int) -> list[Check]:
    torch.manual_seed(0)
    # built on the CPU (the path every test takes; a few seconds for 0.3 B parameters), then moved
    d = perf.build_text2image_diffusion(size).to(ctx.device).eval()
    n_params = sum(p.numel() for p in d.transformer.parameters())
    checks = []
    try:
        for dname in ("bf16", "fp16"):
            label = f"{name} {dname}"
            late = ctx.over_cap(label)
            if late:
                checks.append(late)
                continue
            dtype = AMP_DTYPES[dname]
            s, bs = _with_oom_retry(lambda b: _sampling(d, size, dtype, b, ctx.device), batches["sample"], ctx.device)
            tr, bt = _with_oom_retry(lambda b: _training(d, size, dtype, b, ctx.device, steps, warmup),
                                     batches["train"], ctx.device)
            values = {**s, "sample_batch": bs, **tr, "train_batch": bt, "network_params_m": n_params / 1e6,
                      "steps": size["T"], "memory": "cuda max_memory_allocated" if ctx.cuda else "cpu peak rss"}
            ok = s["tokens_valid"] and tr["train_losses_finite"]
            checks.append(Check(label, "pass" if ok else "fail",
                                "" if ok else "sampled tokens out of range or a non-finite training loss", values))
    finally:
        del d
        if ctx.cuda:
            torch.cuda.empty_cache()
    return checks


def paper_speed(ctx: Context) -> list[Check]:
    """Sampling and training images/s, fp16 and bf16, for the paper networks (or the --quick stand-in)."""
    if ctx.quick and not ctx.cuda:
        checks = _measure("stand-in 2x64, 8x8 tokens, T=10", quick_stand_in_size(), ctx,
                          {"sample": 1, "train": 1}, steps=1, warmup=0)
        reason = ("needs CUDA: a 19-layer/1024 forward is ~0.8 TFLOP per image (2 x 389 M parameters x 1024 "
                  "tokens); --quick on CPU runs the stand-in above")
        return checks + [Check(f"paper network {n}", "skipped", reason) for n in BATCHES]
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    perf.set_fast_math(ctx.device, True)
    try:
        checks = []
        for name, batches in BATCHES.items():
            size = paper_network_size(name)
            if ctx.quick:
                size["T"] = 10
            checks += _measure(f"{name}, 32x32 tokens, T={size['T']}", size, ctx, batches, steps=5, warmup=2)
        return checks
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
