"""CLIP's byte-level BPE tokenizer (Radford et al. 2021, arXiv 2103.00020, Sec. 2.4).

Text is fixed with ``ftfy``, HTML-unescaped, whitespace-collapsed and lower-cased, then split by CLIP's
pre-tokenization regex into words, numbers (one digit at a time), contractions and punctuation runs.
Each piece is written as UTF-8 bytes, every byte mapped to a printable unicode character
(:func:`bytes_to_unicode`), the last character marked with ``</w>``, and the pair merges of
``bpe_simple_vocab_16e6.txt.gz`` are applied lowest rank first. Ids: 256 byte characters, the same 256
with ``</w>``, then one id per merge, then ``<|startoftext|>`` and ``<|endoftext|>``; with
``end_idx=49152`` (CLIP) that gives 48894 merges and a 49408-token vocabulary, SOT 49406, EOT 49407.

The vocabulary file is never downloaded: it is taken from ``bpe_path``, the environment variable
``VQDIFF_CLIP_BPE``, or an installed package that ships it (``openai-clip``/``clip-anytorch`` as
``clip/``, ``open_clip_torch`` as ``open_clip/``), found without importing the package.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import ftfy
import regex

__all__ = [
    "BPE_ENV",
    "BPE_FILENAME",
    "SOT_TEXT",
    "EOT_TEXT",
    "BPEVocabNotFoundError",
    "bytes_to_unicode",
    "find_bpe_vocab",
    "basic_clean",
    "whitespace_clean",
    "SimpleTokenizer",
]

BPE_ENV = "VQDIFF_CLIP_BPE"
BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
SOT_TEXT = "<|startoftext|>"
EOT_TEXT = "<|endoftext|>"

# Packages known to ship the vocabulary, and the sub-folder of the package that holds it.
_VOCAB_PACKAGES: tuple[tuple[str, str], ...] = (("clip", ""), ("open_clip", ""))

# CLIP's pre-tokenization: the two special tokens, English contractions, letter runs, single digits,
# and runs of anything that is neither space, letter nor digit (punctuation, symbols, control chars).
_PRETOKEN_PATTERN = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


class BPEVocabNotFoundError(FileNotFoundError):
    """The CLIP BPE vocabulary file is in none of the places looked at (all listed in the message)."""


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character table of GPT-2/CLIP byte-level BPE.

    Printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) map to themselves; the other 68 bytes
    (space, control characters, ...) map to code points 256, 257, ... in byte order, so no BPE symbol
    is whitespace or a control character. The dict's order is the id order of the 256 byte tokens.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table  # insertion order (printable bytes first, then the rest) fixes the token ids 0..255


def _vocab_candidates(bpe_path: str | os.PathLike | None) -> list[tuple[str, Path | None]]:
    """Every place the vocabulary is looked for, in order, as (description, path or None)."""
    places: list[tuple[str, Path | None]] = []
    if bpe_path is not None:
        places.append(("the 'bpe_path' argument", Path(bpe_path)))
        return places  # an explicit path is the only place looked: a wrong path must not pass silently
    env = os.environ.get(BPE_ENV)
    places.append((f"environment variable {BPE_ENV}", Path(env) if env else None))
    for package, sub in _VOCAB_PACKAGES:
        try:
            spec = importlib.util.find_spec(package)  # finds the folder, does not import the package
        except (ImportError, ValueError):
            spec = None
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        if not folders:
            places.append((f"package '{package}' (not installed)", None))
        for folder in folders:
            places.append((f"package '{package}'", Path(folder) / sub / BPE_FILENAME))
    return places


def find_bpe_vocab(bpe_path: str | os.PathLike | None = None) -> Path:
    """Locate ``bpe_simple_vocab_16e6.txt.gz``.

    Order: ``bpe_path`` if given (then nothing else), else ``$VQDIFF_CLIP_BPE``, else the folder of an
    installed ``clip`` or ``open_clip`` package.

    Raises:
        BPEVocabNotFoundError: listing every place looked at and how to provide the file.
    """
    places = _vocab_candidates(bpe_path)
    for _, path in places:
        if path is not None and path.is_file():
            return path
    lines = [f"  - {desc}: {path if path is not None else '(not set)'}" for desc, path in places]
    raise BPEVocabNotFoundError(
        f"CLIP BPE vocabulary '{BPE_FILENAME}' not found. Looked in:\n" + "\n".join(lines) + "\n"
        f"Install a package that ships it (pip install openai-clip), set {BPE_ENV} to the file, or give "
        f"'bpe_path' in tokenizer_config.params."
    )


def basic_clean(text: str) -> str:
    """ftfy mojibake/unicode repair, then HTML unescaping (twice, as CLIP), then strip."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text: str) -> str:
    """Collapse every whitespace run to one space and strip."""
    return _WHITESPACE.sub(" ", text).strip()


