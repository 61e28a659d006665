"""What DALLE, C_DALLE and UC_DALLE share: building parts, device moves, the training input, and
``generate_content`` / the trainer's ``sample`` written once, with one hook per model kind for its condition
and its null condition. The official ``sample_type`` string is parsed into ``SamplingOptions`` here, at the
model's edge; nothing is patched onto the model."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import torch
from torch import nn

from vqdiff.modeling.diffusion.prompt_parts import PromptPart
from vqdiff.modeling.diffusion.sampling import sample_tokens
from vqdiff.modeling.diffusion.sampling_options import DEFAULT_TRUNCATION_RATE, SamplingOptions
from vqdiff.utils.config import instantiate_from_config

__all__ = ["build_part", "to_device", "TokenModelMixin"]

DEFAULT_SAMPLE_TYPE = f"top{DEFAULT_TRUNCATION_RATE}r"
"""``generate_content``'s default ``sample_type`` for all three kinds (the official DALLE/UC_DALLE default)."""


def build_part(config: Any) -> Optional[nn.Module]:
    """``instantiate_from_config`` that also accepts an already built module (tests, research forks)."""
    if config is None or isinstance(config, nn.Module):
        return config
    return instantiate_from_config(config)


def to_device(value: Any, device: torch.device) -> Any:
    return value.to(device) if torch.is_tensor(value) else value


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

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """Eval mode for the duration of a sampling call, then back to the caller's mode."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------------------ per-kind hooks
    has_condition = True

    def _option_defaults(self) -> dict:
        """The model config's defaults of ``SamplingOptions`` fields (e.g. its ``guidance_scale``)."""
        return {}

    def _condition_arguments(self, batch: Optional[Mapping], condition: Any, replicate: int) -> dict:
        """The condition keywords of ``sampling.sample_tokens`` (``condition_token`` / ``condition_embed``,
        or ``batch_size`` for unconditional models), each row ``replicate`` times."""
        raise NotImplementedError

    def _null_condition(self, batch_size: int, options: SamplingOptions, negative_prompt: Any) -> Any:
        """The unconditional branch of guidance (B rows): the null condition, or ``negative_prompt``'s."""
        raise NotImplementedError

    def _null_condition_mask(self, batch_size: int, options: SamplingOptions, negative_prompt: Any) -> Any:
        """The text padding mask (B, Lc) of the null condition's rows, or None (unmasked; all but DALLE)."""
        return None

    part_condition_type: Optional[type] = None
    """What a prompt part's condition is for this model (``str`` captions, ``int`` labels; None: no parts)."""

    def _parts_condition_arguments(self, parts: Sequence[PromptPart], replicate: int) -> dict:
        """The condition keywords of ``sample_tokens`` for composable guidance: P ``replicate`` rows, part by
        part (rows ``i * replicate ..`` are part i)."""
        kind = self.part_condition_type
        if kind is None:
            raise ValueError(f"prompt_parts needs a text or class condition; a {type(self).__name__} has none")
        for i, part in enumerate(parts, 1):
            if not isinstance(part.condition, kind):
                raise TypeError(f"prompt part {i} of a {type(self).__name__} must be a {kind.__name__}, "
                                f"got {part.condition!r}")
        cond = self._condition_arguments(None, [p.condition for p in parts], 1)
        return {k: v.repeat_interleave(replicate, 0) if torch.is_tensor(v) else v for k, v in cond.items()}

    # ------------------------------------------------------------------------------ training input
    def prepare_input(self, batch: Mapping) -> dict:
        """The ``DiffusionTransformer`` training input: the condition (when the model has one) and the content."""
        inp = self.prepare_condition(batch) if self.has_condition else {}
        inp.update(self.prepare_content(batch))
        return inp

    def forward(self, batch: Mapping, return_loss: bool = True, step: int = 0, name: str = "none", **kwargs) -> dict:
        """Training step: ``{'loss': per-token loss, 'logits': ...}`` (the trainer's contract)."""
        return self.transformer(self.prepare_input(batch), return_loss=return_loss, **kwargs)

    # ------------------------------------------------------------------------------ sampling
    def sampling_options(self, sample_type: Optional[str] = None, **fields: Any) -> SamplingOptions:
        """``SamplingOptions`` from the official ``sample_type`` string (None: ``'top0.85r'``) and fields;
        fields given as None take the model config's default (``_option_defaults``) or the dataclass's."""
        given = {k: v for k, v in fields.items() if v is not None}
        defaults = self._option_defaults()
        if given.get("prompt_parts") is not None:  # the parts carry the weights: no config guidance scale
            defaults.pop("guidance_scale", None)
        return SamplingOptions.from_sample_type(DEFAULT_SAMPLE_TYPE if sample_type is None else sample_type,
                                                **{**defaults, **given})

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
        sample_type: Optional[str] = None,
        options: Optional[SamplingOptions] = None,
        callback: Optional[Callable[[dict], None]] = None,
        fixed: Optional[tuple] = None,
        negative_prompt: Any = None,
        **option_fields: Any,
    ) -> dict:
        """Generate images: ``{'content': (B, 3, H, W) in [0, 255], 'content_token': (B, N), 'options': the
        request as a ``sample_type`` string with its precision, e.g. 'top0.85r,fp32'}`` for the batch's
        captions (``batch['text']``) or labels (``batch['label']``), each ``replicate`` times (unconditional:
        ``replicate`` images).

        The request is ``options`` (a ``SamplingOptions``) or, as in the official signature, ``sample_type``
        (``'top{r}r'`` truncation, ``',time{s}'`` fast (s >= 2) or high-quality (s < 1) inference,
        ``',fast{k}'``, ``'top{k}p'``, ``',q{p}'``, ``',maskgit{S}[:schedule]'``; None: ``'top0.85r'``, the
        official default, for all three kinds) plus ``SamplingOptions`` fields as keywords
        (``guidance_scale``, ``generator``, ``prior_rule``, ``prior_weight``, ``choice_temperature``,
        ``null_condition`` ...; None or absent: the model config's default, e.g. its ``guidance_scale``).
        ``negative_prompt`` (text, or class label(s), one per row after ``replicate``) replaces the
        unconditional branch; ``''`` is ordinary guidance. ``filter_ratio > 0`` starts from the tokens of
        ``batch['image']``/``batch['content_token']`` noised to step ``int(T * filter_ratio)``.
        ``fixed = (mask, tokens)`` pins tokens (inpainting); ``callback(info)`` runs after every step.
        ``options.prompt_parts`` (composable guidance) is the condition: ``replicate`` images of the composed
        prompt, with no ``condition`` (a ``batch`` then only gives the start tokens of ``filter_ratio > 0``).
        """
        if options is None:
            options = self.sampling_options(sample_type, temperature=temperature, **option_fields)
        elif sample_type is not None or option_fields:
            raise TypeError("give the request as options= or as sample_type= and option keywords, not both")
        parts = options.prompt_parts
        if parts is not None and condition is not None:
            raise TypeError("give the condition as condition= or as options.prompt_parts, not both")
        with self._eval_mode():
            if parts is None:
                cond = self._condition_arguments(batch, condition, replicate)
            else:  # composable guidance: P x replicate rows, part by part; batch only gives start tokens
                cond = self._parts_condition_arguments(parts, replicate)
            start = self._start_tokens(batch, filter_ratio, replicate)
            B = next((v.shape[0] for v in cond.values() if torch.is_tensor(v)), None) or cond.get("batch_size")
            B //= options.num_parts
            uncond = uncond_mask = None
            if options.is_guided(self.transformer.num_timesteps):
                uncond = self._null_condition(B, options, negative_prompt)
                uncond_mask = self._null_condition_mask(B, options, negative_prompt)
            options = options.for_device(self.transformer.device)  # precision 'auto' resolved (and logged) once
            tokens = sample_tokens(self.transformer, options, uncond_emb=uncond, uncond_mask=uncond_mask,
                                   content_token=start, filter_ratio=filter_ratio, fixed=fixed, callback=callback,
                                   **cond)
            return {"content": self._decode(tokens), "content_token": tokens,
                    "options": options.to_sample_type(with_precision=True)}

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
        """The trainer's periodic samples: the input image, its reconstruction and
        ``cond1_cont{cr}_fr{fr}_image`` for each filter ratio (``content_ratio`` only names the keys: the
        whole image's tokens are used, as in the official code with its default ``[1]``); no guidance, no
        step skipping."""
        options = SamplingOptions.from_sample_type(sample_type, generator=generator).replace(skip_step=0)
        with self._eval_mode():
            cond = self._condition_arguments(batch, None, 1) if self.has_condition else {}
            content = self.prepare_content(batch)
            out = {"condition": batch.get(self.condition_info["key"])} if self.has_condition else {}
            if batch.get(self.content_info["key"]) is not None:
                out["input_image"] = batch[self.content_info["key"]]
            if return_rec:
                out["reconstruction_image"] = self._decode(content["content_token"])
            for fr in filter_ratio:
                for cr in content_ratio:
                    trans_out = self.transformer.sample(content_token=content["content_token"], filter_ratio=fr,
                                                        return_logits=return_logits, options=options, **cond)
                    out[f"cond1_cont{cr}_fr{fr}_image"] = self._decode(trans_out["content_token"])
                    if return_logits:
                        out["logits"] = trans_out["logits"]
            return out
