"""vqdiff.app without a browser (issue 27): the page's input checks, the notebook call each result shows
(run here and compared pixel for pixel), previews, the request gate, mask snapping, editing, model
choice and the command line. The page in a real browser: tests/test_app_browser.py."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _app_parts import REPO, tiny_text_model, working_directory
from _fake_parts import FakeCodec, make_diffusion
from vqdiff.app import (
    DEMO_COMMAND,
    AppLimits,
    InputError,
    ModelService,
    ModelSource,
    NoModelError,
    RequestGate,
    ServerBusy,
    parse_generate,
    resolve_model_source,
)
from vqdiff.app.__main__ import exposure_warning
from vqdiff.app.service import snap_to_token_grid, token_grid_overlay
from vqdiff.inference.api import VQ_Diffusion
from vqdiff.modeling.models import C_DALLE, UC_DALLE

LIMITS = AppLimits(max_images=4, max_waiting=1)
FIELDS = dict(truncation_rate=0.85, guidance_scale=1.0, sampler="official", fast=2, prior_weight=1.0,
              maskgit_steps=4, seed=0, num_images=2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A ModelService over the tiny text model (untrained: the tests check plumbing, not pictures)."""
    root = tmp_path_factory.mktemp("app")
    with working_directory(root):
        config, ckpt = tiny_text_model(root, trained=False)
        torch.set_num_threads(1)
        yield root, ModelService.load(ModelSource(config, ckpt), device="cpu", limits=LIMITS)


def _fake_engine(model) -> VQ_Diffusion:
    """The notebook API around an in-memory model (as VQ_Diffusion would after loading)."""
    engine = VQ_Diffusion.__new__(VQ_Diffusion)
    engine.model, engine.device = model.eval(), torch.device("cpu")
    return engine


# ------------------------------------------------------------------------------------------ input checks
@pytest.mark.parametrize("change, words", [
    (dict(prompt="   "), "prompt is empty"),
    (dict(num_images=5), "1 .. 4"),
    (dict(num_images=2.5), "whole number"),
    (dict(truncation_rate=1.5), "truncation_rate"),
    (dict(sampler="fast", fast=1), "fast must be an int >= 2"),
    (dict(sampler="purity", prior_weight=-1.0), "prior_weight"),
    (dict(sampler="maskgit", maskgit_steps=0), "maskgit_steps"),
    (dict(seed=None), "seed is empty"),
    (dict(seed=-3), "seed must be in"),
    (dict(guidance_scale=float("inf")), "guidance_scale"),
    (dict(sampler="ddim"), "sampler must be one of"),
])
def test_bad_page_values_raise_input_errors_naming_the_field(change, words):
    values = {"prompt": "a red circle", **FIELDS, **change}
    with pytest.raises(InputError, match=words):
        parse_generate("text", LIMITS, **values)


def test_class_models_need_a_class_in_range_and_unconditional_ones_nothing():
    with pytest.raises(InputError, match="0 .. 2"):
        parse_generate("label", LIMITS, label=3, num_classes=3, **FIELDS)
    with pytest.raises(InputError, match="pick a class"):
        parse_generate("label", LIMITS, label=None, num_classes=3, **FIELDS)
    assert parse_generate("label", LIMITS, label=2.0, num_classes=3, **FIELDS).condition == 2
    assert parse_generate(None, LIMITS, prompt="ignored", **FIELDS).condition is None


