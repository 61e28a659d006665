"""Load a diffusers ``VQDiffusionPipeline`` folder as a vqdiff ``DALLE`` (codec, CLIP, network, null text).

``load_diffusers(folder)`` reads ``model_index.json`` and the six component folders (the layout
:func:`~vqdiff.inference.diffusers_export.export_diffusers` writes, and the one the ITHQ model is shared
in) and returns a model that samples, trains and evaluates like a native one. Parameter names go
through the same maps as the export (:mod:`.diffusers_keys`), so export -> import is the identity on
every stored tensor. :func:`diffusers_model_config` is the vqdiff config of that model; its codec, CLIP
and tokenizer read their weights from the folder (``DiffusersVQVAE``, ``DiffusersCLIPTextEmbedding``,
``VocabFileTokenizer``), so it can be saved as YAML next to a checkpoint of the network.

What differs from the pipeline: the tokenizer normalises text as CLIP's own (ftfy, HTML unescape), and
captions over 77 tokens keep their end token (the pipeline cuts it). Sampling uses vqdiff's samplers.

Refused, naming the setting: a network other than diffusers' AdaLayerNorm discrete transformer (norm
type, activation, attention options), a schedule other than the released alpha1 one, a VQModel whose
encoder and decoder put attention at different levels or that is not a group-norm/SiLU taming model, a
text encoder that is not CLIP (quick GELU, 4x MLP).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from vqdiff.modeling.codecs.image.taming_vqvae import TamingCodec
from vqdiff.modeling.codecs.image.vqgan import VQModel
from vqdiff.modeling.embeddings.clip_model import CLIPTextConfig, CLIPTextTransformer
from vqdiff.modeling.embeddings.clip_text_embedding import CLIPTextEmbedding

from .diffusers_export import ALPHA1_ENDPOINTS
from .diffusers_keys import clip_text_key, codec_key, from_diffusers, network_key
from .diffusers_tokenizer import VocabFileTokenizer

__all__ = [
    "DiffusersImportError",
    "is_diffusers_folder",
    "DiffusersVQVAE",
    "DiffusersCLIPTextEmbedding",
    "diffusers_model_config",
    "load_diffusers",
]

_ACTIVATIONS = {"geglu-approximate": "GELU2", "gelu": "GELU"}
_COMPONENTS = ("transformer", "vqvae", "text_encoder", "tokenizer", "scheduler",
               "learned_classifier_free_sampling_embeddings")


class DiffusersImportError(ValueError):
    """The diffusers folder holds something vqdiff cannot build (the message names file and setting)."""


def is_diffusers_folder(path: Any) -> bool:
    """True for a folder holding ``model_index.json``."""
    return isinstance(path, (str, os.PathLike)) and Path(path).is_dir() and (Path(path) / "model_index.json").is_file()


def _json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"diffusers folder: '{path}' is missing")
    return json.loads(path.read_text(encoding="utf-8"))


def _weights(folder: Path, stems: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """A component's tensors from ``<stem>.safetensors`` (or ``<stem>.bin``, read without unpickling code)."""
    for stem in stems:
        if (folder / f"{stem}.safetensors").is_file():
            from safetensors.torch import load_file

            return load_file(str(folder / f"{stem}.safetensors"))
        if (folder / f"{stem}.bin").is_file():
            return dict(torch.load(folder / f"{stem}.bin", map_location="cpu", weights_only=True))
    raise FileNotFoundError(f"no weights in '{folder}' (looked for {', '.join(s + '.safetensors/.bin' for s in stems)})")


def _require(cfg: Mapping, key: str, allowed: Any, where: str, default: Any) -> None:
    """``cfg[key]`` (``default``: the diffusers/transformers default when absent) must be ``allowed``."""
    value = cfg.get(key, default)
    ok = value in allowed if isinstance(allowed, tuple) else value == allowed
    if isinstance(allowed, float):
        ok = isinstance(value, (int, float)) and math.isclose(float(value), allowed, rel_tol=1e-6)
    if not ok:
        raise DiffusersImportError(f"{where}: {key} = {value!r} is not supported (vqdiff needs {allowed!r})")


