"""``C_DALLE``: class-conditional VQ-Diffusion (ImageNet). ``batch = {'label': list[int] | (B,), 'image'}``.

Classifier-free guidance uses the null label ``num_classes`` (1000 for ImageNet): a learned row when the
network was built with ``class_number = 1001`` (``imagenet_cf``), else the mean class embedding.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from ._common import TokenModelMixin, build_part, guidance_is_on
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

    def prepare_input(self, batch: Mapping) -> dict:
        inp = self.prepare_condition(batch)
        inp.update(self.prepare_content(batch))
        return inp

    def forward(self, batch: Mapping, return_loss: bool = True, step: int = 0, name: str = "none", **kwargs) -> dict:
        return self.transformer(self.prepare_input(batch), return_loss=return_loss, **kwargs)

    @torch.no_grad()
    def generate_content(
        self,
        *,
        batch: Mapping,
        condition: Any = None,
        filter_ratio: float = 0.5,
        temperature: float = 1.0,
        content_ratio: float = 0.0,
        replicate: int = 1,
        return_att_weight: bool = False,
        sample_type: str = "normal",
        guidance_scale: Any = None,
        generator: Optional[torch.Generator] = None,
        prior_rule: Optional[int] = None,
        prior_weight: Optional[float] = None,
        callback: Optional[Callable[[dict], None]] = None,
        fixed: Optional[tuple] = None,
        negative_prompt: Any = None,
        choice_temperature: Optional[float] = None,
    ) -> dict:
        """Generate images of ``batch['label']`` (each ``replicate`` times); see ``DALLE.generate_content``.

        ``negative_prompt``: a class label (or one per row) for the unconditional branch of guidance;
        None is the null label."""
        with self._eval_mode():
            labels = self.prepare_condition(batch, condition)["condition_token"].repeat(replicate)
            scale = self.guidance_scale if guidance_scale is None else guidance_scale
            uncond = None
            if guidance_is_on(self.transformer, scale):
                uncond = torch.full_like(labels, self.null_label)
                if negative_prompt is not None:
                    neg = torch.as_tensor(negative_prompt, device=labels.device).long().reshape(-1)
                    check_class_labels(neg, self.null_label, what="negative_prompt class label")
                    uncond = neg.expand_as(labels).clone() if neg.numel() == 1 else neg
            return self._sample_and_decode(
                sample_type=sample_type, guidance_scale=scale, prior_rule=prior_rule, prior_weight=prior_weight,
                choice_temperature=choice_temperature, condition_token=labels, uncond_emb=uncond,
                content_token=self._start_tokens(batch, filter_ratio, replicate), filter_ratio=filter_ratio,
                temperature=temperature, generator=generator, callback=callback, fixed=fixed,
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
            labels = self.prepare_condition(batch)["condition_token"]
            return self._train_time_samples(
                batch, {"condition_token": labels}, {"condition": batch.get(self.condition_info["key"])},
                return_rec=return_rec, filter_ratio=filter_ratio, content_ratio=content_ratio,
                return_logits=return_logits, sample_type=sample_type, generator=generator,
            )
