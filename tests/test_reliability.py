"""Reliability (issue 7) items not provoked elsewhere: size mismatches between the parts of a model
caught when it is built, class labels out of range, a checkpoint of another model, odd captions end to end.

Covered elsewhere: config target/params/types (test_config.py), missing data folders and bad images
(test_data.py), corrupt / unsafe checkpoints and atomic or disk-full saves (test_engine.py,
test_inference.py), NaN steps and SIGTERM (test_engine.py, test_train.py), caption tokenisation
(test_text_codec.py).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from inference_VQ_Diffusion import VQ_Diffusion
from test_inference import tiny_official
from vqdiff.inference.loading import build_model
from vqdiff.modeling.models.consistency import check_class_labels
from vqdiff.utils.config import ConfigError, load_yaml_config

TINY_CFG, TINY_CKPT = "config_tiny_text.yaml", "tiny_text_official.pth"
DIFF = "model.params.diffusion_config.params"
NET = DIFF + ".transformer_config.params"
CODEC = "model.params.content_codec_config.params"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture
def tiny_cfg(official_tiny_text) -> dict:
    return load_yaml_config(official_tiny_text / TINY_CFG)


def _params(cfg: dict, *path: str) -> dict:
    node = cfg["model"]["params"]
    for key in path:
        node = node[key]["params"]
    return node


def _build_error(cfg: dict) -> str:
    with pytest.raises(ConfigError) as e:
        build_model(cfg)
    return str(e.value)


# --------------------------------------------------------------------------------------------------
# sizes that must agree between the parts (checked at build time, before any data)
# --------------------------------------------------------------------------------------------------
def test_consistent_tiny_config_builds(tiny_cfg):
    model = build_model(copy.deepcopy(tiny_cfg))
    assert model.transformer.content_seq_len == 64 and model.content_codec.token_shape == (8, 8)


def test_token_shape_vs_content_seq_len_names_both(tiny_cfg):
    net = _params(tiny_cfg, "diffusion_config", "transformer_config")
    net["content_seq_len"], net["content_spatial_size"] = 100, [10, 10]
    _params(tiny_cfg, "diffusion_config", "content_emb_config")["spatial_size"] = (10, 10)
    msg = _build_error(tiny_cfg)
    assert f"{CODEC}.token_shape is [8, 8]" in msg and f"{NET}.content_seq_len is 100" in msg


def test_token_shape_vs_content_spatial_size_names_both(tiny_cfg):
    _params(tiny_cfg, "diffusion_config", "transformer_config")["content_spatial_size"] = [4, 16]
    msg = _build_error(tiny_cfg)
    assert f"{CODEC}.token_shape is [8, 8]" in msg and f"{NET}.content_spatial_size is [4, 16]" in msg


def test_position_grid_must_hold_the_sequence_but_may_be_larger(tiny_cfg):
    bigger = copy.deepcopy(tiny_cfg)
    _params(bigger, "diffusion_config", "content_emb_config")["spatial_size"] = (16, 16)  # like ImageNet/FFHQ
    assert build_model(bigger).transformer.transformer.content_emb.spatial_size == (16, 16)
    _params(tiny_cfg, "diffusion_config", "content_emb_config")["spatial_size"] = (4, 4)
    msg = _build_error(tiny_cfg)
    assert f"{DIFF}.content_emb_config.params.spatial_size is [4, 4]" in msg
    assert f"{NET}.content_seq_len is 64" in msg


def test_codec_quantize_number_vs_num_embed_names_both(tiny_cfg):
    _params(tiny_cfg, "diffusion_config", "content_emb_config")["num_embed"] = 50
    msg = _build_error(tiny_cfg)
    assert f"{CODEC}.quantize_number gives 40 image tokens" in msg
    assert f"{DIFF}.content_emb_config.params.num_embed is 50" in msg


def test_codec_num_tokens_when_quantize_number_is_zero(tiny_cfg):
    _params(tiny_cfg, "content_codec_config")["quantize_number"] = 0
    msg = _build_error(tiny_cfg)  # the codec now gives all 64 codes; the embedding has 40 rows
    assert f"{CODEC}.num_tokens (quantize_number is 0) gives 64 image tokens" in msg
    assert f"{DIFF}.content_emb_config.params.num_embed is 40" in msg


def test_text_embedding_width_vs_condition_dim_names_both(tiny_cfg):
    _params(tiny_cfg, "diffusion_config", "transformer_config")["condition_dim"] = 32
    msg = _build_error(tiny_cfg)
    assert f"{DIFF}.condition_emb_config.params builds a text embedding of width 64" in msg
    assert f"{NET}.condition_dim is 32" in msg


# --------------------------------------------------------------------------------------------------
# class labels
# --------------------------------------------------------------------------------------------------
def test_class_labels_out_of_range_are_refused(official_tiny_text):
    model = build_model(load_yaml_config(tiny_official(official_tiny_text, "config_imagenet.yaml")))
    null = model.null_label
    assert null == 1000
    for bad in (null + 1, -1):
        with pytest.raises(ValueError, match=rf"class label out of range: got \[{bad}\].*\[0, 999\]"):
            model.generate_content(batch={"label": [3, bad]}, filter_ratio=0)
        with pytest.raises(ValueError, match="class label out of range"):
            model({"label": torch.tensor([bad]), "content_token": torch.zeros(1, model.transformer.content_seq_len, dtype=torch.long)})
    with pytest.raises(ValueError, match="negative_prompt class label out of range"):
        model.generate_content(batch={"label": [3]}, filter_ratio=0, guidance_scale=2.0,
                               negative_prompt=5000, sample_type="top0.85r,fast50")
    # the last real class and the "no class" label are accepted
    out = model.generate_content(batch={"label": [null - 1, null]}, filter_ratio=0, sample_type="top0.85r,fast50")
    assert out["content_token"].shape == (2, model.transformer.content_seq_len)
    check_class_labels(torch.tensor([0, 999, 1000]), 1000)


# --------------------------------------------------------------------------------------------------
# a checkpoint of another model
# --------------------------------------------------------------------------------------------------
def test_checkpoint_of_another_model_reports_keys_and_shapes_summarised(tiny_cfg, official_tiny_text):
    other = copy.deepcopy(tiny_cfg)
    net = _params(other, "diffusion_config", "transformer_config")
    net["n_layer"], net["n_embd"], net["n_head"] = 3, 32, 2
    _params(other, "diffusion_config", "content_emb_config")["embed_dim"] = 32
    foreign = build_model(other)
    torch.save({"model": foreign.state_dict(), "last_epoch": 5}, official_tiny_text / "other.pth")
    with pytest.warns(UserWarning, match="with a different shape") as rec:
        eng = VQ_Diffusion(config=TINY_CFG, path="other.pth")
    rep = eng.load_report
    assert not rep.ok and rep.epoch == 5 and not rep.used_ema
    # the third block exists only in the checkpoint: reported once as a group, not key by key
    assert rep.unexpected and all(k.startswith("transformer.transformer.blocks.2.") for k in rep.unexpected)
    assert f"{len(rep.unexpected)} unexpected (ignored):\n    transformer.transformer.blocks.*  [{len(rep.unexpected)}]" \
        in str(rep)
    assert any(s.startswith("transformer.transformer.content_emb.emb.weight: checkpoint (41, 32) vs model (41, 64)")
               for s in rep.shape_mismatch)
    text = str(rec[0].message)
    assert f"{len(rep.shape_mismatch)} with a different shape (not loaded)" in text
    # each mismatched key is reported once, and the cut list says how many it left out
    assert not {s.split(":")[0] for s in rep.shape_mismatch} & set(rep.missing)
    assert f"... and {len(rep.shape_mismatch) - 10} more" in text
    assert len(text.splitlines()) < 40 < len(rep.shape_mismatch) + len(rep.unexpected)
    # the codec (the same in both models) was loaded
    own = eng.model.state_dict()
    for k, v in foreign.state_dict().items():
        if k.startswith("content_codec."):
            assert torch.equal(own[k].cpu(), v), k


def test_checkpoint_of_an_unrelated_network_is_all_missing_and_unexpected(official_tiny_text):
    torch.save(nn.Linear(3, 2).state_dict(), official_tiny_text / "linear.pth")
    with pytest.warns(UserWarning, match="missing"):
        eng = VQ_Diffusion(config=TINY_CFG, path="linear.pth")
    rep = eng.load_report
    assert sorted(rep.unexpected) == ["bias", "weight"]
    assert set(rep.missing) == set(eng.model.state_dict())  # nothing matched, and it says so
    assert len(rep.missing) > 20 and len(str(rep).splitlines()) < 40


# --------------------------------------------------------------------------------------------------
# odd captions through the tokenizer and a tiny model
# --------------------------------------------------------------------------------------------------
def test_odd_captions_go_through_tokenize_and_the_model(official_tiny_text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eng = VQ_Diffusion(config=TINY_CFG, path=TINY_CKPT)
    texts = ["", "a very long caption " * 200, b"a bird \xff\xfe\xc3(", "red\x00\x07\x1b\tcircle\n\u200b"]
    with pytest.warns(UserWarning, match="truncat"):  # the 800-word caption is cut to 77 tokens
        tok = eng.model.prepare_condition(None, condition=texts)["condition_token"]
    assert tok.shape == (4, 77)
    out = eng.model.generate_content(batch={"text": texts}, filter_ratio=0, sample_type="top0.85r,fast50",
                                     generator=torch.Generator().manual_seed(0))
    assert out["content_token"].shape == (4, 64) and out["content"].shape == (4, 3, 64, 64)
    assert torch.isfinite(out["content"].float()).all()
    loss = eng.model({"text": texts, "content_token": out["content_token"]}, return_loss=True)["loss"]
    assert torch.isfinite(loss)


def test_truncated_or_junk_checkpoint_through_inference_loading_says_corrupt(official_tiny_text):
    from vqdiff.inference.loading import read_checkpoint_file

    data = (official_tiny_text / TINY_CKPT).read_bytes()
    (official_tiny_text / "trunc.pth").write_bytes(data[: len(data) // 2])
    (official_tiny_text / "junk.pth").write_bytes(b"not a checkpoint at all")
    for name in ("trunc.pth", "junk.pth"):
        with pytest.raises((RuntimeError, ValueError)) as e:
            read_checkpoint_file(official_tiny_text / name)
        assert name in str(e.value) and "corrupt" in str(e.value) and "unpickl" not in str(e.value)
