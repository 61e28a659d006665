"""``UC_DALLE``: unconditional VQ-Diffusion (FFHQ). ``batch = {'image': (B,3,H,W) in [0,255]}``."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from ._common import TokenModelMixin, build_part
from .consistency import check_model_consistency

__all__ = ["UC_DALLE"]


class UC_DALLE(TokenModelMixin, nn.Module):
    def __init__(
        self,
        *,
        content_info: Mapping = {"key": "image"},
        content_codec_config: Any,
        diffusion_config: Any,
    ):
        super().__init__()
        self.content_info = dict(content_info)
        self.content_codec = build_part(content_codec_config)
        self.transformer = build_part(diffusion_config)
        check_model_consistency(self.content_codec, self.transformer, diffusion_config)

    def prepare_input(self, batch: Mapping) -> dict:
        return self.prepare_content(batch)

    def forward(self, batch: Mapping, return_loss: bool = True, step: int = 0, name: str = "none", **kwargs) -> dict:
        return self.transformer(self.prepare_input(batch), return_loss=return_loss, **kwargs)

    @torch.no_grad()
    def generate_content(
        self,
        *,
        batch: Optional[Mapping] = None,
        condition: Any = None,
        filter_ratio: float = 0.5,
        temperature: float = 1.0,
        content_ratio: float = 0.0,
        replicate: int = 1,
        return_att_weight: bool = False,
        sample_type: str = "top0.85r",
        generator: Optional[torch.Generator] = None,
        prior_rule: Optional[int] = None,
        prior_weight: Optional[float] = None,
        callback: Optional[Callable[[dict], None]] = None,
        fixed: Optional[tuple] = None,
        **kwargs,
    ) -> dict:
        """Generate ``replicate`` images (times the batch's images when ``filter_ratio > 0``)."""
        with self._eval_mode():
            return self._sample_and_decode(
                sample_type=sample_type, guidance_scale=1.0, prior_rule=prior_rule, prior_weight=prior_weight,
                choice_temperature=kwargs.get("choice_temperature"), condition_token=None,
                content_token=self._start_tokens(batch, filter_ratio, replicate), filter_ratio=filter_ratio,
                batch_size=replicate, temperature=temperature, generator=generator, callback=callback, fixed=fixed,
            )

    @torch.no_grad()
    def sample(
        self,
        batch: Mapping,
        clip: Any = None,
        temperature: float = 1.0,
        return_rec: bool = True,
        filter_ratio: Sequence[float] = (0, 0.5, 1.0),
        content_ratio: Sequence[float] = (1,),
        return_att_weight: bool = False,
        return_logits: bool = False,
        sample_type: str = "normal",
        generator: Optional[torch.Generator] = None,
        **kwargs,
    ) -> dict:
        """The trainer's periodic sampler (see ``DALLE.sample``)."""
        with self._eval_mode():
            # the batch size comes from the content tokens
            return self._train_time_samples(
                batch, {}, {}, return_rec=return_rec, filter_ratio=filter_ratio,
                content_ratio=content_ratio, return_logits=return_logits, sample_type=sample_type,
                generator=generator,
            )
