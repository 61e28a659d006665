"""A page's generation request as typed values, checked once, and the notebook call that reproduces it.

The page's fields arrive as loose values (Gradio numbers are floats, text may be blank). :func:`parse_generate`
turns them into a frozen :class:`GenerateRequest` or raises :class:`InputError` naming the field. The
sampling fields are range-checked by ``SamplingOptions`` itself (``request_options``), so each option keeps
its one check. :meth:`GenerateRequest.notebook_call` is the call of the notebook API
(``inference_VQ_Diffusion.VQ_Diffusion``) that the app runs AND shows: the official method when it can
express the request, else the core ``inference_generate_sample`` with a ``SamplingOptions``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from vqdiff.inference.api import request_options
from vqdiff.modeling.diffusion.prompt_parts import PromptPartsError, has_prompt_parts, parse_prompt_parts
from vqdiff.modeling.diffusion.sampling_options import SamplingOptions

__all__ = ["DEFAULT_FAST", "DEFAULT_MASKGIT_STEPS", "DEFAULT_PRIOR_WEIGHT", "SAMPLERS", "AppLimits", "GenerateRequest", "InputError", "NotebookCall", "OptionsCode",
           "as_int", "bounded_int", "parse_condition", "parse_generate", "parse_preview_every", "parse_seed"]

SAMPLERS = {
    "official": "official schedule (every step)",
    "fast": "fast: every k-th step",
    "purity": "purity prior (Improved VQ-Diffusion)",
    "maskgit": "MaskGIT steps",
}
"""The page's samplers (key: label): ancestral over all T steps (arXiv 2111.14822 Eq. 11); skip-step
(``fast=k``); the Improved purity prior (arXiv 2205.16007 Eq. 11, ``prior_rule=2``); MaskGIT decoding."""

DEFAULT_FAST = 2
"""``fast=k``: every k-th step (k = 2 halves the network calls)."""
DEFAULT_PRIOR_WEIGHT = 1.0
"""The purity prior's weight r (the official README example's ``prior_weight=1``)."""
DEFAULT_MASKGIT_STEPS = 8
"""MaskGIT network calls."""
MAX_SEED = 2**63 - 1


class InputError(ValueError):
    """A value typed in the page is not usable; the message names the field (shown as ``gr.Error``)."""


@dataclass(frozen=True)
class AppLimits:
    """What one request may ask for: every count a request sets has an upper bound here, checked by the
    request parser (so the page and its HTTP API are bounded alike).

    Attributes:
        max_images: most images per request (more is an :class:`InputError`).
        max_waiting: requests that may wait while one runs (beyond: a "busy" message).
        max_prompt_chars: longest prompt accepted (CLIP reads 77 tokens anyway).
        max_maskgit_steps: most MaskGIT network calls per request.
        max_fast: largest ``fast`` k (keep one step in k; beyond T it is one step anyway).
        max_preview_every: largest "preview every k steps" value.
        max_scale: largest guidance scale and purity prior weight.
        max_upload_bytes: largest uploaded file (checked before it is decoded).
        max_upload_pixels: most pixels of an uploaded image (read from its header, before decoding).
    """

    max_images: int = 8
    max_waiting: int = 4
    max_prompt_chars: int = 500
    max_maskgit_steps: int = 256
    max_fast: int = 1000
    max_preview_every: int = 1000
    max_scale: float = 100.0
    max_upload_bytes: int = 10 * 2**20
    max_upload_pixels: int = 4096 * 4096

    def __post_init__(self) -> None:
        for name in ("max_images", "max_prompt_chars", "max_maskgit_steps", "max_fast", "max_preview_every",
                     "max_upload_bytes", "max_upload_pixels"):
            if as_int(getattr(self, name), name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if as_int(self.max_waiting, "max_waiting") < 0:
            raise ValueError(f"max_waiting must be >= 0, got {self.max_waiting!r}")
        if not _as_float(self.max_scale, "max_scale") > 0:
            raise ValueError(f"max_scale must be > 0, got {self.max_scale!r}")


def as_int(value: Any, field: str) -> int:
    """``value`` (an int, or a float with no fraction as Gradio's numbers are) as an int, else InputError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{field} must be a whole number, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)  # any size: a huge int is refused by the field's bound, not by float overflow
    if not math.isfinite(value) or int(value) != value:
        raise InputError(f"{field} must be a whole number, got {value!r}")
    return int(value)


def _as_float(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{field} must be a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise InputError(f"{field} is too large, got {value!r}") from None


def bounded_int(value: Any, field: str, high: int, low: int | None = None) -> int:
    """``value`` as a whole number at most ``high`` (this server's limit; and at least ``low`` when given)."""
    number = as_int(value, field)
    if number > high or (low is not None and number < low):
        lower = "" if low is None else f"{low} .. "
        raise InputError(f"{field} must be {lower or 'at most '}{high} (this server's limit), got {number}")
    return number


def _bounded_float(value: Any, field: str, high: float) -> float:
    number = _as_float(value, field)
    if math.isfinite(number) and number > high:
        raise InputError(f"{field} must be at most {high} (this server's limit), got {number}")
    return number


def parse_preview_every(value: Any, limits: AppLimits) -> int:
    """"Preview every k steps" as an int in 0 .. ``limits.max_preview_every`` (0 or empty: no previews)."""
    return bounded_int(value or 0, "preview every k steps", limits.max_preview_every, low=0)


@dataclass(frozen=True)
class OptionsCode:
    """A ``SamplingOptions`` that is also its own source code: ``repr`` is the constructor call, with the
    seed's generator written as ``torch.Generator(...).manual_seed(seed)``."""

    fields: tuple[tuple[str, Any], ...]
    seed: int
    device: str

    def build(self) -> SamplingOptions:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.seed)
        return SamplingOptions(**dict(self.fields), generator=generator)

    def __repr__(self) -> str:
        args = [f"{k}={v!r}" for k, v in self.fields]
        args.append(f"generator=torch.Generator(device={self.device!r}).manual_seed({self.seed})")
        return f"SamplingOptions({', '.join(args)})"


@dataclass(frozen=True)
class NotebookCall:
    """``engine.<method>(*args, **kwargs)``: what the app runs, and the code it shows for it."""

    method: str
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...]

    def run(self, engine: Any, callback: Optional[Callable[[dict], None]] = None) -> list:
        """Run the call on a ``VQ_Diffusion`` (``save_root`` None: the app keeps the images in memory)."""
        args = [a.build() if isinstance(a, OptionsCode) else a for a in self.args]
        kwargs = dict(self.kwargs)
        kwargs["save_root"] = None
        return getattr(engine, self.method)(*args, callback=callback, **kwargs)

    def code(self, config: str, ckpt: Optional[str], save_root: str = "RESULT") -> str:
        """The Python a user runs (from the app's working directory) to get the same images."""
        lines = []
        if any(isinstance(a, OptionsCode) for a in self.args):
            lines += ["import torch", "from vqdiff.modeling.diffusion.sampling_options import SamplingOptions"]
        lines.append("from inference_VQ_Diffusion import VQ_Diffusion")
        lines.append(f"m = VQ_Diffusion(config={config!r}" + (f", path={ckpt!r})" if ckpt else ")"))
        kwargs = dict(self.kwargs)
        kwargs["save_root"] = save_root
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in kwargs.items()]
        lines.append(f"images = m.{self.method}({', '.join(parts)})")
        return "\n".join(lines)