def test_the_notebook_call_is_the_official_method_when_it_can_say_the_request():
    text = parse_generate("text", LIMITS, prompt="a red circle", negative_prompt="blue",
                          **{**FIELDS, "sampler": "fast", "fast": 3, "guidance_scale": 2.0})
    call = text.notebook_call("cpu")
    assert call.method == "inference_generate_sample_with_condition" and call.args == ("a red circle",)
    assert dict(call.kwargs) == dict(truncation_rate=0.85, batch_size=2, fast=3, guidance_scale=2.0,
                                     negative_prompt="blue", seed=0)
    assert str(text.options("cpu")) == "top0.85r,fast2"
    purity = parse_generate("label", LIMITS, label=1, num_classes=3, **{**FIELDS, "sampler": "purity"})
    call = purity.notebook_call("cpu")  # the class method takes no prior rule: the core call with options
    assert call.method == "inference_generate_sample" and call.args[0] == 1
    assert repr(call.args[1]) == ("SamplingOptions(truncation_rate=0.85, prior_rule=2, prior_weight=1.0, "
                                  "generator=torch.Generator(device='cpu').manual_seed(0))")
    uncond = parse_generate(None, LIMITS, **{**FIELDS, "guidance_scale": 3.0}).notebook_call("cpu")
    assert uncond.method == "inference_generate_sample_unconditional" and "guidance_scale" not in dict(uncond.kwargs)


# ------------------------------------------------------------------------------------------ generation
@pytest.mark.parametrize("change", [
    dict(guidance_scale=2.0),
    dict(sampler="fast", fast=3),
    dict(sampler="purity", prior_weight=1.0),
    dict(sampler="maskgit", maskgit_steps=4, guidance_scale=1.5),
])
def test_the_shown_notebook_code_makes_the_same_images(tiny, change):
    root, service = tiny
    request = parse_generate("text", LIMITS, prompt="a green triangle", negative_prompt="",
                             **{**FIELDS, "seed": 7, **change})
    result = service.generate(request)
    assert len(result.images) == 2 and result.images[0].size == (16, 16)
    namespace: dict = {}
    with working_directory(root):
        exec(result.code, namespace)  # the code the page shows, as a user would paste it
    again = namespace["images"]
    assert [np.asarray(a).tolist() for a in again] == [np.asarray(b).tolist() for b in result.images]
    assert result.sample_type == str(request.options("cpu"))


def test_previews_come_every_k_steps_and_the_last_one_is_the_result(tiny):
    _, service = tiny
    request = parse_generate("text", LIMITS, prompt="a red square", **FIELDS)
    updates = []
    result = service.generate(request, updates.append, preview_every=4)
    assert [u.step for u in updates] == list(range(1, 11)) and {u.total for u in updates} == {10}
    assert [u.step for u in updates if u.preview is not None] == [4, 8, 10]
    assert all(p.size == (16, 16) for u in updates if u.preview for p in u.preview)
    last = updates[-1].preview  # no [MASK] is left after the last step: the preview is the image itself
    assert [np.asarray(a).tolist() for a in last] == [np.asarray(b).tolist() for b in result.images]


@pytest.mark.parametrize("kind", ["label", None])
def test_class_and_unconditional_models_generate_through_their_calls(kind):
    model = (C_DALLE(content_codec_config=FakeCodec(), diffusion_config=make_diffusion("class")) if kind == "label"
             else UC_DALLE(content_codec_config=FakeCodec(), diffusion_config=make_diffusion(None)))
    service = ModelService(_fake_engine(model), ModelSource("fake.yaml", "fake.pth"), LIMITS)
    assert service.kind == kind and service.image_size == (8, 8) and service.token_shape == (4, 4)
    assert service.num_classes == (3 if kind == "label" else None)
    for sampler in ("official", "purity", "maskgit"):
        request = parse_generate(kind, LIMITS, label=2, num_classes=service.num_classes,
                                 **{**FIELDS, "sampler": sampler})
        result = service.generate(request)
        assert len(result.images) == 2 and result.images[0].size == (8, 8)


