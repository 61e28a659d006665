"""``C_DALLE``: class-conditional VQ-Diffusion (ImageNet). ``batch = {'label': list[int] | (B,), 'image'}``.

Classifier-free guidance uses the null label ``num_classes`` (1000 for ImageNet): a learned row when the
network was built with ``class_number = 1001`` (``imagenet_cf``), else the mean class embedding.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import nn

from vqdiff.modeling.diffusion.sampling_options import SamplingOptions

from ._common import TokenModelMixin, build_part
from .consistency import check_class_labels, check_model_consistency

__all__ = ["C_DALLE"]


class C_DALLE(TokenModelMixin, nn.Module):
    def __init__(
        self,
        *,
        content_info: Mapping = {"key": "image"},
        condition_info: Mapping = {"key": "label"},
        guidance_scale: float = 1.0,
        learnable_cf: bool = False,
        content_codec_config: Any,
        diffusion_config: Any,
    ):
        super().__init__()
        self.content_info = dict(content_info)
        self.condition_info = dict(condition_info)
        self.guidance_scale = float(guidance_scale)
        self.learnable_cf = bool(learnable_cf)
        self.content_codec = build_part(content_codec_config)
        self.transformer = build_part(diffusion_config)
        check_model_consistency(self.content_codec, self.transformer, diffusion_config)

    @property
    def null_label(self) -> int:
        """The "no class" label: the number of real classes (``ClassEmbedding.num_embed``, default 1000)."""
        return int(getattr(self.transformer.condition_emb, "num_embed", 1000) or 1000)

    @torch.no_grad()
    def prepare_condition(self, batch: Optional[Mapping], condition: Any = None) -> dict:
        if condition is None and batch is not None and batch.get("condition_token") is not None:
            labels = batch["condition_token"]
        else:
            key = self.condition_info["key"]
            labels = condition if condition is not None else (batch or {}).get(key)
            if labels is None:
                raise KeyError(f"batch has no '{key}' (class labels) and no 'condition_token'")
        labels = torch.as_tensor(labels).long().reshape(-1)
        check_class_labels(labels, self.null_label)
        return {"condition_token": labels.to(self.device)}

    # ------------------------------------------------------------------------------ sampling hooks
    part_condition_type = int  # composable guidance: each prompt part is a class index

    def _option_defaults(self) -> dict:
        return {"guidance_scale": self.guidance_scale}

    def _condition_arguments(self, batch: Optional[Mapping], condition: Any, replicate: int) -> dict:
        return {"condition_token": self.prepare_condition(batch, condition)["condition_token"].repeat(replicate)}

    def _null_condition(self, batch_size: int, options: SamplingOptions, negative_prompt: Any) -> torch.Tensor:
        """The null label for every row, or ``negative_prompt``: a class label (or one per row)."""
        if negative_prompt is None:
            return torch.full((batch_size,), self.null_label, dtype=torch.long, device=self.device)
        neg = torch.as_tensor(negative_prompt, device=self.device).long().reshape(-1)
        check_class_labels(neg, self.null_label, what="negative_prompt class label")
        return neg.expand(batch_size).clone() if neg.numel() == 1 else neg
