"""``SamplingOptions``: every per-request sampling option, its one default and its one range check.

The notebook API, the CLI, editing and ``generate_content`` build one ``SamplingOptions`` at their edge (the
official ``sample_type`` string is parsed there by :meth:`SamplingOptions.from_sample_type`); below that,
the sampling function, the denoiser and the samplers read its typed fields, never a string, and nothing is
stored on the model for one call. ``str(options)`` prints the official string back (for logs).

Which sampler runs (:meth:`SamplingOptions.sampler_kind`, a row of the one sampler table
``samplers.SAMPLERS``): the one named by ``sampler`` (also the ``sample_type`` part of that name, e.g.
``'top0.85r,improved'``), else the row the other fields choose:

* ``'maskgit'`` when ``maskgit_steps`` is set (``samplers/maskgit.py``);
* ``'ancestral'`` (arXiv 2111.14822 Eq. 11) with ``prior_rule`` 0, for skip-step sampling
  (``skip_step > 0``, the official ``sample_fast``) and when starting from noised tokens (``filter_ratio > 0``);
* ``'improved'`` (arXiv 2205.16007 Sec. 3.3) with ``prior_rule`` 1 or 2, or ``time{s}`` with s < 1.

Precision (``precision``, ``compile``): the network runs in the chosen precision (``vqdiff.utils.precision``;
``auto`` is resolved per device by :meth:`SamplingOptions.for_device`) and, with ``compile``, through
``torch.compile`` (``network_runner.py``); the diffusion math around it stays fp32.

The model's objective may swap the row (``Objective.sampler_for``): an ``objective: masked_elbo`` model runs
``'masked'`` instead of the last two (``samplers/masked.py``, with ``time_grid``); MaskGIT is shared.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from dataclasses import dataclass
from typing import Any, Optional

import torch

from vqdiff.utils.precision import PRECISIONS, resolve_precision

from .guidance import guidance_number, guidance_scales
from .prompt_parts import PromptPart, PromptPartsError, prompt_parts_from
from .samplers.masked import TIME_GRIDS
from .samplers.maskgit import MASK_SCHEDULES
from .samplers.registry import SAMPLERS

__all__ = ["DEFAULT_TRUNCATION_RATE", "NULL_CONDITIONS", "SamplingOptions", "speed_fields"]

logger = logging.getLogger("vqdiff.sampling")

DEFAULT_TRUNCATION_RATE = 0.85
"""The one default truncation rate (the official ``generate_content`` default ``'top0.85r'``)."""

NULL_CONDITIONS = ("learned", "empty")
"""The unconditional branch of text guidance: the learned null text (``empty_text_embed``, when the model
has one, else CLIP('')) or always the CLIP embedding of ''. Class models use the null label either way."""

GUIDANCE_OFF_TOLERANCE = 1e-3
"""A scale within this of 1 at every step is "no guidance" (the official ``abs(s - 1) < 1e-3`` test)."""


def _check(ok: bool, name: str, value: Any, rule: str) -> None:
    if not ok:
        raise ValueError(f"sampling option {name} must be {rule}, got {value!r}")


@dataclass(frozen=True)
class SamplingOptions:
    """One sampling request's options (frozen; change one with :meth:`replace`).

    Attributes:
        truncation_rate: keep per position the most probable tokens up to this cumulative probability,
            in (0, 1] (official ``top{r}r``); None: no truncation (``'normal'``).
        top_k: keep the k most probable tokens (official ``top{k}p``), k >= 1; None: off.
        skip_step: skip this many steps between network calls (``fast{k}``; ``time{s}``, s >= 2, is s - 1).
        time_ratio: Improved ``time{s}`` with 0 < s < 1: reveal ``int(N // T * s)`` tokens per network call
            (``prior_rule`` 0 then becomes 1).
        rerun_prob: probability in [0, 1] of re-running a step (official ``q{p}``).
        guidance_scale: classifier-free guidance scale, a number or a schedule (``guidance.guidance_scales``);
            1 is off. Finite, else ValueError.
        null_condition: the unconditional branch of text guidance, one of ``NULL_CONDITIONS``.
        prior_rule: 0 VQ-Diffusion v1, 1 high-quality inference, 2 purity prior (Improved Sec. 3.3).
        prior_weight: ``r`` of the purity prior (Improved Eq. 11), >= 0.
        prior_ps: most tokens revealed per network call by the Improved rules, >= 1; None: all N.
        temperature: sampling temperature of the MaskGIT draws, > 0 (the official samplers ignore it).
        generator: the ``torch.Generator`` of every random draw (None: torch's global generator).
        maskgit_steps: S >= 1: the confidence-ordered sampler with S network calls (``maskgit{S}``).
        maskgit_schedule: its mask schedule, one of ``maskgit.MASK_SCHEDULES``.
        choice_temperature: its confidence noise scale, >= 0.
        precision: the network's precision, one of ``vqdiff.utils.precision.PRECISIONS``: ``fp32`` (default:
            the official code's tokens for the same seed), ``bf16``, ``fp16`` (autocast of the network only;
            posteriors, truncation, guidance and the Gumbel draw stay fp32) or ``auto`` (bf16 where the device
            runs it natively, else fp32; resolved by :meth:`for_device`).
        compile: run the network through ``torch.compile`` (``fullgraph``, compiled once per input shape).
        compile_backend: the ``torch.compile`` backend (``'inductor'``; ``'aot_eager'`` needs no C++ build).
        time_grid: the time grid of the masked-diffusion sampler (``objective: masked_elbo`` models), one of
            ``masked_sampler.TIME_GRIDS``; other models take only ``'uniform'``.
        prompt_parts: composable guidance (Liu et al., arXiv 2206.01714): the prompt as parts, each a caption
            or class index with its own weight (``prompt_parts.PromptPart``; also given as a written prompt
            ``"a red shape:3 AND a circle:2"`` or ``(condition, weight)`` pairs, weight 1 where none is
            written), combined with the null condition (``composable_guidance``); None: the request's one
            condition. The parts carry the weights, so ``guidance_scale`` must stay 1; guidance is then on.
        sampler: the sampler to run, a key of ``samplers.SAMPLERS`` (``'ancestral'``, ``'improved'``,
            ``'maskgit'``, ``'masked'`` or a registered one); None (default): the row the other fields choose
            (:meth:`sampler_kind`). The model's objective may still swap it (``Objective.sampler_for``).
    """

    truncation_rate: Optional[float] = DEFAULT_TRUNCATION_RATE
    top_k: Optional[int] = None
    skip_step: int = 0
    time_ratio: Optional[float] = None
    rerun_prob: float = 0.0
    guidance_scale: Any = 1.0
    null_condition: str = "learned"
    prior_rule: int = 0
    prior_weight: float = 0.0
    prior_ps: Optional[int] = None
    temperature: float = 1.0
    generator: Optional[torch.Generator] = None
    maskgit_steps: Optional[int] = None
    maskgit_schedule: str = "cosine"
    choice_temperature: float = 4.5
    precision: str = "fp32"
    compile: bool = False
    compile_backend: str = "inductor"
    time_grid: str = "uniform"
    prompt_parts: Optional[tuple[PromptPart, ...]] = None
    sampler: Optional[str] = None

    def __post_init__(self) -> None:
        r = self.truncation_rate
        _check(r is None or (_real(r) and 0.0 < r <= 1.0 + 1e-9), "truncation_rate", r,
               "a number in (0, 1] or None")
        _check(self.top_k is None or (_is_int(self.top_k) and self.top_k >= 1), "top_k", self.top_k, "an int >= 1 or None")
        _check(_is_int(self.skip_step) and self.skip_step >= 0, "skip_step", self.skip_step, "an int >= 0")
        s = self.time_ratio
        _check(s is None or (_real(s) and 0.0 < s < 1.0), "time_ratio", s, "in (0, 1) or None")
        _check(_real(self.rerun_prob) and 0.0 <= self.rerun_prob <= 1.0, "rerun_prob", self.rerun_prob, "in [0, 1]")
        number = guidance_number(self.guidance_scale)
        if number is not None:  # a schedule is checked against T by guidance_scales (it may need T values)
            _check(math.isfinite(number), "guidance_scale", self.guidance_scale, "finite")
        elif isinstance(self.guidance_scale, bool):
            raise ValueError(f"sampling option guidance_scale must be a number or a schedule, got {self.guidance_scale!r}")
        _check(isinstance(self.null_condition, str) and self.null_condition in NULL_CONDITIONS, "null_condition", self.null_condition, f"one of {NULL_CONDITIONS}")
        _check(self.prior_rule in (0, 1, 2) and not isinstance(self.prior_rule, bool), "prior_rule", self.prior_rule,
               "0, 1 or 2")
        _check(_real(self.prior_weight) and self.prior_weight >= 0, "prior_weight", self.prior_weight, "a number >= 0")
        _check(self.prior_ps is None or (_is_int(self.prior_ps) and self.prior_ps >= 1), "prior_ps", self.prior_ps,
               "an int >= 1 or None")
        _check(_real(self.temperature) and self.temperature > 0, "temperature", self.temperature, "> 0")
        _check(self.generator is None or isinstance(self.generator, torch.Generator), "generator", self.generator,
               "a torch.Generator or None")
        _check(self.maskgit_steps is None or (_is_int(self.maskgit_steps) and self.maskgit_steps >= 1),
               "maskgit_steps", self.maskgit_steps, "an int >= 1 or None")
        _check(isinstance(self.maskgit_schedule, str) and self.maskgit_schedule in MASK_SCHEDULES, "maskgit_schedule", self.maskgit_schedule,
               f"one of {sorted(MASK_SCHEDULES)}")
        _check(_real(self.choice_temperature) and self.choice_temperature >= 0, "choice_temperature",
               self.choice_temperature, ">= 0")
        _check(isinstance(self.precision, str) and self.precision in PRECISIONS, "precision", self.precision, f"one of {', '.join(PRECISIONS)}")
        _check(isinstance(self.compile, bool), "compile", self.compile, "True or False")
        _check(isinstance(self.compile_backend, str) and bool(self.compile_backend), "compile_backend",
               self.compile_backend, "a torch.compile backend name")
        _check(isinstance(self.time_grid, str) and self.time_grid in TIME_GRIDS, "time_grid", self.time_grid, f"one of {TIME_GRIDS}")
        _check(self.sampler is None or (isinstance(self.sampler, str) and self.sampler in SAMPLERS), "sampler",
               self.sampler, f"one of {sorted(SAMPLERS)} or None")
        if self.prompt_parts is not None:
            try:
                object.__setattr__(self, "prompt_parts", prompt_parts_from(self.prompt_parts))
            except PromptPartsError as err:
                raise ValueError(f"sampling option prompt_parts: {err}") from None
            _check(number is not None and abs(number - 1.0) < GUIDANCE_OFF_TOLERANCE, "guidance_scale",
                   self.guidance_scale, "1 when prompt_parts is given (each part carries its own weight)")

    # ------------------------------------------------------------------------------------------ building
    def replace(self, **changes: Any) -> "SamplingOptions":
        """A copy with ``changes`` (range-checked again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_sample_type(cls, sample_type: Optional[str], **others: Any) -> "SamplingOptions":
        """Parse the official ``sample_type`` string; ``others`` are the remaining fields.

        ``'top{r}r'`` truncation rate r; ``'top{k}p'`` top-k; ``'normal'``/``''``/None nothing; then optional
        comma-separated parts: ``'time{s}'`` (s >= 2: ``skip_step = int(s) - 1``; s < 1: ``time_ratio = s``;
        1 <= s < 2: plain), ``'fast{k}'`` (skip k steps), ``'q{p}'`` (re-run probability p); vqdiff's own
        ``'maskgit{S}'`` or ``'maskgit{S}:{schedule}'``; a sampler's name (``sampler``); a precision (``'fp32'``, ``'bf16'``, ``'fp16'``,
        ``'auto'``) and ``'compile'``. A string without a ``top`` part has no truncation.
        """
        parsed: dict[str, Any] = {"truncation_rate": None}
        parts = [p.strip() for p in str(sample_type or "").split(",") if p.strip()]

        def num(text: str, part: str) -> float:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"sample_type {sample_type!r}: cannot read a number in part {part!r}") from None
            if not math.isfinite(value):
                raise ValueError(f"sample_type {sample_type!r}: part {part!r} needs a finite number")
            return value

        for i, part in enumerate(parts):
            if part.startswith("top") and part.endswith("r"):
                parsed["truncation_rate"] = num(part[3:-1], part)
            elif part.startswith("top") and part.endswith("p"):
                parsed["top_k"] = int(num(part[3:-1], part))
            elif part in ("normal", "debug") and i == 0:
                pass
            elif part in SAMPLERS:
                parsed["sampler"] = part
            elif part in PRECISIONS:
                parsed["precision"] = part
            elif part == "compile":
                parsed["compile"] = True
            elif part.startswith("time"):
                parsed.update(speed_fields(num(part[4:], part), f"sample_type {sample_type!r}: {part}"))
            elif part.startswith("maskgit"):
                body, _, schedule = part[7:].partition(":")
                steps = num(body, part)
                if steps < 1 or steps != int(steps):
                    raise ValueError(f"sample_type {sample_type!r}: {part!r} needs a whole number of steps >= 1")
                if schedule and schedule not in MASK_SCHEDULES:
                    raise ValueError(f"sample_type {sample_type!r}: unknown mask schedule {schedule!r} in {part!r} "
                                     f"(expected one of {sorted(MASK_SCHEDULES)})")
                parsed["maskgit_steps"] = int(steps)
                parsed["maskgit_schedule"] = schedule or "cosine"
            elif part.startswith("fast"):
                parsed["skip_step"] = int(num(part[4:], part))
            elif part.startswith("q"):
                parsed["rerun_prob"] = num(part[1:], part)
            else:
                raise ValueError(
                    f"sample_type {sample_type!r}: unknown part {part!r} (expected 'top{{r}}r', 'top{{k}}p', "
                    "'time{s}', 'fast{k}', 'q{p}', 'maskgit{S}[:schedule]', a sampler name "
                    f"{sorted(SAMPLERS)}, a precision or 'compile')"
                )
        return cls(**{**parsed, **others})

    def to_sample_type(self, with_precision: bool = False) -> str:
        """The official ``sample_type`` string of these options (round-trips through :meth:`from_sample_type`;
        guidance, prior, generator and the other non-string options are not part of it). The precision is
        appended when it is not the default fp32, or always with ``with_precision`` (the form a sampling
        result reports, e.g. ``'top0.85r,fp32'``); ``compile`` when on."""
        if self.truncation_rate is not None:
            parts = [f"top{float(self.truncation_rate)!r}r"]
        elif self.top_k is not None:
            parts = [f"top{self.top_k}p"]
        else:
            parts = ["normal"]
        if self.time_ratio is not None:
            parts.append(f"time{self.time_ratio!r}")
        if self.skip_step:
            parts.append(f"fast{self.skip_step}")
        if self.rerun_prob:
            parts.append(f"q{self.rerun_prob!r}")
        if self.maskgit_steps is not None:
            schedule = "" if self.maskgit_schedule == "cosine" else f":{self.maskgit_schedule}"
            parts.append(f"maskgit{self.maskgit_steps}{schedule}")
        if self.sampler is not None:
            parts.append(self.sampler)
        if with_precision or self.precision != "fp32":
            parts.append(self.precision)
        if self.compile:
            parts.append("compile")
        return ",".join(parts)

    def __str__(self) -> str:
        return self.to_sample_type()

    # ------------------------------------------------------------------------------------------ decisions
    def for_device(self, device: torch.device | str) -> "SamplingOptions":
        """These options with ``precision`` resolved for ``device`` (``auto`` -> bf16 where the device runs it
        natively, else fp32: ``vqdiff.utils.precision.resolve_precision``); the choice and its reason are
        logged (logger ``vqdiff.sampling``). Other values come back unchanged."""
        if self.precision != "auto":
            return self
        chosen = resolve_precision(self.precision, device, "sampling option precision")
        logger.info("sampling precision auto -> %s on %s: %s", chosen.name, torch.device(device), chosen.reason)
        return self.replace(precision=chosen.name)

    def guidance_table(self, num_timesteps: int) -> list[float]:
        """The guidance scale at each step ``t = 0 .. T-1`` (range-checked by ``guidance_scales``)."""
        return guidance_scales(self.guidance_scale, num_timesteps)

    @property
    def num_parts(self) -> int:
        """How many conditions one image has: the number of ``prompt_parts``, else 1."""
        return 1 if self.prompt_parts is None else len(self.prompt_parts)

    @property
    def part_weights(self) -> Optional[tuple[float, ...]]:
        """The weights ``w_i`` of ``prompt_parts`` (None without parts)."""
        return None if self.prompt_parts is None else tuple(p.weight for p in self.prompt_parts)

    def is_guided(self, num_timesteps: int) -> bool:
        """Whether guidance is on: always with ``prompt_parts``, else when some step's scale differs from 1
        by ``GUIDANCE_OFF_TOLERANCE`` or more (then the network also sees the null condition). The one place
        this is decided."""
        if self.prompt_parts is not None:
            return True
        return any(abs(s - 1.0) >= GUIDANCE_OFF_TOLERANCE for s in self.guidance_table(num_timesteps))

    def improved_prior(self, seq_len: int, num_timesteps: int) -> tuple[int, int]:
        """``(prior_rule, prior_ps)`` the Improved sampler uses for N = ``seq_len`` tokens and T steps:
        ``time{s}`` (s < 1) reveals ``max(1, int(N // T * s))`` per call with rule 0 raised to 1 (the
        official ``int(1024 // T * s)`` for any N); ``prior_ps`` None is N."""
        if self.time_ratio is not None:
            return max(self.prior_rule, 1), max(1, int(seq_len // num_timesteps * self.time_ratio))
        return self.prior_rule, seq_len if self.prior_ps is None else self.prior_ps

    def sampler_kind(self, seq_len: int, num_timesteps: int, from_noised_tokens: bool = False) -> str:
        """The key of ``samplers.SAMPLERS`` that runs these options: ``sampler`` when given, else the row the
        other fields choose (see the module docstring)."""
        if self.sampler is not None:
            return self.sampler
        if self.maskgit_steps is not None:
            return "maskgit"
        if from_noised_tokens or self.skip_step > 0 or self.improved_prior(seq_len, num_timesteps)[0] == 0:
            return "ancestral"
        return "improved"


def speed_fields(speed: float, what: str = "infer_speed") -> dict:
    """The fields of the Improved speed ``s`` (``time{s}`` / the API's ``infer_speed``): s >= 2 skips
    ``int(s) - 1`` steps; s < 1 reveals s x the tokens per call (``time_ratio``); 1 <= s < 2 changes nothing."""
    if not speed > 0:
        raise ValueError(f"{what} must be > 0, got {speed!r}")
    if speed >= 2:
        return {"skip_step": int(speed) - 1}
    return {"time_ratio": speed} if speed < 1 else {}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
