"""Data side: preprocessing, the four file-backed readers on layouts written by the synthetic writer,
path errors, bad images, build_dataloader."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import ConcatDataset

from vqdiff.data.build import build_dataloader, collate_batch
from vqdiff.data.coco import CocoDataset
from vqdiff.data.cub200 import Cub200Dataset
from vqdiff.data.ffhq import FFHQDataset
from vqdiff.data.imagenet import ImageNetDataset
from vqdiff.data.layouts import write_layout
from vqdiff.data.preprocess import DalleTransformerPreprocessor
from vqdiff.data.robust import BadImageError

PRE = "image_synthesis.data.utils.image_preprocessor.DalleTransformerPreprocessor"


def pre(size: int = 32, phase: str = "train") -> dict:
    return {"target": PRE, "params": {"size": size, "phase": phase}}


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("layouts")
    return {k: write_layout(k, base / k, num_images=6, resolution=40) for k in ("coco", "cub200", "imagenet", "ffhq")}


# ---------------------------------------------------------------- preprocessing
def _ramp(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([y % 256, x % 256, (x + y) % 256], -1).astype(np.uint8)


@pytest.mark.parametrize("h,w", [(60, 90), (90, 60), (40, 40), (20, 30)])
def test_train_preprocess_shape_range_and_seeding(h, w):
    p = DalleTransformerPreprocessor(size=32, phase="train")
    img = _ramp(h, w)
    a = p(img, generator=np.random.default_rng(3))
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert float(a.min()) >= 0 and float(a.max()) <= 255
    b = p(img, generator=np.random.default_rng(3))
    c = p(Image.fromarray(img), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and c.shape == a.shape


def test_train_preprocess_square_offset_and_scale_follow_official_ranges():
    p = DalleTransformerPreprocessor(size=64, phase="train")
    seen_t, seen_off = set(), set()
    for s in range(200):
        prm = p._train_params(200, 100, np.random.default_rng(s))  # w=200, h=100: s=100, excess 100
        ox, oy, side = prm["square"]
        assert side == 100 and oy == 0 and 37 <= ox < 62  # [3*100//8, 5*100//8)
        assert 64 <= prm["t"] <= 72  # min(100, round(9/8*64)) = 72
        assert 0 <= prm["crop"][0] <= prm["t"] - 64
        seen_t.add(prm["t"]); seen_off.add(ox)
    assert len(seen_t) > 4 and len(seen_off) > 10  # it is random


def test_train_without_excess_crops_from_rescaled_whole_image():
    p = DalleTransformerPreprocessor(size=32, phase="train")
    prm = p._train_params(32, 32, np.random.default_rng(0))
    assert prm == {"square": (0, 0, 32), "t": 32, "crop": (0, 0)}
    img = _ramp(32, 32)
    assert torch.equal(p(img), torch.from_numpy(img).permute(2, 0, 1).float())


def test_val_preprocess_is_deterministic_centre_crop():
    p = DalleTransformerPreprocessor(size=32, phase="val")
    img = _ramp(32, 48)  # shorter side already 32: no resampling, pure centre crop of the width
    out = p(img)
    assert torch.equal(out, torch.from_numpy(img[:, 8:40]).permute(2, 0, 1).float())
    assert torch.equal(p(img), out)
    tall = p(_ramp(96, 64))
    ref = np.asarray(Image.fromarray(_ramp(96, 64)).resize((32, 48), Image.BICUBIC))[8:40]
    assert torch.equal(tall, torch.from_numpy(ref.copy()).permute(2, 0, 1).float())


def test_preprocess_additional_targets_share_geometry_and_bad_args():
    p = DalleTransformerPreprocessor(size=16, phase="train", additional_targets={"image2": "image"})
    img = _ramp(40, 30)
    out = p(img, generator=np.random.default_rng(1), image2=img)
    assert torch.equal(out["image"], out["image2"])
    with pytest.raises(ValueError, match="other"):
        p(img, other=img)
    with pytest.raises(ValueError, match="phase"):
        DalleTransformerPreprocessor(phase="eval")


# ---------------------------------------------------------------- readers
def test_coco_reader(roots):
    ds = CocoDataset(str(roots["coco"]), "train", pre())
    assert len(ds) == 12  # 6 images x 2 captions, one item per caption
    item = ds[1]
    assert set(item) == {"image", "text"} and item["image"].shape == (3, 32, 32)
    assert item["text"] == item["text"].lower() and item["text"].endswith("background.")
    assert ds.image_path(0) == roots["coco"] / "train2014" / "train2014" / "COCO_train2014_000000000009.jpg"
    val = CocoDataset(str(roots["coco"]), "val", pre(phase="val"))
    assert val.image_path(0).name == "COCO_val2014_000000100009.jpg"
    assert torch.equal(val[0]["image"], val[0]["image"])
    dropped = CocoDataset(str(roots["coco"]), "train", pre(), drop_caption_rate=1.0)
    assert dropped[0]["text"] == ""
    assert CocoDataset(str(roots["coco"]), "val", pre(), drop_caption_rate=1.0)[0]["text"] != ""


def test_cub_reader_random_line_per_access(roots):
    ds = Cub200Dataset(str(roots["cub200"]), "train", pre())
    test = Cub200Dataset(str(roots["cub200"]), "test", pre(phase="val"))
    assert (len(ds), len(test)) == (4, 2)  # the writer's 75/25 split of 6 images
    lines = ds.captions[ds.names[0]]
    assert len(lines) == 3
    np.random.seed(0)
    texts = {ds[0]["text"] for _ in range(30)}
    assert texts == {ln.lower() for ln in lines}  # every line is drawn; the file has 2 distinct lines
    assert len(texts) == 2
    assert ds[0]["image"].shape == (3, 32, 32)


def test_imagenet_reader_labels(roots, tmp_path):
    root = roots["imagenet"]
    ds = ImageNetDataset(str(root), "ILSVRC2012_name_train.txt", "train", pre())
    wnids = sorted(p.name for p in (root / "train").iterdir())
    for i, (line, label) in enumerate(ds.entries):
        assert label == wnids.index(line.split("/")[0])
    item = ds[0]
    assert set(item) == {"image", "label"} and isinstance(item["label"], int)
    index = {str(k): [f"n{k:08d}", f"class{k}"] for k in range(12)}
    (tmp_path / "idx.json").write_text(__import__("json").dumps(index))
    val = ImageNetDataset(str(root), "ILSVRC2012_name_val.txt", "val", pre(phase="val"),
                          class_index_path=str(tmp_path / "idx.json"))
    for line, label in val.entries:
        assert label == int(line.split("/")[0][1:])  # the synthetic wnid encodes the class
    assert ImageNetDataset(str(root), "ILSVRC2012_name_train.txt", "train", pre(), drop_caption_rate=1.0)[0]["label"] == 1000


def test_ffhq_reader_accepts_drop_caption_rate(roots):
    ds = FFHQDataset(str(roots["ffhq"]), pre(), drop_caption_rate=0.1)
    assert len(ds) == 6 and set(ds[5]) == {"image"} and ds[5]["image"].shape == (3, 32, 32)
    raw = FFHQDataset(str(roots["ffhq"]), None)
    assert raw[0]["image"].shape == (3, 40, 40)
    png = np.asarray(Image.open(roots["ffhq"] / "00000" / "00000.png").convert("RGB"))
    assert torch.equal(raw[0]["image"], torch.from_numpy(png.copy()).permute(2, 0, 1).float())


@pytest.mark.parametrize("make,missing", [
    (lambda r: CocoDataset(str(r / "nope")), "nope"),
    (lambda r: CocoDataset(str(r / "coco"), "test"), "captions_test2014.json"),
    (lambda r: Cub200Dataset(str(r / "cub200"), "val"), "filenames.pickle"),
    (lambda r: ImageNetDataset(str(r / "imagenet"), "missing.txt"), "missing.txt"),
    (lambda r: ImageNetDataset(str(r / "imagenet"), "ILSVRC2012_name_train.txt", "test"), "test"),
    (lambda r: FFHQDataset(str(r / "ffhq" / "zzz")), "zzz"),
])
def test_missing_paths_are_named(roots, make, missing):
    base = roots["coco"].parent
    with pytest.raises(FileNotFoundError, match=missing):
        make(base)


def test_missing_coco_image_folder_is_named(tmp_path):
    root = write_layout("coco", tmp_path / "c", num_images=2, resolution=16)
    import shutil

    shutil.rmtree(root / "val2014")
    with pytest.raises(FileNotFoundError, match="val2014"):
        CocoDataset(str(root), "val")


def test_bad_image_skipped_counted_or_raised(tmp_path, caplog):
    root = write_layout("ffhq", tmp_path / "f", num_images=4, resolution=16)
    bad = root / "00000" / "00001.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    ds = FFHQDataset(str(root), None)
    with caplog.at_level(logging.WARNING):
        item = ds[1]
    assert torch.equal(item["image"], ds[2]["image"])  # deterministic replacement: the next index
    assert ds.bad_images == 1 and ds.bad_paths == [str(bad)]
    assert "00001.png" in caplog.text
    strict = FFHQDataset(str(root), None, on_bad_image="raise")
    with pytest.raises(BadImageError, match="00001.png"):
        strict[1]
    with pytest.raises(ValueError, match="on_bad_image"):
        FFHQDataset(str(root), None, on_bad_image="ignore")


# ---------------------------------------------------------------- loaders
def test_collate_batch():
    b = collate_batch([{"image": torch.zeros(3, 2, 2), "text": "a", "label": 1},
                       {"image": torch.ones(3, 2, 2), "text": "b", "label": 2}])
    assert b["image"].shape == (2, 3, 2, 2) and b["text"] == ["a", "b"]
    assert b["label"].dtype == torch.long and b["label"].tolist() == [1, 2]


def _config(data_root, train, val=None, bs=2):
    return {"dataloader": {"data_root": data_root, "batch_size": bs, "num_workers": 0,
                           "train_datasets": train, "validation_datasets": val or []}}


def test_build_dataloader_override_concat_and_batches(roots):
    coco = {"target": "image_synthesis.data.mscoco_dataset.CocoDataset",
            "params": {"data_root": "/does/not/exist", "phase": "train", "im_preprocessor_config": pre(16)}}
    coco_val = {"target": "image_synthesis.data.mscoco_dataset.CocoDataset",
                "params": {"data_root": "/does/not/exist", "phase": "val", "im_preprocessor_config": pre(16, "val")}}
    out = build_dataloader(_config(str(roots["coco"]), [coco, coco], [coco_val], bs=5), seed=1)
    train = out["train_loader"]
    assert isinstance(train.dataset, ConcatDataset) and len(train.dataset) == 24
    assert out["train_iterations"] == 24 // 5 and len(train) == 4
    batch = next(iter(train))
    assert batch["image"].shape == (5, 3, 16, 16) and len(batch["text"]) == 5 and isinstance(batch["text"][0], str)
    assert out["validation_iterations"] == 3  # 12 items, last batch kept
    # the order of an epoch is a function of (seed, epoch)
    train.sampler.set_epoch(3)
    first = list(iter(train.sampler))
    out2 = build_dataloader(_config(str(roots["coco"]), [coco, coco], [coco_val], bs=5), seed=1)
    out2["train_loader"].sampler.set_epoch(3)
    assert list(iter(out2["train_loader"].sampler)) == first
    train.sampler.set_epoch(4)
    assert list(iter(train.sampler)) != first
    with pytest.raises(ValueError, match="train_datasets\\[0\\].*FileNotFoundError.*/does/not/exist"):
        build_dataloader(_config(None, [coco]))


def test_build_dataloader_synthetic_without_files_and_errors():
    shapes = {"target": "vqdiff.data.synthetic.ShapesDataset", "params": {"num_samples": 8, "resolution": 8}}
    out = build_dataloader(_config("/ignored", [shapes]))
    assert out["validation_loader"] is None and out["validation_iterations"] == -1
    assert next(iter(out["train_loader"]))["image"].shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="batch_size"):
        build_dataloader(_config(None, [shapes], bs=16))
    with pytest.raises(ValueError, match="train_datasets"):
        build_dataloader(_config(None, []))


@pytest.mark.parametrize("kind,config_file,keys", [
    ("coco", "configs__coco.yaml", {"image", "text"}),
    ("cub200", "configs__cub200.yaml", {"image", "text"}),
    ("imagenet", "configs__imagenet.yaml", {"image", "label"}),
    ("ffhq", "configs__ffhq.yaml", {"image"}),
])
def test_official_dataloader_sections_build_on_the_layouts(tmp_path, kind, config_file, keys):
    from conftest import fixtures_dir

    from vqdiff.utils.config import load_yaml_config, merge_opts_to_config

    cfg = load_yaml_config(fixtures_dir("official_configs") / config_file)
    root = write_layout(kind, tmp_path / kind, num_images=24, resolution=24)
    merge_opts_to_config(cfg, [f"dataloader.data_root={root}", "dataloader.batch_size=2", "dataloader.num_workers=0"])
    if kind == "imagenet":  # the few synthetic val classes need not all occur in train: give the index
        index = {str(k): [f"n{k:08d}", f"class{k}"] for k in range(12)}
        (tmp_path / "idx.json").write_text(__import__("json").dumps(index))
        for node in cfg["dataloader"]["train_datasets"] + cfg["dataloader"]["validation_datasets"]:
            node["params"]["class_index_path"] = str(tmp_path / "idx.json")
    out = build_dataloader(cfg)
    batch = next(iter(out["train_loader"]))
    assert set(batch) == keys and batch["image"].shape == (2, 3, 256, 256)
    assert float(batch["image"].min()) >= 0 and float(batch["image"].max()) <= 255
    val = next(iter(out["validation_loader"]))
    assert val["image"].shape == (2, 3, 256, 256)