@dataclass(frozen=True)
class GenerateRequest:
    """One generation request, checked.

    Attributes:
        kind: the model's condition: ``'text'``, ``'label'`` or None (unconditional).
        condition: the prompt (text), the class index (label) or None.
        negative_prompt: text models: the text guidance pushes away from ('' = the ordinary null text).
        truncation_rate: ``top{r}r``, in (0, 1].
        guidance_scale: classifier-free guidance scale (1 = off; unconditional models have none).
        sampler: a key of :data:`SAMPLERS`.
        fast: ``'fast'``: keep one step in ``fast`` (>= 2).
        prior_weight: ``'purity'``: the weight r of the purity prior (>= 0).
        maskgit_steps: ``'maskgit'``: the number of network calls (>= 1).
        seed: the generator's seed (same seed, same images).
        num_images: images in the batch, 1 .. ``AppLimits.max_images``.
    """

    kind: Optional[str]
    condition: Any
    negative_prompt: str
    truncation_rate: float
    guidance_scale: float
    sampler: str
    fast: int
    prior_weight: float
    maskgit_steps: int
    seed: int
    num_images: int

    def option_fields(self) -> dict:
        """The ``SamplingOptions`` fields of this request that differ from their defaults (no generator)."""
        fields: dict[str, Any] = {"truncation_rate": self.truncation_rate}
        if self.kind is not None and self.guidance_scale != 1.0:
            fields["guidance_scale"] = self.guidance_scale
        if self.sampler == "fast":
            fields["skip_step"] = self.fast - 1
        elif self.sampler == "purity":
            fields.update(prior_rule=2, prior_weight=self.prior_weight)
        elif self.sampler == "maskgit":
            fields["maskgit_steps"] = self.maskgit_steps
        return fields

    def options(self, device: str) -> SamplingOptions:
        """The request's ``SamplingOptions`` (with its seeded generator on ``device``)."""
        return OptionsCode(tuple(self.option_fields().items()), self.seed, device).build()

    def notebook_call(self, device: str) -> NotebookCall:
        """The official method when it takes every option of this request (text models take all but
        MaskGIT; class and unconditional models no prior rule), else ``inference_generate_sample``."""
        official = self.sampler != "maskgit" and (self.kind == "text" or self.sampler != "purity")
        if not official:
            condition = self.condition if self.kind is not None else None
            kw: list[tuple[str, Any]] = [("batch_size", self.num_images)]
            if self.kind == "text" and self.negative_prompt:
                kw.append(("negative_prompt", self.negative_prompt))
            code = OptionsCode(tuple(self.option_fields().items()), self.seed, device)
            return NotebookCall("inference_generate_sample", (condition, code), tuple(kw))
        kw = [("truncation_rate", self.truncation_rate), ("batch_size", self.num_images)]
        if self.sampler == "fast":
            kw.append(("fast", self.fast))
        if self.kind is not None and self.guidance_scale != 1.0:
            kw.append(("guidance_scale", self.guidance_scale))
        if self.sampler == "purity":
            kw += [("prior_rule", 2), ("prior_weight", self.prior_weight)]
        if self.kind == "text" and self.negative_prompt:
            kw.append(("negative_prompt", self.negative_prompt))
        kw.append(("seed", self.seed))
        method = {"text": "inference_generate_sample_with_condition", "label": "inference_generate_sample_with_class",
                  None: "inference_generate_sample_unconditional"}[self.kind]
        args = () if self.kind is None else (self.condition,)
        return NotebookCall(method, args, tuple(kw))


