"""configs/tiny_text_shapes.yaml trains through train.py on a user's own data with only
``dataloader.train_datasets`` changed: a hand-written ``metadata.jsonl`` folder, a sidecar-caption folder and
a shard set (with a corrupt sample and an image over PIL's pixel limit, skipped and named in the run's log)."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from webdataset import TarWriter

import train
from vqdiff.utils.config import load_yaml_config, save_yaml_config
from vqdiff.utils.tiny_parts import write_tiny_parts

from test_shard_safety import bomb_png

REPO = Path(__file__).resolve().parents[1]

PRE = {"target": "vqdiff.data.preprocess.DalleTransformerPreprocessor", "params": {"size": 16, "phase": "train"}}
CAPTIONS = ["a red square", "a blue circle", "a green triangle", "a yellow square"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_formats")
    write_tiny_parts(root)
    return root


def _image(i: int) -> Image.Image:
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))


def jsonl_folder(root: Path) -> dict:
    (root / "photos").mkdir(parents=True)
    with open(root / "metadata.jsonl", "w", encoding="utf-8") as f:
        for i in range(8):  # two captions an image: 16 rows, 16 samples
            _image(i).save(root / "photos" / f"p{i}.jpg")
            f.write(json.dumps({"file_name": f"photos/p{i}.jpg", "text": CAPTIONS[i % 4]}) + "\n")
            f.write(json.dumps({"file_name": f"photos/p{i}.jpg", "text": f"this is {CAPTIONS[i % 4]}"}) + "\n")
    return {"target": "vqdiff.data.image_text_folder.ImageTextFolder",
            "params": {"data_root": str(root), "im_preprocessor_config": PRE, "drop_caption_rate": 0.1}}


def sidecar_folder(root: Path) -> dict:
    root.mkdir(parents=True)
    for i in range(16):
        _image(i).save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(f"{CAPTIONS[i % 4]}\nthis is {CAPTIONS[i % 4]}\n", encoding="utf-8")
    return {"target": "vqdiff.data.image_text_folder.ImageTextFolder",
            "params": {"data_root": str(root), "im_preprocessor_config": PRE}}


def shard_set(root: Path) -> dict:
    root.mkdir(parents=True)
    for s in range(2):
        with TarWriter(str(root / f"cc-{s:03d}.tar")) as sink:
            for j in range(9):
                i = s * 9 + j
                buf = io.BytesIO()
                _image(i).save(buf, format="JPEG")
                data = b"\xff\xd8 broken" if i == 4 else buf.getvalue()
                image = {"png": bomb_png()} if i == 13 else {"jpg": data}  # 15 000 x 15 000 claimed, tiny on disk
                sink.write({"__key__": f"{i:09d}", **image, "txt": CAPTIONS[i % 4],
                            "json": json.dumps({"key": f"{i:09d}", "status": "success"})})
    return {"target": "vqdiff.data.web_shards.WebShardsImageText",
            "params": {"urls": str(root / "cc-{000..001}.tar"), "samples_per_epoch": 16,
                       "im_preprocessor_config": PRE, "shuffle_buffer": 8}}


@pytest.mark.parametrize("make", [jsonl_folder, sidecar_folder, shard_set], ids=["jsonl", "sidecar", "shards"])
def test_tiny_text_shapes_trains_on_a_users_folder_with_only_train_datasets_changed(tiny_root, monkeypatch, make):
    monkeypatch.chdir(tiny_root)
    base = load_yaml_config(REPO / "configs" / "tiny_text_shapes.yaml")
    cfg = copy.deepcopy(base)
    cfg["dataloader"]["train_datasets"] = [make(tiny_root / "data" / make.__name__)]
    path = tiny_root / f"{make.__name__}.yaml"
    save_yaml_config(cfg, path)
    result = train.main(["--config_file", str(path), "--name", make.__name__, "--seed", "0", "--no_progress_bar",
                         "--log_frequency", "1"])
    assert result["stopped_by"] == "max_epochs"
    assert len(result["losses"]) == 8 and all(np.isfinite(result["losses"]))  # 2 epochs x 4 iterations
    saved = load_yaml_config(tiny_root / "OUTPUT" / make.__name__ / "configs" / "config.yaml")
    assert {k: v for k, v in saved["dataloader"].items() if k != "train_datasets"} == \
        {k: v for k, v in base["dataloader"].items() if k != "train_datasets"}
    assert saved["model"] == load_yaml_config(path)["model"] and saved["solver"] == load_yaml_config(path)["solver"]
    ck = torch.load(tiny_root / "OUTPUT" / make.__name__ / "checkpoint" / "last.pth", weights_only=True)
    assert ck["last_iter"] == 7
    log = (tiny_root / "OUTPUT" / make.__name__ / "logs" / "log.txt").read_text()
    if make is shard_set:  # the corrupt sample and the decompression bomb are skipped and named in the run's log
        assert "skipping sample '000000004' of shard" in log and "cc-000.tar" in log
        assert "skipping sample '000000013' of shard" in log and "DecompressionBombError" in log


def test_auto_resume_inside_a_shard_epoch_reproduces_losses_bit_for_bit(tiny_root, monkeypatch):
    """The resume claim of vqdiff.data.shard_stream with num_workers 0: a run stopped after 3 iterations and
    resumed (--auto_resume) through the epoch end gives the uninterrupted run's losses and weights."""
    monkeypatch.chdir(tiny_root)
    cfg = load_yaml_config(REPO / "configs" / "tiny_text_shapes.yaml")
    node = shard_set(tiny_root / "data" / "resume_shards")
    node["params"]["drop_caption_rate"] = 0.3  # crops and dropout draw from the restored RNG
    cfg["dataloader"]["train_datasets"] = [node]
    path = tiny_root / "resume.yaml"
    save_yaml_config(cfg, path)

    def run(name, *extra):
        return train.main(["--config_file", str(path), "--name", name, "--seed", "0", "--no_progress_bar", *extra])

    full = run("shards_full", "solver.max_iterations=6")
    first = run("shards_part", "solver.max_iterations=3")
    second = run("shards_part", "--auto_resume", "solver.max_iterations=6")
    assert len(full["losses"]) == 6 and first["losses"] + second["losses"] == full["losses"]
    a = torch.load(tiny_root / "OUTPUT" / "shards_full" / "checkpoint" / "last.pth", weights_only=True)
    b = torch.load(tiny_root / "OUTPUT" / "shards_part" / "checkpoint" / "last.pth", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_tiny_text_shapes_trains_on_token_shards_of_the_shard_set(tiny_root, monkeypatch):
    """The scale path end to end: the shard set encoded into token shards with the config's own codec
    (scripts/build_token_cache.py does this), then trained on through train.py (content_token batches)."""
    from vqdiff.data.token_shards import write_token_shards
    from vqdiff.utils.config import instantiate_from_config

    monkeypatch.chdir(tiny_root)
    cfg = load_yaml_config(REPO / "configs" / "tiny_text_shapes.yaml")
    source = instantiate_from_config(shard_set(tiny_root / "data" / "token_source"))
    codec_node = cfg["model"]["params"]["content_codec_config"]
    report = write_token_shards(source, instantiate_from_config(codec_node), tiny_root / "data" / "tokens", crops=2,
                                codec_config=codec_node)
    assert report["samples"] == 16 and report["bad_samples"] == 2  # the corrupt sample and the bomb are left out
    cfg["dataloader"]["train_datasets"] = [{"target": "vqdiff.data.token_shards.TokenShardsDataset", "params": {
        "urls": str(tiny_root / "data" / "tokens" / "*.tar"), "samples_per_epoch": 16,
        "expect_codec_config": codec_node, "shuffle_buffer": 8}}]
    save_yaml_config(cfg, tiny_root / "token_shards.yaml")
    result = train.main(["--config_file", str(tiny_root / "token_shards.yaml"), "--name", "token_shards", "--seed",
                         "0", "--no_progress_bar"])
    assert result["stopped_by"] == "max_epochs" and len(result["losses"]) == 8 and all(np.isfinite(result["losses"]))
