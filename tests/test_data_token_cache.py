"""Token cache: same tokens as encoding on the fly, conditions preserved, memory-mapped, guards; the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vqdiff.data.build import build_dataloader
from vqdiff.data.synthetic import ShapesDataset
from vqdiff.data.token_cache import TokenCacheDataset, write_token_cache
from vqdiff.modeling.codecs.image.taming_vqvae import TamingVQVAE
from vqdiff.utils.config import save_yaml_config

REPO = Path(__file__).resolve().parents[1]


def _taming_yaml(path: Path, n_embed: int = 16) -> Path:
    dd = dict(double_z=False, z_channels=8, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 1, 1],
              num_res_blocks=1, attn_resolutions=[], dropout=0.0)
    save_yaml_config({"model": {"target": "image_synthesis.taming.models.vqgan.VQModel", "params": {
        "ddconfig": dd, "n_embed": n_embed, "embed_dim": 8,
        "lossconfig": {"target": "taming.modules.losses.vqperceptual.DummyLoss"}}}}, path)
    return path


def _codec_config(tmp_path: Path) -> dict:
    return {"target": "image_synthesis.modeling.codecs.image_codec.taming_gumbel_vqvae.TamingVQVAE",
            "params": {"config_path": str(_taming_yaml(tmp_path / "taming.yaml")), "ckpt_path": None,
                       "num_tokens": 16, "quantize_number": 0, "mapping_path": None, "token_shape": [4, 4]}}


@pytest.fixture
def codec(tmp_path):
    torch.manual_seed(0)
    params = _codec_config(tmp_path)["params"]
    return TamingVQVAE(**params)


def test_cache_equals_on_the_fly_encoding(tmp_path, codec):
    ds = ShapesDataset(10, 16, split="all", seed=2)
    out = write_token_cache(ds, codec, tmp_path / "cache", batch_size=3, progress=False)
    cache = TokenCacheDataset(out)
    assert len(cache) == 10 and cache.token_shape == (4, 4)
    with torch.no_grad():
        ref = codec.get_tokens(torch.stack([ds[i]["image"] for i in range(10)]))["token"]
    got = torch.stack([cache[i]["content_token"] for i in range(10)])
    assert got.dtype == torch.long and torch.equal(got, ref)
    assert len(set(map(tuple, ref.tolist()))) > 1  # the check is not vacuous
    assert [cache[i]["text"] for i in range(10)] == [ds[i]["text"] for i in range(10)]
    assert [cache[i]["label"] for i in range(10)] == [ds[i]["label"] for i in range(10)]
    assert isinstance(cache.tokens, np.memmap) and cache.tokens.dtype == np.uint16
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_tokens"] == 16 and meta["num_items"] == 10 and meta["codec_class"] == "TamingVQVAE"
    assert len(meta["codec_weights_sha256"]) == 64


def test_cache_drop_caption_and_guards(tmp_path, codec):
    ds = ShapesDataset(4, 16, split="all")
    out = write_token_cache(ds, codec, tmp_path / "c", batch_size=4, progress=False, codec_config={"a": 1})
    item = TokenCacheDataset(out, drop_caption_rate=1.0)[0]
    assert item["text"] == "" and item["label"] == 1000
    assert TokenCacheDataset(out, drop_caption_rate=1.0, phase="val")[0]["text"] == ds[0]["text"]
    with pytest.raises(FileExistsError, match="overwrite"):
        write_token_cache(ds, codec, out, progress=False)
    TokenCacheDataset(out, expect_codec_config={"a": 1})
    with pytest.raises(ValueError, match="another codec"):
        TokenCacheDataset(out, expect_codec_config={"a": 2})
    (out / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match="meta.json"):
        TokenCacheDataset(out)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TokenCacheDataset(tmp_path / "nowhere")


def test_cache_through_build_dataloader_with_workers(tmp_path, codec):
    out = write_token_cache(ShapesDataset(6, 16, split="all"), codec, tmp_path / "c", batch_size=6, progress=False)
    cfg = {"dataloader": {"data_root": "/images/not/used", "batch_size": 3, "num_workers": 1, "train_datasets": [
        {"target": "vqdiff.data.token_cache.TokenCacheDataset", "params": {"cache_dir": str(out)}}]}}
    loader = build_dataloader(cfg)["train_loader"]
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["content_token"].shape == (3, 16)
    assert batches[0]["content_token"].dtype == torch.long and len(batches[0]["text"]) == 3


def test_build_token_cache_script(tmp_path):
    config = {"model": {"target": "vqdiff.Unused", "params": {"content_codec_config": _codec_config(tmp_path)}},
              "dataloader": {"batch_size": 2, "train_datasets": [
                  {"target": "vqdiff.data.synthetic.ShapesDataset",
                   "params": {"num_samples": 5, "resolution": 16, "split": "all"}}]}}
    save_yaml_config(config, tmp_path / "train.yaml")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "build_token_cache.py"), "--config",
                           str(tmp_path / "train.yaml"), "--out", str(tmp_path / "cache"), "--batch-size", "2",
                           "dataloader.train_datasets.0.params.num_samples=3"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cache = TokenCacheDataset(tmp_path / "cache")
    assert len(cache) == 3 and cache[0]["content_token"].shape == (16,)
    assert cache.meta["codec_config_sha256"] is not None
