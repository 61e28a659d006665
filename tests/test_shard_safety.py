"""Shards against bad data and careless files (issue 35): a shard-list file never runs a command (the
refusal names the file and line, and the command does not run), a config ``pipe:`` URL only with
``allow_commands``; an image over PIL's pixel limit, a member over the size cap and token values outside the
codebook are bad samples (skipped, counted, named by shard and key); two token-shard inputs of one file
name are an error naming both."""

from __future__ import annotations

import io
import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from webdataset import TarWriter

from test_web_shards import write_shards
from vqdiff.data.shard_sources import ShardCommandError, iter_shard, resolve_shards, runs_command
from vqdiff.data.token_shards import TOKEN_META_FILE, TokenShardsDataset, output_names
from vqdiff.data.web_shards import WebShardsImageText


def bomb_png(width: int = 15_000, height: int = 15_000) -> bytes:
    """A PNG whose header claims ``width x height`` grey pixels (225 M for the default, over PIL's 2x
    ``MAX_IMAGE_PIXELS`` bomb limit) but holds one compressed row: a few hundred bytes on disk, so PIL
    refuses it at open (``DecompressionBombError``) before decoding anything."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1)))
            + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------------------- commands
def test_a_pipe_line_in_a_shard_list_file_is_refused_naming_file_and_line_and_never_runs(tmp_path):
    write_shards(tmp_path / "s", 1, 2)
    marker = tmp_path / "ran"
    listing = tmp_path / "shards.txt"
    listing.write_text(f"# downloaded with the data\ns/00000.tar\npipe:touch {marker} && cat s/00000.tar\n")
    for allow in (False, True):  # the option never lets a file's line through
        with pytest.raises(ShardCommandError, match=r"line 3") as err:
            WebShardsImageText(str(listing), 2, allow_commands=allow)
        assert str(listing) in str(err.value) and "pipe:touch" in str(err.value)
    for case in (" PIPE:touch", "Pipe:touch"):  # urllib's parsing (what webdataset uses) ignores case and blanks
        assert runs_command(case)
    listing.write_text(f"s/00000.tar\nPIPE:touch {marker}\n")
    with pytest.raises(ShardCommandError, match="line 2"):
        resolve_shards(str(listing), allow_commands=True)
    assert not marker.exists()


def test_a_config_pipe_url_works_only_with_allow_commands(tmp_path):
    captions = write_shards(tmp_path / "s", 1, 3)
    marker = tmp_path / "ran"
    url = f"pipe:touch {marker} && cat {tmp_path / 's' / '00000.tar'}"
    with pytest.raises(ShardCommandError, match="allow_commands: true"):
        WebShardsImageText([url], 3)
    with pytest.raises(ShardCommandError):
        WebShardsImageText(url, 3)
    assert not marker.exists()
    ds = WebShardsImageText([url], 3, shuffle_buffer=0, allow_commands=True)
    assert sorted(it["text"] for it in ds) == sorted(captions) and marker.exists()
    with pytest.raises(ValueError, match="allow_commands must be true or false"):
        WebShardsImageText([url], 3, allow_commands="yes")


def test_a_local_file_whose_name_reads_as_a_pipe_url_is_opened_as_a_file(tmp_path, monkeypatch):
    """A glob in the working folder finding a file named ``pipe:touch X;cat 0.tar`` must not hand that name
    to webdataset as a command."""
    write_shards(tmp_path / "s", 1, 2)
    monkeypatch.chdir(tmp_path / "s")
    odd = tmp_path / "s" / "pipe:touch ran;cat 00000.tar"
    odd.write_bytes((tmp_path / "s" / "00000.tar").read_bytes())
    shards = resolve_shards("pipe*.tar")
    assert shards == ["./pipe:touch ran;cat 00000.tar"] and not runs_command(shards[0])
    ds = WebShardsImageText("pipe*.tar", 2, shuffle_buffer=0)
    assert len(list(ds)) == 2 and not (tmp_path / "s" / "ran").exists()


# ----------------------------------------------------------------------------------------- bad samples
def test_an_image_over_the_pixel_limit_is_a_bad_sample_named_and_the_epoch_finishes(tmp_path, caplog):
    write_shards(tmp_path / "s", 2, 3)
    bomb = bomb_png()
    assert len(bomb) < 50_000
    with TarWriter(str(tmp_path / "s" / "00002.tar")) as sink:
        sink.write({"__key__": "bomb0001", "png": bomb, "txt": "a huge picture"})
        sink.write({"__key__": "fine0002", "png": _png(), "txt": "a small picture"})
    ds = WebShardsImageText(str(tmp_path / "s" / "*.tar"), 7, shuffle_buffer=0)
    with caplog.at_level(logging.WARNING, logger="vqdiff.data"):
        texts = [it["text"] for it in ds]
    assert len(texts) == 7 and "a huge picture" not in texts and "a small picture" in texts
    assert ds.bad_samples == 1 and ds.bad_keys == [f"{tmp_path / 's' / '00002.tar'}:bomb0001"]
    assert "skipping sample 'bomb0001'" in caplog.text and "DecompressionBombError" in caplog.text


def test_a_member_over_the_size_cap_is_not_read_and_its_sample_is_bad(tmp_path, caplog):
    (tmp_path / "s").mkdir()
    with TarWriter(str(tmp_path / "s" / "00001.tar")) as sink:
        sink.write({"__key__": "fine0001", "png": _png(), "txt": "first"})
        sink.write({"__key__": "big00001", "png": _png(), "txt": "x" * 5000})
        sink.write({"__key__": "fine0002", "png": _png(), "txt": "last"})
    raw = list(iter_shard(str(tmp_path / "s" / "00001.tar"), None, max_member_bytes=4096))
    assert [r["__key__"] for r in raw] == ["fine0001", "big00001", "fine0002"] and "png" in raw[1]
    assert "txt" not in raw[1] and raw[1]["__too_large__"] == [".txt (5000 bytes > max_member_bytes 4096)"]
    ds = WebShardsImageText(str(tmp_path / "s" / "*.tar"), 2, shuffle_buffer=0, max_member_bytes=4096)
    with caplog.at_level(logging.WARNING, logger="vqdiff.data"):
        assert [it["text"] for it in ds] == ["first", "last"]
    assert ds.bad_samples == 1 and "skipping sample 'big00001'" in caplog.text and "size cap" in caplog.text
    with pytest.raises(ValueError, match="max_member_bytes"):
        WebShardsImageText(str(tmp_path / "s" / "*.tar"), 3, max_member_bytes=0)


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _token_shard(path: Path, rows: dict[str, np.ndarray], codebook: int = 10) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / TOKEN_META_FILE).write_text(json.dumps({"token_shape": [2, 2], "num_tokens": codebook,
                                                    "codec_config_sha256": None}))
    with TarWriter(str(path / "0.tar")) as sink:
        for key, tok in rows.items():
            buf = io.BytesIO()
            np.save(buf, tok)
            sink.write({"__key__": key, "tokens.npy": buf.getvalue(), "txt": f"caption {key}"})


def test_token_values_outside_the_codebook_are_bad_samples(tmp_path, caplog):
    good = np.array([[0, 3, 9, 1]], np.uint16)
    _token_shard(tmp_path / "tok", {"ok1": good, "over": np.array([[0, 10, 2, 1]], np.uint16),
                                    "neg": np.array([[0, -1, 2, 1]], np.int64),
                                    "flt": np.zeros((1, 4), np.float32), "ok2": good})
    ds = TokenShardsDataset(str(tmp_path / "tok" / "0.tar"), 2, phase="val", shuffle_buffer=0)
    with caplog.at_level(logging.WARNING, logger="vqdiff.data"):
        items = list(ds)
    assert [it["text"] for it in items] == ["caption ok1", "caption ok2"]
    assert ds.bad_samples == 3 and "outside the codebook's 0..9" in caplog.text and "skipping sample 'over'" in caplog.text
    assert "skipping sample 'neg'" in caplog.text and "dtype float32" in caplog.text


def test_two_token_shard_inputs_of_one_file_name_are_an_error_naming_both(tmp_path):
    out = tmp_path / "tok"
    assert output_names(["a/0.tar", "b/1.tar"], out) == [out / "0.tar", out / "1.tar"]
    with pytest.raises(ValueError, match=r"'a/0.tar' and 'b/0.tar' have the same file name '0.tar'"):
        output_names(["a/0.tar", "b/0.tar"], out)


def test_token_shard_writer_refuses_colliding_inputs_before_writing(tmp_path):
    from vqdiff.data.token_shards import write_token_shards

    for folder in ("a", "b"):
        write_shards(tmp_path / folder, 1, 2)
    pre = {"target": "vqdiff.data.preprocess.DalleTransformerPreprocessor", "params": {"size": 8, "phase": "val"}}
    src = WebShardsImageText([str(tmp_path / "a" / "00000.tar"), str(tmp_path / "b" / "00000.tar")], 4,
                             im_preprocessor_config=pre)
    with pytest.raises(ValueError, match="same file name"):
        write_token_shards(src, object(), tmp_path / "tok", crops=0)
    assert not any((tmp_path / "tok").glob("*.tar*"))


# ----------------------------------------------------------------------------------------- nothing to read
def test_zero_shards_and_a_pass_without_any_sample_are_errors_naming_the_source(tmp_path):
    with pytest.raises(ValueError, match="the shard list is empty"):
        WebShardsImageText([], 2)
    (tmp_path / "shards.txt").write_text("# nothing yet\n\n")
    with pytest.raises(ValueError, match=r"shard list '.*shards.txt' lists no shards"):
        WebShardsImageText(str(tmp_path / "shards.txt"), 2)
    (tmp_path / "s").mkdir()
    with TarWriter(str(tmp_path / "s" / "0.tar")):
        pass  # a valid tar without members
    ds = WebShardsImageText(str(tmp_path / "s" / "0.tar"), 2)
    with pytest.raises(ValueError, match=r"no sample in a whole pass over the shards .*0.tar"):
        list(ds)


def test_file_readers_turn_an_image_over_the_pixel_limit_into_a_bad_image_naming_it(tmp_path):
    from vqdiff.data.robust import BadImageError, load_rgb

    (tmp_path / "huge.png").write_bytes(bomb_png())
    with pytest.raises(BadImageError, match=r"huge.png.*DecompressionBombError"):
        load_rgb(tmp_path / "huge.png")
