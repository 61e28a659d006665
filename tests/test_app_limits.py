"""The page against careless and hostile clients (issue 35): an upper bound on every count of a request,
checked by the request parser (so the HTTP API is bounded too: ``maskgit_steps=10**9`` is refused at once
and the server keeps serving), uploads checked for size and pixels before anything decodes them and
decoded only once the gate admits the request, the Edit tab with an uploaded image, paths shown relative
to the working folder, unexpected errors as a short message with an id, result files expiring and removed
at exit."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from _app_parts import REPO, tiny_text_model, working_directory
from test_shard_safety import bomb_png
from vqdiff.app import AppLimits, InputError, ModelService, ModelSource, parse_generate
from vqdiff.app.requests import parse_preview_every
from vqdiff.app.uploads import GatedImageMask, Upload, check_upload, decode_upload

LIMITS = AppLimits(max_images=4, max_waiting=1, max_maskgit_steps=16, max_fast=50, max_preview_every=20,
                   max_scale=10.0, max_upload_bytes=20_000, max_upload_pixels=64 * 64)
FIELDS = dict(truncation_rate=0.85, guidance_scale=1.0, sampler="official", fast=2, prior_weight=1.0,
              maskgit_steps=4, seed=0, num_images=2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("app_limits")
    with working_directory(root):
        config, ckpt = tiny_text_model(root, trained=False)
        torch.set_num_threads(1)
        yield root, ModelService.load(ModelSource(config, ckpt), device="cpu", limits=LIMITS)


def _png(size: tuple[int, int], rgba: tuple = (10, 200, 30, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", size, rgba).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ request bounds
@pytest.mark.parametrize("change, words", [
    (dict(sampler="maskgit", maskgit_steps=10**9), "MaskGIT steps must be at most 16"),
    (dict(sampler="maskgit", maskgit_steps=10**400), "MaskGIT steps must be at most 16"),  # no float overflow
    (dict(sampler="fast", fast=51), "fast k must be at most 50"),
    (dict(num_images=10**6), "number of images must be 1 .. 4"),
    (dict(seed=2**64), "seed must be in"),
    (dict(seed=1e300), "seed must be in"),
    (dict(guidance_scale=11.0), "guidance scale must be at most 10.0"),
    (dict(sampler="purity", prior_weight=1e6), "purity prior weight must be at most 10.0"),
    (dict(prompt="x" * 501), "the prompt has 501 characters; at most 500"),
    (dict(negative_prompt="y" * 501), "the negative prompt has 501 characters"),
    (dict(prompt=12), "the prompt must be text"),
    (dict(sampler=["maskgit"]), "sampler must be one of"),
])
def test_every_count_has_an_upper_bound_in_the_parser(change, words):
    values = {"prompt": "a red circle", **FIELDS, **change}
    start = time.perf_counter()
    with pytest.raises(InputError, match=words):
        parse_generate("text", LIMITS, **values)
    assert time.perf_counter() - start < 1.0
    limit_prompt = {"prompt": "x" * 500, **FIELDS}
    assert parse_generate("text", LIMITS, **limit_prompt).condition == "x" * 500  # the limit itself is fine


def test_preview_every_is_bounded_and_the_limits_themselves_are_checked():
    assert parse_preview_every(None, LIMITS) == 0 and parse_preview_every(20, LIMITS) == 20
    for bad in (21, -1, 10**12):
        with pytest.raises(InputError, match="preview every k steps must be 0 .. 20"):
            parse_preview_every(bad, LIMITS)
    with pytest.raises(ValueError, match="max_maskgit_steps must be >= 1"):
        AppLimits(max_maskgit_steps=0)
    with pytest.raises(ValueError, match="max_scale must be > 0"):
        AppLimits(max_scale=0.0)


def test_the_handler_refuses_10_to_the_9_maskgit_steps_at_once_and_keeps_serving(tiny):
    import gradio as gr

    from vqdiff.app.ui import ImageFiles, _generate_handler

    _, service = tiny
    files = ImageFiles()
    generate = _generate_handler(service, files)
    # prompt, negative, class, truncation, guidance, sampler, fast, prior weight, MaskGIT steps, seed, images, previews
    start = time.perf_counter()
    with pytest.raises(gr.Error, match="MaskGIT steps must be at most 16"):
        list(generate("a red circle", "", 0, 0.85, 1.0, "maskgit", 2, 1.0, 10**9, 0, 1, 0))
    with pytest.raises(gr.Error, match="preview every k steps must be 0 .. 20"):
        list(generate("a red circle", "", 0, 0.85, 1.0, "maskgit", 2, 1.0, 4, 0, 1, 10**9))
    assert time.perf_counter() - start < 2.0 and service.gate.admitted == 0
    paths = list(generate("a red circle", "", 0, 0.85, 1.0, "maskgit", 2, 1.0, 4, 0, 1, 0))[-1][0]
    assert len(paths) == 1 and Image.open(paths[0]).size == (16, 16)
    files.close()


# ------------------------------------------------------------------------------------------ uploads
def test_uploads_over_the_byte_or_pixel_limit_are_refused_from_the_header(tmp_path):
    small = _png((16, 16))
    upload = check_upload(small, LIMITS)
    assert upload.size == (16, 16) and decode_upload(upload).size == (16, 16)
    with pytest.raises(InputError, match="65x64 = 4160 pixels; this server takes at most 4096"):
        check_upload(_png((65, 64)), LIMITS)
    with pytest.raises(InputError, match="over the pixel limit"):
        check_upload(bomb_png(), LIMITS)  # 15 000 x 15 000 claimed: refused without decoding
    with pytest.raises(InputError, match="bytes; this server takes at most 20000"):
        check_upload(small + b"\0" * 20_000, LIMITS)
    with pytest.raises(InputError, match="the upload is gone"):
        check_upload(str(tmp_path / "never_written.png"), LIMITS)
    (tmp_path / "broken.png").write_bytes(b"not an image " * 20)
    with pytest.raises(InputError, match="cannot read the photo: it is not an image"):
        check_upload(str(tmp_path / "broken.png"), LIMITS, name="the photo")
    truncated = small[:60]
    (tmp_path / "cut.png").write_bytes(truncated)
    try:
        cut = check_upload(str(tmp_path / "cut.png"), LIMITS)
    except InputError:
        return  # refused at the header already
    with pytest.raises(InputError, match="cannot read"):
        decode_upload(cut)


def test_the_editor_hands_the_handler_checked_uploads_and_refuses_big_ones_before_decoding(tmp_path):
    import gradio as gr
    from gradio.components.image_editor import EditorData
    from gradio.data_classes import FileData

    editor = GatedImageMask.with_limits(LIMITS, type="pil", elem_id="ed")
    assert editor.get_block_name() == "imageeditor" and editor.get_config()["elem_id"] == "ed"
    (tmp_path / "bg.png").write_bytes(_png((16, 16), (0, 0, 255, 0)))
    (tmp_path / "paint.png").write_bytes(_png((16, 16), (255, 0, 0, 255)))
    value = editor.preprocess(EditorData(background=FileData(path=str(tmp_path / "bg.png"), orig_name="bg.png"),
                                         layers=[FileData(path=str(tmp_path / "paint.png"))], composite=None))
    assert isinstance(value["background"], Upload) and value["background"].flatten
    assert isinstance(value["layers"][0], Upload) and not value["layers"][0].flatten
    assert decode_upload(value["background"]).getpixel((0, 0)) == (255, 255, 255)  # transparency on white
    (tmp_path / "big.png").write_bytes(bomb_png())
    with pytest.raises(gr.Error, match="'big.png' is over the pixel limit"):
        editor.preprocess(EditorData(background=FileData(path=str(tmp_path / "big.png"), orig_name="big.png"),
                                     layers=[], composite=None))


def test_the_edit_tab_edits_an_uploaded_image_and_decodes_only_after_the_gate(tiny, tmp_path, monkeypatch):
    import gradio as gr

    import vqdiff.app.ui as ui

    _, loaded = tiny
    (tmp_path / "bg.png").write_bytes(_png((16, 16)))
    painted = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    painted.putpixel((5, 9), (255, 0, 0, 255))
    buf = io.BytesIO()
    painted.save(buf, format="PNG")
    editor = {"background": check_upload(str(tmp_path / "bg.png"), LIMITS, flatten=True),
              "layers": [check_upload(buf.getvalue(), LIMITS)], "composite": None}
    decoded = []
    real = ui.decode_upload
    monkeypatch.setattr(ui, "decode_upload", lambda u: decoded.append(u.name) or real(u))
    service = ModelService(loaded.engine, loaded.source, AppLimits(max_waiting=0))
    edit = ui._edit_handler(service, ui.ImageFiles())
    with service.gate.slot():  # the model is busy and nobody may wait: refused before any decoding
        with pytest.raises(gr.Error, match="the model is busy"):
            edit(editor, "a blue square", 0, 0.85, 1.0, 0)
    assert decoded == []
    before, after, code = edit(editor, "a blue square", 0, 0.85, 1.0, 0)
    assert len(decoded) == 2 and Image.open(after).size == Image.open(before).size
    assert "inference_inpaint(image, mask, text='a blue square'" in code
    with pytest.raises(gr.Error, match="nothing is painted"):  # the upload arrived; no paint
        edit({**editor, "layers": []}, "a blue square", 0, 0.85, 1.0, 0)


# ------------------------------------------------------------------------------------------ what clients see
def test_paths_are_shown_relative_to_the_working_folder_unless_asked(tiny):
    root, loaded = tiny
    with working_directory(root):
        shown = ModelService(loaded.engine, loaded.source, LIMITS)
        absolute = ModelService(loaded.engine, loaded.source, LIMITS, show_absolute_paths=True)
    request = parse_generate("text", LIMITS, prompt="a red circle", **FIELDS)
    code = shown.generate(request).code
    assert shown.shown_source.ckpt == "tiny_untrained.pth" and f"path='tiny_untrained.pth'" in code
    assert str(root) not in code and not shown.shown_source.config.startswith("/")
    assert absolute.shown_source.ckpt == str(root / "tiny_untrained.pth")


def test_an_unexpected_error_is_a_short_message_with_an_id_and_the_details_are_logged(caplog):
    from vqdiff.app.ui import _message

    with caplog.at_level(logging.ERROR, logger="vqdiff.app"):
        message = _message(RuntimeError("CUDA failure in /home/someone/secret/model.pth"))
    error_id = message.split("(error ")[1].split(")")[0]
    assert len(error_id) == 8 and "secret" not in message and "RuntimeError" not in message
    assert error_id in caplog.text and "/home/someone/secret/model.pth" in caplog.text
    assert _message(InputError("the prompt is empty")) == "the prompt is empty"


def test_result_files_expire_and_the_folder_goes_at_close_and_at_exit(tmp_path):
    from vqdiff.app.ui import ImageFiles

    files = ImageFiles(max_age_s=60.0)
    old = files.write([Image.new("RGB", (4, 4))])[0]
    os.utime(old, (time.time() - 120, time.time() - 120))  # written two minutes ago
    new = files.write([Image.new("RGB", (4, 4))])[0]
    assert not Path(old).exists() and Path(new).exists()
    files.close()
    assert not files.folder.exists()
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    code = "from vqdiff.app.ui import ImageFiles; f = ImageFiles(); f.write([]); print(f.folder)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    folder = Path(done.stdout.strip())
    assert done.returncode == 0 and folder.parent == tmp_path and not folder.exists()


def test_the_command_refuses_a_huge_request_through_the_api_keeps_serving_and_cleans_up(tiny, tmp_path):
    """``python -m vqdiff.app`` driven through its HTTP API (gradio_client, not the page): 10**9 MaskGIT
    steps are refused at once, the next request is served, and SIGTERM removes the result folder."""
    import json
    import socket
    import urllib.request

    from gradio_client import Client

    root, service = tiny
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TMPDIR=str(tmp_path / "tmp"),
               GRADIO_TEMP_DIR=str(tmp_path / "gradio"))
    proc = subprocess.Popen([sys.executable, "-m", "vqdiff.app", "--config", service.source.config, "--ckpt",
                             service.source.ckpt, "--port", str(port), "--device", "cpu", "--max-maskgit-steps", "16"],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None:
            try:
                config = json.loads(urllib.request.urlopen(url + "config", timeout=5).read())
                break
            except OSError:
                time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read()
        assert str(root) not in json.dumps(config)  # no absolute path of this machine reaches a client
        client = Client(url, verbose=False)
        args = ["a red circle", "", 0, 0.85, 1.0, "maskgit", 2, 1.0, 10**9, 0, 1, 0]
        start = time.perf_counter()
        with pytest.raises(Exception, match="MaskGIT steps must be at most 16"):
            client.predict(*args, api_name="/generate")
        assert time.perf_counter() - start < 10
        args[8] = 4
        result = client.predict(*args, api_name="/generate")
        assert len(result[0]) == 1 and "a red circle" in result[1]
        assert len(list((tmp_path / "tmp").glob("vqdiff-app-*"))) == 1
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert not list((tmp_path / "tmp").glob("vqdiff-app-*")), out
