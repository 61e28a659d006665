"""Reading data-set index files without running code: ``filenames.pickle`` (CUB-200, from AttnGAN) is a
pickled list of names, and a plain ``pickle.load`` of a crafted file in a downloaded data set would run
arbitrary code. :func:`read_name_list` unpickles with no importable globals at all (only the one codec
function Python 2-era pickles use to spell ``bytes``), then requires a list/tuple of ``str``/``bytes``."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

__all__ = ["UnsafeIndexError", "read_name_list"]


class UnsafeIndexError(ValueError):
    """An index file that is not a plain list of names (or tries to import something)."""


class _NamesOnlyUnpickler(pickle.Unpickler):
    """An unpickler that imports nothing; ``bytes`` in the protocol-2 spelling are rebuilt directly."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self.path = path

    def _latin1_bytes(self, text: str, encoding: str = "latin1") -> bytes:
        if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
            raise UnsafeIndexError(f"index file '{self.path}' spells bytes with encoding {encoding!r}")
        return text.encode("latin1")

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):  # protocol-2 pickles write bytes as _codecs.encode(str, enc)
            return self._latin1_bytes
        raise UnsafeIndexError(f"index file '{self.path}' refers to '{module}.{name}': only a list of file names "
                               "is accepted (a pickle that imports objects could run code)")


def read_name_list(path: str | os.PathLike) -> list[str]:
    """The names in pickled index ``path`` as ``str`` (bytes decoded as UTF-8); ``UnsafeIndexError`` naming
    the file when it holds anything but a list or tuple of strings/bytes, or is not a pickle."""
    path = Path(path)
    data = path.read_bytes()
    try:
        obj = _NamesOnlyUnpickler(io.BytesIO(data), path).load()
    except UnsafeIndexError:
        raise
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a valid index file"
        raise UnsafeIndexError(f"index file '{path}' is not a readable pickled list of names: "
                               f"{type(err).__name__}: {err}") from err
    if not isinstance(obj, (list, tuple)):
        raise UnsafeIndexError(f"index file '{path}' holds a {type(obj).__name__}, not a list of file names")
    names = []
    for i, n in enumerate(obj):
        if isinstance(n, bytes):
            try:
                n = n.decode("utf-8")
            except UnicodeDecodeError as err:
                raise UnsafeIndexError(f"index file '{path}': entry {i} is not UTF-8: {n[:40]!r}") from err
        if not isinstance(n, str):
            raise UnsafeIndexError(f"index file '{path}': entry {i} is a {type(n).__name__}, not a file name")
        names.append(n)
    return names
