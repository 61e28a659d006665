"""Composable guidance (Liu et al., arXiv 2206.01714): prompt parts with their own weights, combined with the
null condition in one batched network call (tiny fake parts)."""

from __future__ import annotations

import pytest
import torch

from vqdiff.modeling.diffusion.composable_guidance import compose_log_probs
from vqdiff.modeling.diffusion.prompt_parts import (
    MAX_PROMPT_PARTS, PromptPart, PromptPartsError, format_prompt_parts, has_prompt_parts, parse_prompt_parts,
    prompt_parts_from)
from vqdiff.modeling.diffusion.samplers import Denoiser, timesteps
from vqdiff.modeling.diffusion.sampling_options import SamplingOptions
from vqdiff.modeling.models import C_DALLE

from _fake_parts import K, T, D, N, FakeCodec, dalle, gen, make_diffusion

SAMPLE_TYPES = ("top0.85r", "top0.85r,fast2", "top0.85r,time0.5", "top0.85r,maskgit4")


# ------------------------------------------------------------------------------------------- the parser
def test_written_prompts_parse_into_weighted_parts():
    parts = parse_prompt_parts("a red shape:3 AND  a circle at the top left AND a gray background:-1.5e0", 2.0)
    assert parts == (PromptPart("a red shape", 3.0), PromptPart("a circle at the top left", 2.0),
                     PromptPart("a gray background", -1.5))
    assert parse_prompt_parts(format_prompt_parts(parts)) == parts
    assert parse_prompt_parts("16:9:1") == (PromptPart("16:9", 1.0),)  # an explicit weight after a ratio
    assert has_prompt_parts("a AND b") and not has_prompt_parts("a and b") and not has_prompt_parts(["a"])
    assert prompt_parts_from([("a cat", 2), "a dog", PromptPart(3, 0.5)], 4.0) == (
        PromptPart("a cat", 2.0), PromptPart("a dog", 4.0), PromptPart(3, 0.5))


@pytest.mark.parametrize("value, message", [
    ("a cat AND  :2", "part 2 .* is blank"),
    (" AND ".join(["x"] * (MAX_PROMPT_PARTS + 1)), f"at most {MAX_PROMPT_PARTS}"),
    ([], "empty"),
    ([("a cat", float("nan"))], "prompt part 1: .*finite"),
    ([("a cat", 1, 2)], r"prompt part 1: expected \(condition, weight\)"),
    ([("a cat", True)], "finite number"),
    ([(-1, 2.0)], "class index must be >= 0"),
    ([(1.5, 2.0)], "caption .* or a class index"),
    (3, "written prompt or a list"),
])
def test_bad_prompt_parts_are_named(value, message):
    with pytest.raises(PromptPartsError, match=message):
        prompt_parts_from(value)


def test_sampling_options_check_prompt_parts():
    o = SamplingOptions(prompt_parts="a:2 AND b")
    assert o.prompt_parts == (PromptPart("a", 2.0), PromptPart("b", 1.0)) and o.part_weights == (2.0, 1.0)
    assert o.num_parts == 2 and o.is_guided(T) and SamplingOptions().num_parts == 1
    assert SamplingOptions(prompt_parts=[("a", 1.0)]) == SamplingOptions(prompt_parts=(PromptPart("a"),))
    with pytest.raises(ValueError, match="sampling option prompt_parts: .*blank"):
        SamplingOptions(prompt_parts=["  "])
    with pytest.raises(ValueError, match="sampling option guidance_scale must be 1 when prompt_parts"):
        SamplingOptions(prompt_parts="a:2", guidance_scale=3.0)


# ------------------------------------------------------------------------------------------- the math
def test_compose_is_the_papers_sum_and_adds_identical_parts():
    g = gen(1)
    lc = [torch.randn(2, K, N, generator=g).log_softmax(1) for _ in range(2)]
    lu = torch.randn(2, K, N, generator=g).log_softmax(1)
    ref = lu + 1.5 * (lc[0] - lu) - 0.5 * (lc[1] - lu)
    assert torch.allclose(compose_log_probs(lc, lu, [1.5, -0.5]), ref.log_softmax(1), atol=1e-6)
    # two identical parts with weights 1 and 2 are one part with weight 3, bit for bit (d + 2d = 3d exactly)
    assert torch.equal(compose_log_probs([lc[0], lc[0]], lu, [1.0, 2.0]), compose_log_probs([lc[0]], lu, [3.0]))
    with pytest.raises(ValueError, match="one weight per part"):
        compose_log_probs(lc, lu, [1.0])


