"""What the config sections outside ``model`` accept: typed dataclasses, and a check that refuses unknown
keys (with the closest accepted name) and values of the wrong type, naming the dotted key path.

``model`` nodes are checked against their classes' signatures by ``instantiate_from_config``; the
``solver`` keys themselves belong to the solver's own typed config; here: the top-level section names,
``dataloader`` and ``solver.ema``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from typing import Any, Mapping, Optional

from vqdiff.utils.config import ConfigError

__all__ = ["DataloaderConfig", "EMAConfig", "TOP_LEVEL_SECTIONS", "check_section", "check_config_sections",
           "parse_ema_config"]

TOP_LEVEL_SECTIONS = ("model", "solver", "dataloader")


@dataclasses.dataclass
class DataloaderConfig:
    """``dataloader:`` (official keys; see ``vqdiff.data.build.build_dataloader``)."""

    batch_size: Optional[int] = None  # required by build_dataloader, not by every user of the section
    train_datasets: Optional[list] = None
    num_workers: int = 0
    data_root: Optional[str] = None
    validation_datasets: Optional[list] = None

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size <= 0:
            raise ConfigError(f"'dataloader.batch_size' must be positive, got {self.batch_size}")
        if self.num_workers < 0:
            raise ConfigError(f"'dataloader.num_workers' must be >= 0, got {self.num_workers}")


@dataclasses.dataclass
class EMAConfig:
    """``solver.ema:``: ``ema <- decay * ema + (1 - decay) * weights`` every ``update_interval`` iterations.

    Two forms (:func:`parse_ema_config`): the official ``{decay, update_interval}`` (``target`` optional)
    and the target/params form ``{target, params: {decay, update_interval, device}}``; ``target`` is built
    as ``target(model, decay=, update_interval=, device=)`` (``vqdiff.engine.ema.build_ema``).
    """

    target: str = "vqdiff.engine.ema.EMA"
    decay: float = 0.99
    update_interval: int = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay <= 1.0:
            raise ConfigError(f"'solver.ema.decay' must be in [0, 1], got {self.decay}")
        if self.update_interval < 1:
            raise ConfigError(f"'solver.ema.update_interval' must be >= 1, got {self.update_interval}")


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", list: "a list", bool: "true or false"}


def _coerce(value: Any, annotation: Any, key_path: str) -> Any:
    """``value`` as the annotated type, or ConfigError naming ``key_path``, the expected and the given type."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union:  # Optional[X]
        if value is None:
            return None
        annotation = next(a for a in args if a is not type(None))
    expected = _TYPE_WORDS.get(annotation, getattr(annotation, "__name__", str(annotation)))
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        str: isinstance(value, str),
        list: isinstance(value, (list, tuple)),
        bool: isinstance(value, bool),
    }.get(annotation, True)
    if not ok:
        raise ConfigError(f"'{key_path}' must be {expected}, got {type(value).__name__} {value!r}")
    if annotation is float:
        return float(value)
    if annotation is list:
        return list(value)
    return value


def check_section(node: Any, cls: type, key_path: str) -> Any:
    """Build dataclass ``cls`` from mapping ``node``: unknown keys, missing required keys and wrong types
    raise :class:`ConfigError` naming ``key_path.<key>`` (and the closest accepted key for a typo)."""
    if not isinstance(node, Mapping):
        raise ConfigError(f"'{key_path}' must be a mapping, got {type(node).__name__} {node!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in node:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"'{key_path}.{key}' is not a known key{hint} (accepted: {', '.join(fields)})")
    missing = [n for n, f in fields.items() if n not in node and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"'{key_path}.{missing[0]}' is required")
    values = {k: _coerce(v, hints[k], f"{key_path}.{k}") for k, v in node.items()}
    return cls(**values)


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
        return check_section(merged, EMAConfig, key_path)
    return check_section(node, EMAConfig, key_path)


def check_config_sections(config: Mapping) -> None:
    """Check the top-level section names, ``dataloader`` and ``solver.ema`` of a whole training config."""
    for key in config:
        if key not in TOP_LEVEL_SECTIONS:
            close = difflib.get_close_matches(str(key), TOP_LEVEL_SECTIONS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"'{key}' is not a known config section{hint} (accepted: {', '.join(TOP_LEVEL_SECTIONS)})")
    if "dataloader" in config:
        check_section(config["dataloader"], DataloaderConfig, "dataloader")
    solver = config.get("solver")
    if isinstance(solver, Mapping) and solver.get("ema") is not None:
        parse_ema_config(solver["ema"])
