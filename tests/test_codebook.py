"""Codebook health: usage statistics, token mappings from counts and the counting script."""

from __future__ import annotations

import json
import math
import pytest
import torch
from torch import nn

from vqdiff.evaluation.codebook import (
    CodebookUsageHook,
    build_mapping_from_counts,
    check_mapping_round_trip,
    count_codec_tokens,
    save_mapping,
    usage_statistics,
)
from vqdiff.modeling.codecs.image.token_mapping import count_tokens, invert_token_mapping, load_token_mapping


# ------------------------------------------------------------------------------------------- codebook health
def test_usage_statistics_match_a_hand_count():
    tokens = torch.tensor([[0, 0, 1, 3], [3, 3, 0, 1]])  # counts: 0:3, 1:2, 2:0, 3:3, 4:0
    counts = count_tokens(tokens, 5)
    assert counts.tolist() == [3, 2, 0, 3, 0]
    st = usage_statistics(counts, top=2)
    p = [3 / 8, 2 / 8, 3 / 8]
    H = -sum(q * math.log(q) for q in p)
    assert st["total"] == 8 and st["used"] == 3 and st["dead"] == 2 and st["dead_codes"] == [2, 4]
    assert st["usage"] == pytest.approx(0.6)
    assert st["entropy"] == pytest.approx(H) and st["perplexity"] == pytest.approx(math.exp(H))
    assert st["entropy_bits"] == pytest.approx(H / math.log(2))
    assert st["top_codes"] == [(0, 3, 3 / 8), (3, 3, 3 / 8)]  # ties: lower code first
    assert usage_statistics(torch.full((7,), 4))["perplexity"] == pytest.approx(7.0)
    with pytest.raises(ValueError, match="non-negative"):
        usage_statistics(torch.tensor([1, -1]))

    hook = CodebookUsageHook(5, top=3)
    hook.update(tokens[0])
    hook.update(torch.cat([tokens[1], torch.tensor([5, 5])]))  # [MASK] = 5 is ignored
    r = hook.report()
    assert hook.counts.tolist() == [3, 2, 0, 3, 0] and r["ignored"] == 2 and r["updates"] == 2
    assert r["perplexity"] == pytest.approx(math.exp(H)) and "3/5 codes used" in hook.summary()
    state = hook.state_dict()
    other = CodebookUsageHook(5)
    other.load_state_dict(state)
    assert torch.equal(other.counts, hook.counts)
    hook.reset()
    assert hook.report()["total"] == 0


def test_mapping_from_counts_round_trips(tmp_path):
    counts = torch.tensor([0, 5, 0, 2, 9, 0, 1, 0])
    used = torch.tensor([1, 3, 4, 6, 6, 1])
    # the plain official construction: code 0 is unused, so compact 0 decodes to the dead code 0
    official, qn0 = build_mapping_from_counts(counts, round_trip=False)
    assert qn0 == 4 and official.tolist() == [0, 0, 0, 1, 2, 0, 3, 0]
    assert not check_mapping_round_trip(official, qn0, used)
    # the default keeps code 0 as compact 0, and every used code round-trips
    mapping, qn = build_mapping_from_counts(counts)
    assert qn == 5 and mapping.tolist() == [0, 1, 0, 2, 3, 0, 4, 0]
    assert check_mapping_round_trip(mapping, qn, used)
    inverse = invert_token_mapping(mapping, qn)
    assert inverse.tolist() == [0, 1, 3, 4, 6] and torch.equal(mapping[inverse], torch.arange(qn))
    path = save_mapping(tmp_path / "stats" / "my_map.pt", mapping)
    assert torch.equal(load_token_mapping(path, num_tokens=8, quantize_number=qn), mapping)
    m2, qn2 = build_mapping_from_counts(counts, min_count=2)
    assert qn2 == 4 and check_mapping_round_trip(m2, qn2, torch.tensor([1, 3, 4]))
    # a codebook whose code 0 is used needs no extra id
    assert build_mapping_from_counts(torch.tensor([3, 0, 1]))[1] == 2


class RemappingCodec(nn.Module):
    """A codec with a remapping: ``enc`` gives full codes 0..7, ``get_tokens`` compact ones."""

    num_tokens = 8
    quantize_number = 4

    def __init__(self):
        super().__init__()
        self.full_to_quantize = torch.tensor([0, 0, 1, 0, 2, 0, 3, 0])

    def preprocess(self, images):
        return images / 255

    def enc(self, x):
        return (x[:, 0].reshape(x.shape[0], -1) * 7.999).long()

    def get_tokens(self, images, **kw):
        return {"token": self.full_to_quantize[self.enc(self.preprocess(images))]}

    def get_number_of_tokens(self):
        return 4


class TinyImagesCodec(RemappingCodec):
    pass


class TinyImages(torch.utils.data.Dataset):
    def __init__(self, num_samples=5):
        self.n = num_samples

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        img = torch.zeros(3, 2, 2)
        img[0] = torch.tensor([[0.0, 40.0], [40.0, 255.0]]) if i % 2 == 0 else 40.0
        return {"image": img}


def test_count_codec_tokens_raw_and_script(tmp_path):
    codec = RemappingCodec()
    ds = TinyImages(5)
    # even items: codes [0, 1, 1, 7]; odd items: [1, 1, 1, 1] -> 3 even + 2 odd
    raw = count_codec_tokens(codec, ds)
    assert raw.tolist() == [3, 6 + 8, 0, 0, 0, 0, 0, 3]
    compact = count_codec_tokens(codec, [ds[0]["image"].unsqueeze(0)], raw=False)
    assert compact.tolist() == [4, 0, 0, 0]  # codes 0, 1, 7 all map to compact 0
    assert count_codec_tokens(codec, ds, max_images=1).sum().item() == 4

    from scripts import codebook_health

    (tmp_path / "codec.yaml").write_text(f"content_codec_config:\n  target: {__name__}.TinyImagesCodec\n")
    (tmp_path / "data.yaml").write_text(f"target: {__name__}.TinyImages\nparams:\n  num_samples: 5\n")
    stats = codebook_health.main([
        "--codec_config", str(tmp_path / "codec.yaml"), "--dataset_config", str(tmp_path / "data.yaml"),
        "--report", str(tmp_path / "r.json"), "--out_mapping", str(tmp_path / "map.pt"), "--top", "2",
    ])
    assert stats["used"] == 3 and stats["dead"] == 5 and stats["quantize_number"] == 3
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["counts"] == raw.tolist() and report["top_codes"][0][0] == 1
    assert load_token_mapping(tmp_path / "map.pt", 8, 3).tolist() == [0, 1, 0, 0, 0, 0, 0, 2]
