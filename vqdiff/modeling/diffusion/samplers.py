"""Samplers for the discrete (mask-and-replace) diffusion, all with ONE signature (k-diffusion style).

Every sampler is::

    sampler(diffusion, denoise, x, steps, *, generator=None, callback=None, fixed=None, **options) -> x

* ``diffusion`` — an object with ``num_classes`` (K + 1, [MASK] = K) and ``q_posterior(log_x0, log_x_t, t)``
  (a :class:`~vqdiff.modeling.diffusion.diffusion_transformer.DiffusionTransformer`);
* ``denoise(x_t (B, N) long, t (B,) long) -> log p(x_0 | x_t)`` of shape (B, K+1, N), the [MASK] row at
  -70. Guidance and truncation live inside ``denoise`` (see :func:`make_denoiser`), built per request,
  so nothing is ever monkey-patched onto a model;
* ``x`` — the starting tokens (B, N) (all [MASK] = K for generation from t = T);
* ``steps`` — the timesteps visited, descending (see :func:`timesteps`); every visited step is one
  network call except where a sampler says otherwise;
* ``generator`` — a ``torch.Generator`` making the request reproducible;
* ``callback(info: dict)`` — called after every step with ``step``, ``t``, ``x`` and ``log_x0``;
* ``fixed`` — ``(mask (B, N) bool, tokens (B, N) long)``: positions kept at the given tokens throughout
  (inpainting); ``None`` for none.

The MaskGIT-style confidence sampler (``maskgit.sample_maskgit``) has the same signature and is
registered in ``SAMPLERS['maskgit']``. Guidance-scale schedules over the steps: :func:`guidance_scales`.

No step loop calls ``.item()`` or otherwise synchronises with the host: loop counts are known in advance.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import math
import numbers
from collections.abc import Mapping

import torch

from .log_ops import CLAMP_MIN, index_to_log_onehot, sample_categorical_index
from .maskgit import MASK_SCHEDULES, sample_maskgit

__all__ = [
    "Denoiser",
    "timesteps",
    "n_sample_table",
    "calls_for_budget",
    "truncate_log_probs",
    "top_k_log_probs",
    "parse_sample_type",
    "guidance_scales",
    "guidance_number",
    "is_guided",
    "sample_ancestral",
    "sample_improved",
    "SAMPLERS",
]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Fixed = Optional[tuple]


# --------------------------------------------------------------------------------------------------
# Step lists and token budgets
# --------------------------------------------------------------------------------------------------
def timesteps(num_timesteps: int, skip_step: int = 0, start: Optional[int] = None) -> list[int]:
    """Visited steps ``start-1, start-2-skip, ...`` and always 0 last (the official ``sample_fast`` list).

    ``skip_step = 0`` gives every step (``T-1 .. 0``: T network calls); ``skip_step = s`` gives
    ``len(range(T-1, -1, -(s+1)))`` steps plus a final 0 when the range misses it.
    """
    start = num_timesteps if start is None else int(start)
    if skip_step < 0:
        raise ValueError(f"skip_step must be >= 0, got {skip_step}")
    if not 1 <= start <= num_timesteps:
        raise ValueError(f"start step must be in 1..{num_timesteps}, got {start}")
    steps = list(range(start - 1, -1, -1 - int(skip_step)))
    if steps[-1] != 0:
        steps.append(0)
    return steps


_OFFICIAL_N_SAMPLE = {
    # (T, small_budget) -> table indexed by t, for N = 1024 (official update_n_sample)
    (100, True): [1, 6] + [11, 10, 10] * 32 + [11, 15],
    (100, False): [1, 10] + [11, 10, 10] * 32 + [11, 11],
    (50, None): [10] + [21, 20] * 24 + [30],
    (25, None): [21] + [41] * 23 + [60],
    (10, None): [69] + [102] * 8 + [139],
}


def n_sample_table(num_timesteps: int, seq_len: int, prior_ps: int) -> list[int]:
    """How many tokens to reveal at each step ``t`` (index t) in the Improved VQ-Diffusion sampler.

    For ``seq_len == 1024`` and T in {100, 50, 25, 10} this is the official table. Otherwise the
    ``seq_len`` tokens are spread evenly over ``t = T-1 .. 1`` (the schedule reveals ~N/T tokens per
    step since ``cbar`` is linear), the larger shares at the noisiest steps, and ``t = 0`` gets 1
    (the last step resamples every remaining position anyway).
    """
    T, N = int(num_timesteps), int(seq_len)
    if N == 1024:
        key = (T, prior_ps <= 10) if T == 100 else (T, None)
        if key in _OFFICIAL_N_SAMPLE:
            return list(_OFFICIAL_N_SAMPLE[key])
    table = [1] * T
    base, rem = divmod(N, T - 1)
    for t in range(1, T):
        table[t] = base + (1 if t > T - 1 - rem else 0)
    return table


def calls_for_budget(to_sample: int, prior_ps: int) -> list[int]:
    """Tokens revealed by each network call of one step (the official chunking rule).

    Reveal ``min(remaining, prior_ps)`` per call, but never leave exactly one token for a last call.
    """
    out, done = [], 0
    while done < to_sample:
        n = min(to_sample - done, prior_ps)
        if to_sample - done - n == 1:
            n = to_sample - done
        out.append(n)
        done += n
    return out


# --------------------------------------------------------------------------------------------------
# Truncation (the official sample_type 'top{r}r' and 'top{k}p')
# --------------------------------------------------------------------------------------------------
def truncate_log_probs(log_p: torch.Tensor, truncation_rate: float) -> torch.Tensor:
    """Keep, per position, the most probable classes up to cumulative probability ``truncation_rate``.

    log_p: (B, C, N). The kept set is the smallest top set whose mass reaches the rate (the top class is
    always kept); the rest are set to -70. Not renormalised: Gumbel-max sampling does not need it
    (the official ``top{r}r`` behaviour).
    """
    if not 0.0 < truncation_rate <= 1.0 + 1e-9:
        raise ValueError(f"truncation rate must be in (0, 1], got {truncation_rate}")
    sorted_lp, order = torch.sort(log_p, dim=1, descending=True)
    cum = sorted_lp.exp().cumsum(dim=1)  # (B, C, N)
    keep_sorted = torch.ones_like(cum, dtype=torch.bool)
    keep_sorted[:, 1:] = cum[:, :-1] < truncation_rate  # class j kept iff mass before it < rate
    keep = torch.empty_like(keep_sorted).scatter_(1, order, keep_sorted)
    return torch.where(keep, log_p, torch.full_like(log_p, CLAMP_MIN))


def top_k_log_probs(log_p: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` most probable classes per position (dim 1), the rest at -70 (official 'top{k}p')."""
    if k < 1:
        raise ValueError(f"top-k needs k >= 1, got {k}")
    k = min(int(k), log_p.shape[1])
    val, ind = log_p.topk(k, dim=1)
    return torch.full_like(log_p, CLAMP_MIN).scatter_(1, ind, val)


