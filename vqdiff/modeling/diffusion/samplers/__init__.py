"""The samplers of the discrete diffusion, one file each, their table (``registry.py``) and what they share:
the request's :class:`Denoiser` (``p(x_0 | x_t)`` with guidance and truncation, here).

Every sampler has ONE signature and is found by name in ``SAMPLERS`` (``SamplingOptions.sampler``, or the
row its other fields choose: ``SamplingOptions.sampler_kind``)::

    sampler(denoise, x, steps, options, callback=None) -> x

* ``denoise`` — a :class:`Denoiser` (below): ``denoise(x_t (B, N) long, t (B,) long) ->
  log p(x_0 | x_t)`` of shape (B, K+1, N), the [MASK] row at -70, with guidance and truncation inside; it
  also carries the model's posterior (``denoise.posterior``), ``num_classes`` (K + 1, [MASK] = K),
  ``num_timesteps`` and the pinned tokens ``denoise.fixed`` (``(mask (B, N) bool, tokens (B, N) long)``:
  positions kept at the given tokens throughout, for inpainting; None for none). Built per request:
  nothing is patched onto a model;
* ``x`` — the starting tokens (B, N) (all [MASK] = K for generation from t = T);
* ``steps`` — the steps visited, descending (the row's ``plan_steps``; :func:`timesteps` for the diffusion
  samplers); every visited step is one network call except where a sampler says otherwise;
* ``options`` — the request's :class:`~vqdiff.modeling.diffusion.sampling_options.SamplingOptions`
  (``generator``, ``rerun_prob``, prior rule, MaskGIT settings);
* ``callback(info: dict)`` — called after every step with ``step``, ``t``, ``x`` and ``log_x0``.

The rows: ``'ancestral'`` (Eq. 11 of arXiv 2111.14822, also skip-step: ``ancestral.py``), ``'improved'``
(arXiv 2205.16007 Sec. 3.3, the purity prior: ``improved.py``), ``'maskgit'`` (arXiv 2202.04200:
``maskgit.py``), ``'masked'`` (the ancestral sampler of ``objective: masked_elbo`` models: ``masked.py``).
No step loop calls ``.item()`` or otherwise synchronises with the host: loop counts are known in advance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch

from vqdiff.utils.precision import resolve_precision

from ..composable_guidance import compose_log_probs, split_branches, stack_branches
from ..condition_input import stack_masks
from ..guidance import guidance_number
from ..log_ops import CLAMP_MIN
from ..network_runner import NetworkRunner
from .ancestral import sample_ancestral
from .improved import sample_improved
from .masked import sample_masked
from .maskgit import sample_maskgit
from .registry import SAMPLERS, SamplerEntry, register_sampler, sampler_entry
from .steps import calls_for_budget, n_sample_table, timesteps

if TYPE_CHECKING:  # the options module imports the sampler table: no import at run time
    from ..sampling_options import SamplingOptions

__all__ = [
    "Denoiser",
    "timesteps",
    "n_sample_table",
    "calls_for_budget",
    "truncate_log_probs",
    "top_k_log_probs",
    "sample_ancestral",
    "sample_improved",
    "sample_maskgit",
    "sample_masked",
    "SAMPLERS",
    "SamplerEntry",
    "register_sampler",
    "sampler_entry",
]


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

