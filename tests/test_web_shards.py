"""WebDataset shards (vqdiff.data.shard_stream, vqdiff.data.web_shards): shard lists, the epoch length for
the whole job, the split by rank and worker (2 processes x 2 workers on gloo: every key once), shuffling,
resampling, resume after n batches, and bad data logged with shard and key."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from webdataset import TarWriter

from vqdiff.data.build import build_dataloader, collate_batch
from vqdiff.data.shard_stream import StreamPlan, batches_per_worker, batches_taken, resolve_shards
from vqdiff.data.web_shards import WebShardsImageText
from vqdiff.engine.resumable_loader import loader_skipping

REPO = Path(__file__).resolve().parents[1]
TARGET = "vqdiff.data.web_shards.WebShardsImageText"


def _jpeg(i: int, size: int = 8) -> bytes:
    arr = np.full((size, size, 3), (i * 37) % 256, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def write_shards(root: Path, shards: int, per_shard: int, bad: dict | None = None) -> list[str]:
    """``shards`` tars of ``per_shard`` samples, written as a user's img2dataset output would be: key
    ``SSSSSIIII``, ``.jpg``, ``.txt`` ("sample <n>") and ``.json``. ``bad`` maps a sample number to
    'corrupt' (bytes that are no image) or 'no_caption'. Returns every caption, in writing order."""
    root.mkdir(parents=True, exist_ok=True)
    captions = []
    for s in range(shards):
        with TarWriter(str(root / f"{s:05d}.tar")) as sink:
            for j in range(per_shard):
                n = s * per_shard + j
                key = f"{s:05d}{j:04d}"
                sample = {"__key__": key, "jpg": _jpeg(n), "txt": f"Sample {n}", "json": json.dumps({"key": key})}
                kind = (bad or {}).get(n)
                if kind == "corrupt":
                    sample["jpg"] = b"this is not a jpeg"
                elif kind == "no_caption":
                    del sample["txt"]
                sink.write(sample)
                captions.append(f"sample {n}")
    return captions


def _config(urls: str, samples: int, batch: int, workers: int = 0, **params) -> dict:
    return {"dataloader": {"batch_size": batch, "num_workers": workers, "train_datasets": [
        {"target": TARGET, "params": {"urls": urls, "samples_per_epoch": samples, **params}}]}}


def _epoch_texts(loader: DataLoader, epoch: int = 0, skip: int = 0) -> list[list[str]]:
    loader.dataset.set_epoch(epoch)
    return [batch["text"] for batch in loader_skipping(loader, skip)]


# ----------------------------------------------------------------------------------------- shard lists
def test_shard_list_forms_and_a_pattern_matching_nothing_is_an_error_naming_it(tmp_path):
    write_shards(tmp_path / "s", 3, 2)
    brace = resolve_shards(str(tmp_path / "s" / "{00000..00002}.tar"))
    assert [Path(p).name for p in brace] == ["00000.tar", "00001.tar", "00002.tar"]
    assert resolve_shards(str(tmp_path / "s" / "*.tar")) == brace
    (tmp_path / "list.txt").write_text("# my shards\ns/00000.tar\n\ns/00002.tar  # the last\n")
    assert resolve_shards(str(tmp_path / "list.txt")) == [str(tmp_path / "s" / "00000.tar"),
                                                          str(tmp_path / "s" / "00002.tar")]
    assert resolve_shards([brace[1], brace[0]]) == [brace[1], brace[0]]
    assert resolve_shards("pipe:curl -s https://x/{0..1}.tar", allow_commands=True) == [
        "pipe:curl -s https://x/0.tar", "pipe:curl -s https://x/1.tar"]
    for missing in (str(tmp_path / "nothing" / "*.tar"), str(tmp_path / "s" / "0000x.tar")):
        with pytest.raises(FileNotFoundError, match="matches no file") as err:
            WebShardsImageText(missing, 4)
        assert missing in str(err.value)
    with pytest.raises(FileNotFoundError, match="00003.tar"):
        resolve_shards(str(tmp_path / "s" / "{00000..00003}.tar"))


def test_urls_are_opened_by_webdataset(tmp_path):
    """A URL form (here ``pipe:``, as for ``pipe:curl ...`` or ``pipe:aws s3 cp ...``) is read by webdataset,
    a command only with ``allow_commands`` (tests/test_shard_safety.py: refused otherwise)."""
    captions = write_shards(tmp_path / "s", 2, 3)
    urls = [f"pipe:cat {tmp_path / 's' / f'{i:05d}.tar'}" for i in range(2)]
    ds = WebShardsImageText(urls, 6, shuffle_buffer=0, allow_commands=True)
    assert sorted(it["text"] for it in ds) == sorted(captions)


def test_round_robin_accounting():
    assert batches_per_worker(7, 3) == [3, 2, 2] and batches_per_worker(4, 0) == [4]
    assert batches_taken(0, [3, 2, 2]) == [0, 0, 0]
    assert batches_taken(4, [3, 2, 2]) == [2, 1, 1]
    assert batches_taken(6, [3, 1, 2]) == [3, 1, 2]  # worker 1 runs out: the others keep their turns
    assert batches_taken(99, [1, 1]) == [1, 1]


# ----------------------------------------------------------------------------------------- one process
def test_samples_per_epoch_16_at_batch_4_is_4_iterations_and_a_corrupt_sample_is_named(tmp_path, caplog):
    write_shards(tmp_path / "s", 4, 5, bad={6: "corrupt", 13: "no_caption"})
    loaders = build_dataloader(_config(str(tmp_path / "s" / "{00000..00003}.tar"), 16, 4), seed=0)
    assert loaders["train_iterations"] == 4 and len(loaders["train_loader"]) == 4
    with caplog.at_level(logging.WARNING, logger="vqdiff.data"):
        batches = _epoch_texts(loaders["train_loader"])
    assert len(batches) == 4 and all(len(b) == 4 for b in batches)
    texts = [t for b in batches for t in b]
    assert len(set(texts)) == 16 and "sample 6" not in texts and "sample 13" not in texts
    log = caplog.text
    assert "skipping sample '000010001'" in log and f"{tmp_path / 's' / '00001.tar'}" in log  # sample 6
    assert "cannot decode" in log and "skipping sample '000020003'" in log and "missing caption" in log
    assert loaders["train_loader"].dataset.bad_samples == 2


def test_truncated_and_empty_tars_are_skipped_and_logged(tmp_path, caplog):
    write_shards(tmp_path / "s", 3, 4)
    whole = (tmp_path / "s" / "00001.tar").read_bytes()
    (tmp_path / "s" / "00001.tar").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "s" / "00002.tar").write_bytes(b"")
    ds = WebShardsImageText(str(tmp_path / "s" / "*.tar"), 6, shuffle_buffer=0)
    with caplog.at_level(logging.WARNING, logger="vqdiff.data"):
        texts = [it["text"] for it in ds]
    assert len(texts) == 6 and {"sample 0", "sample 1", "sample 2", "sample 3"} <= set(texts)
    assert "00001.tar' (after key" in caplog.text and "00002.tar' (before its first sample)" in caplog.text
    assert ds.bad_samples >= 2


def test_fewer_shards_than_ranks_x_workers_is_an_error_naming_both(tmp_path):
    write_shards(tmp_path / "s", 3, 2)
    ds = WebShardsImageText(str(tmp_path / "s" / "*.tar"), 6)
    with pytest.raises(ValueError, match=r"3 shards for 2 ranks x 2 workers = 4 streams"):
        ds.configure(StreamPlan(batch_size=1, rank=0, world_size=2, num_workers=2))
    WebShardsImageText(str(tmp_path / "s" / "*.tar"), 6, resampled=True).configure(
        StreamPlan(batch_size=1, rank=0, world_size=2, num_workers=2))  # resampling needs no shard per stream
    with pytest.raises(ValueError, match="less than one batch"):
        ds.configure(StreamPlan(batch_size=4, world_size=2))


def test_two_workers_read_every_key_once_and_epochs_reshuffle(tmp_path):
    captions = write_shards(tmp_path / "s", 4, 6)
    loader = build_dataloader(_config(str(tmp_path / "s" / "*.tar"), 24, 3, workers=2, shuffle_buffer=4),
                              seed=1)["train_loader"]
    e0, e0_again, e1 = _epoch_texts(loader, 0), _epoch_texts(loader, 0), _epoch_texts(loader, 1)
    flat = [t for b in e0 for t in b]
    assert sorted(flat) == sorted(captions) and len(e0) == 8
    assert e0 == e0_again  # an epoch is a function of (seed, epoch)
    assert sorted(t for b in e1 for t in b) == sorted(captions) and e1 != e0


def test_quota_beyond_the_data_starts_another_pass_and_resampled_fills_the_epoch(tmp_path):
    captions = write_shards(tmp_path / "s", 2, 3)
    ds = WebShardsImageText(str(tmp_path / "s" / "*.tar"), 9, shuffle_buffer=0)
    texts = [it["text"] for it in ds]
    assert len(texts) == 9 and sorted(texts[:6]) == sorted(captions)  # one pass, then a second one
    rs = WebShardsImageText(str(tmp_path / "s" / "*.tar"), 20, resampled=True, seed=3)
    texts = [it["text"] for it in rs]
    assert len(texts) == 20 and set(texts) <= set(captions)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_after_n_batches_yields_the_batches_not_yet_seen(tmp_path, workers):
    write_shards(tmp_path / "s", 4, 5)
    loader = build_dataloader(_config(str(tmp_path / "s" / "*.tar"), 20, 2, workers=workers, shuffle_buffer=3),
                              seed=0)["train_loader"]
    full = _epoch_texts(loader, 2)
    for done in (1, 4, 7):
        rest = _epoch_texts(loader, 2, skip=done)
        assert len(rest) == len(full) - done
        if workers == 0:
            assert rest == full[done:]
        else:  # the same batches; the workers' turns restart at worker 0
            assert sorted(map(tuple, rest)) == sorted(map(tuple, full[done:]))
    assert _epoch_texts(loader, 2, skip=0) == full  # the next epoch starts from its beginning again


def test_items_match_the_caption_readers(tmp_path):
    write_shards(tmp_path / "s", 1, 4)
    pre = {"target": "vqdiff.data.preprocess.DalleTransformerPreprocessor", "params": {"size": 4, "phase": "val"}}
    ds = WebShardsImageText(str(tmp_path / "s" / "00000.tar"), 4, im_preprocessor_config=pre, shuffle_buffer=0)
    batch = collate_batch(list(ds))
    assert batch["image"].shape == (4, 3, 4, 4) and batch["image"].dtype == torch.float32
    assert batch["text"] == ["sample 0", "sample 1", "sample 2", "sample 3"]
    np.random.seed(0)
    dropped = WebShardsImageText(str(tmp_path / "s" / "00000.tar"), 4, drop_caption_rate=1.0)
    assert [it["text"] for it in dropped] == [""] * 4
    with pytest.raises(ValueError, match="drop_caption_rate"):
        WebShardsImageText(str(tmp_path / "s" / "00000.tar"), 4, drop_caption_rate=2)


# ----------------------------------------------------------------------------------------- 2 x 2 on gloo
RANK_SCRIPT = r'''
import json, sys
import torch.distributed as dist
from vqdiff.data.build import build_dataloader
dist.init_process_group("gloo")
urls, out = sys.argv[1], sys.argv[2]
cfg = {"dataloader": {"batch_size": 2, "num_workers": 2, "train_datasets": [{"target": "%s",
       "params": {"urls": urls, "samples_per_epoch": 32, "shuffle_buffer": 4}}]}}
loaders = build_dataloader(cfg, distributed=True, seed=0)
loader = loaders["train_loader"]
epochs = []
for epoch in range(2):
    loader.dataset.set_epoch(epoch)
    epochs.append([t for batch in loader for t in batch["text"]])
json.dump({"iterations": loaders["train_iterations"], "epochs": epochs}, open(f"{out}/rank{dist.get_rank()}.json", "w"))
dist.destroy_process_group()
''' % TARGET


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_x_two_workers_read_every_key_exactly_once_per_epoch(tmp_path):
    captions = write_shards(tmp_path / "s", 8, 4)
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    for _attempt in range(2):  # a port taken between _free_port() and the launch gets one retry
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                              f"--master_port={_free_port()}", str(script), str(tmp_path / "s" / "*.tar"),
                              str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
        if run.returncode == 0 or "address already in use" not in (run.stdout + run.stderr).lower():
            break
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["iterations"] for r in ranks] == [8, 8]  # 32 samples / (batch 2 x 2 ranks)
    for epoch in range(2):
        seen = ranks[0]["epochs"][epoch] + ranks[1]["epochs"][epoch]
        assert len(seen) == 32 and sorted(seen) == sorted(captions)  # the union is the data, no key twice
    assert ranks[0]["epochs"][0] != ranks[0]["epochs"][1]


def test_shards_of_dataset_returns_the_node_that_streams_the_same_items(tmp_path):
    """What the demo's ``--data shards`` calls: the training set as shards, and its train_datasets entry."""
    from vqdiff.data.build import build_datasets
    from vqdiff.data.layouts import shards_of_dataset
    from vqdiff.data.synthetic import ShapesDataset

    data = ShapesDataset(10, 16, split="train", seed=0)
    node = shards_of_dataset(data, tmp_path / "shards", samples_per_shard=4, drop_caption_rate=0.1,
                             image_format="png")
    assert node["target"] == TARGET and node["params"]["samples_per_epoch"] == 10
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["00000.tar", "00001.tar", "00002.tar"]
    node["params"].update(drop_caption_rate=0.0, shuffle_buffer=0)
    stream = build_datasets([node], None, "train_datasets")
    got = [(it["text"], it["image"]) for it in stream]
    assert len(got) == 10
    for i in range(10):  # png: the very pixels of the data set
        assert any(t == data[i]["text"] and torch.equal(data[i]["image"], img) for t, img in got)
    with pytest.raises(ValueError, match="image_format"):
        shards_of_dataset(data, tmp_path / "x", image_format="gif")


def test_a_stream_of_only_bad_samples_is_an_error_not_an_endless_loop(tmp_path, monkeypatch):
    import vqdiff.data.shard_stream as shard_stream

    write_shards(tmp_path / "s", 1, 4, bad={0: "corrupt", 1: "corrupt", 2: "no_caption", 3: "corrupt"})
    monkeypatch.setattr(shard_stream, "MAX_BAD_IN_ROW", 10)
    with pytest.raises(ValueError, match="more than 10 bad samples in a row"):
        list(WebShardsImageText(str(tmp_path / "s" / "00000.tar"), 4))


def test_a_shard_set_must_be_the_only_entry_of_its_list(tmp_path):
    from vqdiff.utils.config import ConfigError

    write_shards(tmp_path / "s", 2, 2)
    cfg = _config(str(tmp_path / "s" / "*.tar"), 4, 2)
    cfg["dataloader"]["train_datasets"].append(
        {"target": "vqdiff.data.synthetic.ShapesDataset", "params": {"num_samples": 4, "resolution": 8}})
    with pytest.raises(ConfigError, match=r"train_datasets': a streamed data set .* must be the only entry"):
        build_dataloader(cfg)
