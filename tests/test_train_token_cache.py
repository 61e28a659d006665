"""train.py trains from a token cache: on the tiny text config, a run whose train data set is the
TokenCacheDataset of the shapes gives the same losses, bit for bit, as the run that encodes the images
with the frozen codec at every step (the encoder is deterministic, the data order and RNG streams equal)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import train
from vqdiff.utils.tiny_parts import write_tiny_parts

REPO = Path(__file__).resolve().parents[1]

CFG = REPO / "configs" / "tiny_text_shapes.yaml"


def test_training_from_the_token_cache_equals_training_from_images(tmp_path, monkeypatch):
    from vqdiff.data.synthetic import ShapesDataset
    from vqdiff.data.token_cache import TokenCacheDataset, write_token_cache
    from vqdiff.utils.config import instantiate_from_config, load_yaml_config, save_yaml_config

    monkeypatch.chdir(tmp_path)
    write_tiny_parts(tmp_path)
    cfg = load_yaml_config(CFG)
    codec_cfg = cfg["model"]["params"]["content_codec_config"]
    codec = instantiate_from_config(codec_cfg, key_path="content_codec_config")
    train_params = dict(cfg["dataloader"]["train_datasets"][0]["params"])
    cache = write_token_cache(ShapesDataset(**train_params), codec, tmp_path / "cache", batch_size=3,
                              codec_config=codec_cfg, progress=False)
    assert len(TokenCacheDataset(cache)) == train_params["num_samples"]
    cfg["dataloader"]["train_datasets"] = [{"target": "vqdiff.data.token_cache.TokenCacheDataset",
                                            "params": {"cache_dir": str(cache), "expect_codec_config": codec_cfg}}]
    save_yaml_config(cfg, tmp_path / "cached.yaml")

    common = ["--seed", "0", "--no_progress_bar", "solver.max_iterations=4", "solver.validation_epochs=-1"]
    images = train.main(["--config_file", str(CFG), "--name", "images", *common])
    tokens = train.main(["--config_file", str(tmp_path / "cached.yaml"), "--name", "tokens", *common])
    assert len(images["losses"]) == 4 and all(torch.isfinite(torch.tensor(images["losses"])))
    assert tokens["losses"] == images["losses"]
    a = torch.load(tmp_path / "OUTPUT" / "images" / "checkpoint" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "OUTPUT" / "tokens" / "checkpoint" / "last.pth", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_cache_of_another_codec_is_refused(tmp_path):
    from vqdiff.data.synthetic import ShapesDataset
    from vqdiff.data.token_cache import TokenCacheDataset, write_token_cache

    class _Codec:
        token_shape = (2, 2)

        def get_number_of_tokens(self):
            return 4

        def get_tokens(self, images, **kw):
            return {"token": torch.zeros(images.shape[0], 4, dtype=torch.long)}

    cache = write_token_cache(ShapesDataset(4, 16), _Codec(), tmp_path / "c", codec_config={"target": "a"},
                              progress=False)
    with pytest.raises(ValueError, match="another codec config"):
        TokenCacheDataset(cache, expect_codec_config={"target": "b"})


def test_the_trainer_tells_the_cache_each_epoch(tmp_path, monkeypatch):
    """The cache draws its crops, captions and dropout per (seed, epoch, index): train.py must pass the epoch."""
    from vqdiff.data.synthetic import ShapesDataset
    from vqdiff.data.token_cache import TokenCacheDataset, write_token_cache
    from vqdiff.utils.config import instantiate_from_config, load_yaml_config, save_yaml_config

    monkeypatch.chdir(tmp_path)
    write_tiny_parts(tmp_path)
    cfg = load_yaml_config(CFG)
    codec = instantiate_from_config(cfg["model"]["params"]["content_codec_config"], key_path="content_codec_config")
    cache = write_token_cache(ShapesDataset(8, 16, split="train"), codec, tmp_path / "cache", progress=False)
    cfg["dataloader"]["train_datasets"] = [{"target": "vqdiff.data.token_cache.TokenCacheDataset",
                                            "params": {"cache_dir": str(cache)}}]
    save_yaml_config(cfg, tmp_path / "cached.yaml")
    epochs: list[int] = []
    original = TokenCacheDataset.set_epoch
    monkeypatch.setattr(TokenCacheDataset, "set_epoch", lambda self, e: (epochs.append(e), original(self, e)))
    out = train.main(["--config_file", str(tmp_path / "cached.yaml"), "--name", "epochs", "--seed", "0",
                      "--no_progress_bar", "solver.max_epochs=3", "solver.max_iterations=5",
                      "solver.validation_epochs=-1"])
    assert len(out["losses"]) == 5 and epochs == [0, 1, 2]  # 8 items / batch 4: 2 steps an epoch
