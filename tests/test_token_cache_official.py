"""Issue 15 part C: training tokenisation as official.

- Gumbel codecs: training steps sample codes exactly as the official encoder (same random call, same
  distribution), every other use takes the argmax (the fixture's deterministic ``content_token``).
- Token cache: every caption of an image, several crops, picks per epoch at read time, caption/label
  dropout at read time only, old caches refused.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader

from conftest import fixtures_dir
from vqdiff.data.build import build_datasets, collate_batch
from vqdiff.data.coco import CocoDataset
from vqdiff.data.cub200 import Cub200Dataset
from vqdiff.data.imagenet import ImageNetDataset
from vqdiff.data.layouts import write_coco, write_cub200, write_imagenet
from vqdiff.data.synthetic import ShapesDataset
from vqdiff.data.token_cache import TokenCacheDataset, set_dataset_epoch, write_token_cache
from vqdiff.modeling.codecs.image.quantizers import GumbelQuantize
from vqdiff.modeling.codecs.image.taming_vqvae import TamingGumbelVQVAE
from vqdiff.utils.config import ConfigError, instantiate_from_config, load_yaml_config, save_yaml_config

REPO = Path(__file__).resolve().parents[1]
SIZE = 32  # preprocessor output; the layouts' images are 40x40, so train crops vary

def _official_codec(**overrides) -> TamingGumbelVQVAE:
    cfg = load_yaml_config("config_tiny_text.yaml")["model"]["params"]["content_codec_config"]
    cfg["params"].update(overrides)
    return instantiate_from_config(cfg)


# ------------------------------------------------------------------------------------------------
# Gumbel encoding
# ------------------------------------------------------------------------------------------------
def test_gumbel_argmax_is_the_default_and_equals_the_fixture(official_tiny_text):
    codec = _official_codec()
    expected = torch.load("expected.pt", weights_only=True)
    assert (codec.encode_mode, codec.train_encode_mode) == ("argmax", "sample")
    a = codec.get_tokens(expected["images"])["token"]
    torch.manual_seed(123)
    b = codec.get_tokens(expected["images"])["token"]
    assert torch.equal(a, expected["content_token"]) and torch.equal(b, a)


def test_gumbel_training_encoding_samples_per_seed(official_tiny_text):
    codec = _official_codec()
    x = torch.load("expected.pt", weights_only=True)["images"]

    def draw(seed):
        return codec.get_tokens(x, for_training=True, generator=torch.Generator().manual_seed(seed))["token"]

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))
    assert draw(0).shape == (2, 64) and int(draw(0).max()) < codec.get_number_of_tokens()
    # the global RNG feeds the draw when no generator is given, as in the official code
    torch.manual_seed(5)
    g1 = codec.get_tokens(x, for_training=True)["token"]
    torch.manual_seed(5)
    assert torch.equal(codec.get_tokens(x, for_training=True)["token"], g1)


def test_gumbel_draw_is_the_official_random_call():
    """Same RNG state -> same codes as taming's eval-mode GumbelQuantize (F.gumbel_softmax, hard, argmax)."""
    q = GumbelQuantize(num_hiddens=4, embedding_dim=3, n_embed=7).eval()
    z = torch.randn(2, 4, 5, 6)
    torch.manual_seed(11)
    official = F.gumbel_softmax(q.proj(z), tau=q.temperature, dim=1, hard=True).argmax(dim=1)
    torch.manual_seed(11)
    ours = q.get_indices(z, sample=True)
    assert torch.equal(ours, official)
    assert not torch.equal(ours, q.get_indices(z))  # the draw is not the argmax here


def test_gumbel_draw_frequencies_follow_softmax_of_the_logits():
    q = GumbelQuantize(num_hiddens=2, embedding_dim=2, n_embed=5)
    with torch.no_grad():
        q.proj.weight.copy_(torch.tensor([[1.0, 0], [0.5, 0], [0, 0], [-0.5, 0], [2.0, 0]])[:, :, None, None])
        q.proj.bias.zero_()
    n = 200 * 200
    z = torch.zeros(1, 2, 200, 200)
    z[:, 0] = 1.0  # logits = [1, 0.5, 0, -0.5, 2] at every position
    idx = q.get_indices(z, sample=True, generator=torch.Generator().manual_seed(3))
    freq = torch.bincount(idx.reshape(-1), minlength=5).double() / n
    p = torch.softmax(torch.tensor([1.0, 0.5, 0.0, -0.5, 2.0], dtype=torch.float64), 0)
    sigma = (p * (1 - p) / n).sqrt()
    assert torch.all((freq - p).abs() < 5 * sigma), (freq, p)