# --------------------------------------------------------------------------------------------------
# codec and text encoder that read a component folder
# --------------------------------------------------------------------------------------------------
def _codec_name(key: str) -> str:
    """A taming ``VQModel`` key -> the codec-level key the shared map takes (``enc.``/``dec.`` prefix)."""
    if key.startswith(("encoder.", "quant_conv.", "quantize.")):
        return "enc." + key
    return "dec." + key


class DiffusersVQVAE(TamingCodec):
    """The frozen image codec of a diffusers folder's ``vqvae`` (a ``VQModel``: taming encoder/decoder,
    nearest-code quantizer). Tokens are the codebook rows as stored (no remapping).

    Args:
        folder: the ``vqvae`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``).
        token_shape: ``(h, w)`` of the token grid (the transformer's ``sample_size``).
        trainable: False freezes the codec.
    """

    def __init__(self, folder: str, token_shape: tuple = (32, 32), trainable: bool = False):
        super().__init__(trainable=trainable, token_shape=token_shape, config_path=str(folder), ckpt_path=None)
        self.folder = str(folder)

    @staticmethod
    def load_model(config_path: str | Path, ckpt_path: Any = None, allow_unsafe_pickle: bool = False) -> nn.Module:
        folder = Path(config_path)
        cfg = _json(folder / "config.json")
        where = f"{folder / 'config.json'}"
        _require(cfg, "act_fn", "silu", where, "silu")
        _require(cfg, "norm_num_groups", 32, where, 32)
        _require(cfg, "norm_type", "group", where, "group")
        _require(cfg, "mid_block_add_attention", True, where, True)
        chans = [int(c) for c in cfg["block_out_channels"]]
        if any(c % chans[0] for c in chans):
            raise DiffusersImportError(f"{where}: block_out_channels {chans} are not multiples of the first")
        enc_attn = [t.startswith("Attn") for t in cfg["down_block_types"]]
        dec_attn = [t.startswith("Attn") for t in reversed(cfg["up_block_types"])]
        if enc_attn != dec_attn:
            raise DiffusersImportError(
                f"{where}: encoder attention levels {enc_attn} differ from the decoder's {dec_attn}; taming "
                "codecs put attention at the same resolutions on both sides"
            )
        L = len(chans)
        resolution = 2 ** (L - 1)  # level i has resolution 2^(L-1-i): distinct values pick the attention levels
        ddconfig = {
            "double_z": False, "z_channels": int(cfg["latent_channels"]), "resolution": resolution,
            "in_channels": int(cfg["in_channels"]), "out_ch": int(cfg["out_channels"]), "ch": chans[0],
            "ch_mult": [c // chans[0] for c in chans], "num_res_blocks": int(cfg["layers_per_block"]),
            "attn_resolutions": [resolution // 2**i for i in range(L) if enc_attn[i]], "dropout": 0.0,
        }
        embed_dim = int(cfg.get("vq_embed_dim") or cfg["latent_channels"])
        model = VQModel(ddconfig=ddconfig, n_embed=int(cfg["num_vq_embeddings"]), embed_dim=embed_dim)
        base = codec_key(L)
        theirs = _weights(folder, ("diffusion_pytorch_model",))
        state = from_diffusers(model.state_dict(), theirs, lambda k: base(_codec_name(k)), f"vqvae ({folder})")
        model.load_state_dict(state, strict=True)
        return model


class DiffusersCLIPTextEmbedding(CLIPTextEmbedding):
    """The frozen CLIP text tower of a diffusers folder's ``text_encoder`` (``transformers.CLIPTextModel``
    files), as the condition embedding: every position's ``ln_final`` feature, L2-normalised (what the
    pipeline computes). No projection is stored, so ``text_projection`` is the identity.

    Args:
        folder: the ``text_encoder`` folder (``config.json`` + ``model.safetensors``).
    """

    def __init__(self, folder: str):
        folder_path = Path(folder)
        cfg = _json(folder_path / "config.json")
        where = str(folder_path / "config.json")
        _require(cfg, "hidden_act", "quick_gelu", where, "quick_gelu")
        width = int(cfg["hidden_size"])
        _require(cfg, "intermediate_size", 4 * width, where, 2048)
        _require(cfg, "layer_norm_eps", 1e-5, where, 1e-5)
        config = CLIPTextConfig(vocab_size=int(cfg["vocab_size"]), context_length=int(cfg["max_position_embeddings"]),
                                width=width, layers=int(cfg["num_hidden_layers"]),
                                heads=int(cfg["num_attention_heads"]), embed_dim=width)
        CLIPTextTransformer.__init__(self, config)  # the sizes come from config.json, not a CLIP file
        theirs = _weights(folder_path, ("model", "pytorch_model"))
        theirs = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in theirs.items()
                  if not k.endswith("position_ids") and not k.startswith("text_projection")}
        with torch.no_grad():
            self.text_projection.copy_(torch.eye(width))
        state = from_diffusers(self.state_dict(), theirs, clip_text_key, f"text_encoder ({folder})")
        self.load_state_dict(state, strict=True)
        self.folder = self.clip_name = self.clip_path = str(folder)
        self.num_embed = config.vocab_size
        self.normalize = True
        self.pick_last_embedding = self.keep_seq_len_dim = self.additional_last_embedding = False
        self.embed_dim = width
        self._concat_twice = False
        self.trainable = False
        for p in self.parameters():
            p.requires_grad_(False)
        nn.Module.train(self, False)


# --------------------------------------------------------------------------------------------------
# the model config and the loader
# --------------------------------------------------------------------------------------------------
def _check_transformer(cfg: Mapping, where: str) -> None:
    if cfg.get("num_vector_embeds") is None:
        raise DiffusersImportError(f"{where}: not a discrete (VQ-Diffusion) Transformer2DModel: no num_vector_embeds")
    _require(cfg, "norm_type", "ada_norm", where, "layer_norm")
    _require(cfg, "activation_fn", tuple(_ACTIVATIONS), where, "geglu")
    _require(cfg, "attention_bias", True, where, False)
    for key in ("only_cross_attention", "double_self_attention"):
        _require(cfg, key, False, where, False)
    _require(cfg, "norm_elementwise_affine", True, where, True)
    _require(cfg, "norm_eps", 1e-5, where, 1e-5)
    _require(cfg, "attention_type", "default", where, "default")
    if cfg.get("cross_attention_dim") is None:
        raise DiffusersImportError(f"{where}: no cross_attention_dim: not a text-conditional network")


def diffusers_model_config(folder: str | os.PathLike) -> dict:
    """The vqdiff config (``{'model': DALLE target/params}``) of the pipeline in ``folder``.

    Raises:
        FileNotFoundError: ``model_index.json`` or a component's file is missing (named).
        DiffusersImportError: a setting vqdiff cannot build (file and key named).
    """
    folder = Path(folder).resolve()
    index = _json(folder / "model_index.json")
    missing = [c for c in _COMPONENTS if c not in index]
    if missing:
        raise DiffusersImportError(f"{folder / 'model_index.json'} names no {', '.join(missing)}: not a VQDiffusionPipeline")
    t = _json(folder / "transformer" / "config.json")
    _check_transformer(t, str(folder / "transformer" / "config.json"))
    s = _json(folder / "scheduler" / "scheduler_config.json")
    where = str(folder / "scheduler" / "scheduler_config.json")
    for key, value in ALPHA1_ENDPOINTS.items():
        if not math.isclose(float(s.get(key, value)), value, rel_tol=1e-6):
            raise DiffusersImportError(f"{where}: {key} = {s[key]} differs from the released alpha1 schedule ({value})")
    T, K1 = int(s.get("num_train_timesteps", 100)), int(t["num_vector_embeds"])
    if int(s.get("num_vec_classes", K1)) != K1 or int(t["num_embeds_ada_norm"]) != T:
        raise DiffusersImportError(
            f"{where}: num_vec_classes {s.get('num_vec_classes')} / num_train_timesteps {T} disagree with the "
            f"transformer's num_vector_embeds {K1} / num_embeds_ada_norm {t['num_embeds_ada_norm']}"
        )
    e = _json(folder / "learned_classifier_free_sampling_embeddings" / "config.json")
    learnable = bool(e.get("learnable", False))
    tok = VocabFileTokenizer(folder / "tokenizer")
    text_dim = int(_json(folder / "text_encoder" / "config.json")["hidden_size"])
    if text_dim != int(t["cross_attention_dim"]):
        raise DiffusersImportError(f"text_encoder hidden_size {text_dim} != transformer cross_attention_dim "
                                   f"{t['cross_attention_dim']}")
    side, D = int(t["sample_size"]), int(t["num_attention_heads"]) * int(t["attention_head_dim"])
    seq = int(e["length"]) if learnable else tok.model_max_length
    network = {
        "attn_type": "selfcross", "n_layer": int(t["num_layers"]), "condition_seq_len": seq,
        "content_seq_len": side * side, "content_spatial_size": [side, side], "n_embd": D,
        "condition_dim": text_dim, "n_head": int(t["num_attention_heads"]), "attn_pdrop": 0.0, "resid_pdrop": 0.0,
        "block_activate": _ACTIVATIONS[t["activation_fn"]],
        "timestep_type": "adalayernorm", "mlp_hidden_times": 4, "mlp_type": "fc",
    }
    return {"model": {"target": "vqdiff.modeling.models.dalle.DALLE", "params": {
        "content_info": {"key": "image"}, "condition_info": {"key": "text"}, "learnable_cf": learnable,
        "content_codec_config": {"target": f"{__name__}.DiffusersVQVAE",
                                 "params": {"folder": str(folder / "vqvae"), "token_shape": [side, side]}},
        "condition_codec_config": {"target": "vqdiff.modeling.codecs.text.tokenize.Tokenize", "params": {
            "context_length": tok.model_max_length, "add_start_and_end": True, "with_mask": True,
            "pad_value": tok.pad_token if tok.pad_token is not None else tok.eot_token,
            "tokenizer_config": {"target": "vqdiff.inference.diffusers_tokenizer.VocabFileTokenizer",
                                 "params": {"folder": str(folder / "tokenizer")}}}},
        "diffusion_config": {"target": "vqdiff.modeling.diffusion.diffusion_transformer.DiffusionTransformer", "params": {
            "diffusion_step": T, "alpha_init_type": "alpha1", "auxiliary_loss_weight": 5.0e-4,
            "adaptive_auxiliary_loss": True, "mask_weight": [1, 1], "learnable_cf": learnable,
            "transformer_config": {"target": "vqdiff.modeling.transformers.networks.Text2ImageTransformer",
                                   "params": network},
            "condition_emb_config": {"target": f"{__name__}.DiffusersCLIPTextEmbedding",
                                     "params": {"folder": str(folder / "text_encoder")}},
            "content_emb_config": {"target": "vqdiff.modeling.embeddings.dalle_mask_image_embedding.DalleMaskImageEmbedding",
                                   "params": {"num_embed": K1 - 1, "spatial_size": [side, side], "embed_dim": D,
                                              "trainable": True, "pos_emb_type": "embedding"}},
        }},
    }}}


def load_diffusers(folder: str | os.PathLike, device: Optional[str | torch.device] = None) -> nn.Module:
    """A vqdiff ``DALLE`` built from the diffusers ``VQDiffusionPipeline`` folder, in eval mode.

    Every tensor of the folder is used and every parameter of the model is set (a missing or extra
    tensor raises :class:`~vqdiff.inference.diffusers_keys.DiffusersKeyError` naming it). The codec and
    CLIP are frozen; the network and the learned null text are trainable.
    """
    from vqdiff.inference.loading import build_model

    folder = Path(folder)
    model = build_model(diffusers_model_config(folder))
    net = model.transformer.transformer
    theirs = _weights(folder / "transformer", ("diffusion_pytorch_model",))
    net.load_state_dict(from_diffusers(net.state_dict(), theirs, network_key, f"transformer ({folder})"), strict=True)
    if model.transformer.learnable_cf:
        emb = _weights(folder / "learned_classifier_free_sampling_embeddings", ("diffusion_pytorch_model",))
        if "embeddings" not in emb or tuple(emb["embeddings"].shape) != tuple(model.transformer.empty_text_embed.shape):
            raise DiffusersImportError(
                f"{folder / 'learned_classifier_free_sampling_embeddings'}: 'embeddings' should have shape "
                f"{tuple(model.transformer.empty_text_embed.shape)}"
            )
        with torch.no_grad():
            model.transformer.empty_text_embed.copy_(emb["embeddings"].to(model.transformer.empty_text_embed.dtype))
    if device is not None:
        model.to(device)
    return model.eval()
