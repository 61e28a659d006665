"""taming-compatible first-stage models: ``VQModel`` (VQGAN), ``GumbelVQ``, ``FSQModel`` (the same
autoencoder with finite scalar quantization) and the FFHQ ``Net2NetTransformer`` reduced to its first stage.

They are built from a taming YAML's ``model.params`` (``ddconfig``, ``n_embed``, ``embed_dim``,
``kl_weight``, …) and hold exactly taming's inference parameters (``encoder``, ``decoder``, ``quantize``,
``quant_conv``, ``post_quant_conv``), so ``state_dict()`` keys equal a taming checkpoint's minus its
``loss.*`` entries. Training-time parts named by the YAML (``lossconfig``, ``temperature_scheduler_config``,
the FFHQ GPT) are kept as config only and never built here: the released ImageNet YAML's loss would need
VGG/LPIPS weights, and inference never uses them. :mod:`.losses` builds the loss for training.

Images at this level are ``(B, 3, H, W)`` in ``[-1, 1]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from vqdiff.utils.config import ConfigError, instantiate_from_config, load_yaml_config

from .checkpoint import load_codec_weights
from .quantizers import EMAVectorQuantizer, FSQuantizer, GumbelQuantize, VectorQuantizer
from .taming_arch import Decoder, Encoder

__all__ = ["VQModel", "GumbelVQ", "FSQModel", "Net2NetFirstStage", "build_first_stage_from_yaml"]


class VQModel(nn.Module):
    """VQGAN autoencoder (arXiv 2012.09841): ``x -> Encoder -> quant_conv -> VectorQuantizer ->
    post_quant_conv -> Decoder``.

    Args:
        ddconfig: encoder/decoder settings (``ch``, ``ch_mult``, ``num_res_blocks``, ``attn_resolutions``,
            ``resolution``, ``z_channels``, ``double_z``, ``in_channels``, ``out_ch``, ``dropout``).
        n_embed: codebook size K.
        embed_dim: code dimension.
        lossconfig: the training loss config (kept, not built).
        ckpt_path: optional checkpoint to load (strict after dropping ``loss.*``).
        beta: commitment weight of the quantizer.
        legacy_quantizer_loss: taming's form (the default, as every released taming model was trained):
            ``||z_e - sg[e]||^2 + beta ||sg[z_e] - e||^2``, which pulls encoder outputs onto their code four
            times harder (beta = 0.25) than the code follows them. ``False`` is the VQ-VAE paper's form
            (arXiv 1711.00937, Eq. 3; beta on the commitment term). Training only; inference is the same.
        codebook_update: ``'gradient'`` (taming: the codebook term of the loss moves the codes) or ``'ema'``
            (codes are exponential moving averages of their encoder outputs, arXiv 1711.00937 App. A.1:
            :class:`EMAVectorQuantizer`, decay ``ema_decay``; its state keys are ``quantize.embedding``,
            ``quantize.cluster_size``, ``quantize.embedding_avg`` instead of ``quantize.embedding.weight``).
    """

    def __init__(
        self,
        ddconfig: Mapping[str, Any],
        n_embed: int,
        embed_dim: int,
        lossconfig: Mapping[str, Any] | None = None,
        ckpt_path: str | None = None,
        ignore_keys: Sequence[str] = (),
        image_key: str = "image",
        colorize_nlabels: int | None = None,
        monitor: str | None = None,
        remap: str | None = None,
        sane_index_shape: bool = False,
        beta: float = 0.25,
        allow_unsafe_pickle: bool = False,
        legacy_quantizer_loss: bool = True,
        codebook_update: str = "gradient",
        ema_decay: float = 0.99,
        **ignore_kwargs: Any,
    ):
        super().__init__()
        self.legacy_quantizer_loss = bool(legacy_quantizer_loss)
        if codebook_update not in ("gradient", "ema"):
            raise ConfigError(f"VQModel: codebook_update must be 'gradient' or 'ema', got {codebook_update!r}")
        self.codebook_update = codebook_update
        self.ema_decay = float(ema_decay)
        if remap is not None:
            raise ConfigError("VQModel: taming's in-quantizer 'remap' is not supported; use the codec's "
                              "'mapping_path' / 'quantize_number' instead")
        self.ddconfig = dict(ddconfig)
        self.lossconfig = lossconfig
        self.image_key = image_key
        self.n_embed = int(n_embed)
        self.embed_dim = int(embed_dim)
        self.encoder = Encoder(**self.ddconfig)
        self.decoder = Decoder(**self.ddconfig)
        self.quantize: nn.Module = self._make_quantizer(beta=beta)
        z_channels = int(self.ddconfig["z_channels"])
        self.quant_conv = nn.Conv2d(z_channels, self.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(self.embed_dim, z_channels, 1)
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys, allow_unsafe_pickle=allow_unsafe_pickle)

    def _make_quantizer(self, beta: float) -> nn.Module:
        if self.codebook_update == "ema":
            return EMAVectorQuantizer(self.n_embed, self.embed_dim, beta=beta, decay=self.ema_decay)
        return VectorQuantizer(self.n_embed, self.embed_dim, beta=beta, legacy=self.legacy_quantizer_loss)

    def init_from_ckpt(self, path: str | Path, ignore_keys: Sequence[str] = (),
                       allow_unsafe_pickle: bool = False) -> list[str]:
        """Load weights strictly; ``ignore_keys`` prefixes are dropped in addition to the loss keys."""
        from .checkpoint import TRAINING_ONLY_PREFIXES

        return load_codec_weights(self, path, allow_unsafe_pickle,
                                  drop_prefixes=TRAINING_ONLY_PREFIXES + tuple(ignore_keys))

    # ---- the taming API -----------------------------------------------------------------------------
    def encode_to_prequant(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) in [-1, 1] -> (B, embed_dim, h, w)`` before quantization."""
        return self.quant_conv(self.encoder(x))

    def encode(self, x: torch.Tensor):
        """``-> (z_q (B, embed_dim, h, w), quantizer loss, (perplexity, None, indices (B, h, w)))``."""
        return self.quantize(self.encode_to_prequant(x))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))

    def forward(self, x: torch.Tensor):
        """``x -> (reconstruction, quantizer loss)``."""
        quant, qloss, _ = self.encode(x)
        return self.decode(quant), qloss

    def encode_to_indices(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """``(B, 3, H, W) in [-1, 1] -> indices (B, h, w)`` (deterministic)."""
        return self.quantize.get_indices(self.encode_to_prequant(x), **kwargs)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """``indices (B, h, w) -> (B, 3, H, W)`` (not clamped)."""
        b, h, w = indices.shape
        quant = self.quantize.get_codebook_entry(indices.reshape(-1), (b, h, w, -1))
        return self.decode(quant)

    def get_last_layer(self) -> torch.Tensor:
        """The weight the adaptive GAN weight differentiates against (decoder ``conv_out``)."""
        return self.decoder.conv_out.weight


class GumbelVQ(VQModel):
    """taming's ``GumbelVQ``: a VQGAN whose quantizer is :class:`GumbelQuantize` (``proj``, ``embed``).

    As in taming the quantizer's ``proj`` reads ``z_channels`` features from ``quant_conv``, which outputs
    ``embed_dim`` channels, so the two must be equal.
    """

    def __init__(
        self,
        ddconfig: Mapping[str, Any],
        n_embed: int,
        embed_dim: int,
        lossconfig: Mapping[str, Any] | None = None,
        temperature_scheduler_config: Mapping[str, Any] | None = None,
        kl_weight: float = 1e-8,
        ckpt_path: str | None = None,
        ignore_keys: Sequence[str] = (),
        image_key: str = "image",
        colorize_nlabels: int | None = None,
        monitor: str | None = None,
        remap: str | None = None,
        straight_through: bool = True,
        temp_init: float = 1.0,
        allow_unsafe_pickle: bool = False,
        **ignore_kwargs: Any,
    ):
        if int(ddconfig["z_channels"]) != int(embed_dim):
            raise ConfigError(
                f"GumbelVQ: ddconfig.z_channels ({ddconfig['z_channels']}) must equal embed_dim ({embed_dim}): "
                f"the quantizer's proj reads the quant_conv output"
            )
        self._kl_weight = float(kl_weight)
        self._straight_through = straight_through
        self._temp_init = float(temp_init)
        super().__init__(ddconfig, n_embed, embed_dim, lossconfig=lossconfig, ckpt_path=None,
                         image_key=image_key, monitor=monitor, remap=remap)
        self.temperature_scheduler_config = temperature_scheduler_config
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys, allow_unsafe_pickle=allow_unsafe_pickle)

    def _make_quantizer(self, beta: float) -> nn.Module:
        return GumbelQuantize(int(self.ddconfig["z_channels"]), self.embed_dim, n_embed=self.n_embed,
                              kl_weight=self._kl_weight, temp_init=self._temp_init,
                              straight_through=self._straight_through)