def test_encode_modes_are_checked_and_the_legacy_switch_sets_both(official_tiny_text):
    with pytest.raises(ConfigError, match="encode_mode must be one of"):
        _official_codec(encode_mode="gumbel")
    codec = _official_codec(sample_tokens=True)
    assert (codec.encode_mode, codec.train_encode_mode) == ("sample", "sample")
    codec = _official_codec(sample_tokens=False)
    assert (codec.encode_mode, codec.train_encode_mode) == ("argmax", "argmax")
    x = torch.load("expected.pt", weights_only=True)["images"]
    assert torch.equal(codec.get_tokens(x, for_training=True)["token"], codec.get_tokens(x)["token"])


def test_the_model_samples_codes_in_training_and_takes_the_argmax_in_eval(official_tiny_text):
    from vqdiff.inference.loading import build_model

    model = build_model(load_yaml_config("config_tiny_text.yaml"))
    expected = torch.load("expected.pt", weights_only=True)
    batch = {"image": expected["images"]}
    model.train()
    draws = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        draws.append(model.prepare_content(batch)["content_token"])
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    model.eval()
    torch.manual_seed(0)
    assert torch.equal(model.prepare_content(batch)["content_token"], expected["content_token"])


# ------------------------------------------------------------------------------------------------
# token cache
# ------------------------------------------------------------------------------------------------



def _pre(phase: str = "train") -> dict:
    return {"target": "vqdiff.data.preprocess.DalleTransformerPreprocessor", "params": {"size": SIZE, "phase": phase}}


class PoolCodec:
    """Deterministic stand-in codec: 4x4 grid of mean brightness levels (16 codes)."""

    token_shape = (4, 4)

    def __init__(self):
        self.calls: list[dict] = []

    def get_number_of_tokens(self):
        return 16

    def get_tokens(self, images, **kw):
        self.calls.append(kw)
        pooled = torch.nn.functional.adaptive_avg_pool2d(images.float().mean(1, keepdim=True), 4)
        return {"token": (pooled.flatten(1) / 256 * 16).long().clamp(0, 15)}


def _write(ds, tmp_path, name="cache", **kw):
    return write_token_cache(ds, kw.pop("codec", PoolCodec()), tmp_path / name, batch_size=2, progress=False, **kw)


def test_coco_cache_keeps_each_annotation_and_the_centre_crop_for_validation(tmp_path):
    root = write_coco(tmp_path / "coco", num_images=3, resolution=40)
    ds = CocoDataset(str(root), "train", _pre("train"))
    out = _write(ds, tmp_path, crops=3)
    train, val = TokenCacheDataset(out, seed=0), TokenCacheDataset(out, phase="val")
    meta = train.meta
    assert (len(train), meta["num_images"], meta["num_views"]) == (6, 3, 4)  # 2 annotations per image
    assert meta["view_kinds"] == ["centre", "random_crop", "random_crop", "random_crop"]
    assert [train[i]["text"] for i in range(6)] == [c.lower() for _, c in ds.annotations]
    codec = PoolCodec()
    centre = CocoDataset(str(root), "train", _pre("val"))
    for i in range(6):  # validation reads the official val preprocessing (centre crop)
        ref = codec.get_tokens(centre[i]["image"][None])["token"][0]
        assert torch.equal(val[i]["content_token"], ref)
    image_of = np.asarray(train.samples)[:, 0]
    assert image_of.tolist() == [0, 0, 1, 1, 2, 2]
    crops = torch.from_numpy(np.asarray(train.tokens[:, 1:]).astype(np.int64))
    assert any(not torch.equal(crops[r, 0], crops[r, k]) for r in range(3) for k in (1, 2))  # crops differ
    seen = set()
    for epoch in range(12):
        train.set_epoch(epoch)
        tok = train[0]["content_token"]
        match = [k for k in range(3) if torch.equal(tok, crops[0, k])]
        assert match, "a train item is one of its image's random crops"
        seen.add(match[0])
    assert len(seen) > 1  # the pick changes with the epoch


def test_cub_cache_keeps_every_caption_and_draws_one_per_epoch(tmp_path):
    root = write_cub200(tmp_path / "cub", num_images=4, resolution=40)
    ds = Cub200Dataset(str(root), "train", _pre())
    out = _write(ds, tmp_path, crops=1)
    cache = TokenCacheDataset(out, seed=3)
    assert len(cache) == 3 and cache.items["captions"] == [ds.captions[n] for n in ds.names]
    assert len(cache.items["captions"][0]) == 3

    def texts(epoch, seed=3):
        c = TokenCacheDataset(out, seed=seed)
        c.set_epoch(epoch)
        return [c[i]["text"] for i in range(len(c))]

    assert texts(5) == texts(5)  # a function of (seed, epoch, index): resume reads the same items
    picks = {t for e in range(10) for t in texts(e)[:1]}
    assert picks == set(cache.items["captions"][0])
    assert any(texts(e, seed=3) != texts(e, seed=4) for e in range(3))


