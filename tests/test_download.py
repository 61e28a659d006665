"""scripts/download_checkpoints.py against a local HTTP server on 127.0.0.1 (small files, Range-aware):
parts joined at the official destinations, an interrupted download resumed with a Range request, a wrong
hash refused, an unreachable host reported in one line, --only / --list."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import socket
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vqdiff.utils.released_files import RELEASED_FILES, find_released_file

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("download_checkpoints", REPO / "scripts" / "download_checkpoints.py")
dl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dl)


class _Files:
    """What the server serves and what it saw."""

    def __init__(self):
        self.blobs: dict[str, bytes] = {}
        self.ranges: list[tuple[str, str | None]] = []
        self.break_after: dict[str, int] = {}  # name -> bytes sent before the connection drops (once)
        self.ignore_range = False  # a server without Range support answers 200 with the whole file


def _handler(files: _Files):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            name = self.path.rsplit("/", 1)[-1]
            rng = self.headers.get("Range")
            files.ranges.append((name, rng))
            if files.ignore_range:
                rng = None
            if name not in files.blobs:
                self.send_error(404)
                return
            blob = files.blobs[name]
            start = int(rng.split("=")[1].split("-")[0]) if rng else 0
            if start >= len(blob) and rng:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(blob)}")
                self.end_headers()
                return
            body = blob[start:]
            self.send_response(206 if rng else 200)
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{len(blob) - 1}/{len(blob)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = files.break_after.pop(name, None)
            self.wfile.write(body if cut is None else body[:cut])
            if cut is not None:
                self.wfile.flush()
                self.close_connection = True

    return Handler


@pytest.fixture
def server():
    files = _Files()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(files))
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield files, f"http://127.0.0.1:{httpd.server_address[1]}/vqdiffusion/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _serve(files: _Files, entry, size: int = 3000) -> bytes:
    """Serve ``entry``'s parts with distinct content; return the whole file's bytes."""
    whole = b""
    for i, part in enumerate(entry.part_names()):
        blob = bytes((i * 7 + j) % 251 for j in range(size + i))
        files.blobs[part] = blob
        whole += blob
    return whole


def test_catalogue_is_the_official_list_at_the_official_destinations():
    names = {f.name for f in RELEASED_FILES}
    assert names == {"cc_learnable", "CC_pretrained", "coco_learnable", "coco_pretrained", "cub_pretrained",
                     "human_pretrained", "imagenet_learnable", "imagenet_pretrained", "ithq_learnable",
                     "vqgan_ffhq_f16_1024", "ithq_vqvae", "taming_f8_8192_openimages_last",
                     "vqgan_imagenet_f16_16384", "ViT-B-32"}
    assert find_released_file("ithq_learnable").path == "OUTPUT/pretrained_model/ithq_learnable.pth"
    assert find_released_file("ithq_learnable").part_names()[-1] == "ithq_learnable_ak"
    assert find_released_file("ithq_vqvae").path == "OUTPUT/pretrained_model/taming_dvae/ithq_vqvae.pth"
    assert find_released_file("ViT-B-32.pt").urls() == [
        "https://github.com/tzco/storage/releases/download/vqdiffusion/ViT-B-32.pt"]
    with pytest.raises(KeyError, match="unknown released file 'nope'"):
        find_released_file("nope")


def test_only_downloads_and_joins_the_parts(server, tmp_path, capsys):
    files, base = server
    entry = find_released_file("CC_pretrained")
    whole = _serve(files, entry)
    rc = dl.main(["--only", "CC_pretrained", "--dest", str(tmp_path), "--base_url", base, "--no_progress_bar"])
    assert rc == 0
    out = tmp_path / "OUTPUT" / "pretrained_model" / "CC_pretrained.pth"
    assert out.read_bytes() == whole
    assert sorted(p.name for p in out.parent.iterdir()) == ["CC_pretrained.pth"]  # parts removed
    assert [r for _, r in files.ranges] == [None] * 7
    # a second run finds the file and fetches nothing
    assert dl.main(["--only", "CC_pretrained", "--dest", str(tmp_path), "--base_url", base]) == 0
    assert len(files.ranges) == 7 and "exists" in capsys.readouterr().out


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    files, base = server
    entry = find_released_file("ithq_vqvae")
    whole = _serve(files, entry, size=5000)
    files.break_after["ithq_vqvae.pth"] = 1800
    dest = tmp_path / "OUTPUT" / "pretrained_model" / "taming_dvae" / "ithq_vqvae.pth"
    with pytest.raises(dl.DownloadError, match="run again to resume"):
        dl.download(entry, tmp_path, base, progress=False)
    part = dest.with_name("ithq_vqvae.pth.part")
    assert part.stat().st_size == 1800 and not dest.exists()
    dl.download(entry, tmp_path, base, progress=False)
    assert files.ranges[-1] == ("ithq_vqvae.pth", "bytes=1800-")
    assert dest.read_bytes() == whole and not part.exists()


def test_server_without_range_support_restarts_the_part(server, tmp_path):
    files, base = server
    entry = find_released_file("ithq_vqvae")
    whole = _serve(files, entry)
    files.ignore_range = True
    dest = tmp_path / "OUTPUT" / "pretrained_model" / "taming_dvae" / "ithq_vqvae.pth"
    dest.parent.mkdir(parents=True)
    dest.with_name("ithq_vqvae.pth.part").write_bytes(b"stale bytes")
    dl.download(entry, tmp_path, base, progress=False)
    assert files.ranges[-1] == ("ithq_vqvae.pth", "bytes=11-") and dest.read_bytes() == whole


def test_manifest_hash_refuses_a_wrong_file_and_accepts_the_right_one(server, tmp_path):
    files, base = server
    entry = find_released_file("ViT-B-32")
    whole = _serve(files, entry)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"ViT-B-32": {"size": len(whole), "sha256": "0" * 64}}))
    args = ["--only", "ViT-B-32", "--dest", str(tmp_path), "--base_url", base, "--manifest", str(manifest)]
    assert dl.main(args + ["--no_progress_bar"]) == 1
    target = tmp_path / "OUTPUT" / "pretrained_model" / "ViT-B-32.pt"
    assert not target.exists() and target.with_name("ViT-B-32.pt.bad").read_bytes() == whole
    manifest.write_text(json.dumps({"ViT-B-32": {"size": len(whole), "sha256": hashlib.sha256(whole).hexdigest()}}))
    assert dl.main(args + ["--no_progress_bar"]) == 0 and target.read_bytes() == whole
    with pytest.raises(dl.DownloadError, match="size 3000 != 3001"):
        dl.verify(replace(entry, size=3001), target)


def test_offline_is_one_clear_line(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = dl.main(["--only", "ViT-B-32", "--dest", str(tmp_path), "--base_url", f"http://127.0.0.1:{port}/x/"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "\n" not in err
    assert err.startswith("error: cannot reach http://127.0.0.1:") and "ViT-B-32.pt" in err
    assert str(tmp_path / "OUTPUT" / "pretrained_model" / "ViT-B-32.pt") in err


def test_missing_on_the_server_names_the_url(server, tmp_path, capsys):
    _, base = server
    assert dl.main(["--only", "ithq_vqvae", "--dest", str(tmp_path), "--base_url", base]) == 1
    assert "HTTP 404" in capsys.readouterr().err


def test_list_and_unknown_name(tmp_path, capsys):
    (tmp_path / "OUTPUT" / "pretrained_model").mkdir(parents=True)
    (tmp_path / "OUTPUT" / "pretrained_model" / "ViT-B-32.pt").write_bytes(b"x")
    assert dl.main(["--list", "--dest", str(tmp_path)]) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()}
    assert len(lines) == len(RELEASED_FILES) and " present " in lines["ViT-B-32"] and " missing " in lines["ithq_learnable"]
    assert dl.main(["--only", "nope", "--dest", str(tmp_path)]) == 2
    assert "unknown released file 'nope'" in capsys.readouterr().err