def parse_condition(kind: Optional[str], limits: AppLimits, *, prompt: str = "", label: Any = None,
                    num_classes: Optional[int] = None, field: str = "prompt", allow_parts: bool = False) -> Any:
    """The condition of a ``kind`` model from the page: the stripped ``prompt`` (text models: not blank,
    at most ``limits.max_prompt_chars``; with ``allow_parts`` it may be a composed prompt, ``"a red shape:3 AND
    a circle"``, checked here), the class index ``label`` (below ``num_classes``), or None."""
    if kind == "text":
        if prompt is not None and not isinstance(prompt, str):
            raise InputError(f"the {field} must be text, got {type(prompt).__name__}")
        text = (prompt or "").strip()
        if not text:
            raise InputError(f"the {field} is empty: this text-to-image model needs a caption, "
                             "e.g. 'a red circle at the top left'")
        if len(text) > limits.max_prompt_chars:
            raise InputError(f"the {field} has {len(text)} characters; at most {limits.max_prompt_chars}")
        if has_prompt_parts(text):
            if not allow_parts:
                raise InputError(f"the {field} is one caption here: composed prompts (' AND ') are for generation")
            try:
                parts = parse_prompt_parts(text)
            except PromptPartsError as err:
                raise InputError(f"the {field}: {err}") from None
            # a part's weight is a guidance scale: the same bound as the page's guidance field
            for part in parts:
                if abs(part.weight) > limits.max_scale:
                    raise InputError(f"the {field}: part {part.condition!r} has weight {part.weight:g}; "
                                     f"at most {limits.max_scale:g} in size")
        return text
    if kind == "label":
        if label is None:
            raise InputError("pick a class: this class-conditional model needs a class index")
        index = as_int(label, "class")
        if index < 0 or (num_classes is not None and index >= num_classes):
            raise InputError(f"class must be in 0 .. {(num_classes or 1) - 1}, got {index}")
        return index
    return None


