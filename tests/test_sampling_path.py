"""One typed path for a sampling request: the notebook API, the CLI, ``generate_content`` and the
``DiffusionTransformer.sample`` shim all build one ``SamplingOptions`` and reach the samplers through
``sampling.sample_tokens``; the null condition is an option, nothing is stored on the model (tiny fake parts)."""

from __future__ import annotations

import inspect

import pytest
import torch

from inference_VQ_Diffusion import VQ_Diffusion
from vqdiff.modeling.diffusion import sampling
from vqdiff.modeling.diffusion.sampling_options import DEFAULT_TRUNCATION_RATE, SamplingOptions
from vqdiff.modeling.models import C_DALLE, UC_DALLE
from vqdiff.sample import build_parser

from _fake_parts import D, K, N, FakeCodec, dalle, gen, make_diffusion


def engine(model) -> VQ_Diffusion:
    """A notebook-API object around an already built model (no config or checkpoint files)."""
    eng = VQ_Diffusion.__new__(VQ_Diffusion)
    eng.model, eng.device = model.eval(), torch.device("cpu")
    return eng


def last_tokens(store: list):
    return lambda info: store.append(info["x"].clone())


@pytest.fixture
def seen_options(monkeypatch):
    """The options and unconditional branch each request's denoiser was built with."""
    seen = []

    class Spy(sampling.Denoiser):
        def __init__(self, diffusion, cond_emb, uncond_emb, options, fixed=None):
            seen.append((options, uncond_emb))
            super().__init__(diffusion, cond_emb, uncond_emb, options, fixed)

    monkeypatch.setattr(sampling, "Denoiser", Spy)
    return seen


def test_class_api_takes_a_guidance_schedule():
    # before: the class path called float(guidance_scale) and a schedule failed there
    eng = engine(C_DALLE(content_codec_config=FakeCodec(), diffusion_config=make_diffusion("class")))
    runs = {}
    for scale in ("linear:1:3", "constant:2", 2.0):
        xs = []
        images = eng.inference_generate_sample_with_class(label=1, truncation_rate=0.9, save_root=None, batch_size=2,
                                                          guidance_scale=scale, seed=0, callback=last_tokens(xs))
        assert len(images) == 2
        runs[scale] = xs[-1]
    assert torch.equal(runs["constant:2"], runs[2.0])  # a constant schedule is the plain number
    assert not bool((runs["linear:1:3"] == K).any())


def test_api_null_condition_is_an_option_not_a_model_switch(seen_options):
    m = dalle(learnable_cf=True)
    eng = engine(m)
    flags, xs = [], []

    def callback(info):
        flags.append(m.learnable_cf)
        xs.append(info["x"].clone())

    eng.inference_generate_sample_with_condition("a red circle", 0.9, None, 2, guidance_scale=3.0, seed=0,
                                                 learnable_cf=False, callback=callback)
    assert flags and all(flags)  # before: the API set model.learnable_cf = False for the call
    options, uncond = seen_options[-1]
    assert options.null_condition == "empty" and options.truncation_rate == 0.9 and options.guidance_scale == 3.0
    clip_empty = m.transformer.condition_emb(m.prepare_condition(None, condition=["", ""])["condition_token"])
    assert torch.equal(uncond, clip_empty.float())
    ref = m.generate_content(batch={"text": ["a red circle"]}, filter_ratio=0, replicate=2,
                             options=SamplingOptions(truncation_rate=0.9, guidance_scale=3.0, null_condition="empty",
                                                     generator=gen(0)))
    assert torch.equal(ref["content_token"], xs[-1])
    eng.inference_generate_sample_with_condition("a red circle", 0.9, None, 2, guidance_scale=3.0, seed=0)
    options, uncond = seen_options[-1]
    assert options.null_condition == "learned"
    assert torch.equal(uncond, m.transformer.empty_text_embed.float().expand(2, -1, -1))


