"""A prompt made of weighted parts, for composable guidance (Liu et al., ECCV 2022, arXiv 2206.01714).

A part is a condition (a caption for text models, a class index for class models) and its weight ``w_i``;
:mod:`composable_guidance` combines the parts' conditionals with the null one. The written form is the one of
the Composable Diffusion demos: parts separated by ``' AND '`` (upper case, spaces around it), each with an
optional ``':weight'`` suffix, e.g. ``"a red shape:3 AND a circle at the top left:2"``; a part without a
suffix gets the caller's default weight. A negative weight pushes away from its part (the paper's NOT).
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any, Optional, Union

from .guidance import guidance_number

__all__ = ["MAX_PROMPT_PARTS", "PART_SEPARATOR", "PromptPart", "PromptPartsError", "format_prompt_parts",
           "composed_request", "has_prompt_parts", "parse_prompt_parts", "prompt_parts_from", "prompt_parts_of"]

PART_SEPARATOR = " AND "
"""What separates the parts of a written prompt (any run of white space around ``AND`` is accepted)."""
MAX_PROMPT_PARTS = 8
"""Most parts in one prompt: each part adds B rows to every network call."""

_SPLIT = re.compile(r"\s+AND\s+")
_WEIGHT = re.compile(r"^(?P<text>.*?)\s*:\s*(?P<weight>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$", re.S)

Condition = Union[str, int]


class PromptPartsError(ValueError):
    """A prompt's parts cannot be used; the message names the part (1-based) and what is wrong."""


@dataclass(frozen=True)
class PromptPart:
    """One part of a composed prompt.

    Attributes:
        condition: a non-blank caption (text models) or a class index >= 0 (class models).
        weight: its guidance weight ``w_i`` (finite; negative pushes away from the part).
    """

    condition: Condition
    weight: float = 1.0

    def __post_init__(self) -> None:
        c, w = self.condition, self.weight
        if isinstance(c, bool) or not isinstance(c, (str, numbers.Integral)):
            raise PromptPartsError(f"a prompt part's condition must be a caption (str) or a class index (int), "
                                   f"got {type(c).__name__} {c!r}")
        if isinstance(c, str) and not c.strip():
            raise PromptPartsError("a prompt part's caption is blank")
        if isinstance(c, numbers.Integral) and c < 0:
            raise PromptPartsError(f"a prompt part's class index must be >= 0, got {c!r}")
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w):
            raise PromptPartsError(f"the weight of prompt part {c!r} must be a finite number, got {w!r}")
        object.__setattr__(self, "condition", c.strip() if isinstance(c, str) else int(c))
        object.__setattr__(self, "weight", float(w))

    def __str__(self) -> str:
        short = f"{self.weight:g}"
        return f"{self.condition}:{short if float(short) == self.weight else repr(self.weight)}"


def has_prompt_parts(text: Any) -> bool:
    """Whether ``text`` is written as several parts (a str containing ``' AND '``)."""
    return isinstance(text, str) and _SPLIT.search(text.strip()) is not None


def parse_prompt_parts(text: str, default_weight: float = 1.0) -> tuple[PromptPart, ...]:
    """The parts of a written prompt: ``"a red shape:3 AND a circle"`` -> ``(PromptPart('a red shape', 3.0),
    PromptPart('a circle', default_weight))``. A trailing ``':number'`` is the part's weight (so a caption
    that ends in one, e.g. ``'16:9'``, needs an explicit weight after it: ``'16:9:1'``).

    Raises:
        PromptPartsError: the text is not a str, a part is blank, or there are more than ``MAX_PROMPT_PARTS``.
    """
    if not isinstance(text, str):
        raise PromptPartsError(f"a written prompt must be a str, got {type(text).__name__} {text!r}")
    pieces = _SPLIT.split(text.strip())
    if len(pieces) > MAX_PROMPT_PARTS:
        raise PromptPartsError(f"the prompt has {len(pieces)} parts; at most {MAX_PROMPT_PARTS}")
    parts = []
    for i, piece in enumerate(pieces, 1):
        match = _WEIGHT.match(piece)
        caption, weight = (match["text"], float(match["weight"])) if match else (piece, default_weight)
        if not caption.strip():
            raise PromptPartsError(f"part {i} of the prompt {text!r} is blank (write 'caption' or 'caption:weight')")
        try:
            parts.append(PromptPart(caption, weight))
        except PromptPartsError as err:
            raise PromptPartsError(f"part {i} of the prompt {text!r}: {err}") from None
    return tuple(parts)


