#!/usr/bin/env python
"""Download the released VQ-Diffusion checkpoints to where the configs expect them.

    python scripts/download_checkpoints.py --list                       # what there is, and where it goes
    python scripts/download_checkpoints.py --only ithq_learnable --only ithq_vqvae --only ViT-B-32
    python scripts/download_checkpoints.py                              # everything (tens of GB)

The file list is the official download script's (``vqdiffusion_download_checkpoints.sh``: files split
into ``_aa``, ``_ab``, … parts on github.com/tzco/storage), the destinations the official README's:
models and ``ViT-B-32.pt`` in ``OUTPUT/pretrained_model/``, VQ-VAEs in ``OUTPUT/pretrained_model/taming_dvae/``
(both under ``--dest``, default the repository root). Each part is fetched into ``<part>.part`` and
resumed with an HTTP Range request when interrupted; the parts are then joined into the file. A file
already present is skipped. The release publishes no sizes or hashes: ``--manifest FILE.json``
(``{"<name>": {"size": N, "sha256": "…"}}``) makes the script check them and refuse a file that differs.
Nothing but the Python standard library (and tqdm for the bar) is used.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

from tqdm.auto import tqdm

from vqdiff.utils.released_files import BASE_URL, RELEASED_FILES, ReleasedFile, find_released_file

REPO = Path(__file__).resolve().parents[1]
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A file could not be fetched or failed its check; the message is one line."""


def fetch(url: str, dest: Path, timeout: float = 60.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a partial ``.part`` with ``Range``.

    A server that ignores the range (200 instead of 206) restarts the file; 416 (range past the end)
    means the ``.part`` is already whole.

    Raises:
        DownloadError: unreachable host, HTTP error or a short read, naming the URL and destination.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            part.replace(dest)
            return dest
        raise DownloadError(f"cannot download {url} -> {dest}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(
            f"cannot reach {url} ({reason}); offline? fetch it elsewhere and put it at {dest}"
        ) from None
    with response:
        resumed = response.status == 206
        length = response.headers.get("Content-Length")
        expected = (have if resumed else 0) + int(length) if length is not None else None
        mode = "ab" if resumed else "wb"
        done = have if resumed else 0
        with open(part, mode) as f, tqdm(total=expected, initial=done, unit="B", unit_scale=True,
                                         desc=dest.name, disable=not progress) as bar:
            try:
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
            except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
                raise DownloadError(f"download of {url} broke off at {done} bytes ({e}); run again to resume") from None
    if expected is not None and done != expected:
        raise DownloadError(f"download of {url} ended at {done} of {expected} bytes; run again to resume")
    part.replace(dest)
    return dest


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify(entry: ReleasedFile, path: Path) -> None:
    """Check size and sha256 when known; a file that differs is renamed ``<file>.bad`` and refused."""
    problems = []
    if entry.size is not None and path.stat().st_size != entry.size:
        problems.append(f"size {path.stat().st_size} != {entry.size}")
    if entry.sha256 is not None and sha256_of(path) != entry.sha256.lower():
        problems.append("sha256 differs from the manifest")
    if problems:
        bad = path.with_name(path.name + ".bad")
        path.replace(bad)
        raise DownloadError(f"{path}: {'; '.join(problems)} (kept as {bad}); delete it and download again")


def download(entry: ReleasedFile, dest_root: Path, base_url: str = BASE_URL, progress: bool = True) -> Path:
    """Fetch every part of ``entry`` (resumable), join them into its file, check it, remove the parts."""
    target = dest_root / entry.path
    if target.is_file():
        verify(entry, target)
        print(f"{entry.path} exists")
        return target
    parts = []
    for url, name in zip(entry.urls(base_url), entry.part_names()):
        piece = target.parent / name
        if not piece.is_file():
            fetch(url, piece, progress=progress)
        parts.append(piece)
    if entry.num_parts:
        joined = target.with_name(target.name + ".join")
        with open(joined, "wb") as out:
            for piece in parts:
                with open(piece, "rb") as f:
                    shutil.copyfileobj(f, out, CHUNK)
        joined.replace(target)
        for piece in parts:
            piece.unlink()
    verify(entry, target)
    print(f"{entry.path} done")
    return target


def with_manifest(entries: Sequence[ReleasedFile], manifest: Optional[Path]) -> list[ReleasedFile]:
    """``entries`` with ``size``/``sha256`` from a JSON manifest ``{name: {"size": …, "sha256": …}}``."""
    if manifest is None:
        return list(entries)
    data = json.loads(Path(manifest).read_text())
    unknown = sorted(set(data) - {e.name for e in RELEASED_FILES})
    if unknown:
        raise DownloadError(f"manifest {manifest} names unknown files: {', '.join(unknown)}")
    return [replace(e, size=data.get(e.name, {}).get("size", e.size),
                    sha256=data.get(e.name, {}).get("sha256", e.sha256)) for e in entries]


def get_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="download only this file (repeatable); names as --list shows them")
    p.add_argument("--list", action="store_true", help="list the released files and their destinations")
    p.add_argument("--dest", type=Path, default=REPO, help="root the OUTPUT/ paths are under (default: the repository)")
    p.add_argument("--base_url", default=BASE_URL, help="where the parts are served (a mirror)")
    p.add_argument("--manifest", type=Path, default=None, help="JSON {name: {size, sha256}} to check against")
    p.add_argument("--no_progress_bar", action="store_true")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args(argv)
    if args.list:
        width = max(len(e.path) for e in RELEASED_FILES)
        for e in RELEASED_FILES:
            state = "present" if (args.dest / e.path).is_file() else "missing"
            print(f"{e.name:31s} {e.path:{width}s} {state:8s} {e.description}")
        return 0
    try:
        chosen = [find_released_file(n) for n in args.only] if args.only else list(RELEASED_FILES)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    try:
        for entry in with_manifest(chosen, args.manifest):
            download(entry, args.dest, args.base_url, progress=not args.no_progress_bar)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
