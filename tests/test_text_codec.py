"""CLIP BPE tokenizer and the Tokenize codec."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch

from vqdiff.modeling.codecs.text import bpe as bpe_module
from vqdiff.modeling.codecs.text.bpe import (
    BPE_ENV,
    BPEVocabNotFoundError,
    SimpleTokenizer,
    bytes_to_unicode,
    find_bpe_vocab,
)
from vqdiff.modeling.codecs.text.tokenize import Tokenize
from conftest import require
from vqdiff.utils.config import instantiate_from_config, load_yaml_config

SOT, EOT = 49406, 49407

try:
    find_bpe_vocab()
    HAVE_VOCAB = True
except BPEVocabNotFoundError:
    HAVE_VOCAB = False
VOCAB_INSTALL = "pip install openai-clip, or set VQDIFF_CLIP_BPE to the .txt.gz file"


def _require_vocab() -> None:
    """Skip without the CLIP BPE vocabulary on a user's machine, fail under CI (conftest.require)."""
    require(HAVE_VOCAB, "the CLIP BPE vocabulary", VOCAB_INSTALL)


@pytest.fixture
def vocab() -> None:
    _require_vocab()


needs_vocab = pytest.mark.usefixtures("vocab")


@pytest.fixture(scope="module")
def tok() -> SimpleTokenizer:
    _require_vocab()
    return SimpleTokenizer()


@pytest.fixture(scope="module")
def codec() -> Tokenize:
    _require_vocab()
    return Tokenize(context_length=77, add_start_and_end=True, with_mask=True, pad_value=0)


def test_a_missing_vocabulary_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="the CLIP BPE vocabulary is missing .*CI is set"):
        require(False, "the CLIP BPE vocabulary", VOCAB_INSTALL)
    for off in ("", "0", "false"):
        monkeypatch.setenv("CI", off)
        with pytest.raises(pytest.skip.Exception, match="pip install openai-clip"):
            require(False, "the CLIP BPE vocabulary", VOCAB_INSTALL)


# ---------------------------------------------------------------------------------------------
# byte table and vocabulary
# ---------------------------------------------------------------------------------------------
def test_byte_table_is_a_printable_bijection():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    chars = list(table.values())
    assert len(set(chars)) == 256
    assert all(c.isprintable() and not c.isspace() for c in chars)
    assert table[ord("a")] == "a" and table[ord(" ")] == chr(256 + 32)  # space is the 33rd unprintable byte
    assert chars[0] == "!"  # id 0 is '!' in CLIP's vocabulary


@needs_vocab
def test_vocabulary_layout(tok: SimpleTokenizer):
    assert len(tok) == 49408
    assert tok.encoder["<|startoftext|>"] == SOT and tok.encoder["<|endoftext|>"] == EOT
    assert tok.encoder["!"] == 0 and tok.encoder["!</w>"] == 256
    assert len(tok.bpe_ranks) == 49152 - 256 - 2


@needs_vocab
def test_dalle_end_idx_gives_smaller_vocabulary():
    small = SimpleTokenizer(end_idx=16384)
    assert len(small) == 16384 + 256  # as the official tokenizer: end_idx + 256 ids in all
    assert small.encoder["<|endoftext|>"] == 16639
    assert small.encode("a photo of a small red bird")[:1] == [320]


@needs_vocab
@pytest.mark.parametrize(
    "text, ids",
    [
        # published CLIP ids (ENVIRONMENT.md), and the official code's output in official_tiny_text/expected.pt
        ("a photo of a small red bird", [320, 1125, 539, 320, 2442, 736, 3329]),
        ("a red circle at the top left", [320, 736, 7117, 536, 518, 1253, 1823]),
        ("Two dogs playing in the snow, 4K photo!", [1237, 3255, 1629, 530, 518, 2583, 267, 275, 330, 1125, 256]),
    ],
)
def test_known_ids(tok: SimpleTokenizer, text: str, ids: list[int]):
    assert tok.encode(text) == ids


@needs_vocab
def test_ids_are_case_and_whitespace_insensitive(tok: SimpleTokenizer):
    assert tok.encode("  A   PHOTO\tof a\nSmall red bird ") == [320, 1125, 539, 320, 2442, 736, 3329]
    assert tok.encode("&amp;") == tok.encode("&")  # HTML entities unescaped


ROUND_TRIP_TEXTS = [
    "a photo of a small red bird",
    "Hello, World!!! (what?) -- yes; no: maybe...",
    "café naïve résumé Ångström",
    "日本語のテキスト と 中文 и кириллица",
    "emoji 🐱🚀 and symbols © ® ™ € ∑ √",
    "numbers 1234567890 and 3.14159",
    "it's we're they've I'm you'll he'd",
    "",
    "word " * 200,
]


