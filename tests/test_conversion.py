"""Checkpoint conversion (official -> vqdiff / safetensors). The diffusers export and import are tested in
tests/test_diffusers_export.py and tests/test_diffusers_import.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from inference_VQ_Diffusion import VQ_Diffusion
from test_inference import FAST, TINY_CFG, TINY_CKPT, _one_thread  # noqa: F401
from vqdiff.inference.conversion import convert_file, load_safetensors, merged_weights, save_safetensors

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
