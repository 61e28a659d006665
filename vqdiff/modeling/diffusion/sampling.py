"""The one sampling entry: :func:`sample_tokens` turns a request (condition, ``SamplingOptions``) into tokens.

Every path goes through it (``generate_content`` of the three models, editing/inpainting, the trainer's
sample grids, the official ``DiffusionTransformer.sample``/``sample_fast`` shims), so the CPU denormal
flushing (``vqdiff.utils.denormals``) wraps this one call. It embeds the condition, builds the request's
:class:`~vqdiff.modeling.diffusion.samplers.Denoiser`, looks up the sampler row (``samplers.SAMPLERS``) that
the options choose (``options.sampler_kind``) and the model's objective swaps in (``Objective.sampler_for``),
draws the start tokens (all [MASK], or ``Objective.noised_start``), and runs the row on its visited steps.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from vqdiff.utils.denormals import flushes_denormals_on_cpu

from .objectives import objective_of
from .samplers import Denoiser, sampler_entry
from .sampling_options import SamplingOptions

__all__ = ["condition_embedding", "learned_null_embedding", "sample_tokens"]


def condition_embedding(diffusion: Any, condition_token: Any = None, condition_embed: Any = None) -> Any:
    """The network's condition for sampling: ``condition_emb(condition_token)`` when the model embeds its
    condition (CLIP text, class labels), else ``condition_embed`` as given; floating values in fp32."""
    if diffusion.condition_emb is not None and condition_token is not None:
        with torch.no_grad():
            cond = diffusion.condition_emb(condition_token)
    else:
        cond = condition_embed
    return cond.float() if torch.is_tensor(cond) and cond.is_floating_point() else cond


def learned_null_embedding(diffusion: Any, batch_size: int) -> Optional[torch.Tensor]:
    """The learned null-text embedding repeated (B, 77, D), or None when ``learnable_cf`` is off."""
    if not diffusion.learnable_cf:
        return None
    if not hasattr(diffusion, "empty_text_embed"):
        raise ValueError(
            "learnable_cf is True but this model has no 'empty_text_embed': build it with "
            "'learnable_cf: True' in diffusion_config.params and load a learnable-cf checkpoint"
        )
    return diffusion.empty_text_embed.float().unsqueeze(0).expand(batch_size, -1, -1)


def _batch_size(*tensors: Any, batch_size: Optional[int]) -> int:
    for x in tensors:
        if torch.is_tensor(x):
            return x.shape[0]
    if batch_size is None:
        raise ValueError("unconditional sampling needs batch_size=")
    return int(batch_size)


@flushes_denormals_on_cpu  # all-[MASK] steps produce denormals: several times slower unless flushed
@torch.no_grad()
def sample_tokens(
    diffusion: Any,
    options: SamplingOptions,
    *,
    condition_token: Any = None,
    condition_embed: Any = None,
    uncond_emb: Any = None,
    uncond_mask: Optional[torch.Tensor] = None,
    content_token: Optional[torch.Tensor] = None,
    filter_ratio: float = 0.0,
    batch_size: Optional[int] = None,
    fixed: Optional[tuple] = None,
    callback: Optional[Callable[[dict], None]] = None,
) -> torch.Tensor:
    """Generate tokens (B, N) with ``diffusion`` (a ``DiffusionTransformer``) under ``options``.

    ``filter_ratio = 0``: from all-[MASK] at t = T-1 down to 0. ``filter_ratio > 0``: noise ``content_token``
    to step ``int(T * filter_ratio) - 1`` (Eq. 5) and denoise from there (partial sampling / editing; the
    ancestral sampler, or MaskGIT from the partly masked tokens). ``uncond_emb``: the unconditional branch of
    guidance (null text, null label or a negative prompt); None takes the learned null text when guidance
    is on. ``batch_size`` is needed only without condition and start tokens. ``fixed = (mask, tokens)`` pins
    tokens; ``callback(info)`` runs after every step. ``options.precision`` ``auto`` is resolved for the model's
    device here (and logged: :meth:`SamplingOptions.for_device`). With ``options.prompt_parts`` (P parts) the
    condition has P B rows, part by part (rows ``i B .. (i + 1) B - 1`` are part i), and B images come out.
    With ``condition_padding_mask`` the text padding of ``condition_token`` is masked (its mask follows from
    the ids: ``diffusion.condition_mask``); ``condition_embed`` and the learned null text are unmasked, and
    ``uncond_mask`` (B, Lc) bool is the mask of an ``uncond_emb`` embedded from tokens (None: all valid).
    """
    B = _batch_size(condition_token, condition_embed, content_token, batch_size=batch_size)
    if options.prompt_parts is not None and not (torch.is_tensor(condition_token) or torch.is_tensor(condition_embed)):
        raise ValueError("sampling option prompt_parts needs a condition (P x B rows); this request has none")
    if options.num_parts > 1:  # composable guidance: the condition holds P rows per image, part by part
        rows = B
        if rows % options.num_parts:
            raise ValueError(f"the condition has {rows} rows for {options.num_parts} prompt parts; give "
                             "P x B rows, part by part")
        B = rows // options.num_parts
    T, K, N = diffusion.num_timesteps, diffusion.num_classes - 1, diffusion.content_seq_len
    device = diffusion.device
    options = options.for_device(device)
    cond_emb = condition_embedding(diffusion, condition_token, condition_embed)
    if uncond_emb is None and options.is_guided(T):
        uncond_emb = learned_null_embedding(diffusion, B)
    masks = {"cond_mask": diffusion.condition_mask(condition_token) if condition_token is not None else None,
             "uncond_mask": uncond_mask}
    # given only when there is one: with condition_padding_mask off the denoiser is built as it always was
    masks = {k: v for k, v in masks.items() if v is not None}
    denoise = Denoiser(diffusion, cond_emb, uncond_emb, options, fixed, **masks)
    start_step = min(int(T * filter_ratio), T)
    objective = objective_of(diffusion)
    sampler = sampler_entry(objective.sampler_for(options.sampler_kind(N, T, from_noised_tokens=start_step > 0),
                                                  options))
    if sampler.objectives is not None and objective.name not in sampler.objectives:
        raise ValueError(f"sampler {sampler.name!r} samples models of objective {' or '.join(sampler.objectives)}; "
                         f"this model's objective is {objective.name!r}")
    if start_step == 0:
        x = torch.full((B, N), K, dtype=torch.long, device=device)
    else:
        if content_token is None:
            raise ValueError(f"filter_ratio={filter_ratio} > 0 needs content_token (the tokens to start from)")
        x = objective.noised_start(diffusion, content_token.to(device), start_step, options, sampler.official_noise)
    return sampler(denoise, x, sampler.plan_steps(T, start_step, options), options, callback)
