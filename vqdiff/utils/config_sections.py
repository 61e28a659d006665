"""Typed config sections: a frozen dataclass declares a section's keys, and one function parses a YAML mapping
into it. The sections outside ``model`` (``dataloader``, ``solver`` and its ``ema``/``lora``/optimizer entries,
the masked-ELBO options) are written this way.

A section inherits :class:`ConfigSection`; each key is a field with one default and one check (:func:`setting`),
and a key with several accepted forms has its own parser::

    @dataclass(frozen=True)
    class WarmupConfig(ConfigSection):
        KEY_PATH = "solver.warmup"      # named by errors when the class is built directly
        steps: int = setting(0, check=lambda v: v >= 0, must=">= 0")
        lr: float = setting(1e-4, check=lambda v: v > 0, must="> 0")

    cfg = parse_section(config["solver"]["warmup"], WarmupConfig, "solver.warmup")

:func:`parse_section` (the one parser):

- refuses a key the class does not declare: ``unknown key 'solver.warmup.stpes'; did you mean
  'solver.warmup.steps'? (known keys: steps, lr)`` (``IGNORED_KEYS`` are accepted and dropped);
- requires the keys without a default: ``'solver.warmup.steps' is required``;
- converts each value by its annotation: ``int``, ``float``, ``str``, ``bool``, ``list``/``tuple`` (with their
  item types: ``tuple[float, float]``, ``list[int]``), ``dict``, ``Optional[...]`` and a nested section (a
  mapping, parsed recursively under its key path). YAML 1.1 reads
  ``1e-4`` (no dot) as a string: number strings become numbers here, once, for int and float keys;
- runs each key's check: ``'solver.warmup.lr' must be > 0, got 0.0``, then the section's
  :meth:`ConfigSection.check_together` for rules across keys.

Every error is a :class:`ConfigError` whose message names the dotted key path. Building the class directly
(``WarmupConfig(steps=-1)``) runs the same conversions and checks under ``KEY_PATH``. Annotations are resolved
with ``typing.get_type_hints``, so a section class must live at module level.

The sections defined here: the top-level section names, ``dataloader`` and ``solver.ema``. ``model`` nodes are
checked against their classes' signatures by ``instantiate_from_config``; the ``solver`` keys themselves are in
``vqdiff.engine.solver_config``, ``solver.lora`` in ``vqdiff.adapters.config``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import math
import typing
from typing import Any, Callable, ClassVar, Iterable, Mapping, Optional

from vqdiff.utils.config import ConfigError

__all__ = ["ConfigSection", "setting", "parse_section", "parse_value", "check_known_keys", "as_int", "as_float",
           "DataloaderConfig", "EMAConfig", "TOP_LEVEL_SECTIONS", "check_config_sections", "parse_ema_config"]

TOP_LEVEL_SECTIONS = ("model", "solver", "dataloader")
_RULE = "vqdiff.config_section"  # the key of a field's metadata that holds its _Rule


@dataclasses.dataclass(frozen=True)
class _Rule:
    check: Optional[Callable[[Any], bool]] = None
    must: str = ""
    parse: Optional[Callable[[Any, str], Any]] = None


def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
            check: Optional[Callable[[Any], bool]] = None, must: str = "",
            parse: Optional[Callable[[Any, str], Any]] = None) -> Any:
    """One key of a section: its default, its check and, for a key with several forms, its own parser.

    Args:
        default / default_factory: as for ``dataclasses.field`` (neither: the key is required).
        check: a predicate on the converted value (not called for None); False, or a TypeError/ValueError
            inside it, raises ``'<key path>' must be <must>, got <value>``.
        must: the words after "must be" in that message; required with ``check``.
        parse: ``parse(raw_value, key_path) -> value`` instead of the conversion by annotation; it must accept
            the values it returns (building the class converts once more) and raise ConfigError itself.
    """
    if check is not None and not must:
        raise TypeError("setting(check=...) needs the 'must' words of its error message")
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={_RULE: _Rule(check, must, parse)})


class ConfigSection:
    """Base of a typed section (a frozen dataclass whose fields are :func:`setting` keys).

    ``KEY_PATH`` is the path errors name when the class is built directly; ``IGNORED_KEYS`` are keys accepted
    in YAML and dropped (official keys that change nothing here).
    """

    KEY_PATH: ClassVar[str] = "<section>"
    IGNORED_KEYS: ClassVar[tuple] = ()

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values = _convert_and_check(type(self), values, self.KEY_PATH)
        type(self).check_together(values, self.KEY_PATH)
        for name, value in values.items():
            object.__setattr__(self, name, value)  # the converted value (frozen dataclass)

    @classmethod
    def check_together(cls, values: Mapping[str, Any], key_path: str) -> None:
        """Rules that involve several keys (``values``: every key, converted); raise ConfigError. None here."""


_TYPE_WORDS = {str: "a string", bool: "true or false"}


def _wrong(value: Any, words: str, key_path: str) -> ConfigError:
    return ConfigError(f"'{key_path}' must be {words}, got {type(value).__name__} {value!r}")


def _number(value: Any) -> Optional[float]:
    """``value`` as a finite int or float (a number string converted), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def as_int(value: Any, key_path: str) -> int:
    """An integer (a whole float or a number string such as ``"1e3"`` too), or ConfigError naming ``key_path``."""
    number = _number(value)
    if number is None or int(number) != number:
        raise _wrong(value, "an integer", key_path)
    return int(number)


