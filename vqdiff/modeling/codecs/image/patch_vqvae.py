"""The ITHQ codec (Improved VQ-Diffusion, arXiv 2205.16007): ``PatchVQGAN``, an f8 VQGAN with an EMA
codebook (4096 x 128), and ``PatchVQVAE``, the frozen codec wrapper ``configs/ithq.yaml`` names.

Official names: ``ema_vqvae.PatchVQVAE``, ``patch_vqgan.{PatchVQGAN, Encoder, Decoder}`` (aliased to
:class:`PatchVQVAE`, :class:`PatchVQGAN`, :class:`PatchEncoder`, :class:`PatchDecoder`). The checkpoint
``ithq_vqvae.pth`` is ``{'model': PatchVQGAN state dict}``; its quantizer holds the buffers
``embedding``, ``cluster_size``, ``embedding_avg``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from vqdiff.modeling.codecs.base_codec import BaseCodec
from vqdiff.utils.config import ConfigError, instantiate_from_config, load_yaml_config

from .checkpoint import TRAINING_ONLY_PREFIXES, load_codec_weights
from .quantizers import EMAVectorQuantizer, VectorQuantizer
from .taming_arch import Decoder, Encoder
from .taming_vqvae import TamingCodec, _none_like

__all__ = ["PatchEncoder", "PatchDecoder", "PatchVQGAN", "PatchVQVAE"]


class PatchEncoder(Encoder):
    """patch_vqgan's encoder: the taming encoder with ``(H, W)`` resolutions and ``scale_by_2``.
    ``double_z`` defaults to False and ``activate_output`` is accepted and ignored, as officially."""

    def __init__(self, *, double_z: bool = False, activate_output: bool = False, **kwargs: Any):
        super().__init__(double_z=double_z, **kwargs)


class PatchDecoder(Decoder):
    """patch_vqgan's decoder: the taming decoder with ``(H, W)`` resolutions and ``scale_by_2``."""