def _as_text(text: str | bytes | bytearray) -> str:
    """Accept bytes too: UTF-8, undecodable bytes replaced by U+FFFD."""
    if isinstance(text, (bytes, bytearray)):
        return bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise TypeError(f"text must be str or bytes, got {type(text).__name__}")
    return text


class SimpleTokenizer:
    """CLIP's BPE tokenizer (the official ``SimpleTokenizer``), with a bounded word cache.

    Args:
        end_idx: 49152 for CLIP (16384 for DALL-E's vocabulary): the first ``end_idx - 258`` merges of
            the file are used, giving ``end_idx + 256`` ids in all (49408 for CLIP), as the official code.
        bpe_path: the vocabulary file; ``None`` searches as :func:`find_bpe_vocab`.
        cache_size: words whose BPE result is memoised (the cache is emptied when full).
    """

    def __init__(self, end_idx: int = 49152, bpe_path: str | None = None, cache_size: int = 100_000):
        if not isinstance(end_idx, int) or end_idx <= 512 + 2:
            raise ValueError(f"end_idx must be an int above 514 (49152 for CLIP), got {end_idx!r}")
        self.end_idx = end_idx
        self.bpe_path = find_bpe_vocab(bpe_path)
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}

        with gzip.open(self.bpe_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        n_merges = end_idx - 256 - 2
        merge_lines = lines[1 : 1 + n_merges]  # line 0 is a version header
        if len(merge_lines) < n_merges:
            raise ValueError(
                f"{self.bpe_path}: end_idx={end_idx} needs {n_merges} merges, the file has {len(lines) - 1}"
            )
        merges: list[tuple[str, str]] = []
        for line_no, line in enumerate(merge_lines, start=2):
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{self.bpe_path}: line {line_no} is not a merge pair: {line!r}")
            merges.append((parts[0], parts[1]))

        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT_TEXT, EOT_TEXT]
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.decoder: dict[int, str] = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks: dict[tuple[str, str], int] = {m: r for r, m in enumerate(merges)}
        self.sot_token: int = self.encoder[SOT_TEXT]
        self.eot_token: int = self.encoder[EOT_TEXT]
        self.cache_size = cache_size
        self.cache: dict[str, tuple[str, ...]] = {}
        self.pat = _PRETOKEN_PATTERN

    def __len__(self) -> int:
        return len(self.encoder)

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    # ------------------------------------------------------------------------------------------
    def bpe(self, token: str) -> tuple[str, ...]:
        """Apply the merges to one pre-token (already byte-mapped); returns its BPE symbols."""
        if token in (SOT_TEXT, EOT_TEXT):
            return (token,)
        cached = self.cache.get(token)
        if cached is not None:
            return cached
        word = list(token[:-1]) + [token[-1] + "</w>"]
        ranks = self.bpe_ranks
        while len(word) > 1:
            # the adjacent pair with the lowest merge rank; stop when no pair is a known merge
            best_rank, best = None, None
            for pair in zip(word, word[1:]):
                r = ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best_rank, best = r, pair
            if best is None:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        result = tuple(word)
        if len(self.cache) >= self.cache_size:
            self.cache.clear()
        self.cache[token] = result
        return result

    def normalize(self, text: str | bytes) -> str:
        """The text the BPE sees: ftfy + HTML unescape, whitespace collapsed, lower case."""
        return whitespace_clean(basic_clean(_as_text(text))).lower()

    def encode(self, text: str | bytes) -> list[int]:
        """Text -> BPE ids (no start/end tokens)."""
        ids: list[int] = []
        for piece in self.pat.findall(self.normalize(text)):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[sym] for sym in self.bpe(mapped))
        return ids

    def decode(self, tokens: Iterable[int], skip_special_tokens: bool = False) -> str:
        """BPE ids -> text; every end-of-word mark becomes a space (so ``"a, b"`` decodes to ``"a , b "``).

        Raises:
            ValueError: for an id outside the vocabulary.
        """
        pieces: list[str] = []
        for t in tokens:
            t = int(t)
            if t not in self.decoder:
                raise ValueError(f"token id {t} is outside the vocabulary (0..{len(self.decoder) - 1})")
            if skip_special_tokens and t in (self.sot_token, self.eot_token):
                continue
            pieces.append(self.decoder[t])
        # every character is a mapped byte (the special tokens are printable ASCII, mapped to themselves)
        raw = bytes(self.byte_decoder[ch] for ch in "".join(pieces))
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")

    def encode_batch(self, texts: Sequence[str | bytes]) -> list[list[int]]:
        return [self.encode(t) for t in texts]
