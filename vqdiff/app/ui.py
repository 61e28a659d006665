"""The Gradio page: a Generate tab fitted to the model's kind and an Edit tab (inpainting on the token grid).

Every handler turns bad input and a full queue into ``gr.Error`` (a message in the page, never a
traceback) and keeps the server serving. Generation runs in a worker thread that holds the model's
:class:`~vqdiff.app.gate.RequestGate` and reports each denoising step; the handler turns those reports into
the progress bar and, when asked, into decoded previews streamed into the gallery.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

# no call leaves the machine: Gradio's usage analytics and version check read this before anything else
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402

from vqdiff.modeling.diffusion.sampling_options import DEFAULT_TRUNCATION_RATE  # noqa: E402

from .gate import ServerBusy  # noqa: E402
from .requests import (  # noqa: E402
    DEFAULT_FAST,
    DEFAULT_MASKGIT_STEPS,
    DEFAULT_PRIOR_WEIGHT,
    SAMPLERS,
    InputError,
    parse_condition,
    parse_generate,
    parse_preview_every,
    parse_seed,
)
from .service import GenerateResult, ModelService, StepUpdate  # noqa: E402
from .uploads import GatedImageMask, Upload, decode_upload  # noqa: E402

__all__ = ["ImageFiles", "PageDefaults", "build_page", "launch_page"]

logger = logging.getLogger("vqdiff.app")

KIND_NAMES = {"text": "text-to-image", "label": "class-conditional", None: "unconditional"}

CSS = """
#gallery img, #edit-before img, #edit-after img { image-rendering: pixelated; }
"""


@dataclass(frozen=True)
class PageDefaults:
    """The values the page's fields start with."""

    truncation_rate: float = DEFAULT_TRUNCATION_RATE
    guidance_scale: float = 1.0
    num_images: int = 4
    seed: int = 0
    preview_every: int = 0


class ImageFiles:
    """Result images as PNG files with names used once, handed to Gradio as paths.

    Gradio copies a file path into its cache atomically (a temporary name, then a rename), whereas a
    returned PIL image is re-encoded and its cache file rewritten in place: two requests that produce
    the same picture (same seed and caption) would then truncate a file another browser is fetching.
    Files older than ``max_age_s`` are deleted as new ones are written; the folder is removed by
    :meth:`close`, when this object is collected, or at interpreter exit, whichever comes first."""

    def __init__(self, max_age_s: float = 3600.0):
        self.folder = Path(tempfile.mkdtemp(prefix="vqdiff-app-"))
        self.max_age_s = max_age_s
        self._remove = weakref.finalize(self, shutil.rmtree, str(self.folder), ignore_errors=True)

    def close(self) -> None:
        """Remove the folder and its files (idempotent)."""
        self._remove()

    def write(self, images: list[Image.Image]) -> list[str]:
        now = time.time()
        for old in self.folder.glob("*.png"):
            try:
                if now - old.stat().st_mtime > self.max_age_s:
                    old.unlink()
            except OSError:
                pass
        stem = uuid.uuid4().hex
        paths = []
        for i, image in enumerate(images):
            path = self.folder / f"{stem}_{i}.png"
            image.save(path)
            paths.append(str(path))
        return paths


def _message(err: BaseException) -> str:
    """What the page says about a failed request: the message of an :class:`InputError` or "busy"; for
    anything unexpected a short message with an id, the details (type, message, traceback) only in the
    server log under that id (an exception's text may hold paths or internals)."""
    if isinstance(err, (InputError, ServerBusy)):
        return str(err)
    if isinstance(err, gr.Error):
        return str(err.message)
    error_id = uuid.uuid4().hex[:8]
    logger.error("request failed [error %s]", error_id, exc_info=err)
    return f"the request failed (error {error_id}); the server log has the details under that id"


