import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from vqdiff.data.layouts import write_layout
from vqdiff.data.synthetic import (
    COLORS,
    POSITIONS,
    SHAPES,
    ShapesDataset,
    all_combinations,
    heldout_combinations,
)


def test_same_seed_same_samples_and_different_seed_differs():
    a, b = ShapesDataset(16, 32, seed=3), ShapesDataset(16, 32, seed=3)
    c = ShapesDataset(16, 32, seed=4)
    for i in range(16):
        assert torch.equal(a[i]["image"], b[i]["image"]) and a[i]["text"] == b[i]["text"]
    assert any(not torch.equal(a[i]["image"], c[i]["image"]) for i in range(16))


def test_item_format():
    item = ShapesDataset(2, 48)[0]
    assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 255
    assert isinstance(item["text"], str) and 0 <= item["label"] < len(COLORS) * len(SHAPES)


def test_caption_agrees_with_pixels():
    ds = ShapesDataset(40, 32, seed=1)
    for i in range(40):
        item = ds[i]
        color = list(COLORS)[item["color"]]
        shape, position = SHAPES[item["shape"]], POSITIONS[item["position"]]
        assert item["text"] == f"a {color} {shape} at the {position} on a gray background"
        img = item["image"].permute(1, 2, 0).numpy()
        painted = np.all(img == np.array(COLORS[color]), axis=-1)
        assert painted.sum() > 10
        ys, xs = np.nonzero(painted)
        row = "bottom" if ys.mean() > 16 else "top"
        col = "right" if xs.mean() > 16 else "left"
        assert position == f"{row} {col}"


def test_heldout_split_is_disjoint_and_attributes_still_covered():
    held = set(heldout_combinations())
    assert 4 <= len(held) < len(all_combinations())
    train = ShapesDataset(300, 16, split="train")
    seen = {train.spec(i) for i in range(300)}
    assert not (seen & held)
    for attr in ("color", "shape", "position"):
        assert {getattr(s, attr) for s in seen} == {getattr(s, attr) for s in all_combinations()}
    test = ShapesDataset(50, 16, split="heldout")
    assert {test.spec(i) for i in range(50)} <= held


def test_drop_caption_rate():
    ds = ShapesDataset(200, 16, drop_caption_rate=0.5)
    empty = sum(ds[i]["text"] == "" for i in range(200))
    assert 60 < empty < 140


@pytest.mark.parametrize("kind", ["coco", "cub200", "imagenet", "ffhq"])
def test_layout_writer(tmp_path, kind):
    root = write_layout(kind, tmp_path / kind, num_images=4, resolution=32)
    if kind == "coco":
        ann = json.loads((root / "annotations/captions_train2014.json").read_text())
        assert len(ann["images"]) == 4 and len(ann["annotations"]) == 8
        name = ann["images"][0]["file_name"]
        assert name.startswith("COCO_train2014_") and (root / "train2014/train2014" / name).is_file()
        assert (root / "annotations/captions_val2014.json").is_file()
    elif kind == "cub200":
        names = pickle.load(open(root / "train/filenames.pickle", "rb"))
        assert len(names) == 3
        assert (root / "images" / f"{names[0]}.jpg").is_file()
        lines = (root / "text/text" / f"{names[0]}.txt").read_text().splitlines()
        assert len(lines) == 3 and "gray background" in lines[0]
        assert (root / "test/filenames.pickle").is_file()
    elif kind == "imagenet":
        lines = (root / "ILSVRC2012_name_train.txt").read_text().split()
        assert len(lines) == 4 and (root / "train" / lines[0]).is_file()
        assert (root / "ILSVRC2012_name_val.txt").is_file()
    else:
        files = sorted(root.rglob("*.png"))
        assert len(files) == 4 and Image.open(files[0]).size == (32, 32)