def test_denoiser_combines_parts_from_one_network_call():
    d = make_diffusion()
    g = gen(2)
    c1, c2, u = (torch.randn(2, 4, D, generator=g) for _ in range(3))
    opts = SamplingOptions(truncation_rate=None, prompt_parts=[("a", 2.0), ("b", -0.5)])
    den = Denoiser(d, torch.cat([c1, c2]), u, opts)
    x = torch.randint(0, K + 1, (2, N), generator=g)
    for t_int in (T - 1, 3, 0):
        t = torch.full((2,), t_int)
        calls = len(d.transformer.calls)
        out = den(x, t)
        assert [b for b, _ in d.transformer.calls[calls:]] == [6]  # (P + 1) B rows, one call
        l1, l2, lu = (d.predict_start_index(x, c, t)[:, :K] for c in (c1, c2, u))
        ref = (lu + 2.0 * (l1 - lu) - 0.5 * (l2 - lu)).log_softmax(1).clamp(-70, 0)
        assert torch.allclose(out[:, :K], ref, atol=1e-5)
        # two identical parts with weights a and b give the one part with a + b
        same = Denoiser(d, torch.cat([c1, c1]), u, opts.replace(prompt_parts=[("a", 1.25), ("a", 0.5)]))(x, t)
        one = Denoiser(d, c1, u, opts.replace(prompt_parts=[("a", 1.75)]))(x, t)
        assert torch.allclose(same, one, atol=1e-5)


# ------------------------------------------------------------------------------------------- the models
@pytest.mark.parametrize("sample_type", SAMPLE_TYPES)
@pytest.mark.parametrize("learnable_cf", [False, True])
def test_one_part_with_weight_s_is_ordinary_guidance(sample_type, learnable_cf):
    m = dalle(learnable_cf)
    ref = m.generate_content(batch={"text": ["a red circle"]}, filter_ratio=0, replicate=3, sample_type=sample_type,
                             guidance_scale=3.0, generator=gen(5))
    out = m.generate_content(filter_ratio=0, replicate=3, sample_type=sample_type,
                             prompt_parts=[("a red circle", 3.0)], generator=gen(5))
    assert torch.equal(out["content_token"], ref["content_token"])


def test_two_parts_sample_with_one_network_call_per_step():
    m = dalle()
    net = m.transformer.transformer
    for sample_type, calls in (("top0.85r", T), ("top0.85r,fast2", len(timesteps(T, 2))), ("top0.85r,maskgit4", 4)):
        net.calls.clear()
        out = m.generate_content(filter_ratio=0, replicate=2, sample_type=sample_type,
                                 prompt_parts="a red shape:2 AND a circle:3", generator=gen(0))
        assert out["content_token"].shape == (2, N)
        assert [b for b, _ in net.calls] == [3 * 2] * calls  # (parts + null) x 2 images, once per step
    # the model config's guidance scale is not applied on top of the parts' weights
    m.guidance_scale = 5.0
    m.generate_content(filter_ratio=0, prompt_parts="a:2 AND b", generator=gen(0))
    with pytest.raises(TypeError, match="condition= or as options.prompt_parts"):
        m.generate_content(condition=["a"], filter_ratio=0, prompt_parts="a:2 AND b")
    with pytest.raises(TypeError, match="prompt part 2 of a DALLE must be a str"):
        m.generate_content(filter_ratio=0, prompt_parts=[("a", 1.0), (3, 1.0)])


def test_class_models_compose_labels():
    m = C_DALLE(content_codec_config=FakeCodec(), diffusion_config=make_diffusion("class"))
    ref = m.generate_content(batch={"label": [1]}, filter_ratio=0, replicate=2, guidance_scale=2.5, generator=gen(3))
    out = m.generate_content(filter_ratio=0, replicate=2, prompt_parts=[(1, 2.5)], generator=gen(3))
    assert torch.equal(out["content_token"], ref["content_token"])
    both = m.generate_content(filter_ratio=0, replicate=2, prompt_parts=[(1, 2.0), (2, 1.0)], generator=gen(3))
    assert both["content_token"].shape == (2, N)
    with pytest.raises(TypeError, match="must be a int"):
        m.generate_content(filter_ratio=0, prompt_parts="a cat:2")
