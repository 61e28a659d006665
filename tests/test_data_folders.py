"""Caption folders (ImageTextFolder: metadata.jsonl / metadata.csv / sidecar .txt) and class folders
(ImageClassFolder), on folders written by hand as a user would and by write_layout."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from vqdiff.data.image_class_folder import ImageClassFolder, save_class_names
from vqdiff.data.image_groups import RANDOM_CAPTION
from vqdiff.data.image_text_folder import ImageTextFolder
from vqdiff.data.layouts import write_layout
from vqdiff.data.synthetic import ShapesDataset

PRE = {"target": "vqdiff.data.preprocess.DalleTransformerPreprocessor", "params": {"size": 16, "phase": "val"}}


def _png(path, value: int, size=(20, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def test_hand_written_metadata_jsonl_folder(tmp_path, caplog):
    _png(tmp_path / "cats" / "a.png", 10)
    _png(tmp_path / "b.png", 20)
    rows = [{"file_name": "cats/a.png", "text": "A Cat"}, {"file_name": "b.png", "text": "a dog", "extra": 1},
            {"file_name": "cats/a.png", "text": "another cat"}, {"file_name": "gone.png", "text": "missing"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = ImageTextFolder(str(tmp_path), im_preprocessor_config=PRE)
    assert ds.convention == "metadata.jsonl" and len(ds) == 4
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["text"] == "a cat" and float(item["image"].mean()) == 10.0
    assert [ds[i]["text"] for i in (1, 2)] == ["a dog", "another cat"]
    with caplog.at_level(logging.WARNING, logger="vqdiff.data"):
        assert ds[3]["text"] == "a cat"  # the missing file is skipped: the next readable index (wrapping)
    assert ds.bad_images == 1 and "gone.png" in caplog.text
    groups = ds.image_groups()
    assert groups.captions == [["a cat", "another cat"], ["a dog"], ["missing"]]
    assert groups.samples == [(0, 0), (1, 0), (0, 1), (2, 0)] and groups.representative == [0, 1, 3]


def test_metadata_errors_name_the_line_and_column(tmp_path):
    _png(tmp_path / "a.png", 1)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "caption": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"line 1 has no caption column 'text'.*caption"):
        ImageTextFolder(str(tmp_path))
    assert ImageTextFolder(str(tmp_path), caption_column="caption")[0]["text"] == "x"
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "ok"}\n{oops\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        ImageTextFolder(str(tmp_path))
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "../a.png", "text": "ok"}\n')
    with pytest.raises(ValueError, match="inside the folder"):
        ImageTextFolder(str(tmp_path))


def test_csv_and_list_captions(tmp_path):
    _png(tmp_path / "img" / "a.png", 5)
    (tmp_path / "metadata.csv").write_text('file_name,text\nimg/a.png,"Red, round"\n')
    ds = ImageTextFolder(str(tmp_path))
    assert ds.convention == "metadata.csv" and ds[0]["text"] == "red, round" and ds[0]["image"].shape == (3, 16, 20)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "img/a.png", "text": ["One", "Two"]}) + "\n")
    ds = ImageTextFolder(str(tmp_path))  # metadata.jsonl wins over metadata.csv
    np.random.seed(0)
    assert {ds[0]["text"] for _ in range(30)} == {"one", "two"}
    assert ds.image_groups().samples == [(0, RANDOM_CAPTION)]


def test_hand_written_sidecar_folder_draws_a_line_per_read(tmp_path):
    _png(tmp_path / "x" / "b.jpg", 30)
    (tmp_path / "x" / "b.txt").write_text("First line\n\nsecond line\n")
    _png(tmp_path / "a.png", 40)
    (tmp_path / "a.txt").write_text("only one\n")
    ds = ImageTextFolder(str(tmp_path), drop_caption_rate=0.0)
    assert ds.convention == "sidecar" and [s[0] for s in ds.samples] == ["a.png", "x/b.jpg"]
    np.random.seed(1)
    assert {ds[1]["text"] for _ in range(30)} == {"first line", "second line"} and ds[0]["text"] == "only one"
    assert ds.image_groups().captions == [["only one"], ["first line", "second line"]]
    _png(tmp_path / "c.png", 50)
    with pytest.raises(FileNotFoundError, match=r"c\.png' has no caption file"):
        ImageTextFolder(str(tmp_path))


def test_empty_folder_and_caption_dropout(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metadata.jsonl"):
        ImageTextFolder(str(tmp_path))
    write_layout("text_sidecar", tmp_path / "s", num_images=2, resolution=16)
    np.random.seed(0)
    assert ImageTextFolder(str(tmp_path / "s"), drop_caption_rate=1.0)[0]["text"] == ""
    assert ImageTextFolder(str(tmp_path / "s"), phase="val", drop_caption_rate=1.0)[0]["text"] != ""


@pytest.mark.parametrize("kind", ["text_jsonl", "text_csv", "text_sidecar"])
def test_written_layouts_read_back_the_shapes(tmp_path, kind):
    write_layout(kind, tmp_path, num_images=4, resolution=16, seed=3)
    ds = ImageTextFolder(str(tmp_path))
    truth = ShapesDataset(4, 16, split="all", seed=3)
    groups = ds.image_groups()
    assert len(groups.representative) == 4
    assert sorted(c[0] for c in groups.captions) == sorted(truth[i]["text"] for i in range(4))
    item = ds[groups.representative[0]]
    assert item["image"].shape == (3, 16, 16)


def test_class_folders_sorted_labels_null_label_and_saved_names(tmp_path):
    for name, value in (("zebra", 1), ("Apple", 2), ("mango", 3)):
        _png(tmp_path / name / "1.png", value)
    _png(tmp_path / "mango" / "sub" / "2.jpg", 4)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a class")
    ds = ImageClassFolder(str(tmp_path), im_preprocessor_config=PRE)
    assert ds.class_names == ["Apple", "mango", "zebra"] and ds.num_classes == 3 and ds.null_label == 3
    assert [(p.relative_to(tmp_path).as_posix(), lbl) for p, lbl in ds.entries] == [
        ("Apple/1.png", 0), ("mango/1.png", 1), ("mango/sub/2.jpg", 1), ("zebra/1.png", 2)]
    assert ds[3]["label"] == 2 and ds[3]["image"].shape == (3, 16, 16) and float(ds[3]["image"].mean()) == 1.0
    np.random.seed(0)
    assert ImageClassFolder(str(tmp_path), drop_caption_rate=1.0)[0]["label"] == 3
    assert ds.image_groups().labels == [0, 1, 1, 2]
    saved = save_class_names(ds, tmp_path / "run")
    assert json.loads(saved.read_text()) == {"class_names": ["Apple", "mango", "zebra"], "null_label": 3}
    with pytest.raises(ValueError, match="label of class 'mango'"):
        ImageClassFolder(str(tmp_path), null_label=1)
    with pytest.raises(FileNotFoundError, match="no class folder"):
        ImageClassFolder(str(tmp_path / "empty"))


def test_written_class_folder(tmp_path):
    write_layout("class_folder", tmp_path, num_images=6, resolution=16)
    ds = ImageClassFolder(str(tmp_path))
    assert ds.class_names == sorted(ds.class_names) and len(ds) == 6
    assert all("_" in n for n in ds.class_names)


def test_token_cache_of_a_caption_folder_keeps_every_caption(tmp_path):
    import torch

    from test_data_token_cache import _codec_config
    from vqdiff.data.token_cache import TokenCacheDataset, write_token_cache
    from vqdiff.modeling.codecs.image.taming_vqvae import TamingVQVAE

    write_layout("text_jsonl", tmp_path / "f", num_images=3, resolution=20)
    torch.manual_seed(0)
    codec = TamingVQVAE(**_codec_config(tmp_path)["params"])
    ds = ImageTextFolder(str(tmp_path / "f"), im_preprocessor_config={**PRE, "params": {"size": 16, "phase": "train"}})
    cache = TokenCacheDataset(write_token_cache(ds, codec, tmp_path / "cache", crops=1, progress=False))
    assert cache.meta["num_images"] == 3 and cache.meta["num_views"] == 2 and len(cache) == 6  # 2 rows an image
    assert cache.items["captions"] == ds.image_groups().captions