def parse_sample_type(sample_type: str) -> dict:
    """Parse the official ``sample_type`` strings.

    ``'top{r}r'`` truncation rate r; ``'top{k}p'`` top-k; ``'normal'``/``''`` nothing; then optional
    comma-separated parts: ``'time{s}'`` (s >= 2: skip-step sampling with ``skip_step = int(s) - 1``;
    s < 1: reveal ``s`` x the usual tokens per call with the Improved rules; 1 <= s < 2: plain),
    ``'fast{k}'`` (skip k steps), ``'q{p}'`` (re-run each step with probability p); vqdiff's own
    ``'maskgit{S}'`` or ``'maskgit{S}:{schedule}'`` (the confidence-ordered sampler, S network calls,
    mask schedule cosine/linear/square/cubic/sqrt; see ``maskgit.py``).

    Returns a dict with keys ``truncation_rate``, ``top_k``, ``skip_step``, ``time_ratio``, ``rerun_prob``,
    ``maskgit_steps`` (None unless maskgit) and ``maskgit_schedule``.
    """
    out = {"truncation_rate": None, "top_k": None, "skip_step": 0, "time_ratio": None, "rerun_prob": 0.0,
           "maskgit_steps": None, "maskgit_schedule": "cosine"}
    if sample_type is None:
        return out
    parts = [p.strip() for p in str(sample_type).split(",") if p.strip()]

    def num(text: str, part: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"sample_type {sample_type!r}: cannot read a number in part {part!r}") from None

    for i, part in enumerate(parts):
        if part.startswith("top") and part.endswith("r"):
            out["truncation_rate"] = num(part[3:-1], part)
        elif part.startswith("top") and part.endswith("p"):
            out["top_k"] = int(num(part[3:-1], part))
        elif part in ("normal", "debug") and i == 0:
            pass
        elif part.startswith("time"):
            s = num(part[4:], part)
            if s >= 2:
                out["skip_step"] = int(s) - 1
            elif s < 1:
                if s <= 0:
                    raise ValueError(f"sample_type {sample_type!r}: time{s} must be > 0")
                out["time_ratio"] = s
        elif part.startswith("maskgit"):
            body, _, sched = part[7:].partition(":")
            steps = num(body, part)
            if steps < 1 or steps != int(steps):
                raise ValueError(f"sample_type {sample_type!r}: {part!r} needs a whole number of steps >= 1")
            if sched and sched not in MASK_SCHEDULES:
                raise ValueError(f"sample_type {sample_type!r}: unknown mask schedule {sched!r} in {part!r} "
                                 f"(expected one of {sorted(MASK_SCHEDULES)})")
            out["maskgit_steps"] = int(steps)
            out["maskgit_schedule"] = sched or "cosine"
        elif part.startswith("fast"):
            out["skip_step"] = int(num(part[4:], part))
        elif part.startswith("q"):
            out["rerun_prob"] = num(part[1:], part)
        else:
            raise ValueError(
                f"sample_type {sample_type!r}: unknown part {part!r} (expected 'top{{r}}r', 'top{{k}}p', "
                "'time{s}', 'fast{k}', 'q{p}' or 'maskgit{S}[:schedule]')"
            )
    return out