# ------------------------------------------------------------------------------------------ the gate
def test_the_gate_runs_one_lets_max_waiting_wait_and_refuses_the_rest():
    gate = RequestGate(max_waiting=1)
    running, release, order = threading.Event(), threading.Event(), []

    def first():
        with gate.slot() as ahead:
            order.append(("first", ahead))
            running.set()
            release.wait(10)

    def second():
        with gate.slot(lambda ahead: order.append(("admitted", ahead))) as ahead:
            order.append(("second", ahead))

    a = threading.Thread(target=first)
    a.start()
    assert running.wait(10)
    b = threading.Thread(target=second)
    b.start()
    deadline = time.time() + 10
    while len(order) < 2 and time.time() < deadline:
        time.sleep(0.01)
    assert gate.admitted == 2 and order == [("first", 0), ("admitted", 1)]  # told, then waits for the model
    with pytest.raises(ServerBusy, match="busy.*1 are waiting"):
        with gate.slot():
            pass
    release.set()
    a.join(10)
    b.join(10)
    assert order == [("first", 0), ("admitted", 1), ("second", 1)] and gate.admitted == 0
    with gate.slot() as ahead:  # served again
        assert ahead == 0


# ------------------------------------------------------------------------------------------ editing
def test_a_painted_pixel_marks_its_token_cell_at_any_mask_size():
    mask = np.zeros((16, 16), np.uint8)
    mask[5, 9] = 255  # row 5 -> token row 1, column 9 -> token column 2 of 4x4 cells of 4 pixels
    expected = np.zeros((4, 4), bool)
    expected[1, 2] = True
    assert (snap_to_token_grid(mask, (4, 4)) == expected).all()
    odd = Image.new("LA", (10, 10), (0, 0))
    odd.putpixel((9, 0), (255, 255))  # top right pixel of a 10x10 painting
    snapped = snap_to_token_grid(odd, (4, 4))
    assert snapped.sum() == 1 and snapped[0, 3]
    overlay = token_grid_overlay(Image.new("RGB", (16, 16), (0, 0, 255)), expected, scale=8)
    assert overlay.size == (128, 128)
    assert overlay.getpixel((2 * 32 + 16, 1 * 32 + 16))[0] > 100  # the marked cell is tinted red
    assert overlay.getpixel((16, 16)) == (0, 0, 255)  # the others keep their colour


def test_edit_repaints_the_snapped_cells_and_refuses_an_empty_mask(tiny):
    _, service = tiny
    image = Image.new("RGB", (64, 64), (200, 30, 30))  # any size: brought to the model's 16x16
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :20] = 1  # the left 20 of 64 pixels: token columns 0 and 1 of 4
    result = service.edit(image, mask, "a blue circle", 0.85, 1.0, seed=0)
    assert result.token_mask[:, :2].all() and not result.token_mask[:, 2:].any()
    scale = service.display_scale
    assert result.before.size == result.after.size == (16 * scale, 16 * scale)
    assert "inference_inpaint" in result.code and "'a blue circle'" in result.code
    with pytest.raises(InputError, match="nothing is painted"):
        service.edit(image, np.zeros((64, 64)), "a blue circle", 0.85, 1.0, seed=0)


# ------------------------------------------------------------------------------------------ model choice
def test_model_source_names_the_demo_command_and_checks_its_arguments(tmp_path):
    with pytest.raises(NoModelError) as err:
        resolve_model_source(None, None, demo_dir=tmp_path / "demo")
    assert DEMO_COMMAND in str(err.value)
    demo = tmp_path / "demo"
    (demo / "configs").mkdir(parents=True)
    (demo / "diffusion" / "checkpoint").mkdir(parents=True)
    (demo / "configs" / "demo_text_shapes.yaml").write_text("model: {}\n")
    (demo / "diffusion" / "checkpoint" / "last.pth").write_bytes(b"")
    source = resolve_model_source(None, None, demo_dir=demo)
    assert source.is_demo and source.ckpt.endswith("last.pth")
    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    assert resolve_model_source(str(folder), None) == ModelSource(str(folder), None)
    assert resolve_model_source(None, str(folder)) == ModelSource(str(folder), None)
    with pytest.raises(ValueError, match="needs --ckpt"):
        resolve_model_source(str(demo / "configs" / "demo_text_shapes.yaml"), None)
    with pytest.raises(ValueError, match="needs its --config"):
        resolve_model_source(None, str(demo / "diffusion" / "checkpoint" / "last.pth"))
    with pytest.raises(FileNotFoundError, match="--ckpt 'nowhere.pth' does not exist"):
        resolve_model_source(str(folder / "model_index.json"), "nowhere.pth")


