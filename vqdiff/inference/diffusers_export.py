"""Export a text-to-image vqdiff/official model to the diffusers ``VQDiffusionPipeline`` folder layout.

Written components (each ``<name>/config.json`` + ``<name>/diffusion_pytorch_model.safetensors``):

* ``transformer``: diffusers ``Transformer2DModel`` with discrete inputs (``num_vector_embeds = K+1``):
  ``content_emb`` -> ``latent_image_embedding``; per block ``ln1``/``attn1``/``ln1_1``/``attn2``/``ln2``/
  ``mlp.{0,2}`` -> ``norm1``/``attn1``/``norm2``/``attn2``/``norm3``/``ff.net.{0.proj,2}``; attention
  ``key/query/value/proj`` -> ``to_k/to_q/to_v/to_out.0``; ``to_logits.{0,1}`` -> ``norm_out``/``out``.
  The unused causal ``attn2.mask`` buffer is dropped. GELU2 (``x * sigmoid(1.702 x)``) is diffusers'
  ``'geglu-approximate'`` activation.
* ``vqvae``: diffusers ``VQModel`` from the taming encoder/decoder (``down.i.block.j`` ->
  ``down_blocks.i.resnets.j``, ``mid.block_{1,2}``/``mid.attn_1`` -> ``mid_block``, decoder ``up.i`` ->
  ``up_blocks.{L-1-i}``, 1x1-conv attention -> linear ``to_q/to_k/to_v/to_out.0``). The codebook is
  exported already remapped (row ``i`` = codebook entry ``quantize_to_full[i]``), so the diffusers
  model decodes the transformer's compact token ids directly. Decoding is exact; encoding with the
  exported model is nearest-codebook (diffusers has no Gumbel encoder), so it is not the official one
  for the Gumbel codecs.
* ``learned_classifier_free_sampling_embeddings``: ``embeddings`` = ``empty_text_embed`` (77, 512),
  float32; ``learnable: false`` without one.
* ``scheduler/scheduler_config.json`` (``VQDiffusionScheduler``) and ``model_index.json``. The text
  encoder and tokenizer are the standard CLIP ViT-B/32 ones (``openai/clip-vit-base-patch32``) and
  are not written here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from .conversion import save_safetensors

__all__ = [
    "transformer_to_diffusers",
    "vqvae_to_diffusers",
    "learned_embeddings_to_diffusers",
    "scheduler_config",
    "export_diffusers",
]

_DIFFUSERS_VERSION = "0.42.1"
_NET = "transformer.transformer."
_ATTN = {"key": "to_k", "query": "to_q", "value": "to_v", "proj": "to_out.0"}


# --------------------------------------------------------------------------------------------------
# transformer
# --------------------------------------------------------------------------------------------------
def _strip(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def transformer_to_diffusers(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of a diffusers ``Transformer2DModel`` equal to ``model``'s network.

    Only the text-to-image network (``Text2ImageTransformer``, ``attn_type: selfcross``, ``mlp_type: fc``)
    has a diffusers equivalent; other networks raise ``ValueError``.
    """
    diffusion = model.transformer
    net = diffusion.transformer
    sd = _strip(model.state_dict(), _NET)
    blocks = list(net.blocks)
    if not blocks or not hasattr(blocks[0], "attn2") or "blocks.0.mlp.0.weight" not in sd:
        raise ValueError(
            f"{type(net).__name__} cannot be exported to diffusers: Transformer2DModel only has the "
            "text-to-image block (self-attention + cross-attention + 'fc' MLP, attn_type 'selfcross')"
        )
    hidden = int(sd["blocks.0.mlp.0.weight"].shape[0])
    D = int(sd["content_emb.emb.weight"].shape[1])
    if hidden != 4 * D:
        raise ValueError(
            f"diffusers' Transformer2DModel fixes the MLP width at 4 x n_embd; this network has "
            f"mlp_hidden_times = {hidden / D:g} (n_embd {D}, MLP width {hidden})"
        )
    act = blocks[0].mlp[1]
    act_name = "geglu-approximate" if type(act).__name__ == "GELU2" else "gelu"
    n_head = int(blocks[0].attn1.n_head)
    H = int(sd["content_emb.height_emb.weight"].shape[0])
    W = int(sd["content_emb.width_emb.weight"].shape[0])
    if H != W or H * W != diffusion.content_seq_len:
        raise ValueError(
            f"diffusers' Transformer2DModel needs a square token grid covering the sequence; this network "
            f"has a {H}x{W} position table for {diffusion.content_seq_len} tokens"
        )
    config = {
        "_class_name": "Transformer2DModel",
        "_diffusers_version": _DIFFUSERS_VERSION,
        "num_attention_heads": n_head,
        "attention_head_dim": D // n_head,
        "num_layers": len(blocks),
        "dropout": 0.0,
        "cross_attention_dim": int(sd["blocks.0.attn2.key.weight"].shape[1]),
        "attention_bias": True,
        "num_vector_embeds": int(diffusion.num_classes),
        "num_embeds_ada_norm": int(sd["blocks.0.ln1.emb.weight"].shape[0]),
        "norm_num_groups": 32,
        "sample_size": H,
        "activation_fn": act_name,
        "norm_type": "ada_norm",
    }
    out: dict[str, torch.Tensor] = {}
    for name in ("emb", "height_emb", "width_emb"):
        out[f"latent_image_embedding.{name}.weight"] = sd[f"content_emb.{name}.weight"]
    for i in range(len(blocks)):
        src, dst = f"blocks.{i}.", f"transformer_blocks.{i}."
        for ours, theirs in (("ln1", "norm1"), ("ln1_1", "norm2")):
            for p in ("emb.weight", "linear.weight", "linear.bias"):
                out[f"{dst}{theirs}.{p}"] = sd[f"{src}{ours}.{p}"]
        for attn in ("attn1", "attn2"):
            for ours, theirs in _ATTN.items():
                for p in ("weight", "bias"):
                    out[f"{dst}{attn}.{theirs}.{p}"] = sd[f"{src}{attn}.{ours}.{p}"]
        for p in ("weight", "bias"):
            out[f"{dst}norm3.{p}"] = sd[f"{src}ln2.{p}"]
            out[f"{dst}ff.net.0.proj.{p}"] = sd[f"{src}mlp.0.{p}"]
            out[f"{dst}ff.net.2.{p}"] = sd[f"{src}mlp.2.{p}"]
    for p in ("weight", "bias"):
        out[f"norm_out.{p}"] = sd[f"to_logits.0.{p}"]
        out[f"out.{p}"] = sd[f"to_logits.1.{p}"]
    return config, out


