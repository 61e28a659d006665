"""Image codecs over taming first-stage models, with the official names and parameters:
``TamingVQVAE`` (ImageNet VQGAN f16), ``TamingGumbelVQVAE`` (OpenImages Gumbel f8) and ``TamingFFHQVQVAE``.

Module tree (as the official checkpoints store it under ``content_codec.``)::

    enc.{encoder, quant_conv, quantize}.*     dec.{decoder, post_quant_conv, quantize}.*

``quantize`` is one module shared by both stages, so its weights appear under both prefixes.

Images are float ``(B, 3, H, W)`` in ``[0, 255]``; tokens are LongTensor ``(B, N)``, ``N = h * w`` in
row-major order, in ``0 .. K-1`` with ``K = quantize_number`` (remapped) or ``num_tokens``.

Encoding modes (Gumbel codecs only; nearest-code quantizers are deterministic): ``'argmax'`` takes the
most likely code, ``'sample'`` draws it as the official encoder does (Gumbel noise even in eval mode).
``encode_mode`` (default ``'argmax'``) serves every ``get_tokens`` call (inference, editing, evaluation,
token caches for evaluation); ``train_encode_mode`` (default ``'sample'`` for ``TamingGumbelVQVAE``, as the
released models were trained) serves ``get_tokens(..., for_training=True)``, which the models ask for
when they encode images for a training step (``model.train()``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import nn

from vqdiff.modeling.codecs.base_codec import BaseCodec
from vqdiff.utils.config import ConfigError

from .checkpoint import load_codec_weights
from .quantizers import GumbelQuantize
from .token_mapping import invert_token_mapping, load_token_mapping
from .vqgan import Net2NetFirstStage, build_first_stage_from_yaml

__all__ = ["CodecEncoder", "CodecDecoder", "TamingCodec", "TamingVQVAE", "TamingGumbelVQVAE", "TamingFFHQVQVAE",
           "ENCODE_MODES"]

EncodeMode = Literal["argmax", "sample"]
ENCODE_MODES: tuple[str, ...] = ("argmax", "sample")

logger = logging.getLogger(__name__)


class CodecEncoder(nn.Module):
    """``images (B, 3, H, W) in [0, 1] -> codebook indices (B, h*w)``: ``2x-1 -> encoder -> quant_conv ->
    nearest code`` (argmax of the logits for Gumbel; ``sample=True`` adds Gumbel noise)."""

    def __init__(self, encoder: nn.Module, quant_conv: nn.Module, quantize: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.quant_conv = quant_conv
        self.quantize = quantize

    def forward(self, x: torch.Tensor, **quantize_kwargs: Any) -> torch.Tensor:
        x = 2 * x - 1
        h = self.quant_conv(self.encoder(x))
        indices = self.quantize.get_indices(h, **quantize_kwargs)  # (B, h, w)
        return indices.reshape(x.shape[0], -1)


class CodecDecoder(nn.Module):
    """``indices (B, h, w) -> images (B, 3, H, W) in [0, 1]``: code lookup -> post_quant_conv -> decoder ->
    clamp to [-1, 1] -> ``(x + 1) / 2``."""

    def __init__(self, decoder: nn.Module, post_quant_conv: nn.Module, quantize: nn.Module):
        super().__init__()
        self.decoder = decoder
        self.post_quant_conv = post_quant_conv
        self.quantize = quantize

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        b, h, w = indices.shape
        z = self.quantize.get_codebook_entry(indices.reshape(-1), (b, h, w, -1))
        x = self.decoder(self.post_quant_conv(z))
        x = torch.clamp(x, -1.0, 1.0)
        return (x + 1.0) / 2.0


def _none_like(value: Any) -> Any:
    """The official YAMLs write ``mapping_path: None``, which YAML reads as the string 'None'."""
    return None if isinstance(value, str) and value.strip() in ("None", "none", "null", "") else value


class TamingCodec(BaseCodec):
    """Shared machinery of the taming codec wrappers (see the module docstring).

    Args:
        trainable: False freezes the codec (eval mode, ``requires_grad=False``, skipped by optimizers).
        token_shape: ``(h, w)`` of the token grid.
        config_path: taming YAML describing the model (relative to the working directory).
        ckpt_path: its weights (Lightning ``.ckpt``, ``{'state_dict': …}`` or a plain state dict);
            ``None`` keeps random weights (tests, or weights loaded later from a DALLE checkpoint).
        num_tokens: codebook size of the model (None: read it from the model).
        quantize_number: size of the compact vocabulary, 0 for none.
        mapping_path: LongTensor file ``(num_tokens,)`` mapping codes to compact ids.
        allow_unsafe_pickle: allow reading a checkpoint that needs full unpickling (trusted files only).
        encode_mode: ``'argmax'`` or ``'sample'`` (Gumbel only): how ``get_tokens`` encodes by default.
        train_encode_mode: the same, for ``get_tokens(..., for_training=True)`` (training steps).
        sample_tokens: legacy switch: True sets both modes to ``'sample'`` (the official code everywhere),
            False both to ``'argmax'``; None (default) keeps the two modes.
    """

    def __init__(
        self,
        trainable: bool = False,
        token_shape: Sequence[int] = (16, 16),
        config_path: str | None = None,
        ckpt_path: str | None = None,
        num_tokens: int | None = None,
        quantize_number: int = 0,
        mapping_path: str | None = None,
        allow_unsafe_pickle: bool = False,
        sample_tokens: bool | None = None,
        encode_mode: EncodeMode = "argmax",
        train_encode_mode: EncodeMode = "argmax",
    ):
        super().__init__()
        if config_path is None:
            raise ConfigError(f"{type(self).__name__}: 'config_path' (the taming model YAML) is required")
        model = self.load_model(config_path, _none_like(ckpt_path), allow_unsafe_pickle)
        self._attach(model)
        if len(token_shape) != 2:
            raise ConfigError(f"{type(self).__name__}: token_shape must be (h, w), got {token_shape!r}")
        self.token_shape = (int(token_shape[0]), int(token_shape[1]))
        model_codes = int(self.enc.quantize.n_e)
        self.num_tokens = model_codes if num_tokens is None else int(num_tokens)
        if model_codes != self.num_tokens:
            raise ConfigError(f"{type(self).__name__}: num_tokens is {self.num_tokens} but the model in "
                              f"'{config_path}' has {model_codes} codes")
        self.quantize_number = int(quantize_number or 0)
        if sample_tokens is not None:
            encode_mode = train_encode_mode = "sample" if sample_tokens else "argmax"
        self.encode_mode = self._check_mode("encode_mode", encode_mode)
        self.train_encode_mode = self._check_mode("train_encode_mode", train_encode_mode)
        self.full_to_quantize: torch.Tensor | None = None
        self.quantize_to_full: torch.Tensor | None = None
        mapping_path = _none_like(mapping_path)
        if self.quantize_number != 0:
            if mapping_path is None:
                raise ConfigError(f"{type(self).__name__}: quantize_number is {self.quantize_number} but "
                                  f"mapping_path is not set")
            self.full_to_quantize = load_token_mapping(mapping_path, self.num_tokens, self.quantize_number)
            self.quantize_to_full = invert_token_mapping(self.full_to_quantize, self.quantize_number)
        self._maps_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.trainable = bool(trainable)
        if self.trainable:
            self.train()
        else:
            self.freeze()

    # ---- construction -------------------------------------------------------------------------------
    def _check_mode(self, name: str, mode: str) -> str:
        if mode not in ENCODE_MODES:
            raise ConfigError(f"{type(self).__name__}: {name} must be one of {ENCODE_MODES}, got {mode!r}")
        if mode == "sample" and not self.samples_codes:
            raise ConfigError(f"{type(self).__name__}: {name} 'sample' needs a Gumbel quantizer; this model's "
                              f"{type(self.enc.quantize).__name__} encodes deterministically")
        return mode

    @property
    def samples_codes(self) -> bool:
        """Whether the quantizer can draw codes (Gumbel), so that the encode modes matter."""
        return isinstance(self.enc.quantize, GumbelQuantize)

    @staticmethod
    def load_model(config_path: str | Path, ckpt_path: str | Path | None,
                   allow_unsafe_pickle: bool = False) -> nn.Module:
        """Build the YAML's model and load ``ckpt_path`` strictly (training-only keys dropped)."""
        model = build_first_stage_from_yaml(config_path)
        if ckpt_path is not None:
            load_codec_weights(model, ckpt_path, allow_unsafe_pickle)
        else:
            logger.info("%s: no ckpt_path given, the codec keeps random weights", config_path)
        if isinstance(model, Net2NetFirstStage):
            model = model.first_stage_model
        return model

    def _attach(self, model: nn.Module) -> None:
        for name in ("encoder", "decoder", "quantize", "quant_conv", "post_quant_conv"):
            if not hasattr(model, name):
                raise ConfigError(f"{type(self).__name__}: the model {type(model).__name__} has no '{name}'")
        self.enc = CodecEncoder(model.encoder, model.quant_conv, model.quantize)
        self.dec = CodecDecoder(model.decoder, model.post_quant_conv, model.quantize)

    # ---- interface ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.enc.quant_conv.weight.device

    def get_number_of_tokens(self) -> int:
        """K: ``quantize_number`` when remapping, else ``num_tokens``."""
        return self.quantize_number if self.quantize_number != 0 else self.num_tokens

    def _maps(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._maps_cache:
            assert self.full_to_quantize is not None and self.quantize_to_full is not None
            self._maps_cache[device] = (self.full_to_quantize.to(device), self.quantize_to_full.to(device))
        return self._maps_cache[device]

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``[0, 255] -> [0, 1]`` on the codec's device, float32."""
        return images.to(device=self.device, dtype=torch.float32).div(255)

    def postprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``[0, 1] -> [0, 255]``."""
        return images * 255

    @torch.no_grad()
    def get_tokens(self, images: torch.Tensor, sample: bool | None = None,
                   generator: torch.Generator | None = None, for_training: bool = False,
                   **kwargs: Any) -> dict[str, torch.Tensor]:
        """``images (B, 3, H, W) in [0, 255] -> {'token': LongTensor (B, h*w)}`` in ``0 .. K-1``.

        Gumbel codecs: ``sample`` forces a draw (True) or the argmax (False); when None the mode is
        ``train_encode_mode`` if ``for_training`` else ``encode_mode``. ``generator`` feeds the draw
        (see ``GumbelQuantize.get_indices`` for the one random call it makes).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        qkw: dict[str, Any] = {}
        if self.samples_codes:
            if sample is None:
                sample = (self.train_encode_mode if for_training else self.encode_mode) == "sample"
            qkw = {"sample": bool(sample), "generator": generator}
        code = self.enc(self.preprocess(images), **qkw)
        if self.quantize_number != 0:
            code = self._maps(code.device)[0][code]
        return {"token": code}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``get_tokens(images)['token']``."""
        return self.get_tokens(images)["token"]

    def tokenize(self, batch: Mapping[str, Any], key: str = "image", **kwargs: Any) -> dict[str, torch.Tensor]:
        """Tokens of ``batch[key]`` (a ``(B, 3, H, W)`` tensor or a list of ``(3, H, W)`` tensors)."""
        if key not in batch:
            raise KeyError(f"batch has no '{key}' entry; keys: {', '.join(map(str, batch))}")
        images = batch[key]
        if isinstance(images, (list, tuple)):
            images = torch.stack(list(images))
        return self.get_tokens(images, **kwargs)

    encode_batch = tokenize

    def _grid(self, n: int) -> tuple[int, int]:
        h, w = self.token_shape
        if h * w == n:
            return h, w
        side = math.isqrt(n)
        if side * side == n:
            return side, side
        raise ValueError(f"{n} tokens do not fit token_shape {self.token_shape} nor a square grid")

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens (B, N) in 0..K-1 -> images (B, 3, H, W)`` float in ``[0, 255]``."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (B, N), got shape {tuple(tokens.shape)}")
        tokens = tokens.to(self.device).long()
        k = self.get_number_of_tokens()
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= k):
            raise ValueError(f"token values must lie in 0..{k - 1}, got {int(tokens.min())}..{int(tokens.max())}")
        if self.quantize_number != 0:
            tokens = self._maps(tokens.device)[1][tokens]
        h, w = self._grid(tokens.shape[1])
        return self.postprocess(self.dec(tokens.view(tokens.shape[0], h, w)))


class TamingVQVAE(TamingCodec):
    """The ImageNet VQGAN f16 codec (16384 codes remapped to 974), official defaults."""

    def __init__(
        self,
        trainable: bool = False,
        token_shape: Sequence[int] = (16, 16),
        config_path: str | None = "OUTPUT/pretrained_model/taming_dvae/vqgan_imagenet_f16_16384.yaml",
        ckpt_path: str | None = "OUTPUT/pretrained_model/taming_dvae/vqgan_imagenet_f16_16384.pth",
        num_tokens: int = 16384,
        quantize_number: int = 974,
        mapping_path: str | None = "./help_folder/statistics/taming_vqvae_974.pt",
        allow_unsafe_pickle: bool = False,
    ):
        super().__init__(trainable, token_shape, config_path, ckpt_path, num_tokens, quantize_number,
                         mapping_path, allow_unsafe_pickle)


class TamingGumbelVQVAE(TamingCodec):
    """The OpenImages Gumbel f8 codec (8192 codes remapped to 2887), official defaults. Training steps
    (``for_training=True``) sample codes as the official encoder does (``train_encode_mode='sample'``);
    every other use encodes by the argmax of the quantizer logits (``encode_mode='argmax'``)."""

    def __init__(
        self,
        trainable: bool = False,
        token_shape: Sequence[int] = (32, 32),
        config_path: str | None = "OUTPUT/pretrained_model/taming_dvae/taming_f8_8192_openimages.yaml",
        ckpt_path: str | None = "OUTPUT/pretrained_model/taming_dvae/taming_f8_8192_openimages_last.pth",
        num_tokens: int = 8192,
        quantize_number: int = 2887,
        mapping_path: str | None = "./help_folder/statistics/taming_vqvae_2887.pt",
        allow_unsafe_pickle: bool = False,
        sample_tokens: bool | None = None,
        encode_mode: EncodeMode = "argmax",
        train_encode_mode: EncodeMode = "sample",
    ):
        super().__init__(trainable, token_shape, config_path, ckpt_path, num_tokens, quantize_number,
                         mapping_path, allow_unsafe_pickle, sample_tokens, encode_mode, train_encode_mode)


class TamingFFHQVQVAE(TamingCodec):
    """The FFHQ VQGAN f16 codec (1024 codes, no remapping); its YAML describes a whole
    ``Net2NetTransformer`` of which only the first stage is built."""

    def __init__(
        self,
        trainable: bool = False,
        token_shape: Sequence[int] = (16, 16),
        config_path: str | None = "OUTPUT/pretrained_model/taming_dvae/vqgan_ffhq_f16_1024.yaml",
        ckpt_path: str | None = "OUTPUT/pretrained_model/taming_dvae/vqgan_ffhq_f16_1024.pth",
        num_tokens: int = 1024,
        quantize_number: int = 0,
        mapping_path: str | None = None,
        allow_unsafe_pickle: bool = False,
    ):
        super().__init__(trainable, token_shape, config_path, ckpt_path, num_tokens, quantize_number,
                         mapping_path, allow_unsafe_pickle)
