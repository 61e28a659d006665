"""Checkpoint conversion (official -> vqdiff / safetensors) and the diffusers VQDiffusionPipeline export,
checked by strict loading into diffusers' own classes and by numerical parity with our modules."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from inference_VQ_Diffusion import VQ_Diffusion
from test_inference import FAST, TINY_CFG, TINY_CKPT, _one_thread, official_layout_checkpoint, tiny_official  # noqa: F401
from vqdiff.inference.conversion import convert_file, load_safetensors, merged_weights, save_safetensors
from vqdiff.inference.diffusers_export import export_diffusers
from vqdiff.utils.config import load_yaml_config, save_yaml_config

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------------------
# official -> vqdiff / safetensors
# --------------------------------------------------------------------------------------------------
def test_convert_official_checkpoint_and_safetensors_round_trip(official_tiny_text):
    conv = _script("convert_official_checkpoint")
    assert conv.main([TINY_CKPT, "--out", "conv.pth", "--safetensors", "w.safetensors"]) == 0
    src = torch.load(TINY_CKPT, weights_only=True)
    out = torch.load("conv.pth", weights_only=True)
    assert set(out) == {"model", "ema", "last_epoch", "last_iter"} and out["last_epoch"] == 7
    for k in src["model"]:
        assert torch.equal(out["model"][k], src["model"][k])
    sd, meta = load_safetensors("w.safetensors")
    expected = merged_weights(src["model"], src["ema"])
    assert set(sd) == set(expected) and meta["last_epoch"] == "7" and meta["ema_merged"] == "True"
    for k, v in expected.items():
        assert sd[k].dtype == v.dtype and torch.equal(sd[k], v), k
    # both files load with no missing/unexpected keys and give the very same samples
    kw = dict(truncation_rate=0.9, save_root=None, batch_size=2, fast=FAST, seed=5)
    ref = VQ_Diffusion(TINY_CFG, TINY_CKPT).inference_generate_sample_with_condition("a dog", **kw)
    for path in ("conv.pth", "w.safetensors"):
        eng = VQ_Diffusion(TINY_CFG, path)
        assert eng.load_report.ok, str(eng.load_report)
        ims = eng.inference_generate_sample_with_condition("a dog", **kw)
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ims, ref))


def test_safetensors_keeps_shared_tensors_apart(tmp_path):
    shared = torch.arange(6.0).reshape(2, 3)
    sd = {"enc.quantize.embed.weight": shared, "dec.quantize.embed.weight": shared, "x": torch.ones(2, dtype=torch.float64)}
    save_safetensors(sd, tmp_path / "s.safetensors", {"k": 1})
    back, meta = load_safetensors(tmp_path / "s.safetensors")
    assert meta == {"k": "1"} and all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in sd.items())


def test_convert_refuses_unsafe_pickle_unless_allowed(official_tiny_text):
    import argparse

    ckpt = torch.load(TINY_CKPT, weights_only=True)
    ckpt["optimizer_and_scheduler"] = {"none": argparse.Namespace(lr=3e-6)}
    torch.save(ckpt, "legacy.pth")
    with pytest.raises(RuntimeError, match="--allow-unsafe-pickle"):
        convert_file("legacy.pth", "c.pth")
    out = convert_file("legacy.pth", "c.pth", allow_unsafe_pickle=True)
    assert "optimizer_and_scheduler" not in out
    assert set(torch.load("c.pth", weights_only=True)) == {"model", "ema", "last_epoch", "last_iter"}


# --------------------------------------------------------------------------------------------------
# diffusers export
# --------------------------------------------------------------------------------------------------
def _learned_embeddings_class():
    """diffusers' ``LearnedClassifierFreeSamplingEmbeddings``. Its module imports two ``transformers``
    names at the top; when transformers is not installed, the module's own source is run with stand-ins
    for those two names (the class itself does not use them)."""
    try:
        from diffusers.pipelines.deprecated.vq_diffusion.pipeline_vq_diffusion import (
            LearnedClassifierFreeSamplingEmbeddings,
        )

        return LearnedClassifierFreeSamplingEmbeddings
    except ImportError:
        pass
    import diffusers

    path = Path(diffusers.__file__).parent / "pipelines" / "deprecated" / "vq_diffusion" / "pipeline_vq_diffusion.py"
    stand_in = types.ModuleType("transformers")
    stand_in.CLIPTextModel = stand_in.CLIPTokenizer = object
    mod = types.ModuleType("vqdiff_test_pipeline_vq_diffusion")
    mod.__package__ = "diffusers.pipelines.deprecated.vq_diffusion"
    mod.__file__ = str(path)
    saved = sys.modules.get("transformers")
    sys.modules["transformers"] = stand_in
    try:
        exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), mod.__dict__)
    finally:
        if saved is None:
            del sys.modules["transformers"]
        else:
            sys.modules["transformers"] = saved
    return mod.LearnedClassifierFreeSamplingEmbeddings


def _load(cls, folder: Path):
    from safetensors.torch import load_file

    cfg = json.loads((folder / "config.json").read_text())
    model = cls.from_config(cfg)
    model.load_state_dict(load_file(str(folder / "diffusion_pytorch_model.safetensors")), strict=True)
    return model.eval()


def _export_and_load(engine: VQ_Diffusion, out: Path):
    diffusers = pytest.importorskip("diffusers")
    export_diffusers(engine.model, out)
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "VQDiffusionPipeline"
    assert index["transformer"] == ["diffusers", "Transformer2DModel"] and index["vqvae"] == ["diffusers", "VQModel"]
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    diffusers.VQDiffusionScheduler.from_config(sched)
    trans = _load(diffusers.Transformer2DModel, out / "transformer")
    vq = _load(diffusers.VQModel, out / "vqvae")
    return trans, vq


@torch.no_grad()
def test_diffusers_export_of_the_official_tiny_model(official_tiny_text):
    eng = VQ_Diffusion(TINY_CFG, TINY_CKPT, device="cpu")
    trans, vq = _export_and_load(eng, official_tiny_text / "hf")
    assert trans.is_input_vectorized and trans.config.num_vector_embeds == 41 and trans.config.sample_size == 8
    emb_cfg = json.loads((official_tiny_text / "hf" / "learned_classifier_free_sampling_embeddings" / "config.json").read_text())
    assert emb_cfg["learnable"] is False  # this checkpoint has no learned null text

    # the exported transformer computes our log p(x0 | x_t) (without the [MASK] row)
    diff = eng.model.transformer
    K = diff.num_classes - 1
    g = torch.Generator().manual_seed(0)
    x_t = torch.randint(0, K + 1, (2, 64), generator=g)
    cond = torch.randn(2, 77, 64, generator=g)
    for step in (3, 77):  # diffusers' AdaLayerNorm takes one timestep for the whole batch
        ours = diff.predict_start_index(x_t, cond, torch.full((2,), step))[:, :K]
        theirs = trans(x_t, encoder_hidden_states=cond, timestep=torch.tensor(step)).sample
        torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)

    # the exported VQModel decodes our compact token ids to our images (the token map is baked in)
    tokens = torch.randint(0, K, (2, 64), generator=g)
    ours_img = eng.model.content_codec.decode(tokens)  # (B, 3, 64, 64) in [0, 255]
    emb = vq.quantize.get_codebook_entry(tokens, shape=(2, 8, 8, vq.config.vq_embed_dim))
    theirs_img = (vq.decode(emb, force_not_quantize=True).sample.clamp(-1, 1) + 1) * 127.5
    torch.testing.assert_close(theirs_img, ours_img, rtol=1e-3, atol=1e-2)


@torch.no_grad()
def test_diffusers_export_of_a_learnable_cf_model(official_tiny_text):
    cfg = tiny_official(official_tiny_text, "configs__coco_tune.yaml")
    data = load_yaml_config(cfg)
    data["model"]["params"]["diffusion_config"]["params"]["transformer_config"]["params"]["mlp_hidden_times"] = 4
    save_yaml_config(data, cfg)  # diffusers' blocks have a 4 x n_embd MLP
    official_layout_checkpoint(cfg, official_tiny_text / "learn.pth")
    eng = VQ_Diffusion(str(cfg), "learn.pth", device="cpu")
    trans, vq = _export_and_load(eng, official_tiny_text / "hf")
    cls = _learned_embeddings_class()
    emb = _load(cls, official_tiny_text / "hf" / "learned_classifier_free_sampling_embeddings")
    assert emb.learnable and emb.embeddings.shape == (77, 64)
    torch.testing.assert_close(emb.embeddings, eng.model.transformer.empty_text_embed.float())
    assert vq.config.num_vq_embeddings == 64 and trans.config.num_layers == 1


def test_diffusers_export_refuses_what_diffusers_cannot_express(official_tiny_text):
    pytest.importorskip("diffusers")
    cfg = tiny_official(official_tiny_text, "configs__coco.yaml")  # mlp_hidden_times 2
    official_layout_checkpoint(cfg, official_tiny_text / "t.pth")
    with pytest.raises(ValueError, match="mlp_hidden_times = 2"):
        export_diffusers(VQ_Diffusion(str(cfg), "t.pth", device="cpu").model, official_tiny_text / "hf")
    cfg = tiny_official(official_tiny_text, "config_imagenet.yaml")
    official_layout_checkpoint(cfg, official_tiny_text / "c.pth")
    eng = VQ_Diffusion(str(cfg), "c.pth", device="cpu")
    with pytest.raises(ValueError, match="text-to-image"):
        export_diffusers(eng.model, official_tiny_text / "hf")


def test_export_script(official_tiny_text):
    pytest.importorskip("diffusers")
    assert _script("export_diffusers").main(["--config", TINY_CFG, "--ckpt", TINY_CKPT, "--out", "hf2"]) == 0
    for sub in ("transformer", "vqvae", "learned_classifier_free_sampling_embeddings"):
        assert (official_tiny_text / "hf2" / sub / "config.json").is_file()
