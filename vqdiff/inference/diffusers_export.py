"""Export a text-to-image vqdiff/official model as a complete diffusers ``VQDiffusionPipeline`` folder.

Written (parameter names: :mod:`.diffusers_keys`)::

    model_index.json
    transformer/        Transformer2DModel (discrete inputs, num_vector_embeds = K+1, AdaLayerNorm)
    vqvae/              VQModel; the codebook is stored remapped (row i = code quantize_to_full[i]),
                        so it decodes the transformer's compact ids directly
    text_encoder/       transformers CLIPTextModel from our CLIP weights (float32)
    tokenizer/          CLIPTokenizer files from our BPE (:mod:`.diffusers_tokenizer`)
    scheduler/          VQDiffusionScheduler (K+1 classes, T steps, the alpha1 endpoints)
    learned_classifier_free_sampling_embeddings/   the learned null text, or learnable: false

The pipeline's prompt embedding (``CLIPTextModel`` last hidden state, L2-normalised per token) is our
``CLIPTextEmbedding`` output (``pick_last_embedding: False``, ``normalize: True``) exactly, including
padding with id 0. What diffusers cannot express raises :class:`DiffusersExportError` naming the
feature: other networks than the text-to-image one, a text padding mask (``condition_padding_mask``: the
pipeline passes none to the cross attention), an MLP other than 4 x n_embd, sinusoidal timestep
embeddings, non-square token grids, projected/unnormalised/doubled CLIP features, codecs without a
taming encoder/decoder. A Gumbel codec (COCO, CUB) decodes exactly in diffusers, but diffusers' VQModel
has no Gumbel quantizer, so ``VQModel.encode`` would pick nearest codes instead of the Gumbel logits'
argmax: exported only with ``allow_inexact_encoder=True`` (the pipeline itself never encodes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .conversion import save_safetensors
from .diffusers_keys import clip_text_key, codec_key, network_key, to_diffusers
from .diffusers_tokenizer import write_clip_tokenizer

__all__ = [
    "DIFFUSERS_VERSION",
    "ALPHA1_ENDPOINTS",
    "DiffusersExportError",
    "transformer_to_diffusers",
    "vqvae_to_diffusers",
    "text_encoder_to_diffusers",
    "learned_embeddings_to_diffusers",
    "scheduler_config",
    "model_index",
    "export_diffusers",
]

DIFFUSERS_VERSION = "0.42.1"
LEARNED_EMBEDDINGS_MODULE = "diffusers.pipelines.deprecated.vq_diffusion.pipeline_vq_diffusion"
# the released schedule (OFFICIAL_NOTES §3 alpha_schedule): cumulative alpha / gamma at t = 1 and t = T
ALPHA1_ENDPOINTS = {"alpha_cum_start": 0.99999, "alpha_cum_end": 0.000009,
                    "gamma_cum_start": 0.000009, "gamma_cum_end": 0.99999}


class DiffusersExportError(ValueError):
    """The model has a feature diffusers' VQ-Diffusion classes cannot express (named in the message)."""