def parse_seed(seed: Any) -> int:
    """The page's seed as an int in 0 .. ``MAX_SEED`` (same seed, same images)."""
    if seed is None:
        raise InputError("seed is empty: give a whole number (the same seed gives the same images)")
    value = as_int(seed, "seed")
    if not 0 <= value <= MAX_SEED:
        raise InputError(f"seed must be in 0 .. {MAX_SEED}, got {seed!r}")
    return value


def parse_generate(kind: Optional[str], limits: AppLimits, *, prompt: str = "", negative_prompt: str = "",
                   label: Any = None, num_classes: Optional[int] = None, truncation_rate: Any, guidance_scale: Any,
                   sampler: str, fast: Any, prior_weight: Any, maskgit_steps: Any, seed: Any,
                   num_images: Any) -> GenerateRequest:
    """The page's values as a :class:`GenerateRequest`; :class:`InputError` names the first bad field.

    ``kind`` picks the condition read: ``prompt`` (text: must not be blank), ``label`` (class: an index
    below ``num_classes``) or none; ``seed`` must be a whole number (the page fills it in)."""
    condition = parse_condition(kind, limits, prompt=prompt, label=label, num_classes=num_classes, allow_parts=True)
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise InputError(f"the negative prompt must be text, got {type(negative_prompt).__name__}")
    negative = (negative_prompt or "").strip() if kind == "text" else ""
    if len(negative) > limits.max_prompt_chars:
        raise InputError(f"the negative prompt has {len(negative)} characters; at most {limits.max_prompt_chars}")
    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        raise InputError(f"sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}")
    n = bounded_int(num_images, "number of images", limits.max_images, low=1)
    # every count has this server's upper bound here (lower bounds: SamplingOptions' own checks below)
    request = GenerateRequest(
        kind=kind, condition=condition, negative_prompt=negative,
        truncation_rate=_as_float(truncation_rate, "truncation rate"),
        guidance_scale=_bounded_float(guidance_scale, "guidance scale", limits.max_scale), sampler=sampler,
        fast=bounded_int(fast, "fast k", limits.max_fast) if sampler == "fast" else DEFAULT_FAST,
        prior_weight=(_bounded_float(prior_weight, "purity prior weight", limits.max_scale) if sampler == "purity"
                      else DEFAULT_PRIOR_WEIGHT),
        maskgit_steps=(bounded_int(maskgit_steps, "MaskGIT steps", limits.max_maskgit_steps) if sampler == "maskgit"
                       else DEFAULT_MASKGIT_STEPS),
        seed=parse_seed(seed), num_images=n,
    )
    try:  # fast=k by the notebook API's own rule (k >= 2), every other field by SamplingOptions' check
        if sampler == "fast":
            request_options(request.truncation_rate, fast=request.fast)
        request.options("cpu")
    except ValueError as err:
        raise InputError(str(err)) from None
    return request
