"""Several captions per image in the token cache, drawn per (seed, epoch, index); the shapes' partial captions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vqdiff.data.synthetic import ShapeSpec, ShapesDataset, make_caption, partial_captions
from vqdiff.data.token_cache import TokenCacheDataset, write_token_cache
from vqdiff.data.token_cache_format import FORMAT_VERSION


class PoolCodec:
    """Deterministic stand-in codec: 4x4 grid of mean brightness levels (16 codes)."""

    token_shape = (4, 4)

    def get_number_of_tokens(self):
        return 16

    def get_tokens(self, images, **kw):
        pooled = torch.nn.functional.adaptive_avg_pool2d(images.float().mean(1, keepdim=True), 4)
        return {"token": (pooled.flatten(1) / 256 * 16).long().clamp(0, 15)}


def _write(ds, tmp_path, name="cache"):
    return write_token_cache(ds, PoolCodec(), tmp_path / name, batch_size=5, progress=False)


def _texts(out, epoch, seed=0):
    cache = TokenCacheDataset(out, seed=seed)  # a fresh reader, as after a restart
    cache.set_epoch(epoch)
    return [cache[i]["text"] for i in range(len(cache))]


# ------------------------------------------------------------------------------------------- partial captions
def test_partial_captions_name_one_two_or_all_three_attributes():
    spec = ShapeSpec("red", "circle", "top left")
    caps = partial_captions(spec)
    assert caps == [
        "a red shape on a gray background", "a circle on a gray background",
        "a shape at the top left on a gray background", "a red circle on a gray background",
        "a red shape at the top left on a gray background", "a circle at the top left on a gray background",
        make_caption(spec)]
    full, partial = ShapesDataset(6, 16, seed=1), ShapesDataset(6, 16, seed=1, captions="partial")
    for i in range(6):  # the same images; the partial item carries every partial caption of its shape
        assert torch.equal(full[i]["image"], partial[i]["image"])
        assert partial[i]["text"] == partial_captions(full.spec(i)) and partial[i]["text"][-1] == full[i]["text"]
    with pytest.raises(ValueError, match="captions must be one of"):
        ShapesDataset(4, 16, captions="some")


# ------------------------------------------------------------------------------------------- the cache
def test_cache_keeps_every_caption_and_draws_one_per_epoch(tmp_path):
    ds = ShapesDataset(40, 16, seed=2, captions="partial")
    out = _write(ds, tmp_path)
    cache = TokenCacheDataset(out, seed=0)
    assert cache.items["captions"] == [ds[i]["text"] for i in range(40)]  # round trip: all 7 per image
    assert np.asarray(cache.samples)[:, 1].tolist() == [-1] * 40  # drawn at each access
    for epoch in (0, 1):
        texts = _texts(out, epoch)
        assert texts == _texts(out, epoch)  # a function of (seed, epoch, index): resume reads the same
        assert all(t in ds[i]["text"] for i, t in enumerate(texts))
    changed = sum(a != b for a, b in zip(_texts(out, 0), _texts(out, 1)))
    assert changed >= 20  # 6/7 of the 40 items are expected to change between two epochs
    seen = {t for e in range(30) for t in _texts(out, e)[:1]}
    assert seen == set(ds[0]["text"])  # over epochs every caption of an image is drawn
    assert _texts(out, 0, seed=0) != _texts(out, 0, seed=1)


def test_mixed_single_and_listed_captions_and_bad_lists(tmp_path):
    class Mixed(torch.utils.data.Dataset):
        def __init__(self, texts):
            self.texts = texts

        def __len__(self):
            return len(self.texts)

        def __getitem__(self, i):
            return {"image": torch.full((3, 16, 16), 40.0 * i), "text": self.texts[i]}

    out = _write(Mixed(["one", ["a", "b"], "two"]), tmp_path)
    cache = TokenCacheDataset(out, seed=0)
    assert cache.items["captions"] == [["one"], ["a", "b"], ["two"]]
    assert np.asarray(cache.samples)[:, 1].tolist() == [0, -1, 0]
    assert {_texts(out, e)[1] for e in range(20)} == {"a", "b"} and {_texts(out, e)[0] for e in range(5)} == {"one"}
    with pytest.raises(ValueError, match="item 1's 'text' must be a str or a non-empty list of str"):
        _write(Mixed(["one", []]), tmp_path, "bad")


def test_a_one_caption_cache_written_before_lists_still_loads(tmp_path):
    """The layout the writer produced for one caption per item before lists existed (same format version)."""
    ds = ShapesDataset(6, 16, seed=3)
    old = tmp_path / "old"
    old.mkdir()
    tokens = np.stack([PoolCodec().get_tokens(ds[i]["image"][None])["token"].numpy() for i in range(6)])
    np.save(old / "tokens.npy", tokens.astype(np.uint16))  # (6, 1, 16)
    np.save(old / "samples.npy", np.asarray([(i, 0) for i in range(6)], dtype=np.int64))
    (old / "items.json").write_text(json.dumps({"captions": [[ds[i]["text"]] for i in range(6)],
                                                "labels": [ds[i]["label"] for i in range(6)]}))
    (old / "meta.json").write_text(json.dumps({
        "format_version": FORMAT_VERSION, "num_items": 6, "num_images": 6, "num_views": 1, "view_kinds": ["item"],
        "token_shape": [4, 4], "num_tokens": 16, "dtype": "uint16", "encoding": "unknown", "seed": 0,
        "drop_caption_rate": 0.0, "null_label": None, "bad_images": [], "codec_class": "PoolCodec",
        "codec_config_sha256": None, "codec_weights_sha256": None, "dataset_class": "ShapesDataset"}))
    for epoch in (0, 4):
        assert _texts(old, epoch) == [ds[i]["text"] for i in range(6)]
    # and the writer still produces exactly that layout for one caption per item
    new = TokenCacheDataset(_write(ds, tmp_path), seed=0)
    assert new.items["captions"] == [[ds[i]["text"]] for i in range(6)]
    assert np.asarray(new.samples).tolist() == [[i, 0] for i in range(6)]
    assert np.array_equal(np.asarray(new.tokens), tokens)


def test_a_list_of_captions_without_the_cache_is_refused_by_name():
    from _fake_parts import dalle

    with pytest.raises(TypeError, match="train through a token cache"):
        dalle().prepare_condition({"text": [["a", "b"]]})