def _strip(sd, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _meta(name: str) -> dict:
    return {"_class_name": name, "_diffusers_version": DIFFUSERS_VERSION}


# --------------------------------------------------------------------------------------------------
# components
# --------------------------------------------------------------------------------------------------
def transformer_to_diffusers(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of a diffusers ``Transformer2DModel`` equal to ``model``'s network."""
    diffusion = model.transformer
    if getattr(diffusion, "condition_padding_mask", False):
        raise DiffusersExportError(
            "this model masks the text padding in its cross attention (diffusion_config.params."
            "condition_padding_mask); diffusers' VQDiffusionPipeline passes no attention mask, so it would "
            "attend to the padding the model never saw"
        )
    net = diffusion.transformer
    sd = net.state_dict()
    blocks = list(getattr(net, "blocks", []))
    if not blocks or not hasattr(blocks[0], "attn2") or "blocks.0.mlp.0.weight" not in sd:
        raise DiffusersExportError(
            f"{type(net).__name__} cannot be exported to diffusers: Transformer2DModel only has the "
            "text-to-image block (self-attention + cross-attention + 'fc' MLP, attn_type 'selfcross'); "
            "class-conditional and unconditional models have no diffusers pipeline"
        )
    D = int(sd["content_emb.emb.weight"].shape[1])
    hidden = int(sd["blocks.0.mlp.0.weight"].shape[0])
    if hidden != 4 * D:
        raise DiffusersExportError(
            f"diffusers' Transformer2DModel fixes the MLP width at 4 x n_embd; this network has "
            f"mlp_hidden_times = {hidden / D:g} (n_embd {D}, MLP width {hidden})"
        )
    if "blocks.0.ln1.emb.weight" not in sd:
        raise DiffusersExportError("diffusers' AdaLayerNorm has a learned timestep table; this network uses "
                                   "sinusoidal timestep embeddings (timestep_type 'adalayernorm_abs')")
    act = type(blocks[0].mlp[1]).__name__
    acts = {"GELU2": "geglu-approximate", "GELU": "gelu"}
    if act not in acts:
        raise DiffusersExportError(f"block activation {act} has no diffusers activation_fn (GELU2 or GELU only)")
    n_head = int(blocks[0].attn1.n_head)
    H, W = int(sd["content_emb.height_emb.weight"].shape[0]), int(sd["content_emb.width_emb.weight"].shape[0])
    if H != W or H * W != diffusion.content_seq_len:
        raise DiffusersExportError(
            f"diffusers' Transformer2DModel needs a square token grid covering the sequence; this network "
            f"has a {H}x{W} position table for {diffusion.content_seq_len} tokens"
        )
    config = {
        **_meta("Transformer2DModel"),
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
        "activation_fn": acts[act],
        "norm_type": "ada_norm",
    }
    return config, to_diffusers(sd, network_key)


def _codebook_key(sd) -> str:
    for key in ("enc.quantize.embedding.weight", "enc.quantize.embed.weight", "enc.quantize.embedding"):
        if key in sd:
            return key
    raise DiffusersExportError("codec quantizer has no codebook ('embedding.weight', 'embed.weight' or 'embedding')")


def _levels(sd, prefix: str) -> int:
    ids = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}
    return max(ids) + 1 if ids else 0


def vqvae_to_diffusers(codec: nn.Module, allow_inexact_encoder: bool = False) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of a diffusers ``VQModel`` equal to a taming-style codec (``enc``/``dec``)."""
    sd = dict(codec.state_dict())
    if not any(k.startswith("enc.encoder.") for k in sd) or not any(k.startswith("dec.decoder.") for k in sd):
        raise DiffusersExportError(f"{type(codec).__name__} has no taming 'enc.encoder'/'dec.decoder' modules to export")
    enc, dec = _strip(sd, "enc.encoder."), _strip(sd, "dec.decoder.")
    L = _levels(enc, "down.")
    if _levels(dec, "up.") != L:
        raise DiffusersExportError("encoder and decoder have a different number of resolution levels")
    if "enc.quantize.proj.weight" in sd and not allow_inexact_encoder:
        raise DiffusersExportError(
            "Gumbel encoder: diffusers' VQModel has no Gumbel quantizer, so the exported vqvae decodes "
            "exactly but encodes by nearest code instead of the Gumbel logits; the pipeline only decodes: "
            "pass allow_inexact_encoder=True (scripts/export_diffusers.py --allow-inexact-encoder) to export"
        )
    book_key = _codebook_key(sd)
    book = sd[book_key]
    q2f = getattr(codec, "quantize_to_full", None)
    if q2f is not None:
        book = book[q2f.to(book.device).long()]  # compact ids index the exported codebook directly
    sd = {k: v for k, v in sd.items() if not k.startswith("dec.quantize.")}
    sd[book_key] = book
    if int(sd["enc.quant_conv.weight"].shape[0]) != int(book.shape[1]):
        raise DiffusersExportError(
            f"quant_conv gives {sd['enc.quant_conv.weight'].shape[0]} channels but codes have {book.shape[1]}: "
            "a Gumbel codec with z_channels != embed_dim has no diffusers VQModel equivalent"
        )
    ch = [int(enc[f"down.{i}.block.0.conv1.weight"].shape[0]) for i in range(L)]
    layers = len({k.split(".")[3] for k in enc if k.startswith("down.0.block.")})
    config = {
        **_meta("VQModel"),
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
    return config, to_diffusers(sd, codec_key(L))


def text_encoder_to_diffusers(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of a ``transformers.CLIPTextModel`` equal to our CLIP text embedding."""
    emb = model.transformer.condition_emb
    cfg = getattr(emb, "config", None)
    if cfg is None or not hasattr(emb, "ln_final"):
        raise DiffusersExportError(f"condition embedding {type(emb).__name__} is not a CLIP text tower")
    if getattr(emb, "pick_last_embedding", False) or getattr(emb, "additional_last_embedding", False):
        raise DiffusersExportError("projected end-of-text CLIP features (pick_last_embedding / "
                                   "additional_last_embedding): the pipeline uses every position's feature")
    if getattr(emb, "_concat_twice", False) or not getattr(emb, "normalize", True):
        raise DiffusersExportError("CLIP features doubled (embed_dim 1024) or not normalised: the pipeline "
                                   "L2-normalises the 512-wide last hidden state")
    config = {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.width,
        "intermediate_size": 4 * cfg.width,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "max_position_embeddings": cfg.context_length,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": cfg.embed_dim,
        "attention_dropout": 0.0,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
        "torch_dtype": "float32",
    }
    return config, to_diffusers(emb.state_dict(), clip_text_key)


def learned_embeddings_to_diffusers(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """``LearnedClassifierFreeSamplingEmbeddings``: ``empty_text_embed`` (L, D) as float32, or not learnable
    (an empty ``embeddings`` tensor, what diffusers' class holds then)."""
    trans = model.transformer
    emb = getattr(trans, "empty_text_embed", None) if getattr(trans, "learnable_cf", False) else None
    cfg = _meta("LearnedClassifierFreeSamplingEmbeddings")
    if emb is None:
        cfg.update(learnable=False, hidden_size=None, length=None)
        return cfg, {"embeddings": torch.zeros(0)}
    cfg.update(learnable=True, hidden_size=int(emb.shape[1]), length=int(emb.shape[0]))
    return cfg, {"embeddings": emb.detach().float().contiguous()}


def scheduler_config(model: nn.Module) -> dict:
    """``VQDiffusionScheduler`` config: K+1 classes, T steps and the released alpha1 endpoints."""
    trans = model.transformer
    if getattr(trans, "objective", "vq_diffusion") != "vq_diffusion":
        raise ValueError(f"diffusers' VQDiffusionScheduler is the mask-and-replace chain; a model trained with "
                         f"objective {trans.objective!r} has no diffusers scheduler to export to")
    return {**_meta("VQDiffusionScheduler"), "num_vec_classes": int(trans.num_classes),
            "num_train_timesteps": int(trans.num_timesteps), **ALPHA1_ENDPOINTS}


def model_index() -> dict:
    """``model_index.json`` of a ``VQDiffusionPipeline``."""
    return {
        **_meta("VQDiffusionPipeline"),
        # the module that defines the class (diffusers >= 0.30 keeps it under pipelines.deprecated and
        # resolves a module path once VQDiffusionPipeline has been imported)
        "learned_classifier_free_sampling_embeddings": [LEARNED_EMBEDDINGS_MODULE, "LearnedClassifierFreeSamplingEmbeddings"],
        "scheduler": ["diffusers", "VQDiffusionScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "transformer": ["diffusers", "Transformer2DModel"],
        "vqvae": ["diffusers", "VQModel"],
    }


def _write(folder: Path, config: dict, weights: Optional[dict], config_name: str = "config.json",
           weights_name: str = "diffusion_pytorch_model.safetensors") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / config_name).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    if weights is not None:
        save_safetensors(weights, folder / weights_name, {"format": "pt"})


def export_diffusers(model: nn.Module, out_dir: str | Path, allow_inexact_encoder: bool = False) -> Path:
    """Write ``model`` (a text-to-image ``DALLE``) as a diffusers ``VQDiffusionPipeline`` folder.

    Every component is converted before anything is written, so a model diffusers cannot express
    leaves no partial folder behind.

    Raises:
        DiffusersExportError: naming the feature diffusers cannot express (see the module docstring).
    """
    out_dir = Path(out_dir)
    network = transformer_to_diffusers(model)  # first: it names class-conditional/unconditional models
    codec = getattr(model, "condition_codec", None)
    tokenizer = getattr(codec, "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "bpe_ranks") or not getattr(codec, "add_start_and_end", False):
        raise DiffusersExportError("the pipeline needs a CLIP BPE text codec (Tokenize with start and end tokens); "
                                   f"this model's condition codec is {type(codec).__name__}")
    parts = {
        "transformer": network,
        "vqvae": vqvae_to_diffusers(model.content_codec, allow_inexact_encoder),
        "learned_classifier_free_sampling_embeddings": learned_embeddings_to_diffusers(model),
    }
    text_cfg, text_sd = text_encoder_to_diffusers(model)
    for name, (cfg, sd) in parts.items():
        _write(out_dir / name, cfg, sd)
    _write(out_dir / "text_encoder", text_cfg, text_sd, weights_name="model.safetensors")
    write_clip_tokenizer(tokenizer, out_dir / "tokenizer", pad_id=int(codec.pad_value),
                         context_length=int(codec.context_length))
    _write(out_dir / "scheduler", scheduler_config(model), None, "scheduler_config.json")
    (out_dir / "model_index.json").write_text(json.dumps(model_index(), indent=2) + "\n", encoding="utf-8")
    return out_dir
