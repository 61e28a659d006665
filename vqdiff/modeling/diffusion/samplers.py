"""The denoiser (guidance and truncation) and the samplers of the discrete (mask-and-replace) diffusion.

Every sampler has ONE signature and is found by name in ``SAMPLERS`` (keys of
``SamplingOptions.sampler_kind``)::

    sampler(denoise, x, steps, options, callback=None) -> x

* ``denoise`` — a :class:`Denoiser`: ``denoise(x_t (B, N) long, t (B,) long) -> log p(x_0 | x_t)`` of shape
  (B, K+1, N), the [MASK] row at -70, with guidance and truncation inside; it also carries the model's
  posterior (``denoise.posterior``), ``num_classes`` (K + 1, [MASK] = K), ``num_timesteps`` and the pinned
  tokens ``denoise.fixed`` (``(mask (B, N) bool, tokens (B, N) long)``: positions kept at the given tokens
  throughout, for inpainting; None for none). Built per request: nothing is patched onto a model;
* ``x`` — the starting tokens (B, N) (all [MASK] = K for generation from t = T);
* ``steps`` — the timesteps visited, descending (see :func:`timesteps`); every visited step is one
  network call except where a sampler says otherwise;
* ``options`` — the request's :class:`~vqdiff.modeling.diffusion.sampling_options.SamplingOptions`
  (``generator``, ``rerun_prob``, prior rule, MaskGIT settings);
* ``callback(info: dict)`` — called after every step with ``step``, ``t``, ``x`` and ``log_x0``.

The MaskGIT-style confidence sampler (``maskgit.sample_maskgit``) is ``SAMPLERS['maskgit']``; the ancestral
sampler of ``objective: masked_elbo`` models (``masked_sampler.sample_masked``) is ``SAMPLERS['masked']``.
No step loop calls ``.item()`` or otherwise synchronises with the host: loop counts are known in advance.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

from vqdiff.utils.precision import resolve_precision

from .composable_guidance import compose_log_probs, split_branches, stack_branches
from .condition_input import stack_masks
from .guidance import guidance_number
from .log_ops import CLAMP_MIN, sample_categorical_index
from .masked_sampler import sample_masked
from .maskgit import sample_maskgit
from .network_runner import NetworkRunner
from .sampling_options import SamplingOptions

__all__ = [
    "Denoiser",
    "timesteps",
    "n_sample_table",
    "calls_for_budget",
    "truncate_log_probs",
    "top_k_log_probs",
    "sample_ancestral",
    "sample_improved",
    "SAMPLERS",
]

Callback = Optional[Callable[[dict], None]]


# --------------------------------------------------------------------------------------------------
# Step lists and token budgets
# --------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------
# Truncation (the official sample_type 'top{r}r' and 'top{k}p')
# --------------------------------------------------------------------------------------------------
def truncate_log_probs(log_p: torch.Tensor, truncation_rate: float) -> torch.Tensor:
    """Keep, per position, the most probable classes up to cumulative probability ``truncation_rate``.

    log_p: (B, C, N). The kept set is the smallest top set whose mass reaches the rate (the top class is
    always kept); the rest are set to -70. Not renormalised: Gumbel-max sampling does not need it
    (the official ``top{r}r`` behaviour). The rate is range-checked by ``SamplingOptions``.
    """
    sorted_lp, order = torch.sort(log_p, dim=1, descending=True)
    cum = sorted_lp.exp().cumsum(dim=1)  # (B, C, N)
    keep_sorted = torch.ones_like(cum, dtype=torch.bool)
    keep_sorted[:, 1:] = cum[:, :-1] < truncation_rate  # class j kept iff mass before it < rate
    keep = torch.empty_like(keep_sorted).scatter_(1, order, keep_sorted)
    return torch.where(keep, log_p, torch.full_like(log_p, CLAMP_MIN))


def top_k_log_probs(log_p: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` most probable classes per position (dim 1), the rest at -70 (official 'top{k}p');
    ``k >= 1`` is checked by ``SamplingOptions``."""
    k = min(int(k), log_p.shape[1])
    val, ind = log_p.topk(k, dim=1)
    return torch.full_like(log_p, CLAMP_MIN).scatter_(1, ind, val)