class FSQModel(VQModel):
    """The VQGAN autoencoder with :class:`FSQuantizer` (arXiv 2309.15505): ``quant_conv`` projects to
    ``len(levels)`` channels, each rounded to its number of levels; ``n_embed = prod(levels)`` token ids.

    Args:
        levels: levels per channel, e.g. ``[8, 5, 5, 5]`` (1000 codes; the paper's choice near 2^10).
        ddconfig, lossconfig, ckpt_path, ...: as :class:`VQModel` (``n_embed``/``embed_dim`` follow from
            ``levels``; when given they must agree).
    """

    def __init__(self, ddconfig: Mapping[str, Any], levels: Sequence[int], n_embed: int | None = None,
                 embed_dim: int | None = None, lossconfig: Mapping[str, Any] | None = None,
                 ckpt_path: str | None = None, ignore_keys: Sequence[str] = (), allow_unsafe_pickle: bool = False,
                 **kwargs: Any):
        self._levels = [int(v) for v in levels]
        codes = 1
        for v in self._levels:
            codes *= v
        for key, given, implied in (("n_embed", n_embed, codes), ("embed_dim", embed_dim, len(self._levels))):
            if given is not None and int(given) != implied:
                raise ConfigError(f"FSQModel: {key} {given} disagrees with levels {self._levels} ({implied})")
        super().__init__(ddconfig, codes, len(self._levels), lossconfig=lossconfig, ckpt_path=None, **kwargs)
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys, allow_unsafe_pickle=allow_unsafe_pickle)

    def _make_quantizer(self, beta: float) -> nn.Module:
        return FSQuantizer(self._levels)


