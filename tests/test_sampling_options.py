"""``SamplingOptions``: one default and one range check per option, the official ``sample_type`` string parsed
once and printed back, and the decisions taken once (is guidance on, which sampler)."""

from __future__ import annotations

import math

import pytest
import torch

from vqdiff.modeling.diffusion.sampling_options import DEFAULT_TRUNCATION_RATE, SamplingOptions


def test_defaults_are_the_official_generate_content_defaults():
    o = SamplingOptions()
    assert o.truncation_rate == DEFAULT_TRUNCATION_RATE == 0.85
    assert (o.top_k, o.skip_step, o.time_ratio, o.rerun_prob, o.maskgit_steps) == (None, 0, None, 0.0, None)
    assert (o.guidance_scale, o.null_condition, o.prior_rule, o.prior_weight, o.prior_ps) == (1.0, "learned", 0, 0.0, None)
    assert str(o) == "top0.85r"
    with pytest.raises(Exception):  # frozen: a request never changes under a sampler
        o.truncation_rate = 0.5


@pytest.mark.parametrize("name,value", [
    ("truncation_rate", 0.0), ("truncation_rate", 1.5), ("truncation_rate", float("nan")), ("top_k", 0),
    ("skip_step", -1), ("skip_step", 1.5), ("time_ratio", 1.0), ("time_ratio", 0.0), ("rerun_prob", 1.5),
    ("guidance_scale", float("nan")), ("guidance_scale", float("inf")), ("guidance_scale", True),
    ("null_condition", "zero"), ("prior_rule", 3), ("prior_rule", True), ("prior_weight", -1.0), ("prior_ps", 0),
    ("temperature", 0.0), ("generator", 5), ("maskgit_steps", 0), ("maskgit_schedule", "zigzag"),
    ("choice_temperature", -1.0),
])
def test_every_option_has_a_range_check_that_names_it(name, value):
    with pytest.raises(ValueError, match=name):
        SamplingOptions(**{name: value})
    with pytest.raises(ValueError, match=name):
        SamplingOptions().replace(**{name: value})


def test_guidance_schedules_are_checked_against_the_steps():
    o = SamplingOptions(guidance_scale=[1.0, float("nan"), 2.0])
    with pytest.raises(ValueError, match="finite"):
        o.guidance_table(3)
    assert SamplingOptions(guidance_scale="linear:1:3").guidance_table(3) == [3.0, 2.0, 1.0]


@pytest.mark.parametrize("text", [
    "top0.85r", "normal", "top5p", "top0.86r,time0.5", "top0.85r,fast3", "top0.9r,q0.5",
    "top0.85r,maskgit4", "top1.0r,maskgit6:linear", "top0.7r,time0.25,fast1,q0.2",
])
def test_sample_type_round_trips(text):
    o = SamplingOptions.from_sample_type(text)
    assert SamplingOptions.from_sample_type(str(o)) == o
    assert o.to_sample_type() == str(o)


def test_sample_type_parsing_matches_the_official_rules():
    assert SamplingOptions.from_sample_type("top0.85r,time2").skip_step == 1  # s >= 2: sample_fast(s - 1)
    assert SamplingOptions.from_sample_type("top0.85r,time3").skip_step == 2
    plain = SamplingOptions.from_sample_type("top0.85r,time1.5")  # 1 <= s < 2: plain sampling
    assert (plain.skip_step, plain.time_ratio) == (0, None)
    assert SamplingOptions.from_sample_type("normal").truncation_rate is None
    assert SamplingOptions.from_sample_type(None, guidance_scale=3.0).guidance_scale == 3.0
    with pytest.raises(ValueError, match="unknown part"):
        SamplingOptions.from_sample_type("top0.9r,bogus")
    with pytest.raises(ValueError, match="truncation_rate"):
        SamplingOptions.from_sample_type("top1.5r")  # the string goes through the same range check


def test_guidance_on_is_decided_once_with_the_official_tolerance():
    assert not SamplingOptions(guidance_scale=1.0).is_guided(10)
    assert not SamplingOptions(guidance_scale=1.0 + 5e-4).is_guided(10)  # official |s - 1| < 1e-3 is off
    assert SamplingOptions(guidance_scale=1.002).is_guided(10)
    assert not SamplingOptions(guidance_scale="linear:1:1").is_guided(4)
    assert SamplingOptions(guidance_scale="linear:1:2").is_guided(4)
    assert SamplingOptions(guidance_scale=torch.tensor(3.0)).is_guided(4)


def test_sampler_kind_and_improved_prior():
    N, T = 1024, 100
    assert SamplingOptions().sampler_kind(N, T) == "ancestral"
    assert SamplingOptions(prior_rule=2).sampler_kind(N, T) == "improved"
    assert SamplingOptions(prior_rule=2, skip_step=1).sampler_kind(N, T) == "ancestral"  # official sample_fast
    assert SamplingOptions(prior_rule=1).sampler_kind(N, T, from_noised_tokens=True) == "ancestral"
    assert SamplingOptions(maskgit_steps=4, prior_rule=1).sampler_kind(N, T) == "maskgit"
    half = SamplingOptions.from_sample_type("top0.86r,time0.5")
    assert half.sampler_kind(N, T) == "improved"
    assert half.improved_prior(N, T) == (1, 5)  # the official int(1024 // T * s), rule 0 -> 1
    assert SamplingOptions(prior_rule=2, prior_weight=1.0).improved_prior(N, T) == (2, N)
    assert SamplingOptions(prior_rule=2, prior_ps=7).improved_prior(N, T) == (2, 7)
    assert math.isclose(half.truncation_rate, 0.86)