class PatchVQGAN(BaseCodec):
    """VQGAN with an EMA (or plain) vector quantizer; encodes ``[0, 255]`` images to ``{'token': (B, N)}``.

    Args:
        encoder_config / decoder_config: ``target``/``params`` nodes of the encoder and decoder.
        n_embed, embed_dim: codebook size and code dimension.
        quantizer_type: ``'EMAVQ'`` (official ITHQ) or ``'VQ'``.
        quantizer_dis_type: ``'euclidean'`` or ``'cosine'``.
        decay: EMA decay of the codebook.
        ckpt_path: optional weights (``{'model': …}``, ``{'state_dict': …}`` or plain), loaded strictly.
        lossconfig: training loss config (kept, not built here).
    """

    def __init__(
        self,
        *,
        encoder_config: Mapping[str, Any],
        decoder_config: Mapping[str, Any],
        n_embed: int,
        embed_dim: int,
        lossconfig: Mapping[str, Any] | None = None,
        ignore_keys: Sequence[str] = (),
        data_info: Mapping[str, Any] | None = None,
        quantizer_type: str = "VQ",
        quantizer_dis_type: str = "euclidean",
        decay: float = 0.99,
        trainable: bool = False,
        ckpt_path: str | None = None,
        token_shape: Sequence[int] | None = None,
        allow_unsafe_pickle: bool = False,
    ):
        super().__init__()
        self.encoder = instantiate_from_config(encoder_config)
        self.decoder = instantiate_from_config(decoder_config)
        if quantizer_type == "EMAVQ":
            self.quantize: nn.Module = EMAVectorQuantizer(n_embed, embed_dim, beta=0.25, decay=decay,
                                                          distance_type=quantizer_dis_type)
        elif quantizer_type == "VQ":
            self.quantize = VectorQuantizer(n_embed, embed_dim, beta=0.25)
        else:
            raise ConfigError(f"PatchVQGAN: quantizer_type must be 'EMAVQ' or 'VQ', got {quantizer_type!r}")
        self.quant_conv = nn.Conv2d(int(encoder_config["params"]["z_channels"]), embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, int(decoder_config["params"]["z_channels"]), 1)
        self.lossconfig = lossconfig
        self.data_info = dict(data_info or {"key": "image"})
        self.token_shape = tuple(token_shape) if token_shape is not None else None
        if ckpt_path is not None:
            load_codec_weights(self, ckpt_path, allow_unsafe_pickle,
                               drop_prefixes=TRAINING_ONLY_PREFIXES + tuple(ignore_keys))
        self.trainable = bool(trainable)
        if self.trainable:
            self.train()
        else:
            self.freeze()

    @property
    def device(self) -> torch.device:
        return self.quant_conv.weight.device

    def get_number_of_tokens(self) -> int:
        return int(self.quantize.n_e)

    def get_last_layer(self) -> torch.Tensor:
        return self.decoder.conv_out.weight

    def forward(self, x: torch.Tensor):
        """``x in [-1, 1] -> (reconstruction, quantizer loss)`` (training)."""
        quant, qloss, _ = self.quantize(self.quant_conv(self.encoder(x)))
        return self.decoder(self.post_quant_conv(quant)), qloss

    @torch.no_grad()
    def get_tokens(self, data: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``(B, 3, H, W) in [0, 255] -> {'token': (B, h*w)}``."""
        x = data.to(device=self.device, dtype=torch.float32) / 127.5 - 1.0
        idx = self.quantize.get_indices(self.quant_conv(self.encoder(x)))
        if self.token_shape is None:
            self.token_shape = tuple(idx.shape[1:3])
        return {"token": idx.reshape(idx.shape[0], -1)}

    @torch.no_grad()
    def decode(self, token: torch.Tensor) -> torch.Tensor:
        """``(B, N) -> (B, 3, H, W)`` in ``[0, 255]``."""
        if self.token_shape is None:
            raise ValueError("PatchVQGAN.decode needs token_shape (give it, or call get_tokens first)")
        b = token.shape[0]
        quant = self.quantize.get_codebook_entry(token.reshape(-1).to(self.device),
                                                 (b, self.token_shape[0], self.token_shape[1]))
        rec = self.decoder(self.post_quant_conv(quant))
        return torch.clamp((rec + 1.0) * 127.5, 0.0, 255.0)


class PatchVQVAE(TamingCodec):
    """The frozen ITHQ codec: a :class:`PatchVQGAN` read from ``config_path`` (its ``model`` node) with
    weights from ``ckpt_path``, exposed with the ``enc``/``dec`` module tree of the official wrapper.

    The official class hard-codes the two paths; here they are parameters with those defaults.
    ``num_tokens`` defaults to the model's codebook size (4096 for the release).
    """

    def __init__(
        self,
        trainable: bool = False,
        token_shape: Sequence[int] = (16, 16),
        config_path: str | None = "OUTPUT/pretrained_model/taming_dvae/config.yaml",
        ckpt_path: str | None = "OUTPUT/pretrained_model/taming_dvae/ithq_vqvae.pth",
        num_tokens: int | None = None,
        quantize_number: int = 0,
        mapping_path: str | None = None,
        allow_unsafe_pickle: bool = False,
    ):
        super().__init__(trainable, token_shape, config_path, ckpt_path, num_tokens, quantize_number,
                         mapping_path, allow_unsafe_pickle)

    @staticmethod
    def load_model(config_path: str | Path, ckpt_path: str | Path | None,
                   allow_unsafe_pickle: bool = False) -> nn.Module:
        config = load_yaml_config(config_path)
        if "model" not in config:
            raise ConfigError(f"{config_path}: needs a top-level 'model' node (a PatchVQGAN config)")
        node = dict(config["model"])
        params = dict(node.get("params") or {})
        params.pop("ckpt_path", None)  # weights come from this codec's ckpt_path
        params["trainable"] = False
        node["params"] = params
        model = instantiate_from_config(node, key_path=f"{config_path}:model")
        if _none_like(ckpt_path) is not None:
            load_codec_weights(model, ckpt_path, allow_unsafe_pickle)
        return model