# --------------------------------------------------------------------------------------------------
# VQ-VAE
# --------------------------------------------------------------------------------------------------
_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _vae_key(key: str, n_levels: int, decoder: bool) -> Optional[str]:
    """The diffusers name of one taming encoder/decoder key (without the ``encoder.``/``decoder.`` part)."""
    simple = {"conv_in": "conv_in", "conv_out": "conv_out", "norm_out": "conv_norm_out"}
    head, _, rest = key.partition(".")
    if head in simple:
        return f"{simple[head]}.{rest}"
    m = re.match(r"mid\.(block_1|block_2|attn_1)\.(\w+)\.(\w+)$", key)
    if m:
        part, layer, p = m.groups()
        if part == "attn_1":
            return f"mid_block.attentions.0.{_VAE_ATTN[layer]}.{p}"
        return f"mid_block.resnets.{int(part[-1]) - 1}.{_RESNET[layer]}.{p}"
    m = re.match(r"(down|up)\.(\d+)\.(block|attn)\.(\d+)\.(\w+)\.(\w+)$", key)
    if m:
        _, lvl, kind, j, layer, p = m.groups()
        lvl = n_levels - 1 - int(lvl) if decoder else int(lvl)
        group = "up_blocks" if decoder else "down_blocks"
        if kind == "block":
            return f"{group}.{lvl}.resnets.{j}.{_RESNET[layer]}.{p}"
        return f"{group}.{lvl}.attentions.{j}.{_VAE_ATTN[layer]}.{p}"
    m = re.match(r"(down|up)\.(\d+)\.(downsample|upsample)\.conv\.(\w+)$", key)
    if m:
        _, lvl, kind, p = m.groups()
        lvl = n_levels - 1 - int(lvl) if decoder else int(lvl)
        group, sampler = ("up_blocks", "upsamplers") if decoder else ("down_blocks", "downsamplers")
        return f"{group}.{lvl}.{sampler}.0.conv.{p}"
    return None


