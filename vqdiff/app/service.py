"""The model behind the page: generation with per-step updates and previews, and mask-snapped editing.

No web framework here: :class:`ModelService` takes typed requests (:mod:`vqdiff.app.requests`) and returns
PIL images, so it is tested without a browser. Previews show the token map at a step (arXiv 2111.14822
Sec. 3: ``x_t`` is partly [MASK]): every decided token as itself, every [MASK] as the network's current
guess ``argmax p(x_0 | x_t)``, the still-masked token cells dimmed towards grey.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from vqdiff.editing import token_mask_to_pixels
from vqdiff.inference.images import to_pil_images
from vqdiff.modeling.diffusion.samplers import timesteps

from .gate import RequestGate
from .model_source import ModelSource
from .requests import AppLimits, GenerateRequest, InputError, OptionsCode

__all__ = ["EditResult", "GenerateResult", "ModelService", "StepUpdate", "snap_to_token_grid", "token_grid_overlay"]

PREVIEW_DIM = 0.65
"""How far a still-masked cell of a preview is pulled towards grey (0 = not at all, 1 = plain grey)."""


@dataclass(frozen=True)
class StepUpdate:
    """After denoising step ``step`` of ``total`` (1-based); ``preview``: the decoded token maps, or None."""

    step: int
    total: int
    preview: Optional[list[Image.Image]] = None


@dataclass(frozen=True)
class GenerateResult:
    """Images of one request and how to reproduce them: ``sample_type`` (the official string of the
    options), ``options`` (the ``SamplingOptions`` constructor), ``code`` (the notebook call)."""

    images: list[Image.Image]
    request: GenerateRequest
    sample_type: str
    options: str
    code: str
    seconds: float


@dataclass(frozen=True)
class EditResult:
    """An edit: ``before`` (the input with the repainted token cells outlined), ``after``, the token mask
    ``(h, w)`` that was repainted and the call that ran."""

    before: Image.Image
    after: Image.Image
    token_mask: np.ndarray
    code: str


def snap_to_token_grid(mask: Any, token_shape: tuple[int, int]) -> np.ndarray:
    """A painted mask of any size as the ``(h, w)`` bool token mask: a token is repainted when any painted
    pixel falls in its cell (the rule of ``vqdiff.editing.token_mask_from_pixel_mask``, for sizes that are
    not a multiple of the grid too). ``mask``: a PIL image (alpha or luminance) or a 2-D array, nonzero = paint."""
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.getchannel("A") if "A" in mask.getbands() else mask.convert("L"))
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise InputError(f"the mask must be a 2-D image, got shape {arr.shape}")
    painted = torch.from_numpy((arr != 0).astype(np.float32))[None, None]
    return (F.adaptive_max_pool2d(painted, token_shape)[0, 0] > 0).numpy()


def token_grid_overlay(image: Image.Image, token_mask: np.ndarray, scale: int) -> Image.Image:
    """``image`` enlarged ``scale`` times (nearest) with the token grid drawn and the cells of
    ``token_mask`` (h, w) tinted red: what the edit will repaint."""
    h, w = token_mask.shape
    big = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    tint = Image.new("RGB", big.size, (255, 40, 40))
    cell = Image.fromarray((token_mask * 255).astype(np.uint8)).resize(big.size, Image.NEAREST)
    big = Image.composite(Image.blend(big, tint, 0.5), big, cell)
    draw = ImageDraw.Draw(big)
    for i in range(1, w):
        draw.line([(i * big.width // w, 0), (i * big.width // w, big.height)], fill=(255, 255, 255), width=1)
    for j in range(1, h):
        draw.line([(0, j * big.height // h), (big.width, j * big.height // h)], fill=(255, 255, 255), width=1)
    return big


class ModelService:
    """A loaded ``VQ_Diffusion`` with what the page needs to know about it and one :class:`RequestGate`.

    Attributes:
        kind: ``'text'``, ``'label'`` or None (unconditional).
        image_size: ``(H, W)`` of the generated images; ``token_shape``: ``(h, w)`` of the token grid.
        num_classes: real classes of a class model (None otherwise); ``num_timesteps``: T.
    """

    def __init__(self, engine: Any, source: ModelSource, limits: AppLimits = AppLimits(),
                 show_absolute_paths: bool = False):
        self.engine, self.source, self.limits = engine, source, limits
        # what clients see: paths relative to the working folder now (absolute only when asked)
        self.shown_source = source.shown(Path.cwd(), absolute=show_absolute_paths)
        self.gate = RequestGate(limits.max_waiting)
        model = engine.model
        self.kind: Optional[str] = engine.condition_kind
        self.token_shape = tuple(int(s) for s in model.content_codec.token_shape)
        self.num_timesteps = int(model.transformer.num_timesteps)
        self.num_classes = (int(getattr(model.transformer.condition_emb, "num_embed", 1000))
                            if self.kind == "label" else None)
        with torch.no_grad():  # the image size the codec decodes to
            probe = model.content_codec.decode(torch.zeros(1, self.token_shape[0] * self.token_shape[1],
                                                           dtype=torch.long, device=model.device))
        self.image_size = (int(probe.shape[-2]), int(probe.shape[-1]))

    @classmethod
    def load(cls, source: ModelSource, device: Optional[str] = None, limits: AppLimits = AppLimits(),
             show_absolute_paths: bool = False) -> "ModelService":
        """Load ``source`` through the notebook API (a diffusers folder too)."""
        from vqdiff.inference.api import VQ_Diffusion

        return cls(VQ_Diffusion(config=source.config, path=source.ckpt, device=device), source, limits,
                   show_absolute_paths)

    @property
    def device(self) -> str:
        return str(self.engine.device)

    @property
    def display_scale(self) -> int:
        """Integer enlargement that shows an image about 256 pixels wide (nearest: token cells stay sharp)."""
        return max(1, 256 // max(self.image_size))

    def total_steps(self, request: GenerateRequest) -> int:
        """Callbacks of one sampling call: MaskGIT's S, else the visited diffusion steps."""
        options = request.options("cpu")
        if options.maskgit_steps is not None:
            return options.maskgit_steps
        return len(timesteps(self.num_timesteps, options.skip_step))

    # ---------------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def preview(self, info: dict) -> list[Image.Image]:
        """The token maps ``info['x']`` (B, N) of a sampler callback, decoded (see the module docstring)."""
        x, log_x0 = info["x"], info["log_x0"]
        K = self.engine.model.transformer.num_classes - 1
        masked = x == K
        tokens = torch.where(masked, log_x0[:, :K].argmax(dim=1), x)
        images = self.engine.model.content_codec.decode(tokens).float().cpu()
        dim = token_mask_to_pixels(masked.cpu(), self.token_shape, images.shape[-2:])[:, None]
        images = torch.where(dim, images * (1 - PREVIEW_DIM) + 128.0 * PREVIEW_DIM, images)
        return to_pil_images(images)

    def generate(self, request: GenerateRequest, on_step: Optional[Callable[[StepUpdate], None]] = None,
                 preview_every: int = 0) -> GenerateResult:
        """Run ``request`` through its notebook call; ``on_step`` after every step, with previews every
        ``preview_every`` steps and at the last one (0: none). Caller holds ``self.gate``."""
        call = request.notebook_call(self.device)
        total = self.total_steps(request)

        def callback(info: dict) -> None:
            if on_step is None:
                return
            step = int(info["step"]) + 1
            show = preview_every > 0 and (step % preview_every == 0 or step == total)
            on_step(StepUpdate(step, total, self.preview(info) if show else None))

        start = time.perf_counter()
        images = call.run(self.engine, callback)
        options = request.options(self.device)
        return GenerateResult(
            images=images, request=request, sample_type=str(options),
            options=repr(OptionsCode(tuple(request.option_fields().items()), request.seed, self.device)),
            code=call.code(self.shown_source.config, self.shown_source.ckpt), seconds=time.perf_counter() - start)

    # ---------------------------------------------------------------------------------------- editing
    def edit_input(self, image: Image.Image) -> Image.Image:
        """An uploaded or edited image at the model's size (a nearest-enlarged one comes back exactly)."""
        H, W = self.image_size
        image = image.convert("RGB")
        return image if image.size == (W, H) else image.resize((W, H), Image.BOX)

    def edit(self, image: Image.Image, mask: Any, condition: Any, truncation_rate: float, guidance_scale: float,
             seed: int, on_step: Optional[Callable[[StepUpdate], None]] = None) -> EditResult:
        """Repaint the token cells under ``mask`` (painted pixels, any size) following ``condition``
        (text / class index / None) with ``VQ_Diffusion.inference_inpaint``; caller holds ``self.gate``."""
        token_mask = snap_to_token_grid(mask, self.token_shape)
        if not token_mask.any():
            raise InputError("nothing is painted: paint over the region to change with the brush first")
        source = self.edit_input(image)
        kw = dict(text=condition, truncation_rate=float(truncation_rate), seed=int(seed))
        if self.kind is not None:
            kw["guidance_scale"] = float(guidance_scale)
        steps = len(timesteps(self.num_timesteps))  # inference_inpaint visits every step

        def callback(info: dict) -> None:
            if on_step is not None:
                on_step(StepUpdate(int(info["step"]) + 1, steps))

        after = self.engine.inference_inpaint(source, torch.from_numpy(token_mask), callback=callback, **kw)[0]
        scale = self.display_scale
        code = ("from inference_VQ_Diffusion import VQ_Diffusion\n"
                f"m = VQ_Diffusion(config={self.shown_source.config!r}"
                + (f", path={self.shown_source.ckpt!r})\n" if self.shown_source.ckpt else ")\n")
                + f"# image: the {source.width}x{source.height} input; mask: the {token_mask.shape[0]}x{token_mask.shape[1]} "
                  f"token mask shown (True = repaint)\n"
                + "images = m.inference_inpaint(image, mask, " + ", ".join(f"{k}={v!r}" for k, v in kw.items()) + ")")
        return EditResult(before=token_grid_overlay(source, token_mask, scale),
                          after=after.resize((after.width * scale, after.height * scale), Image.NEAREST),
                          token_mask=token_mask, code=code)

