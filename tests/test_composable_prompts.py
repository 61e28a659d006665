"""Composed prompts (composable guidance) through the notebook API, ``python -m vqdiff.sample`` and the web
page's request parser, on the tiny untrained text model (plumbing, not pictures)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _app_parts import tiny_text_model, working_directory
from vqdiff.app import AppLimits, InputError, ModelService, ModelSource, parse_generate
from vqdiff.app.requests import parse_condition
from vqdiff.inference.api import VQ_Diffusion
from vqdiff.inference.images import safe_name
from vqdiff.modeling.diffusion.prompt_parts import PromptPart

LIMITS = AppLimits(max_images=4, max_waiting=1)
FIELDS = dict(truncation_rate=0.85, guidance_scale=2.0, sampler="fast", fast=10, prior_weight=1.0,
              maskgit_steps=4, seed=3, num_images=2)
PROMPT = "a red shape:3 AND a circle"  # the circle takes the call's guidance scale, 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("composable")
    with working_directory(root):
        config, ckpt = tiny_text_model(root, trained=False)
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        yield root, config, ckpt, VQ_Diffusion(config=config, path=ckpt, device="cpu")
        torch.set_num_threads(before)


def _arrays(images):
    return [np.asarray(im).tolist() for im in images]


def test_notebook_api_samples_a_written_or_listed_composed_prompt(tiny):
    root, _, _, engine = tiny
    kw = dict(truncation_rate=0.85, batch_size=2, fast=10, guidance_scale=2.0, seed=3)
    written = engine.inference_generate_sample_with_condition(PROMPT, save_root=str(root / "R"), **kw)
    listed = engine.inference_generate_sample_with_condition([("a red shape", 3.0), "a circle"], save_root=None, **kw)
    g = torch.Generator().manual_seed(3)
    direct = engine.model.generate_content(filter_ratio=0, replicate=2, sample_type="top0.85r,fast9", generator=g,
                                           prompt_parts=[PromptPart("a red shape", 3.0), PromptPart("a circle", 2.0)])
    assert _arrays(written) == _arrays(listed) == _arrays(engine._finish(direct["content"], None, ""))
    assert (root / "R" / safe_name("a red shape:3 AND a circle:2") / "000001.png").is_file()
    assert written[0].info["prompt_parts"] == "a red shape:3 AND a circle:2"
    # one part with weight s is ordinary guidance with scale s
    one = engine.inference_generate_sample_with_condition([("a cat", 3.0)], save_root=None,
                                                          **{**kw, "guidance_scale": 1})
    plain = engine.inference_generate_sample_with_condition("a cat", save_root=None, **{**kw, "guidance_scale": 3.0})
    assert _arrays(one) == _arrays(plain)
    with pytest.raises(ValueError, match="guidance_scale must be a number when the prompt has parts"):
        engine.inference_generate_sample_with_condition(PROMPT, save_root=None,
                                                        **{**kw, "guidance_scale": "linear:1:3"})
    with pytest.raises(ValueError, match="part 2 .* is blank"):
        engine.inference_generate_sample_with_condition("a cat AND :2", save_root=None, **kw)


def test_cli_samples_a_composed_prompt_into_its_parts_folder(tiny):
    from vqdiff.sample import main

    root, config, ckpt, _ = tiny
    with working_directory(root):
        assert main(["--config", config, "--ckpt", ckpt, "--text", PROMPT, "--guidance-scale", "2", "-n", "1",
                     "--out", "CLI", "--fast", "10", "--seed", "0", "--no-progress", "--device", "cpu", "--grid"]) == 0
    folder = root / "CLI" / safe_name("a red shape:3 AND a circle:2")
    assert sorted(p.name for p in folder.iterdir()) == ["000000.png", "grid.png"]


def test_web_page_takes_a_composed_prompt_and_names_bad_parts(tiny):
    root, config, ckpt, _ = tiny
    request = parse_generate("text", LIMITS, prompt=PROMPT, **FIELDS)
    assert request.condition == PROMPT
    with pytest.raises(InputError, match="the prompt: part 2 .* is blank"):
        parse_generate("text", LIMITS, prompt="a cat AND  :3", **FIELDS)
    with pytest.raises(InputError, match=r"part 'a cat' has weight 1e\+09; at most"):  # bounded like the scale
        parse_generate("text", LIMITS, prompt="a cat:1e9 AND a dog", **FIELDS)
    with pytest.raises(InputError, match="composed prompts .* are for generation"):
        parse_condition("text", LIMITS, prompt=PROMPT, field="new caption")
    service = ModelService.load(ModelSource(config, ckpt), device="cpu", limits=LIMITS)
    result = service.generate(request)
    namespace: dict = {}
    with working_directory(root):
        exec(result.code, namespace)  # the code the page shows reproduces the composed images
    assert _arrays(namespace["images"]) == _arrays(result.images)


def test_notebook_api_composes_class_labels():
    from _fake_parts import FakeCodec, make_diffusion
    from vqdiff.modeling.models import C_DALLE

    engine = VQ_Diffusion.__new__(VQ_Diffusion)  # the notebook API around an in-memory class model
    engine.model = C_DALLE(content_codec_config=FakeCodec(), diffusion_config=make_diffusion("class")).eval()
    engine.device = torch.device("cpu")
    kw = dict(truncation_rate=0.85, save_root=None, batch_size=2, seed=1)
    parts = engine.inference_generate_sample_with_class([(1, 2.0), (2, 1.0)], **kw)
    g = torch.Generator().manual_seed(1)
    direct = engine.model.generate_content(filter_ratio=0, replicate=2, prompt_parts=[(1, 2.0), (2, 1.0)], generator=g)
    assert _arrays(parts) == _arrays(engine._finish(direct["content"], None, ""))
    one = engine.inference_generate_sample_with_class([(1, 2.5)], **kw)
    plain = engine.inference_generate_sample_with_class(1, guidance_scale=2.5, **kw)
    assert _arrays(one) == _arrays(plain)