@needs_vocab
@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip(tok: SimpleTokenizer, text: str):
    ids = tok.encode(text)
    assert all(0 <= i < 49406 for i in ids)
    decoded = tok.decode(ids)
    # decoding gives the normalised text with a space after every word piece
    assert "".join(decoded.split()) == "".join(tok.normalize(text).split())


@needs_vocab
def test_decode_special_and_invalid(tok: SimpleTokenizer):
    assert tok.decode([SOT, 320, EOT]) == "<|startoftext|>a <|endoftext|>"
    assert tok.decode([SOT, 320, EOT], skip_special_tokens=True) == "a "
    with pytest.raises(ValueError, match="49408"):
        tok.decode([49408])


@needs_vocab
def test_bytes_and_control_characters(tok: SimpleTokenizer):
    assert tok.encode(b"a photo") == tok.encode("a photo")
    bad = b"red \xff\xfe bird"  # not UTF-8: replaced, never an exception
    ids = tok.encode(bad)
    assert ids[0] == tok.encode("red")[0] and ids[-1] == tok.encode("bird")[0]
    ids = tok.encode("red\x00\x07\x1b bird\u200b")
    assert all(0 <= i < 49406 for i in ids)
    with pytest.raises(TypeError):
        tok.encode(123)  # type: ignore[arg-type]


@needs_vocab
def test_bpe_cache_is_used_and_bounded():
    t = SimpleTokenizer(cache_size=3)
    first = t.encode("antidisestablishmentarianism")
    assert len(t.cache) == 1
    key = next(iter(t.cache))
    t.cache[key] = ("a</w>",)  # a poisoned entry proves the cache is read
    assert t.encode("antidisestablishmentarianism") == [320]
    t.encode("one two three four five")
    assert len(t.cache) <= 3
    t.cache.clear()
    assert t.encode("antidisestablishmentarianism") == first


# ---------------------------------------------------------------------------------------------
# where the vocabulary is looked for
# ---------------------------------------------------------------------------------------------
def test_missing_explicit_path_names_it(tmp_path):
    missing = tmp_path / "nope" / "vocab.txt.gz"
    with pytest.raises(BPEVocabNotFoundError) as e:
        SimpleTokenizer(bpe_path=str(missing))
    assert str(missing) in str(e.value) and "bpe_path" in str(e.value)


def test_missing_vocab_lists_every_place(tmp_path, monkeypatch):
    env_path = tmp_path / "env_vocab.txt.gz"
    monkeypatch.setenv(BPE_ENV, str(env_path))
    fake_pkg = tmp_path / "clip"
    fake_pkg.mkdir()

    class _Spec:
        submodule_search_locations = [str(fake_pkg)]

    monkeypatch.setattr(bpe_module.importlib.util, "find_spec", lambda name: _Spec() if name == "clip" else None)
    with pytest.raises(BPEVocabNotFoundError) as e:
        find_bpe_vocab()
    msg = str(e.value)
    assert BPE_ENV in msg and str(env_path) in msg
    assert str(fake_pkg / "bpe_simple_vocab_16e6.txt.gz") in msg
    assert "open_clip" in msg and "not installed" in msg
    assert isinstance(e.value, FileNotFoundError)


@needs_vocab
def test_env_variable_is_used(tmp_path, monkeypatch):
    real = find_bpe_vocab()
    copy = tmp_path / "my_vocab.txt.gz"
    copy.write_bytes(real.read_bytes())
    monkeypatch.setenv(BPE_ENV, str(copy))
    assert find_bpe_vocab() == copy
    assert SimpleTokenizer().bpe_path == copy


def test_vocab_found_without_importing_clip():
    # the 'clip' package is located, not imported (importing it fails in some environments)
    import sys

    require(importlib.util.find_spec("clip") is not None, "the 'clip' package", "pip install openai-clip")
    had = "clip" in sys.modules
    find_bpe_vocab()
    assert ("clip" in sys.modules) == had


# ---------------------------------------------------------------------------------------------
# Tokenize codec
# ---------------------------------------------------------------------------------------------
@needs_vocab
def test_tokenize_layout(codec: Tokenize):
    out = codec.get_tokens(["a photo of a small red bird", ""])
    token, mask = out["token"], out["mask"]
    assert token.shape == (2, 77) and token.dtype == torch.long
    assert mask.shape == (2, 77) and mask.dtype == torch.bool
    assert token[0, :9].tolist() == [SOT, 320, 1125, 539, 320, 2442, 736, 3329, EOT]
    assert (token[0, 9:] == 0).all() and mask[0].sum() == 9 and mask[0, :9].all()
    assert token[1, :2].tolist() == [SOT, EOT] and mask[1].sum() == 2  # the empty caption
    assert codec.get_number_of_tokens() == 49408