# --------------------------------------------------------------------------------------------------
# Guidance-scale schedules (classifier-free guidance, arXiv 2205.16007 Eq. 9-10, with s = s(t))
# --------------------------------------------------------------------------------------------------
_GUIDANCE_KINDS = ("constant", "linear", "cosine")


def guidance_number(spec) -> Optional[float]:
    """``spec`` as a float when it is a plain number (int, float, numpy scalar, 0-d tensor), else None."""
    if isinstance(spec, bool):
        return None
    if isinstance(spec, numbers.Real):
        return float(spec)
    if torch.is_tensor(spec) and spec.dim() == 0:
        return float(spec)
    return None


def guidance_scales(spec, num_timesteps: int) -> list[float]:
    """The guidance scale at each diffusion step ``t = 0 .. T-1`` (list index t); every scale must be
    finite (a NaN or infinite scale would turn every sampled token into noise): ValueError otherwise.

    ``spec``: a number (constant); ``'constant:s'``; ``'linear:a:b'`` / ``'cosine:a:b'`` going from ``a``
    at the first, noisiest step ``t = T-1`` to ``b`` at the last step ``t = 0``, with progress
    ``p = (T-1-t)/(T-1)``: linear ``a + (b-a) p``, cosine ``a + (b-a) (1 - cos(pi p))/2``; a mapping
    ``{'kind', 'start', 'end'}`` (or ``'scale'`` for constant); a callable ``p -> scale``; or a sequence
    of T scales. Skip-step and MaskGIT samplers use the scale of the step ``t`` they feed the network.
    """
    scales = _guidance_scale_list(spec, num_timesteps)
    bad = [(t, s) for t, s in enumerate(scales) if not math.isfinite(s)]
    if bad:
        raise ValueError(f"guidance scale must be finite, got {bad[0][1]} (at step t={bad[0][0]}) from {spec!r}")
    return scales