def as_float(value: Any, key_path: str) -> float:
    """A finite number (a number string such as ``"1e-4"`` too), or ConfigError naming ``key_path``."""
    number = _number(value)
    if number is None:
        raise _wrong(value, "a number", key_path)
    return float(number)


def parse_value(value: Any, annotation: Any, key_path: str) -> Any:
    """``value`` converted to ``annotation`` (see the module doc), or ConfigError naming ``key_path``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        args = typing.get_args(annotation)
        kinds = [a for a in args if a is not type(None)]
        if value is None and len(kinds) < len(args):
            return None
        return parse_value(value, kinds[0], key_path) if len(kinds) == 1 else value  # a real union: own parse
    if isinstance(annotation, type) and issubclass(annotation, ConfigSection):
        return value if isinstance(value, annotation) else parse_section(value, annotation, key_path)
    if annotation is int:
        return as_int(value, key_path)
    if annotation is float:
        return as_float(value, key_path)
    if annotation in (str, bool):
        if not isinstance(value, annotation):
            raise _wrong(value, _TYPE_WORDS[annotation], key_path)
        return value
    if annotation in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _wrong(value, "a list", key_path)
        items = typing.get_args(annotation)  # list[X], tuple[X, ...]: each item an X; tuple[X, Y]: exactly two
        if items and items[-1] is not Ellipsis and origin is tuple and len(items) != len(value):
            raise _wrong(value, f"a list of {len(items)} items", key_path)
        if items:
            kinds = items[:1] * len(value) if (origin is list or items[-1] is Ellipsis) else items
            value = [parse_value(v, kind, f"{key_path}.{i}") for i, (v, kind) in enumerate(zip(value, kinds))]
        return list(value) if list in (annotation, origin) else tuple(value)
    if annotation in (dict, collections.abc.Mapping) or origin in (dict, collections.abc.Mapping):
        if not isinstance(value, Mapping):
            raise _wrong(value, "a mapping", key_path)
        return dict(value)
    return value


def _passes(check: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(check(value))
    except (TypeError, ValueError):
        return False


def _convert_and_check(cls: type, values: Mapping[str, Any], key_path: str) -> dict:
    """Each of ``values`` (a subset of the fields of ``cls``) converted and checked, in field order."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        rule = f.metadata.get(_RULE, _Rule())
        path = f"{key_path}.{f.name}"
        value = rule.parse(values[f.name], path) if rule.parse else parse_value(values[f.name], hints[f.name], path)
        if rule.check is not None and value is not None and not _passes(rule.check, value):
            raise ConfigError(f"'{path}' must be {rule.must}, got {value!r}")
        out[f.name] = value
    return out


def check_known_keys(section: Mapping, known: Iterable[str], key_path: str, accepted: Iterable[str] = ()) -> None:
    """Refuse a key of ``section`` that is not in ``known`` (nor in ``accepted``), naming its full key path,
    the closest known key and every known key."""
    known = [str(k) for k in known]
    allowed = set(known) | set(accepted)
    for key in section:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean '{key_path}.{close[0]}'?" if close else ""
            raise ConfigError(f"unknown key '{key_path}.{key}'{hint} (known keys: {', '.join(known)})")