def _levels(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    ids = {int(m.group(1)) for k in sd for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m}
    return max(ids) + 1 if ids else 0


def vqvae_to_diffusers(codec: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of a diffusers ``VQModel`` equal to a taming-style codec (``enc``/``dec``)."""
    sd = codec.state_dict()
    if not any(k.startswith("enc.encoder.") for k in sd) or not any(k.startswith("dec.decoder.") for k in sd):
        raise ValueError(f"{type(codec).__name__} has no taming 'enc.encoder'/'dec.decoder' modules to export")
    enc, dec = _strip(sd, "enc.encoder."), _strip(sd, "dec.decoder.")
    L = _levels(enc, "down.")
    if _levels(dec, "up.") != L:
        raise ValueError("encoder and decoder have a different number of resolution levels")
    out: dict[str, torch.Tensor] = {}
    for part, table, is_dec in (("encoder", enc, False), ("decoder", dec, True)):
        for k, v in table.items():
            new = _vae_key(k, L, is_dec)
            if new is None:
                raise ValueError(f"no diffusers equivalent for codec key '{part}.{k}'")
            if re.search(r"attentions\.\d+\.to_(q|k|v|out\.0)\.weight$", new) and v.ndim == 4:
                v = v[:, :, 0, 0]
            out[f"{part}.{new}"] = v
    for name in ("quant_conv", "post_quant_conv"):
        side = "enc" if name == "quant_conv" else "dec"
        for p in ("weight", "bias"):
            out[f"{name}.{p}"] = sd[f"{side}.{name}.{p}"]
    book = None
    for key in ("enc.quantize.embed.weight", "enc.quantize.embedding.weight", "enc.quantize.embedding"):
        if key in sd:
            book = sd[key]
            break
    if book is None:
        raise ValueError("codec quantizer has no codebook ('embed.weight', 'embedding.weight' or 'embedding')")
    q2f = getattr(codec, "quantize_to_full", None)
    if q2f is not None:
        book = book[q2f.to(book.device).long()]
    out["quantize.embedding.weight"] = book
    ch = [int(enc[f"down.{i}.block.0.conv1.weight"].shape[0]) for i in range(L)]
    layers = len({k.split(".")[3] for k in enc if k.startswith("down.0.block.")})
    if int(out["quant_conv.weight"].shape[0]) != int(book.shape[1]):
        raise ValueError(
            f"quant_conv gives {out['quant_conv.weight'].shape[0]} channels but codes have {book.shape[1]}: "
            "a Gumbel codec with z_channels != embed_dim has no diffusers VQModel equivalent"
        )
    config = {
        "_class_name": "VQModel",
        "_diffusers_version": _DIFFUSERS_VERSION,
        "in_channels": int(enc["conv_in.weight"].shape[1]),
        "out_channels": int(dec["conv_out.weight"].shape[0]),
        "down_block_types": ["AttnDownEncoderBlock2D" if f"down.{i}.attn.0.q.weight" in enc else "DownEncoderBlock2D"
                             for i in range(L)],
        "up_block_types": ["AttnUpDecoderBlock2D" if f"up.{i}.attn.0.q.weight" in dec else "UpDecoderBlock2D"
                           for i in reversed(range(L))],
        "block_out_channels": ch,
        "layers_per_block": layers,
        "act_fn": "silu",
        "latent_channels": int(enc["conv_out.weight"].shape[0]),
        "num_vq_embeddings": int(book.shape[0]),
        "norm_num_groups": 32,
        "vq_embed_dim": int(book.shape[1]),
        "sample_size": 32,
    }
    return config, out


# --------------------------------------------------------------------------------------------------
# learned classifier-free embeddings and the scheduler
# --------------------------------------------------------------------------------------------------
def learned_embeddings_to_diffusers(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """``LearnedClassifierFreeSamplingEmbeddings``: ``empty_text_embed`` (L, D) as float32, or not learnable."""
    trans = model.transformer
    emb = getattr(trans, "empty_text_embed", None) if getattr(trans, "learnable_cf", False) else None
    cfg = {"_class_name": "LearnedClassifierFreeSamplingEmbeddings", "_diffusers_version": _DIFFUSERS_VERSION}
    if emb is None:
        cfg.update(learnable=False, hidden_size=None, length=None)
        return cfg, {}
    cfg.update(learnable=True, hidden_size=int(emb.shape[1]), length=int(emb.shape[0]))
    return cfg, {"embeddings": emb.detach().float()}


def scheduler_config(model: nn.Module) -> dict:
    """``VQDiffusionScheduler`` config: K+1 classes, T steps and the released alpha1 endpoints."""
    trans = model.transformer
    return {
        "_class_name": "VQDiffusionScheduler",
        "_diffusers_version": _DIFFUSERS_VERSION,
        "num_vec_classes": int(trans.num_classes),
        "num_train_timesteps": int(trans.num_timesteps),
        "alpha_cum_start": 0.99999,
        "alpha_cum_end": 0.000009,
        "gamma_cum_start": 0.000009,
        "gamma_cum_end": 0.99999,
    }


def _write(folder: Path, config: dict, weights: Optional[dict], config_name: str = "config.json") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / config_name).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    if weights is not None:
        save_safetensors(weights, folder / "diffusion_pytorch_model.safetensors")


def export_diffusers(model: nn.Module, out_dir: str | Path) -> Path:
    """Write ``model`` (a text-to-image ``DALLE``) as a diffusers ``VQDiffusionPipeline`` folder."""
    out_dir = Path(out_dir)
    t_cfg, t_sd = transformer_to_diffusers(model)
    v_cfg, v_sd = vqvae_to_diffusers(model.content_codec)
    e_cfg, e_sd = learned_embeddings_to_diffusers(model)
    _write(out_dir / "transformer", t_cfg, t_sd)
    _write(out_dir / "vqvae", v_cfg, v_sd)
    _write(out_dir / "learned_classifier_free_sampling_embeddings", e_cfg, e_sd if e_sd else None)
    _write(out_dir / "scheduler", scheduler_config(model), None, "scheduler_config.json")
    index = {
        "_class_name": "VQDiffusionPipeline",
        "_diffusers_version": _DIFFUSERS_VERSION,
        "learned_classifier_free_sampling_embeddings": ["vq_diffusion", "LearnedClassifierFreeSamplingEmbeddings"],
        "scheduler": ["diffusers", "VQDiffusionScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "transformer": ["diffusers", "Transformer2DModel"],
        "vqvae": ["diffusers", "VQModel"],
    }
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return out_dir