class Net2NetFirstStage(nn.Module):
    """The first stage of taming's ``Net2NetTransformer`` (the released FFHQ codec YAML describes the
    whole model; only ``first_stage_config`` is built, the 24-layer GPT is not).

    Its parameters are under ``first_stage_model.*`` like the checkpoint's; ``transformer.*`` and
    ``cond_stage_model.*`` keys are dropped when loading.
    """

    def __init__(self, first_stage_config: Mapping[str, Any], ckpt_path: str | None = None,
                 allow_unsafe_pickle: bool = False, **ignored: Any):
        super().__init__()
        self.first_stage_model = instantiate_from_config(first_stage_config)
        if ckpt_path is not None:
            load_codec_weights(self, ckpt_path, allow_unsafe_pickle)


def build_first_stage_from_yaml(config_path: str | Path) -> nn.Module:
    """Build the model described by a taming YAML's ``model`` node (random weights).

    A :class:`Net2NetFirstStage` is returned as such; callers wanting the autoencoder take
    ``.first_stage_model`` after loading the checkpoint.
    """
    config = load_yaml_config(config_path)
    if "model" not in config:
        raise ConfigError(f"{config_path}: a taming codec YAML needs a top-level 'model' node; "
                          f"keys present: {', '.join(map(str, config))}")
    return instantiate_from_config(config["model"], key_path=f"{config_path}:model")