def test_one_truncation_default_everywhere(seen_options):
    assert build_parser().parse_args(["--config", "c.yaml"]).truncation == DEFAULT_TRUNCATION_RATE
    assert inspect.signature(VQ_Diffusion.inference_inpaint).parameters["truncation_rate"].default == \
        DEFAULT_TRUNCATION_RATE
    models = [dalle(), C_DALLE(content_codec_config=FakeCodec(), diffusion_config=make_diffusion("class")),
              UC_DALLE(content_codec_config=FakeCodec(), diffusion_config=make_diffusion("none"))]
    batches = [{"text": ["a"]}, {"label": [1]}, None]
    for m, batch in zip(models, batches):  # before: C_DALLE's default was 'normal' (no truncation)
        m.generate_content(batch=batch, filter_ratio=0, generator=gen(0))
        assert seen_options[-1][0].truncation_rate == DEFAULT_TRUNCATION_RATE, type(m).__name__


def test_nothing_is_stored_on_the_model_for_one_call():
    m = dalle(learnable_cf=True)
    before = {k: v for k, v in vars(m.transformer).items() if not k.startswith("_")}
    m.generate_content(batch={"text": ["a"]}, filter_ratio=0, sample_type="top0.8r,time0.5", prior_rule=2,
                       prior_weight=1.0, guidance_scale="linear:1:3", generator=gen(0))
    after = {k: v for k, v in vars(m.transformer).items() if not k.startswith("_")}
    assert after == before
    assert not any(hasattr(m.transformer, k) for k in ("prior_rule", "prior_weight", "prior_ps", "n_sample"))


def test_the_official_sample_shim_takes_options_or_fields():
    d = make_diffusion()
    cond = torch.randn(2, 4, D)
    a = d.sample(condition_embed=cond, filter_ratio=0, truncation_rate=0.8, prior_rule=1,
                 generator=gen(3))["content_token"]
    b = d.sample(condition_embed=cond, filter_ratio=0,
                 options=SamplingOptions(truncation_rate=0.8, prior_rule=1, generator=gen(3)))["content_token"]
    assert torch.equal(a, b) and a.shape == (2, N)
    # return_logits: the one-hot of the sampled tokens (B, K+1, N), as the official method returns
    out = d.sample(condition_embed=cond, filter_ratio=0, truncation_rate=0.8, prior_rule=1, generator=gen(3),
                   return_logits=True)
    assert out["logits"].shape == (2, K + 1, N) and torch.equal(out["logits"].argmax(1), a)
    with pytest.raises(TypeError, match="not both"):
        d.sample(condition_embed=cond, filter_ratio=0, options=SamplingOptions(), truncation_rate=0.8)
    with pytest.raises(ValueError, match="truncation_rate"):
        d.sample(condition_embed=cond, filter_ratio=0, truncation_rate=2.0)
    m = dalle()
    with pytest.raises(TypeError, match="not both"):
        m.generate_content(batch={"text": ["a"]}, sample_type="top0.9r", options=SamplingOptions())


def test_unconditional_model_refuses_guidance():
    u = UC_DALLE(content_codec_config=FakeCodec(), diffusion_config=make_diffusion("none"))
    with pytest.raises(ValueError, match="unconditional model has no guidance"):
        u.generate_content(batch=None, filter_ratio=0, replicate=2, guidance_scale=3.0)


def test_the_official_autocast_keyword_is_a_context_not_a_flag_on_the_model():
    """``forward(..., autocast=True)`` (the official keyword) runs the network under autocast for that call
    only: nothing like the official ``self.amp`` stays on the model, and a call without it runs fp32."""
    d = make_diffusion().train()
    seen = []
    d.transformer.register_forward_hook(lambda mod, args, out: seen.append(torch.is_autocast_enabled("cpu")))
    batch = {"content_token": torch.randint(0, K, (2, N)), "condition_token": torch.randint(0, 50, (2, 4))}
    d(batch, return_loss=True, autocast=True)
    d(batch, return_loss=True)
    assert seen == [True, False]
    assert not hasattr(d, "amp")