# --------------------------------------------------------------------------------------------------
# The denoiser: one request's p(x_0 | x_t) with guidance and truncation
# --------------------------------------------------------------------------------------------------
class Denoiser:
    """``denoise(x_t, t) -> log p(x_0 | x_t)`` (B, K+1, N) for one request, with guidance and truncation.

    Classifier-free guidance (Improved, Eq. 9-10): ``l = l_u + s (l_c - l_u)`` in log space, then
    renormalised and clamped, from ONE batched network call on ``cat([cond, uncond])``; unguided
    options (``options.is_guided``) make a single conditional call. With ``options.prompt_parts`` (P parts)
    ``cond_emb`` holds P B rows, part by part, and the one call runs on (P + 1) B rows: composable guidance
    ``l = l_u + sum_i w_i (l_i - l_u)`` (``composable_guidance``; ordinary guidance is its P = 1 case).
    The condition cache (cross-attention keys/values) is computed here once. ``uncond_emb`` may be any
    embedding of the condition's shape: the null text, or a negative prompt; the guidance scale is a number
    or a schedule (then ``s = s(t)`` per row). Truncation (``options.truncation_rate``, then
    ``options.top_k``) follows. The network (and its condition
    cache) runs in ``options.precision`` (``auto`` resolved for the model's device), compiled with
    ``options.compile`` (``network_runner.NetworkRunner``); its log-softmax and all the above are fp32.

    Args:
        diffusion: the ``DiffusionTransformer`` (``_net_log_probs``, ``precompute_condition``,
            ``_append_mask_row``, ``q_posterior[_index]``).
        cond_emb: the network's condition (the embedding, or class labels); None for unconditional models.
        uncond_emb: the unconditional branch; needed when guidance is on.
        options: the request's ``SamplingOptions``.
        fixed: ``(mask, tokens)`` pinned tokens for the samplers, or None.
        cond_mask, uncond_mask: the text padding masks (rows, Lc) bool of ``cond_emb`` and ``uncond_emb``
            (``condition_padding_mask``); None is all valid. Stacked as the condition is (parts, then null).
    """

    def __init__(self, diffusion: Any, cond_emb: Any, uncond_emb: Any, options: SamplingOptions,
                 fixed: Optional[tuple] = None, *, cond_mask: Optional[torch.Tensor] = None,
                 uncond_mask: Optional[torch.Tensor] = None):
        self.diffusion = diffusion
        self.num_classes = diffusion.num_classes
        self.num_timesteps = diffusion.num_timesteps
        self.options = options
        self.fixed = fixed
        self.guided = options.is_guided(self.num_timesteps)
        self.num_parts = options.num_parts
        if self.guided:
            if uncond_emb is None:
                raise ValueError(
                    "guidance_scale != 1 needs an unconditional embedding (uncond_emb): the learnable "
                    "empty_text_embed (learnable_cf: True), the embedding of '' or the null class label"
                )
            self.net_cond = stack_branches(cond_emb, uncond_emb, self.num_parts)  # ((P + 1) B, ...)
            self.net_mask = None if cond_mask is None and uncond_mask is None else stack_masks(
                cond_mask, uncond_mask, cond_emb.shape[0], cond_emb.shape[0] // self.num_parts,
                self.net_cond.shape[1], self.net_cond.device)  # ((P + 1) B, Lc)
        else:
            self.net_cond = cond_emb
            self.net_mask = cond_mask
        self.precision = resolve_precision(options.precision, diffusion.device, "sampling option precision")
        self.network = NetworkRunner(diffusion, self.precision, options.compile, options.compile_backend)
        with self.network.autocast():
            self.cache = diffusion.precompute_condition(self.net_cond)
        number = guidance_number(options.guidance_scale)
        self.weights = options.part_weights
        self.scale = number
        self.table = None if number is not None else torch.tensor(
            options.guidance_table(self.num_timesteps), dtype=torch.float32, device=diffusion.device)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        d = self.diffusion
        if self.guided:
            branches = self.num_parts + 1  # one network call on ((P + 1) B) rows: the parts, then the null
            out = d._net_log_probs(torch.cat([x_t] * branches), self.net_cond, torch.cat([t] * branches),
                                   self.cache, self.network, cond_mask=self.net_mask)
            log_cs, log_u = split_branches(out, self.num_parts)
            if self.weights is None:  # ordinary guidance = one part with weight s(t)
                weights = [self.scale if self.table is None else self.table.to(t.device)[t].view(-1, 1, 1)]
            else:
                weights = self.weights
            log_p = compose_log_probs(log_cs, log_u, weights)
        else:
            log_p = d._net_log_probs(x_t, self.net_cond, t, self.cache, self.network, cond_mask=self.net_mask)
        log_p = d._append_mask_row(log_p)
        if self.options.truncation_rate is not None:
            log_p = truncate_log_probs(log_p, self.options.truncation_rate)
        if self.options.top_k is not None:
            log_p = top_k_log_probs(log_p, self.options.top_k)
        return log_p

    def posterior(self, log_x0: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``log sum_k q(x_{t-1} | x_t = x, x_0 = k) p(x_0 = k)`` (Eq. 11) from the tokens ``x`` (B, N):
        the model's ``q_posterior_index``."""
        return self.diffusion.q_posterior_index(log_x0, x, t)

    def pin(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the pinned tokens (``fixed``) put back."""
        if self.fixed is None:
            return x
        mask, tokens = self.fixed
        return torch.where(mask, tokens, x)


# --------------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------------
def _rerun_flags(n: int, rerun_prob: float, device: torch.device, generator) -> list[bool]:
    if rerun_prob <= 0:
        return [False] * n
    # drawn once before the loop: a single host read, none inside the step loop
    return (torch.rand(n, device=device, generator=generator) < rerun_prob).tolist()


@torch.no_grad()
def sample_ancestral(denoise: Denoiser, x: torch.Tensor, steps: Sequence[int], options: SamplingOptions,
                     callback: Callback = None) -> torch.Tensor:
    """Ancestral sampling ``x_{t-1} ~ p_theta(x_{t-1} | x_t)`` (arXiv 2111.14822, Eq. 11), also skip-step.

    At step ``t`` followed by ``t_next`` the network predicts ``p(x_0 | x_t)`` and the posterior
    ``q(x_{t_next} | x_t, x_0)`` is taken as one step from ``t_next + 1`` (for consecutive steps this is
    exactly the ancestral step; with skips it is the official ``sample_fast`` jump). One network call
    per visited step (two when a step is re-run, ``options.rerun_prob`` = the official ``q{p}``).
    """
    steps = list(steps)
    B = x.shape[0]
    generator = options.generator
    reruns = _rerun_flags(len(steps), options.rerun_prob, x.device, generator)
    x = denoise.pin(x)
    for i, t_int in enumerate(steps):
        t_post = steps[i + 1] + 1 if i + 1 < len(steps) else 0
        t = torch.full((B,), t_int, device=x.device, dtype=torch.long)
        t_p = torch.full((B,), t_post, device=x.device, dtype=torch.long)
        for _ in range(2 if reruns[i] else 1):
            log_x0 = denoise(x, t)
            log_post = denoise.posterior(log_x0, x, t_p)
            x = denoise.pin(sample_categorical_index(log_post, generator))
        if callback is not None:
            callback({"step": i, "t": t_int, "x": x, "log_x0": log_x0})
    return x


@torch.no_grad()
def sample_improved(denoise: Denoiser, x: torch.Tensor, steps: Sequence[int], options: SamplingOptions,
                    callback: Callback = None, *, n_sample: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Improved VQ-Diffusion inference (arXiv 2205.16007, Sec. 3.3 and Eq. 11).

    At ``t > 0`` only [MASK] positions change: ``n_sample[t]`` of them are revealed per step, at most
    ``prior_ps`` per network call, chosen at random with weights ``score`` — 1 (``prior_rule=1``,
    "high-quality inference") or the purity ``max_k p(x_0 = k | x_t)`` normalised by its per-image
    maximum (``prior_rule=2``); their tokens are drawn from ``p(x_0 | x_t)``, sharpened to
    ``softmax((1 + r * score) log p)`` when ``r = prior_weight > 0`` and rule 2. At ``t = 0`` every
    position is drawn from the posterior. Calls per step = ``len(calls_for_budget(n_sample[t], prior_ps))``.
    ``(prior_rule, prior_ps)`` come from ``options.improved_prior``; ``n_sample`` (the per-step budget,
    default :func:`n_sample_table`) may be given to replay one official step.
    """
    K = denoise.num_classes - 1
    B, N = x.shape
    prior_rule, prior_ps = options.improved_prior(N, denoise.num_timesteps)
    prior_weight, generator = options.prior_weight, options.generator
    if prior_rule not in (1, 2):
        raise ValueError(f"sample_improved needs prior_rule 1 or 2, got {prior_rule}")
    if n_sample is None:
        n_sample = n_sample_table(denoise.num_timesteps, N, prior_ps)
    steps = list(steps)
    reruns = _rerun_flags(len(steps), options.rerun_prob, x.device, generator)
    x = denoise.pin(x)
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
                log_post = denoise.posterior(log_x0, x, t)
                x = denoise.pin(sample_categorical_index(log_post, generator))
                continue
            masked = x == K
            if denoise.fixed is not None:
                masked = masked & ~denoise.fixed[0]
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


SAMPLERS = {"ancestral": sample_ancestral, "improved": sample_improved, "maskgit": sample_maskgit,
            "masked": sample_masked}
