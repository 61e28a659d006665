"""Classifier-free guidance beyond the official code: negative prompts and guidance-scale schedules
(tiny fake parts)."""

from __future__ import annotations

import math
import numpy as np
import pytest
import torch

from vqdiff.modeling.diffusion.guidance import guidance_scales
from vqdiff.modeling.diffusion.samplers import Denoiser
from vqdiff.modeling.diffusion.sampling_options import SamplingOptions

from _fake_parts import K, T, D, N, make_diffusion, dalle, gen


# ------------------------------------------------------------------------------------------- negative prompts
@pytest.mark.parametrize("learnable_cf", [False, True])
def test_empty_negative_prompt_reproduces_ordinary_guidance(learnable_cf):
    m = dalle(learnable_cf)
    batch = {"text": ["a red circle", "a blue square"]}
    for st in ("top0.85r", "top0.85r,maskgit4"):
        a = m.generate_content(batch=batch, filter_ratio=0, sample_type=st, guidance_scale=4.0, generator=gen(5))
        b = m.generate_content(batch=batch, filter_ratio=0, sample_type=st, guidance_scale=4.0, generator=gen(5),
                               negative_prompt="")
        c = m.generate_content(batch=batch, filter_ratio=0, sample_type=st, guidance_scale=4.0, generator=gen(5),
                               negative_prompt=["", ""])
        assert torch.equal(a["content_token"], b["content_token"]) and torch.equal(a["content_token"], c["content_token"])
    # a real negative prompt replaces the unconditional branch row by row
    base = m._uncond_embedding(2)
    neg = m.negative_embedding(["", "green triangle"], 2)
    assert torch.equal(neg[0], base[0]) and not torch.equal(neg[1], base[1])
    tok = m.prepare_condition(None, condition=["green triangle"])["condition_token"]
    assert torch.allclose(neg[1], m.transformer.condition_emb(tok)[0].float())
    with pytest.raises(ValueError, match="negative_prompt"):
        m.negative_embedding(["a", "b", "c"], 2)


def test_negative_prompt_is_used_in_the_guided_formula():
    d = make_diffusion()
    cond, negv = torch.randn(1, 4, D), torch.randn(1, 4, D)
    x = torch.full((1, N), K, dtype=torch.long)
    t = torch.tensor([T - 1])
    s = 2.5
    out = Denoiser(d, cond, negv, SamplingOptions(truncation_rate=None, guidance_scale=s))(x, t)
    lc = d.predict_start_index(x, cond, t)[:, :K]
    ln = d.predict_start_index(x, negv, t)[:, :K]
    ref = (ln + s * (lc - ln)).log_softmax(1)
    assert torch.allclose(out[:, :K], ref, atol=1e-5)


# ------------------------------------------------------------------------------------------- guidance schedules
def test_guidance_schedules_give_the_stated_scale_per_step():
    assert guidance_scales(3.0, 5) == [3.0] * 5
    assert guidance_scales("constant:2", 3) == [2.0] * 3
    # index t; the first (noisiest) step t = T-1 gets the start value, t = 0 the end value
    assert guidance_scales("linear:1:5", 5) == [5.0, 4.0, 3.0, 2.0, 1.0]
    cos = guidance_scales({"kind": "cosine", "start": 1.0, "end": 3.0}, 5)
    assert cos == pytest.approx([3.0, 1 + (1 - math.cos(math.pi * 0.75)), 2.0, 1 + (1 - math.cos(math.pi * 0.25)), 1.0])
    assert guidance_scales(lambda p: 1 + p, 3) == [2.0, 1.5, 1.0]
    assert guidance_scales(np.float32(2.5), 2) == [2.5, 2.5] and guidance_scales(torch.tensor(2.0), 1) == [2.0]
    assert SamplingOptions(guidance_scale="linear:1:1").is_guided(4) is False
    assert SamplingOptions(guidance_scale="linear:1:2").is_guided(4) is True
    with pytest.raises(ValueError, match="guidance schedule"):
        guidance_scales("exp:1:2", 4)
    with pytest.raises(ValueError, match="one value per step"):
        guidance_scales([1.0, 2.0], 4)

    # the denoiser uses s(t) at every step
    d = make_diffusion()
    cond, unc = torch.randn(1, 4, D), torch.randn(1, 4, D)
    den = Denoiser(d, cond, unc, SamplingOptions(truncation_rate=None, guidance_scale="linear:1:5"))
    table = guidance_scales("linear:1:5", T)
    x = torch.randint(0, K + 1, (1, N), generator=gen(0))
    for t_int in (T - 1, 4, 0):
        t = torch.tensor([t_int])
        lc, lu = d.predict_start_index(x, cond, t)[:, :K], d.predict_start_index(x, unc, t)[:, :K]
        ref = (lu + table[t_int] * (lc - lu)).log_softmax(1).clamp(-70, 0)
        assert torch.allclose(den(x, t)[:, :K], ref, atol=1e-5)
    # through the model: a constant schedule equals the plain number
    m = dalle()
    a = m.generate_content(batch={"text": ["a"]}, filter_ratio=0, guidance_scale=3.0, generator=gen(1))
    b = m.generate_content(batch={"text": ["a"]}, filter_ratio=0, guidance_scale="constant:3", generator=gen(1))
    assert torch.equal(a["content_token"], b["content_token"])
    m.generate_content(batch={"text": ["a"]}, filter_ratio=0, guidance_scale="cosine:1:4", generator=gen(1))