def test_only_a_non_loopback_host_gets_the_no_authentication_warning():
    assert "no authentication" in exposure_warning("0.0.0.0")
    assert all(exposure_warning(h) is None for h in ("127.0.0.1", "127.0.0.2", "localhost", "::1"))


# ------------------------------------------------------------------------------------------ the command
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def test_command_without_a_model_prints_the_demo_command(tmp_path):
    done = subprocess.run([sys.executable, "-m", "vqdiff.app"], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert DEMO_COMMAND in done.stderr and "Traceback" not in done.stderr


def test_command_serves_any_model_on_the_asked_port(tiny):
    root, service = tiny
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vqdiff.app", "--config", service.source.config,
                             "--ckpt", service.source.ckpt, "--port", str(port), "--device", "cpu"],
                            cwd=root, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, page = time.time() + 90, None
        while time.time() < deadline and proc.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert page is not None, proc.stdout.read() if proc.poll() is not None else "no answer in 90 s"
        # the page loads its scripts and styles from this server only (no CDN, no web fonts)
        assert re.findall(r'(?:src|href)="([^"]*)"', page) and not re.findall(r'(?:src|href)="(https?:)', page)
        config = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5).read())
        assert config["title"] == "vqdiff" and config["analytics_enabled"] is False
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert f"serving on http://127.0.0.1:{port}" in out and "WARNING" not in out


# ------------------------------------------------------------------------------------------ page handlers
def _handler_args(prompt: str) -> list:
    # prompt, negative, class, truncation, guidance, sampler, fast, prior weight, MaskGIT steps, seed, images, previews
    return [prompt, "", 0, 0.85, 1.0, "official", 2, 1.0, 4, 0, 2, 0]


def test_the_page_handler_answers_busy_and_bad_input_with_page_messages(tiny):
    import gradio as gr

    from vqdiff.app.ui import ImageFiles, _generate_handler

    _, loaded = tiny
    service = ModelService(loaded.engine, loaded.source, AppLimits(max_images=4, max_waiting=0))
    generate = _generate_handler(service, ImageFiles())
    with pytest.raises(gr.Error, match="the prompt is empty"):
        list(generate(*_handler_args("  ")))
    with service.gate.slot():  # one request runs and none may wait: the next is refused
        with pytest.raises(gr.Error, match="the model is busy"):
            list(generate(*_handler_args("a red circle")))
    outputs = list(generate(*_handler_args("a red circle")))  # served again
    paths, info, code, images = outputs[-1]
    assert len(paths) == 2 and all(Image.open(p).size == (16, 16) for p in paths)
    assert "a red circle" in info and "inference_generate_sample_with_condition" in code and len(images) == 2


@pytest.mark.parametrize("kind", ["text", "label", None])
def test_the_generate_tab_is_fitted_to_the_model_kind(tiny, kind):
    from vqdiff.app.ui import build_page

    _, loaded = tiny
    if kind == "text":
        service = loaded
    else:
        model = (C_DALLE(content_codec_config=FakeCodec(), diffusion_config=make_diffusion("class"))
                 if kind == "label" else UC_DALLE(content_codec_config=FakeCodec(), diffusion_config=make_diffusion(None)))
        service = ModelService(_fake_engine(model), ModelSource("fake.yaml", "fake.pth"), LIMITS)
    page = build_page(service)
    visible = {b.elem_id: b.visible for b in page.blocks.values() if getattr(b, "elem_id", None)}
    assert visible["generate-prompt"] is visible["generate-negative"] is visible["edit-prompt"] is (kind == "text")
    assert visible["generate-class"] is visible["edit-class"] is (kind == "label")
    assert visible["generate-guidance"] is visible["edit-guidance"] is (kind is not None)
    assert visible["gallery"] and visible["editor"] and not visible["generate-maskgit"]  # shown with its sampler
    page.close()
