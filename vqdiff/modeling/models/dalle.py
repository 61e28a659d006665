"""``DALLE``: text-to-image VQ-Diffusion = frozen image codec + text tokenizer + ``DiffusionTransformer``.

Official names and methods (``content_codec``, ``condition_codec``, ``transformer``; ``forward``,
``generate_content``, ``sample``, ``get_ema_model``) so released checkpoints and the trainer line up.
Unlike the official code, every ``generate_content`` call uses its own truncation, guidance scale,
batch size and generator: nothing is installed on the model. ``generate_content``, ``sample``, ``forward``
and ``prepare_input`` are the shared ones of ``TokenModelMixin``; this class gives the text hooks.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import nn

from vqdiff.modeling.diffusion.sampling import learned_null_embedding
from vqdiff.modeling.diffusion.sampling_options import SamplingOptions

from ._common import TokenModelMixin, build_part, to_device
from .consistency import check_model_consistency, check_text_condition

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
        check_text_condition(self.condition_codec, self.transformer)

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
        if any(isinstance(c, (list, tuple)) for c in cond):
            raise TypeError(f"'{key}' holds a list of captions for one image (e.g. ShapesDataset(captions="
                            "'partial')): train through a token cache (write_token_cache), which draws one per epoch")
        cond = self.condition_codec.get_tokens(to_device(cond, self.device))
        return {"condition_" + k: to_device(v, self.device) for k, v in cond.items()}

    # ------------------------------------------------------------------------------ sampling hooks
    part_condition_type = str  # composable guidance: each prompt part is a caption

    def _option_defaults(self) -> dict:
        return {"guidance_scale": self.guidance_scale, "null_condition": "learned" if self.learnable_cf else "empty"}

    def _condition_arguments(self, batch: Optional[Mapping], condition: Any, replicate: int) -> dict:
        cond = self.prepare_condition(batch, condition)
        if replicate != 1:
            cond = {k: torch.cat([v] * replicate, 0) if torch.is_tensor(v) else v for k, v in cond.items()}
        return {"condition_token": cond["condition_token"], "condition_embed": cond.get("condition_embed_token")}

    def _null_condition(self, batch_size: int, options: SamplingOptions, negative_prompt: Any) -> torch.Tensor:
        learned = options.null_condition == "learned"
        if negative_prompt is None:
            return self._uncond_embedding(batch_size, learned)
        return self.negative_embedding(negative_prompt, batch_size, learned)

    def _null_condition_mask(self, batch_size: int, options: SamplingOptions,
                             negative_prompt: Any) -> Optional[torch.Tensor]:
        """The text padding mask (B, Lc) of :meth:`_null_condition`'s rows when the network masks padding
        (``condition_padding_mask``), else None: the learned null text has none (all True); ``''`` and negative
        prompts, embedded from tokens, get their tokens' mask (as dropped captions had in training)."""
        if not getattr(self.transformer, "condition_padding_mask", False):
            return None
        texts = [""] * batch_size if negative_prompt is None else _negative_texts(negative_prompt, batch_size)
        empty = torch.tensor([t.strip() == "" for t in texts], device=self.device)
        tokens = self.prepare_condition(None, condition=["" if e else t for t, e in zip(texts, empty.tolist())])
        mask = self.transformer.condition_mask(tokens["condition_token"])
        if options.null_condition == "learned" and self.transformer.learnable_cf:
            mask = mask | empty[:, None]  # those rows are the learned null text
        return mask

    def _uncond_embedding(self, batch_size: int, learned: Optional[bool] = None) -> torch.Tensor:
        """The null text (B, 77, D): the learned ``empty_text_embed`` when ``learned`` (None: the model's
        ``learnable_cf``) and the network learned one, else the CLIP embedding of ''."""
        if (self.learnable_cf if learned is None else learned) and self.transformer.learnable_cf:
            return learned_null_embedding(self.transformer, batch_size)
        empty = self.prepare_condition(None, condition=[""] * batch_size)
        emb = self.transformer.condition_emb(empty["condition_token"])
        return emb.float()

    @torch.no_grad()
    def negative_embedding(self, negative_prompt: Any, batch_size: int, learned: Optional[bool] = None) -> torch.Tensor:
        """The unconditional branch of classifier-free guidance with negative prompts (B, 77, D).

        ``negative_prompt``: one text or ``batch_size`` texts. Rows whose negative prompt is ``''`` get
        the ordinary null condition (:meth:`_uncond_embedding`), so an empty negative prompt reproduces
        ordinary guidance exactly; the other rows get the embedding of their negative text
        (``l = l_neg + s (l_c - l_neg)``).
        """
        texts = _negative_texts(negative_prompt, batch_size)
        base = self._uncond_embedding(batch_size, learned)
        empty = torch.tensor([t.strip() == "" for t in texts], device=base.device)
        if bool(empty.all()):
            return base
        tok = self.prepare_condition(None, condition=texts)
        neg = self.transformer.condition_emb(tok["condition_token"]).float()
        return torch.where(empty[:, None, None], base.to(neg.dtype), neg)


def _negative_texts(negative_prompt: Any, batch_size: int) -> list:
    """One negative text per row: a text, one text for every row, or ``batch_size`` texts."""
    texts = [negative_prompt] * batch_size if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(texts) == 1 and batch_size != 1:
        texts = texts * batch_size
    if len(texts) != batch_size:
        raise ValueError(f"negative_prompt has {len(texts)} texts for a batch of {batch_size}")
    return texts