def _guidance_scale_list(spec, num_timesteps: int) -> list[float]:
    T = int(num_timesteps)
    prog = [1.0 if T == 1 else (T - 1 - t) / (T - 1) for t in range(T)]
    if isinstance(spec, bool):
        raise ValueError(f"guidance scale must be a number or a schedule, got {spec!r}")
    if guidance_number(spec) is not None:
        return [guidance_number(spec)] * T
    if callable(spec):
        return [float(spec(p)) for p in prog]
    if isinstance(spec, str):
        parts = spec.split(":")
        kind = parts[0].strip().lower()
        try:
            vals = [float(v) for v in parts[1:]]
        except ValueError:
            raise ValueError(f"guidance schedule {spec!r}: cannot read the numbers") from None
        if kind == "constant" and len(vals) == 1:
            vals = vals * 2
        if kind not in _GUIDANCE_KINDS or len(vals) != 2:
            raise ValueError(f"guidance schedule {spec!r}: expected 'constant:s', 'linear:a:b' or 'cosine:a:b'")
        spec = {"kind": kind, "start": vals[0], "end": vals[1]}
    if isinstance(spec, Mapping):
        kind = str(spec.get("kind", "constant")).lower()
        if kind not in _GUIDANCE_KINDS:
            raise ValueError(f"guidance schedule kind {kind!r} unknown; expected one of {_GUIDANCE_KINDS}")
        a = float(spec.get("start", spec.get("scale", 1.0)))
        b = float(spec.get("end", a))
        if kind == "constant":
            return [a] * T
        if kind == "linear":
            return [a + (b - a) * p for p in prog]
        return [a + (b - a) * (1 - math.cos(math.pi * p)) / 2 for p in prog]
    if isinstance(spec, (list, tuple)) or torch.is_tensor(spec):
        vals = [float(v) for v in spec]
        if len(vals) != T:
            raise ValueError(f"a guidance scale list needs one value per step ({T}), got {len(vals)}")
        return vals
    raise ValueError(f"guidance scale must be a number or a schedule, got {type(spec).__name__} {spec!r}")


def is_guided(spec, num_timesteps: int) -> bool:
    """True when some step's guidance scale differs from 1 (so the unconditional branch is needed)."""
    return any(abs(s - 1.0) >= 1e-3 for s in guidance_scales(spec, num_timesteps))