def parse_section(node: Any, cls: type, key_path: str) -> Any:
    """The mapping ``node`` (the YAML at ``key_path``) as the section ``cls`` (a :class:`ConfigSection`).

    Unknown keys, missing required keys, values of the wrong type and failed checks raise
    :class:`ConfigError` naming ``key_path.<key>``; see the module doc for the conversions.

    To move a hand-parsed section onto it (the codec trainer's ``CodecSolverConfig.from_mapping`` is the one
    left): make the class a frozen dataclass inheriting :class:`ConfigSection`, give it ``KEY_PATH``, declare
    each key as ``name: type = setting(default, check=..., must="...")`` (``betas: tuple[float, float]`` gets its
    items converted), and replace the parser's body by ``parse_section(section or {}, cls, key_path)``.
    """
    if not isinstance(node, Mapping):
        raise ConfigError(f"'{key_path}' must be a mapping, got {type(node).__name__} {node!r}")
    fields = dataclasses.fields(cls)
    check_known_keys(node, [f.name for f in fields], key_path, accepted=cls.IGNORED_KEYS)
    for f in fields:
        if f.name not in node and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"'{key_path}.{f.name}' is required")
    values = _convert_and_check(cls, {k: v for k, v in node.items() if k not in cls.IGNORED_KEYS}, key_path)
    cls.check_together({f.name: values[f.name] if f.name in values else _default(f) for f in fields}, key_path)
    return cls(**values)


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


# --------------------------------------------------------------------------------------------------
# The sections that belong to no one module: dataloader and solver.ema
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DataloaderConfig(ConfigSection):
    """``dataloader:`` (official keys; see ``vqdiff.data.build.build_dataloader``)."""

    KEY_PATH = "dataloader"

    # required by build_dataloader, not by every user of the section
    batch_size: Optional[int] = setting(None, check=lambda v: v > 0, must="positive")
    train_datasets: Optional[list] = None
    num_workers: int = setting(0, check=lambda v: v >= 0, must=">= 0")
    data_root: Optional[str] = None
    validation_datasets: Optional[list] = None


@dataclasses.dataclass(frozen=True)
class EMAConfig(ConfigSection):
    """``solver.ema:``: ``ema <- decay * ema + (1 - decay) * weights`` every ``update_interval`` iterations.

    Two forms (:func:`parse_ema_config`): the official ``{decay, update_interval}`` (``target`` optional)
    and the target/params form ``{target, params: {decay, update_interval, device}}``; ``target`` is built
    as ``target(model, decay=, update_interval=, device=)`` (``vqdiff.engine.ema.build_ema``).
    """

    KEY_PATH = "solver.ema"

    target: str = "vqdiff.engine.ema.EMA"
    decay: float = setting(0.99, check=lambda v: 0.0 <= v <= 1.0, must="in [0, 1]")
    update_interval: int = setting(1, check=lambda v: v >= 1, must=">= 1")
    device: str = "cpu"


def parse_ema_config(node: Any, key_path: str = "solver.ema") -> EMAConfig:
    """The ``solver.ema`` section in either form as an :class:`EMAConfig` (errors name the key path)."""
    if isinstance(node, Mapping) and "params" in node:
        others = [k for k in node if k not in ("target", "params")]
        if others:
            raise ConfigError(f"'{key_path}.{others[0]}' cannot sit beside '{key_path}.params': "
                              f"put it under '{key_path}.params'")
        params = node["params"] if node["params"] is not None else {}
        if not isinstance(params, Mapping) or "target" in params:
            raise ConfigError(f"'{key_path}.params' must be a mapping of EMA options (decay, update_interval, "
                              f"device), got {params!r}")
        merged = dict(params, **({"target": node["target"]} if "target" in node else {}))
        return parse_section(merged, EMAConfig, key_path)
    return parse_section(node, EMAConfig, key_path)


def check_config_sections(config: Mapping) -> None:
    """Check the top-level section names, ``dataloader`` and ``solver.ema`` of a whole training config."""
    for key in config:
        if key not in TOP_LEVEL_SECTIONS:
            close = difflib.get_close_matches(str(key), TOP_LEVEL_SECTIONS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"'{key}' is not a known config section{hint} (accepted: {', '.join(TOP_LEVEL_SECTIONS)})")
    if "dataloader" in config:
        parse_section(config["dataloader"], DataloaderConfig, "dataloader")
    solver = config.get("solver")
    if isinstance(solver, Mapping) and solver.get("ema") is not None:
        parse_ema_config(solver["ema"])
