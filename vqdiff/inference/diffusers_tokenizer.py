"""CLIP tokenizer files for a diffusers ``VQDiffusionPipeline`` folder, both ways.

:func:`write_clip_tokenizer` writes our BPE (:class:`~vqdiff.modeling.codecs.text.bpe.SimpleTokenizer`)
as the files ``transformers.CLIPTokenizer`` reads: ``vocab.json`` (token -> id), ``merges.txt`` (one
merge per line, by rank, after a ``#version`` header), ``tokenizer_config.json`` and
``special_tokens_map.json``. The official model pads with id 0 (the token ``!``), but a pad token that is
also ordinary text would be cut out of every caption by ``CLIPTokenizer``; so padding gets its own
token string ``<|pad|>`` that ``vocab.json`` maps to the same id. Text, start and end tokens are then
identical to ours, truncation (``truncation=True``) keeps the end token in the last slot as ours does,
and padding is id 0.

:class:`VocabFileTokenizer` reads such a folder back (``vocab.json`` + ``merges.txt``, or a
``tokenizer.json``) and tokenises exactly as ``SimpleTokenizer`` (ftfy, HTML unescape, lower case,
CLIP's pre-tokenisation), so imported models tokenise like native ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from vqdiff.modeling.codecs.text.bpe import EOT_TEXT, SOT_TEXT, SimpleTokenizer, _PRETOKEN_PATTERN, bytes_to_unicode

__all__ = ["PAD_TEXT", "write_clip_tokenizer", "read_tokenizer_files", "VocabFileTokenizer"]

PAD_TEXT = "<|pad|>"


def _merges_by_rank(tokenizer: SimpleTokenizer) -> list[tuple[str, str]]:
    return sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.__getitem__)


def write_clip_tokenizer(tokenizer: SimpleTokenizer, folder: str | os.PathLike, pad_id: int,
                         context_length: int = 77) -> Path:
    """Write ``tokenizer`` as ``CLIPTokenizer`` files into ``folder``; padding is ``pad_id``.

    Raises:
        ValueError: ``pad_id`` is outside the vocabulary.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = dict(tokenizer.encoder)
    if not 0 <= pad_id < len(vocab):
        raise ValueError(f"pad id {pad_id} is outside the {len(vocab)}-token vocabulary")
    special = {tokenizer.sot_token: SOT_TEXT, tokenizer.eot_token: EOT_TEXT}
    pad_text = special.get(pad_id, PAD_TEXT)
    if pad_text == PAD_TEXT:
        vocab[PAD_TEXT] = int(pad_id)  # a second name for the pad id, so that '!' in text stays text
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in _merges_by_rank(tokenizer)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tokens = {"bos_token": SOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT, "pad_token": pad_text}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": int(context_length), **tokens,
              "do_lower_case": True, "clean_up_tokenization_spaces": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(tokens, indent=2) + "\n", encoding="utf-8")
    return folder


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_tokenizer_files(folder: str | os.PathLike) -> tuple[dict[str, int], list[tuple[str, str]], dict]:
    """``(vocab, merges by rank, tokenizer_config)`` of a ``CLIPTokenizer`` folder.

    Reads ``vocab.json`` + ``merges.txt``, else the ``model`` of ``tokenizer.json``.

    Raises:
        FileNotFoundError: neither form is in ``folder`` (the message names both).
    """
    folder = Path(folder)
    config = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        vocab = _read_json(folder / "vocab.json")
        lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
    elif (folder / "tokenizer.json").is_file():
        full = _read_json(folder / "tokenizer.json")
        vocab = dict(full["model"]["vocab"])
        merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in full["model"]["merges"]]
        for tok in full.get("added_tokens") or []:  # special tokens (a pad token) may only be listed here
            vocab.setdefault(tok["content"], int(tok["id"]))
    else:
        raise FileNotFoundError(
            f"no CLIP tokenizer in '{folder}': expected vocab.json + merges.txt or tokenizer.json"
        )
    bad = [m for m in merges if len(m) != 2]
    if bad:
        raise ValueError(f"{folder}: merge entries must be pairs, found {bad[0]!r}")
    return vocab, merges, config


def _token_text(value: Any) -> Any:
    return value.get("content") if isinstance(value, Mapping) else value


class VocabFileTokenizer(SimpleTokenizer):
    """CLIP's BPE read from a diffusers/transformers tokenizer folder instead of the ``.txt.gz`` file.

    Args:
        folder: the pipeline's ``tokenizer`` folder.

    Attributes besides :class:`SimpleTokenizer`'s: ``pad_token`` (id of the configured pad token, or
    None) and ``model_max_length``.
    """

    def __init__(self, folder: str | os.PathLike, cache_size: int = 100_000):
        vocab, merges, config = read_tokenizer_files(folder)
        for name in (SOT_TEXT, EOT_TEXT):
            if name not in vocab:
                raise ValueError(f"tokenizer in '{folder}' has no '{name}' token: not a CLIP tokenizer")
        self.folder = str(folder)
        self.end_idx = len(merges) + 256 + 2
        self.bpe_path = Path(folder)
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.encoder = {tok: int(i) for tok, i in vocab.items()}
        self.decoder = {}
        for tok, i in self.encoder.items():  # several names may share an id (the pad alias): keep the first
            self.decoder.setdefault(i, tok)
        self.bpe_ranks = {tuple(m): r for r, m in enumerate(merges)}
        self.sot_token = self.encoder[SOT_TEXT]
        self.eot_token = self.encoder[EOT_TEXT]
        pad = _token_text(config.get("pad_token"))
        self.pad_token = self.encoder.get(pad) if pad is not None else None
        self.model_max_length = int(config.get("model_max_length", 77))
        self.cache_size = cache_size
        self.cache = {}
        self.pat = _PRETOKEN_PATTERN

    def __len__(self) -> int:
        return len(self.decoder)

    @property
    def vocab_size(self) -> int:
        return len(self.decoder)
