"""Token shards (vqdiff.data.token_shards): one output shard per input shard, tokens equal to encoding the
crops on the fly, per-shard jobs and resume, bad samples skipped, the streaming reader, and the CLI."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from webdataset import TarWriter

from test_data_token_cache import _codec_config
from vqdiff.data.build import build_dataloader
from vqdiff.data.layouts import write_layout
from vqdiff.data.preprocess import DalleTransformerPreprocessor
from vqdiff.data.shard_stream import iter_shard
from vqdiff.data.token_shards import TOKEN_META_FILE, TokenShardsDataset, write_token_shards
from vqdiff.data.web_shards import WebShardsImageText, decode_image
from vqdiff.modeling.codecs.image.taming_vqvae import TamingVQVAE
from vqdiff.utils.config import save_yaml_config

REPO = Path(__file__).resolve().parents[1]
PRE = {"target": "vqdiff.data.preprocess.DalleTransformerPreprocessor", "params": {"size": 16, "phase": "train"}}


@pytest.fixture
def codec(tmp_path):
    torch.manual_seed(0)
    return TamingVQVAE(**_codec_config(tmp_path)["params"])


def _source(tmp_path: Path, shards: int = 3, per_shard: int = 4) -> WebShardsImageText:
    write_layout("shards", tmp_path / "img", num_images=shards * per_shard, resolution=20)
    return WebShardsImageText(str(tmp_path / "img" / "*.tar"), shards * per_shard, im_preprocessor_config=PRE,
                              drop_caption_rate=0.2)


def test_token_shards_hold_the_tokens_of_the_centre_crop_and_the_captions(tmp_path, codec):
    src = _source(tmp_path)
    report = write_token_shards(src, codec, tmp_path / "tok", crops=2, batch_size=3, for_training=False,
                                codec_config={"c": 1})
    assert [Path(p).name for p in report["written"]] == ["00000.tar", "00001.tar", "00002.tar"]
    assert report["samples"] == 12 and report["bad_samples"] == 0
    meta = json.loads((tmp_path / "tok" / TOKEN_META_FILE).read_text())
    assert meta["num_views"] == 3 and meta["token_shape"] == [4, 4] and meta["drop_caption_rate"] == 0.2
    raw = list(iter_shard(src.shards[1], None))
    out = list(iter_shard(str(tmp_path / "tok" / "00001.tar"), None))
    assert [s["__key__"] for s in out] == [s["__key__"] for s in raw]
    centre = DalleTransformerPreprocessor(16, "val")
    with torch.no_grad():
        ref = codec.get_tokens(torch.stack([centre(decode_image(s)) for s in raw]))["token"]
    got = np.stack([np.load(io.BytesIO(s["tokens.npy"])) for s in out])
    assert got.shape == (4, 3, 16) and got.dtype == np.uint16
    assert np.array_equal(got[:, 0].astype(np.int64), ref.numpy())
    assert [s["txt"] for s in out] == [s["txt"] for s in raw]


def test_jobs_split_the_shards_resume_keeps_finished_ones_and_another_codec_is_refused(tmp_path, codec):
    src = _source(tmp_path)
    first = write_token_shards(src, codec, tmp_path / "tok", crops=0, jobs=2, job_index=0)
    assert [Path(p).name for p in first["written"]] == ["00000.tar", "00002.tar"]
    stamp = (tmp_path / "tok" / "00000.tar").stat().st_mtime_ns
    (tmp_path / "tok" / "00001.tar.partial").write_bytes(b"an interrupted job")
    second = write_token_shards(src, codec, tmp_path / "tok", crops=0)
    assert [Path(p).name for p in second["written"]] == ["00001.tar"] and len(second["kept"]) == 2
    assert (tmp_path / "tok" / "00000.tar").stat().st_mtime_ns == stamp
    assert not (tmp_path / "tok" / "00001.tar.partial").exists()
    torch.manual_seed(1)
    other = TamingVQVAE(**_codec_config(tmp_path)["params"])
    with pytest.raises(ValueError, match="another codec_weights_sha256"):
        write_token_shards(src, other, tmp_path / "tok", crops=0)
    with pytest.raises(ValueError, match="job_index 2"):
        write_token_shards(src, codec, tmp_path / "tok2", jobs=2, job_index=2)


def test_bad_source_samples_are_skipped_and_the_reader_streams_items(tmp_path, codec):
    (tmp_path / "img").mkdir()
    for s in range(2):
        with TarWriter(str(tmp_path / "img" / f"{s}.tar")) as sink:
            for j in range(5):
                buf = io.BytesIO()
                from PIL import Image

                Image.fromarray(np.full((16, 16, 3), 40 * j, np.uint8)).save(buf, format="PNG")
                sink.write({"__key__": f"{s}{j:03d}", "png": b"junk" if (s, j) == (1, 2) else buf.getvalue(),
                            "txt": f"Item {s} {j}"})
    src = WebShardsImageText(str(tmp_path / "img" / "*.tar"), 10, im_preprocessor_config=PRE)
    report = write_token_shards(src, codec, tmp_path / "tok", crops=3)
    assert report["samples"] == 9 and report["bad_samples"] == 1
    cfg = {"dataloader": {"batch_size": 2, "num_workers": 2, "train_datasets": [
        {"target": "vqdiff.data.token_shards.TokenShardsDataset",
         "params": {"urls": str(tmp_path / "tok" / "{0..1}.tar"), "samples_per_epoch": 8, "shuffle_buffer": 4}}]}}
    loaders = build_dataloader(cfg)
    assert loaders["train_iterations"] == 4
    loaders["train_loader"].dataset.set_epoch(0)
    batches = list(loaders["train_loader"])
    texts = [t for b in batches for t in b["text"]]  # each worker: 4 samples of its shard (of 5 and of 4)
    assert len(texts) == len(set(texts)) == 8
    assert set(texts) <= {f"item {s} {j}" for s in range(2) for j in range(5) if (s, j) != (1, 2)}
    assert batches[0]["content_token"].shape == (2, 16) and batches[0]["content_token"].dtype == torch.long
    val = TokenShardsDataset(str(tmp_path / "tok" / "0.tar"), 5, phase="val", shuffle_buffer=0)
    first = next(iter(val))
    stored = np.load(io.BytesIO(next(iter_shard(str(tmp_path / "tok" / "0.tar"), None))["tokens.npy"]))
    assert torch.equal(first["content_token"], torch.from_numpy(stored[0].astype(np.int64)))  # the centre view
    with pytest.raises(FileNotFoundError, match="token_meta.json"):
        TokenShardsDataset(str(tmp_path / "img" / "0.tar"), 5)
    with pytest.raises(ValueError, match="another codec config"):
        TokenShardsDataset(str(tmp_path / "tok" / "0.tar"), 5, expect_codec_config={"x": 1})


def test_build_token_cache_script_writes_token_shards(tmp_path):
    write_layout("shards", tmp_path / "img", num_images=6, resolution=16)
    config = {"model": {"target": "vqdiff.Unused", "params": {"content_codec_config": _codec_config(tmp_path)}},
              "dataloader": {"batch_size": 2, "train_datasets": [
                  {"target": "vqdiff.data.web_shards.WebShardsImageText",
                   "params": {"urls": "nothing-yet", "samples_per_epoch": 6, "im_preprocessor_config": PRE}}]}}
    save_yaml_config(config, tmp_path / "train.yaml")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "build_token_cache.py"), "--config",
                           str(tmp_path / "train.yaml"), "--out", str(tmp_path / "tok"), "--crops", "1",
                           f"dataloader.train_datasets.0.params.urls={tmp_path / 'img' / '*.tar'}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 2 token shards (6 samples, 0 bad skipped)" in proc.stdout
    ds = TokenShardsDataset(str(tmp_path / "tok" / "*.tar"), 6)
    assert ds.meta["num_views"] == 2 and len(list(ds)) == 6


def test_bench_shards_quick_runs_and_reports_both_readers():
    from benchmarks import bench_shards

    result = bench_shards.main(["--quick"])
    rows = result["images_per_s"]
    assert set(rows) == {"raw", "tokens"} and all(r["min"] > 0 for r in rows.values())
    assert len(result["ratio"]) == 1