def _info_markdown(result: GenerateResult) -> str:
    r = result.request
    what = {"text": f"**{r.condition}**", "label": f"class **{r.condition}**", None: "unconditional"}[r.kind]
    return (f"{len(result.images)} image(s) of {what} in {result.seconds:.1f} s (seed {r.seed})  \n"
            f"sample_type: `{result.sample_type}`  \n"
            f"options: `{result.options}`")


def _generate_handler(service: ModelService, files: ImageFiles):
    kind = service.kind

    def generate(prompt, negative, label, truncation, guidance, sampler, fast, prior_weight, maskgit_steps, seed,
                 num_images, preview_every, progress=gr.Progress()) -> Iterator[tuple]:
        try:
            request = parse_generate(kind, service.limits, prompt=prompt, negative_prompt=negative, label=label,
                                     num_classes=service.num_classes, truncation_rate=truncation,
                                     guidance_scale=guidance, sampler=sampler, fast=fast,
                                     prior_weight=prior_weight, maskgit_steps=maskgit_steps, seed=seed,
                                     num_images=num_images)
            every = parse_preview_every(preview_every, service.limits)
        except Exception as err:  # noqa: BLE001 - every failure becomes a message in the page
            raise gr.Error(_message(err)) from None
        events: queue.Queue = queue.Queue()

        def work() -> None:
            try:
                with service.gate.slot(lambda ahead: events.put(("admitted", ahead))):
                    events.put(("done", service.generate(request, lambda u: events.put(("step", u)), every)))
            except BaseException as err:  # noqa: BLE001 - handed to the page
                events.put(("error", err))

        threading.Thread(target=work, name="vqdiff-generate", daemon=True).start()
        progress(0.0, desc="waiting for the model")
        while True:
            what, value = events.get()
            if what == "error":
                raise gr.Error(_message(value))
            if what == "admitted":
                progress(0.0, desc="denoising" if value == 0 else f"waiting: {value} request(s) ahead")
            elif what == "step":
                update: StepUpdate = value
                progress((update.step, update.total), desc="denoising step", unit="steps")
                if update.preview is not None:
                    yield (files.write(update.preview), f"step {update.step} / {update.total} (grey: still [MASK])",
                           gr.skip(), gr.skip())
            else:
                result: GenerateResult = value
                yield files.write(result.images), _info_markdown(result), result.code, result.images
                return

    return generate


def _editor_value(image: Image.Image, scale: int) -> dict:
    big = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    return {"background": big, "layers": [], "composite": big}


def _painted_mask(layers: list[Image.Image]) -> Image.Image:
    """One ``L`` mask, 255 wherever any layer is painted (its alpha, or its luminance without one)."""
    mask = Image.new("L", layers[0].size, 0)
    for layer in layers:
        alpha = layer.getchannel("A") if "A" in layer.getbands() else layer.convert("L")
        mask.paste(255, (0, 0), alpha.point(lambda v: 255 if v else 0).resize(mask.size, Image.NEAREST))
    return mask


def _edit_handler(service: ModelService, files: ImageFiles):
    kind = service.kind

    def edit(editor, prompt, label, truncation, guidance, seed, progress=gr.Progress()):
        try:  # the cheap checks first; decoding (uploads arrive checked, not decoded) once the gate admits
            if not isinstance(editor, dict) or editor.get("background") is None:
                raise InputError("no image to edit: upload an image file (none was given, or the browser could "
                                 "not read it), or generate one and click 'Edit the selected image'")
            background = editor["background"]
            if not isinstance(background, (Image.Image, Upload)):
                raise InputError("cannot read the uploaded image")
            layers = [layer for layer in (editor.get("layers") or []) if isinstance(layer, (Image.Image, Upload))]
            if not layers:
                raise InputError("nothing is painted: paint over the region to change with the brush first")
            condition = parse_condition(kind, service.limits, prompt=prompt, label=label,
                                        num_classes=service.num_classes, field="new caption")
            seed_value = parse_seed(seed)
            with service.gate.slot():
                image = decode_upload(background) if isinstance(background, Upload) else background
                mask = _painted_mask([decode_upload(x) if isinstance(x, Upload) else x for x in layers])
                result = service.edit(image, mask, condition, truncation, guidance, seed_value,
                                      on_step=lambda u: progress((u.step, u.total), desc="denoising step"))
        except Exception as err:  # noqa: BLE001 - every failure becomes a message in the page
            raise gr.Error(_message(err)) from None
        before, after = files.write([result.before, result.after])
        return before, after, result.code

    return edit


