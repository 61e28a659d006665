"""Where shard data comes from: the shard list (patterns, globs, lists, shard-list files) and the raw
samples of one shard, read member by member with a size cap.

Commands: webdataset opens a ``pipe:<command>`` URL by running ``<command>`` in a shell. Such a URL is
taken only when it is written in the config itself *and* the data set's ``allow_commands`` option (off by
default) is on; a shard-list file may never hold one, whatever the option says (a ``shards.txt`` that came
with a downloaded data set would otherwise run whatever it says when training starts). The refusal names
the file and the line, and happens before any shard is opened. Other URL schemes (``https://``, ``gs://``
...) are opened by webdataset with a fixed downloader (``curl``, ``gsutil``) given the URL as one argument.

Members: a tar member larger than ``max_member_bytes`` is not read (the tar reader steps over it); its
sample carries ``'__too_large__'`` and is a bad sample (:func:`check_members`), skipped and named like an
undecodable one.
"""

from __future__ import annotations

import glob
import os
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import urlsplit

from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

__all__ = ["BadSample", "ShardCommandError", "resolve_shards", "iter_shard", "check_members", "runs_command",
           "DEFAULT_MAX_MEMBER_BYTES"]

DEFAULT_MAX_MEMBER_BYTES = 64 * 2**20
"""Default cap on one tar member (64 MiB: far above any image or caption of CC3M/CC12M/LAION)."""


class BadSample(ValueError):
    """A sample that cannot be used (the message says why); it is skipped and logged."""


class ShardCommandError(ValueError):
    """A shard URL that would run a command where commands are not allowed."""


def runs_command(url: str) -> bool:
    """Whether webdataset would open ``url`` by running it as a shell command (a ``pipe:`` URL, in any
    case and after leading blanks, as ``urllib`` parses it)."""
    return urlsplit(str(url)).scheme == "pipe"


def _is_remote(url: str) -> bool:
    return runs_command(url) or "://" in url


def _local(path: str) -> str:
    """A local shard path as webdataset must get it: one that would parse as a URL (a file named
    ``pipe:cmd.tar`` or ``a.b:c.tar`` found by a glob) gets a ``./`` prefix, so it is opened as a file."""
    return path if not urlsplit(path).scheme else os.path.join(".", path)


def _read_list_file(listed: Path) -> list[str]:
    """The entries of a shard-list file (relative paths taken from its folder); a command URL is a
    ShardCommandError naming the file and the line."""
    entries = []
    for number, line in enumerate(listed.read_text(encoding="utf-8").splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if runs_command(entry):
            raise ShardCommandError(
                f"shard list '{listed}' line {number}: '{entry}' is a pipe: URL, which runs a shell command; "
                f"commands are never taken from a shard-list file (write the pipe: URL in the config's urls "
                f"and set allow_commands: true there if you mean it)")
        entries.append(entry if _is_remote(entry) or Path(entry).is_absolute() else str(listed.parent / entry))
    if not entries:
        raise ValueError(f"shard list '{listed}' lists no shards")
    return entries


def resolve_shards(urls: str | Sequence[str], allow_commands: bool = False) -> list[str]:
    """The shard list of ``urls``: a brace pattern (``cc3m/{00000..00331}.tar``), a glob (``cc3m/*.tar``),
    a list of either, or a text file listing shards one a line (relative paths are taken from the file's
    folder; ``#`` starts a comment). Local shards must exist: a pattern that matches no file, or names a
    missing one, is a FileNotFoundError naming it. URLs (``https://`` ...) are passed on to webdataset;
    ``pipe:`` URLs only with ``allow_commands`` and never from a shard-list file (ShardCommandError)."""
    return _resolve(urls, allow_commands)


def _resolve(urls: str | Sequence[str], allow_commands: bool) -> list[str]:
    if isinstance(urls, (str, Path)):
        text = str(urls)
        listed = Path(text)
        if not runs_command(text) and listed.is_file() and not listed.name.endswith(".tar"):
            return [s for e in _read_list_file(listed) for s in _resolve(e, allow_commands=False)]
        patterns = [text]
    else:
        patterns = [str(u) for u in urls]
        if not patterns:
            raise ValueError("the shard list is empty")
    shards: list[str] = []
    for pattern in patterns:
        if runs_command(pattern) and not allow_commands:
            raise ShardCommandError(f"shard URL '{pattern}' is a pipe: URL, which runs a shell command; set "
                                    f"allow_commands: true in the data set's params to allow it")
        if _is_remote(pattern):
            shards.extend(expand_urls(pattern))
            continue
        for expanded in expand_urls(pattern):
            if any(c in expanded for c in "*?["):
                found = sorted(glob.glob(expanded))
                if not found:
                    raise FileNotFoundError(f"shard pattern '{pattern}' matches no file")
                shards.extend(_local(f) for f in found)
            elif Path(expanded).is_file():
                shards.append(_local(expanded))
            elif expanded == pattern:
                raise FileNotFoundError(f"shard pattern '{pattern}' matches no file")
            else:
                raise FileNotFoundError(f"shard '{expanded}' (from pattern '{pattern}') does not exist")
    return shards


def check_members(sample: dict) -> None:
    """BadSample when one of the sample's members was over the size cap (and so not read)."""
    if sample.get("__too_large__"):
        raise BadSample(f"member(s) over the size cap, not read: {', '.join(sample['__too_large__'])}")


def iter_shard(url: str, on_error: Callable[[str, Any, Exception], None] | None,
               max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> Iterator[dict]:
    """The raw samples (``{'__key__', '__url__', '<ext>': bytes, ...}``) of one shard, members grouped by
    key as webdataset does (``base_plus_ext``; ``__*__`` metadata skipped). A member over
    ``max_member_bytes`` is stepped over and listed in the sample's ``'__too_large__'``. A tar or open
    error calls ``on_error(url, last_key, exception)`` (raises it when ``on_error`` is None) and ends the
    shard; the sample being read then is dropped."""
    current: dict | None = None
    last_key = None
    try:
        stream = gopen(url, "rb")
        with stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                if not info.isreg():
                    continue
                key, ext = base_plus_ext(info.name)
                if key is None or (info.name.startswith("__") and "/" not in info.name):
                    continue
                ext = ext.lower()
                data = None
                if info.size <= max_member_bytes:  # read before the previous sample is passed on, so a
                    member = tar.extractfile(info)  # truncated member ends the shard before its neighbour
                    data = member.read() if member is not None else b""
                tar.members = []  # a stream's member list would otherwise grow with the shard
                if current is None or key != current["__key__"]:
                    if current is not None:
                        yield current
                    current = {"__key__": key, "__url__": url}
                    last_key = key
                if ext in current:
                    raise ValueError(f"member '{info.name}' repeats extension .{ext} of key '{key}'")
                if data is None:
                    current.setdefault("__too_large__", []).append(
                        f".{ext} ({info.size} bytes > max_member_bytes {max_member_bytes})")
                else:
                    current[ext] = data
        if current is not None:
            yield current
    except Exception as exn:  # a broken tar, a failed download, a command that exited non-zero
        if on_error is None:
            raise
        on_error(url, last_key, exn)