@needs_vocab
def test_tokenize_pad_value_and_no_mask():
    c = Tokenize(context_length=10, add_start_and_end=True, with_mask=False, pad_value=-1)
    out = c.get_tokens("a bird")
    assert set(out) == {"token"}
    assert out["token"].tolist() == [[SOT, 320, 3329, EOT] + [-1] * 6]
    plain = Tokenize(context_length=5, add_start_and_end=False)
    assert plain.get_tokens(["a bird"])["token"].tolist() == [[320, 3329, 0, 0, 0]]


@needs_vocab
def test_tokenize_truncates_keeping_end_token_and_warns(codec: Tokenize):
    long = "a small red bird " * 40
    with pytest.warns(UserWarning, match=r"2 of 3 caption"):
        out = codec.get_tokens([long, "short", long + "sky"])
    token, mask = out["token"], out["mask"]
    assert mask[0].all() and mask[2].all() and mask[1].sum() == 3
    assert token[0, 0] == SOT and token[0, -1] == EOT and token[2, -1] == EOT
    assert token[0, 1:76].tolist() == codec.tokenizer.encode(long)[:75]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exact = codec.get_tokens(["word " * 75])  # 75 + 2 tokens: fits exactly, no warning
    assert exact["mask"].all() and exact["token"][0, -1] == EOT


@needs_vocab
def test_tokenize_accepts_bytes_and_odd_input(codec: Tokenize):
    out = codec.get_tokens([b"a bird \xff", "tab\tand\nnewline\x00", "   "])
    assert out["token"].shape == (3, 77)
    assert out["token"][2, :2].tolist() == [SOT, EOT]
    with pytest.raises(TypeError, match="caption 0"):
        codec.get_tokens([None])  # type: ignore[list-item]


@needs_vocab
def test_tokenize_decode_round_trip(codec: Tokenize):
    texts = ["A photo of a small red bird.", "", "Two dogs, 4K!"]
    out = codec.get_tokens(texts)
    back = codec.decode(out["token"], out["mask"])
    assert back == ["a photo of a small red bird .", "", "two dogs , 4 k !"]
    assert codec.decode(out["token"]) == back  # without the mask: everything after EOT is padding


@needs_vocab
def test_tokenize_is_frozen_and_has_no_tensors(codec: Tokenize):
    assert codec.trainable is False and list(codec.state_dict()) == []
    codec.train()
    assert codec.training is False


@needs_vocab
def test_tokenize_from_official_config_names(tmp_path):
    real = find_bpe_vocab()
    cfg = {
        "target": "image_synthesis.modeling.codecs.text_codec.tokenize.Tokenize",
        "params": {
            "context_length": 77,
            "add_start_and_end": True,
            "with_mask": True,
            "pad_value": 0,
            "clip_embedding": False,
            "tokenizer_config": {
                "target": "image_synthesis.modeling.modules.clip.simple_tokenizer.SimpleTokenizer",
                "params": {"end_idx": 49152, "bpe_path": str(real)},
            },
        },
    }
    codec = instantiate_from_config(cfg)
    assert isinstance(codec, Tokenize) and codec.tokenizer.bpe_path == real
    cfg["params"]["tokenizer_config"]["params"]["bpe_path"] = str(tmp_path / "missing.gz")
    with pytest.raises(Exception, match="missing.gz"):
        instantiate_from_config(cfg)


def test_tokenize_rejects_bad_arguments():
    with pytest.raises(ValueError, match="context_length"):
        Tokenize(context_length=0)
    with pytest.raises(ValueError, match="condition_emb_config"):
        Tokenize(context_length=77, clip_embedding=True)


# ---------------------------------------------------------------------------------------------
# the official tiny model's captions
# ---------------------------------------------------------------------------------------------
@needs_vocab
def test_official_fixture_tokens(official_tiny_text):
    cfg = load_yaml_config("config_tiny_text.yaml")
    codec = instantiate_from_config(cfg["model"]["params"]["condition_codec_config"])
    expected = torch.load("expected.pt", map_location="cpu", weights_only=True)
    out = codec.get_tokens(["a red circle at the top left", "Two dogs playing in the snow, 4K photo!"])
    assert torch.equal(out["token"], expected["condition_token"])
    assert torch.equal(out["mask"], expected["condition_mask"])
