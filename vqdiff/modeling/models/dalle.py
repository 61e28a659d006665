"""``DALLE``: text-to-image VQ-Diffusion = frozen image codec + text tokenizer + ``DiffusionTransformer``.

Official names and methods (``content_codec``, ``condition_codec``, ``transformer``; ``forward``,
``generate_content``, ``sample``, ``get_ema_model``) so released checkpoints and the trainer line up.
Unlike the official code, every ``generate_content`` call uses its own truncation, guidance scale,
batch size and generator: nothing is installed on the model.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from ._common import TokenModelMixin, build_part, guidance_is_on, to_device
from .consistency import check_model_consistency

__all__ = ["DALLE"]


class DALLE(TokenModelMixin, nn.Module):
    """Text-conditional model. ``batch = {'text': list[str], 'image': (B,3,H,W) in [0,255]}`` (or
    ``'content_token'`` (B, N) instead of images, and ``'condition_token'``/``'condition_mask'`` instead of
    texts)."""

    def __init__(
        self,
        *,
        content_info: Mapping = {"key": "image"},
        condition_info: Mapping = {"key": "text"},
        guidance_scale: float = 1.0,
        learnable_cf: bool = False,
        content_codec_config: Any,
        condition_codec_config: Any,
        diffusion_config: Any,
    ):
        super().__init__()
        self.content_info = dict(content_info)
        self.condition_info = dict(condition_info)
        self.guidance_scale = float(guidance_scale)
        self.learnable_cf = bool(learnable_cf)
        self.content_codec = build_part(content_codec_config)
        self.condition_codec = build_part(condition_codec_config)
        self.transformer = build_part(diffusion_config)
        check_model_consistency(self.content_codec, self.transformer, diffusion_config, text_condition=True)

    # ------------------------------------------------------------------------------ inputs
    @torch.no_grad()
    def prepare_condition(self, batch: Optional[Mapping], condition: Any = None) -> dict:
        """``{'condition_token': (B, 77), 'condition_mask': (B, 77)}`` from texts (or pre-tokenised)."""
        if condition is None and batch is not None and batch.get("condition_token") is not None:
            out = {"condition_token": batch["condition_token"]}
            if batch.get("condition_mask") is not None:
                out["condition_mask"] = batch["condition_mask"]
            return {k: to_device(v, self.device) for k, v in out.items()}
        key = self.condition_info["key"]
        cond = condition if condition is not None else (batch or {}).get(key)
        if cond is None:
            raise KeyError(f"batch has no '{key}' (captions) and no 'condition_token'")
        if isinstance(cond, str):
            cond = [cond]
        cond = self.condition_codec.get_tokens(to_device(cond, self.device))
        return {"condition_" + k: to_device(v, self.device) for k, v in cond.items()}

    def prepare_input(self, batch: Mapping) -> dict:
        inp = self.prepare_condition(batch)
        inp.update(self.prepare_content(batch))
        return inp

    def forward(self, batch: Mapping, return_loss: bool = True, step: int = 0, name: str = "none", **kwargs) -> dict:
        """Training step: ``{'loss': per-token loss, 'logits': ...}`` (the trainer's contract)."""
        return self.transformer(self.prepare_input(batch), return_loss=return_loss, **kwargs)

    # ------------------------------------------------------------------------------ sampling
    def _uncond_embedding(self, batch_size: int) -> torch.Tensor:
        if self.learnable_cf:
            return self.transformer.unconditional_embedding(batch_size)
        empty = self.prepare_condition(None, condition=[""] * batch_size)
        emb = self.transformer.condition_emb(empty["condition_token"])
        return emb.float()

    @torch.no_grad()
    def negative_embedding(self, negative_prompt: Any, batch_size: int) -> torch.Tensor:
        """The unconditional branch of classifier-free guidance with negative prompts (B, 77, D).

        ``negative_prompt``: one text or ``batch_size`` texts. Rows whose negative prompt is ``''`` get
        the ordinary null condition (the learned ``empty_text_embed`` with ``learnable_cf``, else the
        embedding of ``''``), so an empty negative prompt reproduces ordinary guidance exactly; the
        other rows get the embedding of their negative text (``l = l_neg + s (l_c - l_neg)``).
        """
        texts = [negative_prompt] * batch_size if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(texts) == 1 and batch_size != 1:
            texts = texts * batch_size
        if len(texts) != batch_size:
            raise ValueError(f"negative_prompt has {len(texts)} texts for a batch of {batch_size}")
        base = self._uncond_embedding(batch_size)
        empty = torch.tensor([t.strip() == "" for t in texts], device=base.device)
        if bool(empty.all()):
            return base
        tok = self.prepare_condition(None, condition=texts)
        neg = self.transformer.condition_emb(tok["condition_token"]).float()
        return torch.where(empty[:, None, None], base.to(neg.dtype), neg)

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
        sample_type: str = "top0.85r",
        guidance_scale: Any = None,
        generator: Optional[torch.Generator] = None,
        prior_rule: Optional[int] = None,
        prior_weight: Optional[float] = None,
        callback: Optional[Callable[[dict], None]] = None,
        fixed: Optional[tuple] = None,
        negative_prompt: Any = None,
        choice_temperature: Optional[float] = None,
    ) -> dict:
        """Generate images for ``batch['text']`` (each ``replicate`` times): ``{'content': (B,3,H,W)
        in [0,255], 'content_token': (B, N)}``.

        ``sample_type``: ``'top{r}r'`` truncation, ``',time{s}'`` fast (s >= 2) or high-quality (s < 1)
        inference, ``',fast{k}'`` skip k steps, ``'top{k}p'`` top-k, ``',q{p}'`` step re-runs.
        ``',maskgit{S}[:schedule]'`` the confidence-ordered sampler (S network calls, ``choice_temperature``).
        ``guidance_scale`` None takes ``self.guidance_scale``; a schedule such as ``'linear:1:5'`` varies it
        over the steps (``samplers.guidance_scales``). ``negative_prompt`` (text or one per row, after
        ``replicate``) replaces the unconditional branch; ``''`` is ordinary guidance.
        ``filter_ratio > 0`` starts from the tokens of ``batch['image']``/``batch['content_token']``
        noised to step ``int(T * filter_ratio)``. ``fixed = (mask, tokens)`` pins tokens (inpainting).
        """
        with self._eval_mode():
            cond = self.prepare_condition(batch, condition)
            if replicate != 1:
                cond = {k: torch.cat([v] * replicate, 0) if torch.is_tensor(v) else v for k, v in cond.items()}
            B = cond["condition_token"].shape[0]
            scale = self.guidance_scale if guidance_scale is None else guidance_scale
            uncond = None
            if guidance_is_on(self.transformer, scale):
                uncond = (self._uncond_embedding(B) if negative_prompt is None
                          else self.negative_embedding(negative_prompt, B))
            return self._sample_and_decode(
                sample_type=sample_type, guidance_scale=scale, prior_rule=prior_rule, prior_weight=prior_weight,
                choice_temperature=choice_temperature,
                condition_token=cond["condition_token"], condition_mask=cond.get("condition_mask"),
                condition_embed=cond.get("condition_embed_token"), uncond_emb=uncond,
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
        """The trainer's periodic sampler: input, reconstruction and ``cond1_cont{cr}_fr{fr}_image``
        samples for each filter ratio (see ``TokenModelMixin._train_time_samples``)."""
        with self._eval_mode():
            cond = self.prepare_condition(batch)
            return self._train_time_samples(
                batch, {"condition_token": cond["condition_token"], "condition_mask": cond.get("condition_mask"),
                        "condition_embed": None},
                {"condition": batch.get(self.condition_info["key"])}, return_rec=return_rec,
                filter_ratio=filter_ratio, content_ratio=content_ratio, return_logits=return_logits,
                sample_type=sample_type, generator=generator,
            )
