"""The parts a demo run builds: a random frozen CLIP text tower, the VQ-VAE, and the text-to-image config.

Every function here is a step a user's own run would take too (a codec trained with
``vqdiff.engine.codec_training``, a config in the official layout trained by ``train.py``); the demo
only chooses tiny sizes. ``configs/tiny_vqvae_shapes.yaml`` beside the package (a source checkout, as
``install_req.sh`` installs it) is the codec's recipe.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch

from vqdiff.demo.presets import DemoPreset
from vqdiff.utils.config import load_yaml_config

__all__ = ["CODEC_CONFIG", "log", "make_random_clip", "train_codec", "diffusion_config"]

CODEC_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny_vqvae_shapes.yaml"


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_random_clip(path: Path, width: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A CLIP text tower with the real 49408-token vocabulary and random weights, saved as a state dict.

    The token embeddings are drawn large (std 1) next to the other weights (std 0.02), so each output
    position stays mostly its own word: with CLIP's own scale (0.02) the causal attention and MLPs of a
    random tower mix the whole prefix into every later word, and the words said last (the position, after
    colour and shape) come out as new vectors for every unseen colour/shape/position combination -- the
    opposite of what a trained CLIP gives and of what the held-out test needs.
    """
    from vqdiff.utils.tiny_parts import random_clip_text_tower

    model = random_clip_text_tower(width, layers, seed=seed, other_std=0.01, token_std=1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def train_codec(out: Path, steps: int, seed: int, config_path: Optional[Path] = None) -> dict:
    """Train (or, when a finished run is in ``out``, reuse) the VQ-VAE; returns its content_codec_config.

    ``config_path``: the codec recipe (default :data:`CODEC_CONFIG`)."""
    from vqdiff.engine.codec_training import train_vqvae

    if (out / "configs" / "codec.yaml").is_file() and (out / "checkpoint" / "last.pth").is_file():
        log(f"VQ-VAE: reusing the finished run in {out}")
        return load_yaml_config(out / "configs" / "codec.yaml")["content_codec_config"]
    config_path = Path(config_path or CODEC_CONFIG)
    if not config_path.is_file():
        raise FileNotFoundError(f"the demo's codec recipe '{config_path}' is missing: run the demo from a source "
                                "checkout (bash install_req.sh installs it editable) or pass config_path")
    result = train_vqvae(load_yaml_config(config_path), output_dir=out, max_steps=steps, seed=seed)
    log(f"VQ-VAE: reconstruction L1 {result['first']:.3f} -> {result['last']:.3f} in {result['seconds']:.0f} s")
    return load_yaml_config(out / "configs" / "codec.yaml")["content_codec_config"]


def diffusion_config(codec_cfg: dict, clip_path: Path, cache_dir: Path, p: DemoPreset, seed: int) -> dict:
    """The text-to-image config of the demo, in the official layout with vqdiff targets."""
    codec_params = codec_cfg["params"] if "params" in codec_cfg else codec_cfg
    K = int(codec_params.get("quantize_number") or codec_params["num_tokens"])
    h, w = codec_params["token_shape"]
    clip_width = int(torch.load(clip_path, weights_only=True)["positional_embedding"].shape[1])
    return {
        "model": {
            "target": "vqdiff.modeling.models.dalle.DALLE",
            "params": {
                "content_info": {"key": "image"},
                "condition_info": {"key": "text"},
                "learnable_cf": True,
                "content_codec_config": codec_cfg,
                "condition_codec_config": {
                    "target": "vqdiff.modeling.codecs.text.tokenize.Tokenize",
                    "params": {"context_length": p.context_length, "add_start_and_end": True, "with_mask": True, "pad_value": 0,
                               "clip_embedding": False,
                               "tokenizer_config": {"target": "vqdiff.modeling.codecs.text.bpe.SimpleTokenizer",
                                                    "params": {"end_idx": 49152}}},
                },
                "diffusion_config": {
                    "target": "vqdiff.modeling.diffusion.diffusion_transformer.DiffusionTransformer",
                    "params": {
                        "diffusion_step": 100, "alpha_init_type": "alpha1", "auxiliary_loss_weight": 5.0e-4,
                        "adaptive_auxiliary_loss": True, "mask_weight": [1, 1], "learnable_cf": True,
                        "condition_padding_mask": p.padding_mask,
                        "condition_emb_config": {
                            "target": "vqdiff.modeling.embeddings.clip_text_embedding.CLIPTextEmbedding",
                            "params": {"clip_name": "ViT-B/32", "clip_path": str(clip_path), "num_embed": 49408,
                                       "normalize": True, "pick_last_embedding": False, "keep_seq_len_dim": False,
                                       "additional_last_embedding": False, "embed_dim": clip_width},
                        },
                        "transformer_config": {
                            "target": "vqdiff.modeling.transformers.networks.Text2ImageTransformer",
                            "params": {"attn_type": "selfcross", "n_layer": p.layers, "condition_seq_len": p.context_length,
                                       "content_seq_len": h * w, "content_spatial_size": [h, w], "n_embd": p.width,
                                       "condition_dim": clip_width, "n_head": p.heads, "attn_pdrop": 0.0,
                                       "resid_pdrop": 0.0, "block_activate": "GELU2",
                                       "timestep_type": "adalayernorm", "mlp_hidden_times": 4},
                        },
                        "content_emb_config": {
                            "target": "vqdiff.modeling.embeddings.dalle_mask_image_embedding.DalleMaskImageEmbedding",
                            "params": {"num_embed": K, "spatial_size": [h, w], "embed_dim": p.width,
                                       "trainable": True, "pos_emb_type": "embedding"},
                        },
                    },
                },
            },
        },
        "solver": {
            "base_lr": p.lr / 10, "adjust_lr": "none", "max_epochs": 1000, "max_iterations": p.iters,
            "save_epochs": 1000, "validation_epochs": 1000, "sample_iterations": 10**9,
            # a short run: average over the last ~100 steps, not over the whole run since random init
            "ema": {"decay": 0.99, "update_interval": 1, "device": "cpu"},
            "clip_grad_norm": {"target": "vqdiff.engine.clip_grad_norm.ClipGradNorm",
                               "params": {"start_iteration": 0, "end_iteration": -1, "max_norm": 1.0}},
            "optimizers_and_schedulers": [{
                "name": "none",
                "optimizer": {"target": "torch.optim.AdamW", "params": {"betas": [0.9, 0.96], "weight_decay": 0.01}},
                "scheduler": {"step_iteration": 1,
                              "target": "vqdiff.engine.lr_scheduler.CosineAnnealingLRWithWarmup",
                              "params": {"min_lr": p.lr / 20, "warmup_lr": p.lr, "warmup": max(1, p.iters // 10),
                                         "T_max": p.iters}},
            }],
        },
        "dataloader": {
            "batch_size": p.batch, "num_workers": 0,
            "train_datasets": [{"target": "vqdiff.data.token_cache.TokenCacheDataset",
                                "params": {"cache_dir": str(cache_dir), "drop_caption_rate": 0.1}}],
            "validation_datasets": [],
        },
    }