# --------------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------------
def _posterior(diffusion, log_x0: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``q_posterior(log_x0, log one-hot x, t)``, from the tokens directly when the model offers
    ``q_posterior_index`` (same values, no (B, K+1, N) one-hot; see DiffusionTransformer)."""
    fast = getattr(diffusion, "q_posterior_index", None)
    if fast is not None:
        return fast(log_x0, x, t)
    return diffusion.q_posterior(log_x0, index_to_log_onehot(x, diffusion.num_classes), t)


def _apply_fixed(x: torch.Tensor, fixed: Fixed) -> torch.Tensor:
    if fixed is None:
        return x
    mask, tokens = fixed
    return torch.where(mask, tokens, x)


def _rerun_flags(n: int, rerun_prob: float, device: torch.device, generator) -> list[bool]:
    if rerun_prob <= 0:
        return [False] * n
    # drawn once before the loop: a single host read, none inside the step loop
    return (torch.rand(n, device=device, generator=generator) < rerun_prob).tolist()


@torch.no_grad()
def sample_ancestral(
    diffusion,
    denoise: Denoiser,
    x: torch.Tensor,
    steps: Sequence[int],
    *,
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callable[[dict], None]] = None,
    fixed: Fixed = None,
    rerun_prob: float = 0.0,
) -> torch.Tensor:
    """Ancestral sampling ``x_{t-1} ~ p_theta(x_{t-1} | x_t)`` (arXiv 2111.14822, Eq. 11), also skip-step.

    At step ``t`` followed by ``t_next`` the network predicts ``p(x_0 | x_t)`` and the posterior
    ``q(x_{t_next} | x_t, x_0)`` is taken as one step from ``t_next + 1`` (for consecutive steps this is
    exactly the ancestral step; with skips it is the official ``sample_fast`` jump). One network call
    per visited step (two when a step is re-run, ``rerun_prob`` = the official ``q{p}``).
    """
    steps = list(steps)
    B = x.shape[0]
    reruns = _rerun_flags(len(steps), rerun_prob, x.device, generator)
    x = _apply_fixed(x, fixed)
    for i, t_int in enumerate(steps):
        t_post = steps[i + 1] + 1 if i + 1 < len(steps) else 0
        t = torch.full((B,), t_int, device=x.device, dtype=torch.long)
        t_p = torch.full((B,), t_post, device=x.device, dtype=torch.long)
        for _ in range(2 if reruns[i] else 1):
            log_x0 = denoise(x, t)
            log_post = _posterior(diffusion, log_x0, x, t_p)
            x = _apply_fixed(sample_categorical_index(log_post, generator), fixed)
        if callback is not None:
            callback({"step": i, "t": t_int, "x": x, "log_x0": log_x0})
    return x


@torch.no_grad()
def sample_improved(
    diffusion,
    denoise: Denoiser,
    x: torch.Tensor,
    steps: Sequence[int],
    *,
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callable[[dict], None]] = None,
    fixed: Fixed = None,
    prior_rule: int = 1,
    prior_weight: float = 0.0,
    prior_ps: int = 1024,
    n_sample: Optional[Sequence[int]] = None,
    rerun_prob: float = 0.0,
) -> torch.Tensor:
    """Improved VQ-Diffusion inference (arXiv 2205.16007, Sec. 3.3 and Eq. 11).

    At ``t > 0`` only [MASK] positions change: ``n_sample[t]`` of them are revealed per step, at most
    ``prior_ps`` per network call, chosen at random with weights ``score`` — 1 (``prior_rule=1``,
    "high-quality inference") or the purity ``max_k p(x_0 = k | x_t)`` normalised by its per-image
    maximum (``prior_rule=2``); their tokens are drawn from ``p(x_0 | x_t)``, sharpened to
    ``softmax((1 + r * score) log p)`` when ``r = prior_weight > 0`` and rule 2. At ``t = 0`` every
    position is drawn from the posterior. Calls per step = ``len(calls_for_budget(n_sample[t], prior_ps))``.
    """
    if prior_rule not in (1, 2):
        raise ValueError(f"sample_improved needs prior_rule 1 or 2, got {prior_rule}")
    K = diffusion.num_classes - 1
    B, N = x.shape
    if n_sample is None:
        n_sample = n_sample_table(diffusion.num_timesteps, N, prior_ps)
    steps = list(steps)
    reruns = _rerun_flags(len(steps), rerun_prob, x.device, generator)
    x = _apply_fixed(x, fixed)
    log_x0 = None
    for i, t_int in enumerate(steps):
        t = torch.full((B,), t_int, device=x.device, dtype=torch.long)
        if t_int == 0:
            chunks = [N] * (2 if reruns[i] else 1)
        else:
            chunks = calls_for_budget(int(n_sample[t_int]), int(prior_ps))
        for n in chunks:
            log_x0 = denoise(x, t)  # (B, K+1, N)
            if t_int == 0:
                log_post = _posterior(diffusion, log_x0, x, t)
                x = _apply_fixed(sample_categorical_index(log_post, generator), fixed)
                continue
            masked = x == K
            if fixed is not None:
                masked = masked & ~fixed[0]
            if prior_rule == 1:
                score = torch.ones(B, N, device=x.device, dtype=log_x0.dtype)
            else:
                score = log_x0.exp().amax(dim=1).clamp(0, 1)  # purity, (B, N)
                score = score / (score.amax(dim=1, keepdim=True) + 1e-10)
            if prior_rule != 1 and prior_weight > 0:
                probs = ((1 + prior_weight * score).unsqueeze(1) * log_x0).log_softmax(dim=1).clamp(CLAMP_MIN, 0)
            else:
                probs = log_x0
            proposal = sample_categorical_index(probs, generator)  # (B, N)
            # masked positions weigh their score; the others 1e-30, so that multinomial without
            # replacement always has n candidates (fewer masked than n happens with `fixed`) and picks
            # a masked position first whenever one is left; unmasked picks are discarded below.
            weight = torch.where(masked, score.clamp_min(1e-6), torch.full_like(score, 1e-30))
            sel = torch.multinomial(weight, min(n, N), replacement=False, generator=generator)  # (B, n)
            chosen = torch.zeros_like(masked).scatter_(1, sel, True) & masked
            x = torch.where(chosen, proposal, x)
        if callback is not None:
            callback({"step": i, "t": t_int, "x": x, "log_x0": log_x0})
    return x


SAMPLERS = {"ancestral": sample_ancestral, "improved": sample_improved, "maskgit": sample_maskgit}
