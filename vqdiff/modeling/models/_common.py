"""What DALLE, C_DALLE and UC_DALLE share: building parts, device moves, and turning the official
``sample_type`` strings into per-request sampler arguments (nothing is patched onto the model)."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Optional, Sequence

import torch
from torch import nn

from vqdiff.modeling.diffusion import samplers as S
from vqdiff.utils.config import instantiate_from_config

__all__ = ["build_part", "to_device", "sampling_arguments", "guidance_is_on", "TokenModelMixin"]


def build_part(config: Any) -> Optional[nn.Module]:
    """``instantiate_from_config`` that also accepts an already built module (tests, research forks)."""
    if config is None or isinstance(config, nn.Module):
        return config
    return instantiate_from_config(config)


def to_device(value: Any, device: torch.device) -> Any:
    return value.to(device) if torch.is_tensor(value) else value


def sampling_arguments(
    transformer,
    sample_type: Optional[str],
    *,
    guidance_scale: Any,
    prior_rule: Optional[int] = None,
    prior_weight: Optional[float] = None,
    choice_temperature: Optional[float] = None,
) -> dict:
    """Per-request keyword arguments of ``DiffusionTransformer.sample`` from a ``sample_type`` string.

    ``time{s}`` with s < 1 reveals ``int(N // T * s)`` tokens per call with the Improved rules (rule 0
    becomes 1), the official ``int(1024 // T * s)`` generalised to any sequence length N.
    """
    opts = S.parse_sample_type(sample_type)
    rule = transformer.prior_rule if prior_rule is None else int(prior_rule)
    kw = dict(
        truncation_rate=opts["truncation_rate"],
        top_k=opts["top_k"],
        skip_step=opts["skip_step"],
        rerun_prob=opts["rerun_prob"],
        guidance_scale=(S.guidance_number(guidance_scale) if S.guidance_number(guidance_scale) is not None
                        else guidance_scale),
        prior_rule=rule,
        prior_weight=transformer.prior_weight if prior_weight is None else float(prior_weight),
        prior_ps=transformer.prior_ps,
    )
    if opts["time_ratio"] is not None:
        N, T = transformer.content_seq_len, transformer.num_timesteps
        kw["prior_ps"] = max(1, int(N // T * opts["time_ratio"]))
        kw["prior_rule"] = rule if rule > 0 else 1
    if opts["maskgit_steps"] is not None:
        kw["maskgit_steps"] = opts["maskgit_steps"]
        kw["maskgit_schedule"] = opts["maskgit_schedule"]
        if choice_temperature is not None:
            kw["choice_temperature"] = float(choice_temperature)
    return kw


def guidance_is_on(transformer, guidance_scale: Any) -> bool:
    """Whether some step's guidance scale differs from 1 (a number or a schedule)."""
    return S.is_guided(guidance_scale, transformer.num_timesteps)


class TokenModelMixin:
    """Content-side helpers shared by the three models (``content_codec``, ``transformer``)."""

    content_info: Mapping
    content_codec: nn.Module
    transformer: nn.Module

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    def get_ema_model(self) -> nn.Module:
        """The module the EMA tracks: the ``DiffusionTransformer`` (official ``ckpt['ema']``)."""
        return self.transformer

    def parameters_to_optimize(self) -> list:
        """Every trainable parameter (frozen codecs and CLIP excluded; ``empty_text_embed`` included)."""
        return [p for p in self.parameters() if p.requires_grad]

    @torch.no_grad()
    def prepare_content(self, batch: Mapping, with_mask: bool = False) -> dict:
        """``{'content_token': (B, N)}`` from ``batch['content_token']`` (a token cache) or by encoding
        ``batch[content_info['key']]`` images (B, 3, H, W) in [0, 255] with the frozen codec.

        In training mode the codec is asked for its training encoding (``for_training=True``: the Gumbel
        codecs then sample codes as the official training did); in eval mode (validation, sampling,
        editing) it encodes with its default, deterministic mode."""
        if batch.get("content_token") is not None:
            return {"content_token": batch["content_token"].to(self.device).long()}
        key = self.content_info["key"]
        if batch.get(key) is None:
            raise KeyError(f"batch has neither 'content_token' nor '{key}' (images) to take the content from")
        with torch.autocast(self.device.type, enabled=False):
            extra = {"for_training": True} if self.training else {}
            cont = self.content_codec.get_tokens(to_device(batch[key], self.device), **extra)
        return {"content_" + k: to_device(v, self.device) for k, v in cont.items()}

    @torch.no_grad()
    def reconstruct(self, input: torch.Tensor) -> torch.Tensor:
        tokens = self.content_codec.get_tokens(to_device(input, self.device))["token"]
        return self.content_codec.decode(tokens)

    def _decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.content_codec.decode(tokens)

    def _start_tokens(self, batch: Optional[Mapping], filter_ratio: float, replicate: int) -> Optional[torch.Tensor]:
        """The tokens partial noising starts from (``filter_ratio > 0``), each row ``replicate`` times
        ``(B * replicate, N)``; None when sampling starts from all [MASK]."""
        if filter_ratio <= 0:
            return None
        return self.prepare_content(batch or {})["content_token"].repeat(replicate, 1)

    def _sample_and_decode(
        self,
        *,
        sample_type: Optional[str],
        guidance_scale: Any,
        prior_rule: Optional[int],
        prior_weight: Optional[float],
        choice_temperature: Optional[float],
        **sample_kwargs: Any,
    ) -> dict:
        """The half of ``generate_content`` every model shares: the request's sampler arguments, one
        ``DiffusionTransformer.sample`` call, pixels.

        ``sample_kwargs`` are the model-specific keywords of ``DiffusionTransformer.sample`` (condition
        tokens or embeddings, ``uncond_emb``, ``content_token``, ``filter_ratio``, ``generator``, ...).
        Returns ``{'content': (B, 3, H, W) in [0, 255], 'content_token': (B, N)}``.
        """
        kw = sampling_arguments(self.transformer, sample_type, guidance_scale=guidance_scale,
                                prior_rule=prior_rule, prior_weight=prior_weight,
                                choice_temperature=choice_temperature)
        if kw["skip_step"] > 0:
            kw["prior_rule"] = 0  # skip-step sampling is the v1 rule (the official sample_fast)
        tokens = self.transformer.sample(**sample_kwargs, **kw)["content_token"]
        return {"content": self._decode(tokens), "content_token": tokens}

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """Eval mode for the duration of a sampling call, then back to the caller's mode."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    def _train_time_samples(
        self,
        batch: Mapping,
        condition: Mapping,
        out: dict,
        *,
        return_rec: bool,
        filter_ratio: Sequence[float],
        content_ratio: Sequence[float],
        return_logits: bool,
        sample_type: str,
        generator: Optional[torch.Generator],
    ) -> dict:
        """The trainer's periodic samples, shared by the three models: the input image, its
        reconstruction and ``cond1_cont{cr}_fr{fr}_image`` for each filter ratio (``content_ratio`` only
        names the keys: the whole image's tokens are used, as in the official code with its default
        ``[1]``). ``condition`` holds the model's condition arguments of ``DiffusionTransformer.sample``."""
        content = self.prepare_content(batch)
        if batch.get(self.content_info["key"]) is not None:
            out["input_image"] = batch[self.content_info["key"]]
        if return_rec:
            out["reconstruction_image"] = self._decode(content["content_token"])
        kw = sampling_arguments(self.transformer, sample_type, guidance_scale=1.0)
        kw["skip_step"] = 0
        for fr in filter_ratio:
            for cr in content_ratio:
                trans_out = self.transformer.sample(
                    content_token=content["content_token"], filter_ratio=fr, return_logits=return_logits,
                    generator=generator, **condition, **kw,
                )
                out[f"cond1_cont{cr}_fr{fr}_image"] = self._decode(trans_out["content_token"])
                if return_logits:
                    out["logits"] = trans_out["logits"]
        return out
