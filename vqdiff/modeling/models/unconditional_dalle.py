"""``UC_DALLE``: unconditional VQ-Diffusion (FFHQ). ``batch = {'image': (B,3,H,W) in [0,255]}``."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from torch import nn

from vqdiff.modeling.diffusion.sampling_options import SamplingOptions

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

    has_condition = False

    def _condition_arguments(self, batch: Optional[Mapping], condition: Any, replicate: int) -> dict:
        return {"batch_size": replicate}  # the batch's images decide it when filter_ratio > 0

    def _null_condition(self, batch_size: int, options: SamplingOptions, negative_prompt: Any) -> None:
        raise ValueError(f"an unconditional model has no guidance: got guidance_scale={options.guidance_scale!r}")
