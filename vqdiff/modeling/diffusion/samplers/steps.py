"""Step lists and token budgets shared by the samplers: which steps are visited, how many tokens the
Improved sampler reveals per step and per network call, and the re-run draws of the official ``q{p}``."""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["timesteps", "n_sample_table", "calls_for_budget", "rerun_flags"]


def timesteps(num_timesteps: int, skip_step: int = 0, start: Optional[int] = None) -> list[int]:
    """Visited steps ``start-1, start-2-skip, ...`` and always 0 last (the official ``sample_fast`` list).

    ``skip_step = 0`` gives every step (``T-1 .. 0``: T network calls); ``skip_step = s`` gives
    ``len(range(T-1, -1, -(s+1)))`` steps plus a final 0 when the range misses it.
    """
    start = num_timesteps if start is None else int(start)
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



def rerun_flags(n: int, rerun_prob: float, device: torch.device, generator) -> list[bool]:
    """Which of ``n`` steps run twice (official ``q{p}``): drawn once before the loop (a single host read,
    none inside the step loop); all False when ``rerun_prob`` is 0 (no draw)."""
    if rerun_prob <= 0:
        return [False] * n
    return (torch.rand(n, device=device, generator=generator) < rerun_prob).tolist()