def test_caption_dropout_happens_at_read_never_at_build(tmp_path):
    root = write_coco(tmp_path / "coco", num_images=4, resolution=40)
    ds = CocoDataset(str(root), "train", _pre(), drop_caption_rate=0.5)
    out = _write(ds, tmp_path, crops=1)
    assert ds.drop_caption_rate == 0.5  # restored after the build
    cache = TokenCacheDataset(out)
    assert all(c for caps in cache.items["captions"] for c in caps)  # nothing stored as dropped
    assert cache.meta["drop_caption_rate"] == 0.5 and cache.drop_caption_rate == 0.5
    texts = []
    for epoch in range(25):
        cache.set_epoch(epoch)
        texts += [cache[i]["text"] for i in range(len(cache))]
    assert 0.35 < sum(t == "" for t in texts) / len(texts) < 0.65  # 200 draws at p = 0.5
    val = TokenCacheDataset(out, phase="val")
    assert all(val[i]["text"] for i in range(len(val)))
    assert all(TokenCacheDataset(out, drop_caption_rate=0.0)[i]["text"] for i in range(len(cache)))


def test_label_dropout_at_read_and_item_data_sets_are_built_without_dropout(tmp_path):
    root = write_imagenet(tmp_path / "imnet", num_images=4, resolution=40)
    ds = ImageNetDataset(str(root), "ILSVRC2012_name_train.txt", "train", _pre(), drop_caption_rate=1.0)
    cache = TokenCacheDataset(_write(ds, tmp_path, crops=1))
    assert cache.items["labels"] == [label for _, label in ds.entries]
    assert {cache[i]["label"] for i in range(4)} == {1000}
    assert TokenCacheDataset(cache.cache_dir, phase="val")[0]["label"] == ds.entries[0][1]
    # the regression: a data set read item by item used to store its dropped captions forever
    shapes = ShapesDataset(6, 16, split="all", drop_caption_rate=1.0)
    item_cache = TokenCacheDataset(_write(shapes, tmp_path, name="shapes"), drop_caption_rate=0.0)
    shapes.drop_caption_rate = 0.0
    assert [item_cache[i]["text"] for i in range(6)] == [shapes[i]["text"] for i in range(6)]
    assert item_cache.meta["view_kinds"] == ["item"] and item_cache.meta["drop_caption_rate"] == 1.0


def test_epoch_reaches_persistent_workers_and_concat_datasets(tmp_path):
    root = write_cub200(tmp_path / "cub", num_images=8, resolution=40)
    out = _write(Cub200Dataset(str(root), "train", _pre()), tmp_path, crops=2)
    cache = TokenCacheDataset(out, seed=1)
    both = ConcatDataset([cache, TokenCacheDataset(out, seed=1)])
    loader = DataLoader(both, batch_size=4, num_workers=1, persistent_workers=True, collate_fn=collate_batch)
    per_epoch = []
    for epoch in (0, 3):
        set_dataset_epoch(both, epoch)
        got = [t for batch in loader for t in batch["text"]]
        expected = []
        for part in both.datasets:
            ref = TokenCacheDataset(out, seed=1)
            ref.set_epoch(epoch)
            expected += [ref[i]["text"] for i in range(len(part))]
        assert all(part.epoch == epoch for part in both.datasets) and got == expected
        per_epoch.append(got)
    assert per_epoch[0] != per_epoch[1]  # the check is not vacuous: the epochs pick differently


def test_old_cache_format_is_refused_with_a_rebuild_message(tmp_path):
    out = _write(ShapesDataset(2, 16, split="all"), tmp_path)
    meta = json.loads((out / "meta.json").read_text())
    meta["format_version"] = 1
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format_version 1.*rebuild it with scripts/build_token_cache.py"):
        TokenCacheDataset(out)


def test_gumbel_cache_records_its_encoding(official_tiny_text, tmp_path):
    codec = _official_codec()
    ds = ShapesDataset(3, 64, split="all")
    images = torch.stack([ds[i]["image"] for i in range(3)])

    def build(name, **kw):
        return TokenCacheDataset(write_token_cache(ds, codec, tmp_path / name, progress=False, **kw))

    sampled, again, other = build("s0", seed=0), build("s0b", seed=0), build("s1", seed=1)
    argmax = build("a", for_training=False)
    assert sampled.meta["encoding"] == "sample" and argmax.meta["encoding"] == "argmax"
    rows = [sampled[i]["content_token"] for i in range(3)]
    assert all(torch.equal(a, again[i]["content_token"]) for i, a in enumerate(rows))
    assert any(not torch.equal(a, other[i]["content_token"]) for i, a in enumerate(rows))
    assert torch.equal(torch.stack([argmax[i]["content_token"] for i in range(3)]), codec.get_tokens(images)["token"])