def prompt_parts_from(value: Any, default_weight: float = 1.0) -> tuple[PromptPart, ...]:
    """``value`` as parts: a written prompt (:func:`parse_prompt_parts`), or a sequence whose items are
    ``PromptPart``, ``(condition, weight)`` pairs or bare conditions (weight ``default_weight``).

    Raises:
        PromptPartsError: no parts, more than ``MAX_PROMPT_PARTS``, or a bad item (named by its 1-based index).
    """
    if isinstance(value, str):
        return parse_prompt_parts(value, default_weight)
    if not isinstance(value, (list, tuple)):
        raise PromptPartsError(f"prompt parts must be a written prompt or a list of (condition, weight), "
                               f"got {type(value).__name__} {value!r}")
    if not value:
        raise PromptPartsError("prompt parts are empty: give at least one (condition, weight)")
    if len(value) > MAX_PROMPT_PARTS:
        raise PromptPartsError(f"{len(value)} prompt parts; at most {MAX_PROMPT_PARTS}")
    parts = []
    for i, item in enumerate(value, 1):
        try:
            if isinstance(item, PromptPart):
                parts.append(item)
            elif isinstance(item, (list, tuple)):
                if len(item) != 2:
                    raise PromptPartsError(f"expected (condition, weight), got {item!r}")
                parts.append(PromptPart(item[0], item[1]))
            else:
                parts.append(PromptPart(item, default_weight))
        except PromptPartsError as err:
            raise PromptPartsError(f"prompt part {i}: {err}") from None
    return tuple(parts)


def prompt_parts_of(condition: Any, default_weight: float = 1.0) -> Optional[tuple[PromptPart, ...]]:
    """The parts of a caller's condition when it is composed, else None: a str written with ``' AND '``
    (a plain caption, even one with a ``':number'`` ending, is not parsed) or a list / tuple of parts
    (:func:`prompt_parts_from`); an int label or a plain caption gives None."""
    if has_prompt_parts(condition) or isinstance(condition, (list, tuple)):
        return prompt_parts_from(condition, default_weight)
    return None


def format_prompt_parts(parts: tuple[PromptPart, ...]) -> str:
    """The written form of ``parts`` (``'a red shape:3 AND a circle:2'``); parses back to the same parts."""
    return PART_SEPARATOR.join(str(p) for p in parts)


def composed_request(condition: Any, options: Any) -> tuple[Any, Any]:
    """``(condition, options)`` (a ``SamplingOptions``) with a composed prompt moved into
    ``options.prompt_parts`` (then the condition is None): a caption written with parts (``"a red shape:3 AND
    a circle"``) or a list of ``(condition, weight)`` pairs / conditions. Parts written without a weight take
    ``options.guidance_scale`` (a number), which is then reset to 1 (the parts carry the weights). Other
    conditions come back unchanged. Used by the notebook API, the CLI and the web page."""
    if options.prompt_parts is not None:
        if condition is not None:
            raise TypeError("give the prompt as the condition or as options.prompt_parts, not both")
        return None, options
    default = guidance_number(options.guidance_scale)
    parts = prompt_parts_of(condition, 1.0 if default is None else default)
    if parts is None:
        return condition, options
    if default is None:
        raise ValueError(f"guidance_scale must be a number when the prompt has parts (it is the weight of the "
                         f"parts written without one), got {options.guidance_scale!r}")
    return None, options.replace(guidance_scale=1.0, prompt_parts=parts)
