"""The official sampling methods of ``DiffusionTransformer`` (``sample``, ``sample_fast``): thin shims with the
official signatures over :func:`~vqdiff.modeling.diffusion.sampling.sample_tokens`, the one sampling entry."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from .log_ops import index_to_log_onehot
from .sampling import sample_tokens
from .sampling_options import SamplingOptions

__all__ = ["OfficialSamplingMethods"]


class OfficialSamplingMethods:
    """``sample`` / ``sample_fast`` for a ``DiffusionTransformer`` (``num_timesteps``, ``num_classes``)."""

    def sample(
        self,
        condition_token=None,
        condition_mask=None,
        condition_embed=None,
        content_token=None,
        filter_ratio: float = 0.5,
        temperature: float = 1.0,
        return_att_weight: bool = False,
        return_logits: bool = False,
        content_logits=None,
        print_log: bool = True,
        *,
        options: Optional[SamplingOptions] = None,
        batch_size: Optional[int] = None,
        uncond_emb: Any = None,
        fixed: Optional[tuple] = None,
        callback: Optional[Callable[[dict], None]] = None,
        flush_denormals: bool = True,
        **option_fields: Any,
    ) -> dict:
        """Generate tokens: ``{'content_token': (B, N)}`` (+ ``'logits'`` when ``return_logits``).

        The official method, over :func:`~vqdiff.modeling.diffusion.sampling.sample_tokens` (see it for
        ``filter_ratio``, ``uncond_emb``, ``fixed``, ``callback``). The request's options are ``options`` or,
        for notebooks, ``SamplingOptions`` fields as keywords (``truncation_rate=0.85``, ``guidance_scale=3``,
        ``prior_rule=1``, ``generator=g`` ...; unnamed fields keep the ``SamplingOptions`` defaults, except
        that no truncation is applied unless asked for, as in the official method).
        """
        if options is None:
            options = SamplingOptions(**{"truncation_rate": None, "temperature": temperature, **option_fields})
        elif option_fields:
            raise TypeError(f"give sampling options either as options= or as keywords, not both: {sorted(option_fields)}")
        tokens = sample_tokens(
            self, options, condition_token=condition_token, condition_embed=condition_embed, uncond_emb=uncond_emb,
            content_token=content_token, filter_ratio=filter_ratio, batch_size=batch_size, fixed=fixed,
            callback=callback, flush_denormals=flush_denormals,
        )
        out = {"content_token": tokens}
        if return_logits:
            out["logits"] = torch.exp(index_to_log_onehot(tokens, self.num_classes))
        return out

    def sample_fast(self, condition_token=None, condition_mask=None, condition_embed=None, content_token=None,
                    filter_ratio: float = 0.5, temperature: float = 1.0, return_att_weight: bool = False,
                    return_logits: bool = False, content_logits=None, print_log: bool = True, skip_step: int = 1,
                    **kwargs: Any) -> dict:
        """Skip-step sampling from all-[MASK]: steps ``T-1, T-2-s, ..., 0`` (one network call each)."""
        if int(self.num_timesteps * filter_ratio) != 0:
            raise ValueError(f"sample_fast starts from all-[MASK]: filter_ratio must be 0, got {filter_ratio}")
        kwargs.pop("prior_rule", None)
        return self.sample(condition_token, condition_mask, condition_embed, content_token, filter_ratio=0.0,
                           temperature=temperature, return_logits=return_logits, skip_step=skip_step, **kwargs)