def test_build_script_with_crops_on_an_official_reader(tmp_path):
    root = write_cub200(tmp_path / "cub", num_images=4, resolution=40)
    codec_cfg = {"target": "vqdiff.modeling.codecs.image.taming_vqvae.TamingVQVAE", "params": {
        "config_path": str(tmp_path / "taming.yaml"), "ckpt_path": None, "num_tokens": 16, "quantize_number": 0,
        "mapping_path": None, "token_shape": [8, 8]}}
    dd = dict(double_z=False, z_channels=8, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 1, 1],
              num_res_blocks=1, attn_resolutions=[], dropout=0.0)
    save_yaml_config({"model": {"target": "image_synthesis.taming.models.vqgan.VQModel", "params": {
        "ddconfig": dd, "n_embed": 16, "embed_dim": 8,
        "lossconfig": {"target": "taming.modules.losses.vqperceptual.DummyLoss"}}}}, tmp_path / "taming.yaml")
    data = {"target": "vqdiff.data.cub200.Cub200Dataset",
            "params": {"data_root": "unused", "phase": "train", "im_preprocessor_config": _pre(),
                       "drop_caption_rate": 0.1}}
    save_yaml_config({"model": {"params": {"content_codec_config": codec_cfg}},
                      "dataloader": {"data_root": str(root), "train_datasets": [data]}}, tmp_path / "cfg.yaml")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "build_token_cache.py"), "--config",
                           str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "c"), "--crops", "2"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "3 samples of 3 images x 3 views" in proc.stdout
    cache = TokenCacheDataset(tmp_path / "c")
    assert cache.meta["encoding"] == "deterministic" and cache.drop_caption_rate == 0.1
    assert cache.tokens.shape == (3, 3, 64)


@pytest.mark.parametrize("config", ["configs/coco.yaml", "configs/cub200.yaml", "official:configs__coco.yaml",
                                    "official:configs__coco_tune.yaml", "official:configs__cub200.yaml"])
def test_official_configs_train_on_sampled_codes_and_evaluate_on_the_argmax(official_tiny_text, config):
    path = (fixtures_dir("official_configs") / config.split(":", 1)[1] if config.startswith("official:")
            else REPO / config)
    node = load_yaml_config(path)["model"]["params"]["content_codec_config"]
    tiny = load_yaml_config("config_tiny_text.yaml")["model"]["params"]["content_codec_config"]["params"]
    keep = {k: v for k, v in node["params"].items() if k not in tiny}
    codec = instantiate_from_config({"target": node["target"], "params": {**tiny, **keep}})
    assert isinstance(codec, TamingGumbelVQVAE)
    assert (codec.encode_mode, codec.train_encode_mode) == ("argmax", "sample")


def test_official_tune_config_caches_captions_undropped_and_drops_them_when_read(tmp_path):
    cfg = load_yaml_config(fixtures_dir("official_configs") / "configs__coco_tune.yaml")
    nodes = cfg["dataloader"]["train_datasets"]
    assert nodes[0]["params"]["drop_caption_rate"] == 0.1
    root = write_coco(tmp_path / "coco", num_images=6, resolution=40)
    ds = build_datasets(nodes, str(root), "dataloader.train_datasets")
    cache = TokenCacheDataset(_write(ds, tmp_path, crops=1))
    assert all(c for caps in cache.items["captions"] for c in caps) and cache.drop_caption_rate == 0.1
    drops = []
    for epoch in range(40):
        cache.set_epoch(epoch)
        drops += [cache[i]["text"] == "" for i in range(len(cache))]
    assert 0.05 < sum(drops) / len(drops) < 0.15  # 480 draws at p = 0.1 (sigma 0.014)


def test_unreadable_images_are_left_out_of_the_cache_or_raise(tmp_path):
    from vqdiff.data.robust import BadImageError

    root = write_coco(tmp_path / "coco", num_images=3, resolution=40)
    ds = CocoDataset(str(root), "train", _pre())
    bad = ds.image_path(2)  # the second image (annotations 2 and 3)
    bad.write_bytes(b"not a jpeg")
    cache = TokenCacheDataset(_write(ds, tmp_path, crops=1))
    assert len(cache) == 4 and cache.meta["bad_images"] == [str(bad)]
    assert np.asarray(cache.samples)[:, 0].tolist() == [0, 0, 2, 2]
    with pytest.raises(BadImageError, match="not a jpeg|cannot read image"):
        _write(CocoDataset(str(root), "train", _pre(), on_bad_image="raise"), tmp_path, name="strict", crops=1)