def _condition_inputs(service: ModelService, prefix: str, caption_label: str):
    """The condition fields fitted to the model: (prompt, negative prompt, class) components."""
    text_model, class_model = service.kind == "text", service.kind == "label"
    parts = ("composable prompt: 'a red shape:3 AND a circle:2' (a part without ':weight' takes the guidance "
             "scale)") if prefix == "generate" else None
    prompt = gr.Textbox(label=caption_label, placeholder="a green triangle at the bottom right", lines=1, info=parts,
                        visible=text_model, elem_id=f"{prefix}-prompt")
    negative = gr.Textbox(label="negative prompt (what guidance pushes away from; empty: none)", lines=1,
                          visible=text_model and prefix == "generate", elem_id=f"{prefix}-negative")
    label = gr.Number(label=f"class index (0 .. {(service.num_classes or 1) - 1})", value=0, precision=0,
                      visible=class_model, elem_id=f"{prefix}-class")
    return prompt, negative, label


def build_page(service: ModelService, defaults: PageDefaults = PageDefaults()) -> gr.Blocks:
    """The page for ``service``'s model (see the module docstring)."""
    H, W = service.image_size
    guided = service.kind is not None
    # delete_cache: Gradio's copies of result images older than an hour go, checked hourly
    with gr.Blocks(title="vqdiff", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(f"## VQ-Diffusion\n{service.shown_source.describe()}  \n{KIND_NAMES[service.kind]} model, "
                    f"{W}x{H} images from {service.token_shape[0]}x{service.token_shape[1]} tokens, "
                    f"T = {service.num_timesteps} diffusion steps, running on {service.device}.")
        images_state = gr.State([])
        selected_state = gr.State(0)
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate", elem_id="tab-generate"):
                with gr.Row():
                    with gr.Column(scale=1):
                        prompt, negative, label = _condition_inputs(service, "generate", "prompt")
                        truncation = gr.Slider(0.05, 1.0, value=defaults.truncation_rate, step=0.01,
                                               label="truncation rate r (top{r}r)", elem_id="generate-truncation")
                        guidance = gr.Slider(0.0, 10.0, value=defaults.guidance_scale, step=0.1, visible=guided,
                                             label="guidance scale (1 = off)", elem_id="generate-guidance")
                        sampler = gr.Radio([(v, k) for k, v in SAMPLERS.items()], value="official", label="sampler",
                                           elem_id="generate-sampler")
                        fast = gr.Number(DEFAULT_FAST, precision=0, label="fast: keep one step in k (k >= 2)",
                                         visible=False, elem_id="generate-fast")
                        prior_weight = gr.Number(DEFAULT_PRIOR_WEIGHT, label="purity prior weight r (>= 0)",
                                                 visible=False, elem_id="generate-prior-weight")
                        maskgit = gr.Number(DEFAULT_MASKGIT_STEPS, precision=0, label="MaskGIT network calls",
                                            visible=False, elem_id="generate-maskgit")
                        with gr.Row():
                            seed = gr.Number(defaults.seed, precision=0, label="seed", elem_id="generate-seed")
                            num_images = gr.Number(defaults.num_images, precision=0,
                                                   label=f"images (1 .. {service.limits.max_images})",
                                                   elem_id="generate-num")
                        preview_every = gr.Number(defaults.preview_every, precision=0,
                                                  label="show the token maps every k steps (0: off)",
                                                  elem_id="generate-preview")
                        run = gr.Button("Generate", variant="primary", elem_id="generate-button")
                    with gr.Column(scale=1):
                        gallery = gr.Gallery(label="images", columns=4, format="png", object_fit="contain",
                                             height=360, elem_id="gallery")
                        info = gr.Markdown(elem_id="generate-info")
                        code = gr.Code(language="python", label="the same images from the notebook API",
                                       elem_id="generate-code")
                        to_edit = gr.Button("Edit the selected image", elem_id="to-edit")
            with gr.Tab("Edit", id="edit", elem_id="tab-edit"):
                with gr.Row():
                    with gr.Column(scale=1):
                        editor = GatedImageMask.with_limits(service.limits, type="pil", format="png",
                                                            label="paint the region to change",
                                                            sources=["upload", "clipboard"], transforms=(),
                                                            brush=gr.Brush(default_size=24, colors=["#ff3030"],
                                                                           color_mode="fixed"),
                                                            layers=False, canvas_size=(256, 256), elem_id="editor")
                        e_prompt, _, e_label = _condition_inputs(service, "edit", "new caption")
                        e_truncation = gr.Slider(0.05, 1.0, value=defaults.truncation_rate, step=0.01,
                                                 label="truncation rate r", elem_id="edit-truncation")
                        e_guidance = gr.Slider(0.0, 10.0, value=defaults.guidance_scale, step=0.1, visible=guided,
                                               label="guidance scale (1 = off)", elem_id="edit-guidance")
                        e_seed = gr.Number(defaults.seed, precision=0, label="seed", elem_id="edit-seed")
                        e_run = gr.Button("Edit", variant="primary", elem_id="edit-button")
                    with gr.Column(scale=1):
                        with gr.Row():
                            before = gr.Image(label="before: the token cells to repaint", format="png",
                                              elem_id="edit-before")
                            after = gr.Image(label="after", format="png", elem_id="edit-after")
                        e_code = gr.Code(language="python", label="the notebook call", elem_id="edit-code")

        sampler.change(lambda s: (gr.update(visible=s == "fast"), gr.update(visible=s == "purity"),
                                  gr.update(visible=s == "maskgit")), sampler, [fast, prior_weight, maskgit],
                       queue=False)
        limit = service.limits.max_waiting + 2  # the gate, not the framework, refuses the surplus (gate.py)
        files = ImageFiles()
        run.click(_generate_handler(service, files),
                  [prompt, negative, label, truncation, guidance, sampler, fast, prior_weight, maskgit, seed,
                   num_images, preview_every],
                  [gallery, info, code, images_state], concurrency_limit=limit, concurrency_id="model")

        def remember(evt: gr.SelectData) -> int:
            return int(evt.index)

        gallery.select(remember, None, selected_state, queue=False)

        def send_to_edit(images: list, index: int):
            if not images:
                raise gr.Error("no image yet: generate first, or upload one in the Edit tab")
            image = images[min(int(index or 0), len(images) - 1)]  # the PIL images of the last result
            return _editor_value(image, service.display_scale), gr.Tabs(selected="edit")

        to_edit.click(send_to_edit, [images_state, selected_state], [editor, tabs], queue=False)
        e_run.click(_edit_handler(service, files), [editor, e_prompt, e_label, e_truncation, e_guidance, e_seed],
                    [before, after, e_code], concurrency_limit=limit, concurrency_id="model")
    return page


def launch_page(page: gr.Blocks, service: ModelService, host: str, port: Optional[int],
                block: bool = True) -> None:
    """Serve ``page`` on ``host:port`` (no share link, no server-side rendering: nothing but this machine)."""
    page.queue(max_size=4 * (service.limits.max_waiting + 2))
    page.launch(server_name=host, server_port=port, share=False, ssr_mode=False, prevent_thread_lock=not block,
                max_file_size=service.limits.max_upload_bytes,
                show_error=False, quiet=not block, css=CSS, footer_links=[], inbrowser=False, mcp_server=False)
