"""The ``solver:`` section of a training config, parsed once into frozen dataclasses.

Every key the official ``image_synthesis.engine.solver.Solver`` reads is accepted in every form it accepts
(``save_epochs``/``validation_epochs`` as an int or a list of epoch numbers, a scheduler
``step_iteration: epoch``, ``sample_iterations: epoch``), plus vqdiff's additions (``max_iterations``,
``grad_accumulation_steps``, ``max_nonfinite_steps``, ``amp_dtype``, ``lora``). An unknown key (a typo such as
``max_iteratons``) or a value of the wrong type is a :class:`ConfigError` that names the key path
(``solver.optimizers_and_schedulers.0.scheduler.step_iteration``) and, for typos, the closest known key.

``ema`` is parsed into the typed ``EMAConfig`` (``vqdiff.utils.config_sections``: the official flat form
or target/params); ``clip_grad_norm`` is kept as a mapping for ``instantiate_from_config`` (which checks
its ``params`` against the class signature).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from vqdiff.engine.amp import AMP_DTYPE_NAMES
from vqdiff.engine.lora_config import LoraConfig, parse_lora_config
from vqdiff.utils.config import ConfigError
from vqdiff.utils.config_sections import EMAConfig, parse_ema_config

__all__ = ["SolverConfig", "OptimizerConfig", "SchedulerConfig", "OptimizerAndSchedulerConfig",
           "parse_solver_config", "check_known_keys"]

EpochRule = Union[int, tuple]  # every N epochs (N <= 0: never), or the listed epoch numbers (1-based)


def check_known_keys(section: Mapping, known: tuple, key_path: str) -> None:
    """Refuse keys of ``section`` not in ``known``, naming the full key path and the closest known key."""
    for key in section:
        if key not in known:
            close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
            hint = f"; did you mean '{key_path}.{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
            raise ConfigError(f"unknown key '{key_path}.{key}'{hint}")


def _mapping(value: Any, key_path: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ConfigError(f"'{key_path}' must be a mapping, got {type(value).__name__} {value!r}")
    return value


def _int(value: Any, key_path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ConfigError(f"'{key_path}' must be an integer, got {value!r}")
    return int(value)


def _float(value: Any, key_path: str) -> float:
    """A number; a numeric string too (YAML 1.1 reads ``3e-6``, without a dot, as a string)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"'{key_path}' must be a number, got {value!r}")
    return float(value)


def _int_or_epoch(value: Any, key_path: str) -> Union[int, str]:
    """An iteration count, or the word ``epoch`` (once per epoch; official)."""
    if value == "epoch":
        return "epoch"
    try:
        return _int(value, key_path)
    except ConfigError:
        raise ConfigError(f"'{key_path}' must be an integer or 'epoch', got {value!r}") from None


def _epoch_rule(value: Any, key_path: str) -> EpochRule:
    """``save_epochs``/``validation_epochs``: an int N (every N epochs) or a list of epoch numbers."""
    if value is None:
        return -1
    if isinstance(value, (list, tuple)):
        return tuple(_int(v, f"{key_path}.{i}") for i, v in enumerate(value))
    try:
        return _int(value, key_path)
    except ConfigError:
        raise ConfigError(f"'{key_path}' must be an integer or a list of epoch numbers, got {value!r}") from None


def epoch_rule_due(rule: EpochRule, finished_epochs: int) -> bool:
    """Whether an epoch rule fires after ``finished_epochs`` epochs (official: ``(last_epoch + 1) % N == 0``,
    or ``last_epoch + 1 in list``)."""
    if isinstance(rule, tuple):
        return finished_epochs in rule
    return rule > 0 and finished_epochs % rule == 0


def _target(section: Mapping, key_path: str, default: Optional[str] = None) -> str:
    target = section.get("target", default)
    if not isinstance(target, str) or not target:
        raise ConfigError(f"'{key_path}.target' must be a dotted class path, got {target!r}")
    return target


def _params(section: Mapping, key_path: str) -> dict:
    params = section.get("params")
    return dict(_mapping(params, f"{key_path}.params")) if params is not None else {}


@dataclass(frozen=True)
class OptimizerConfig:
    """``optimizers_and_schedulers[i].optimizer``; the official default target is ``torch.optim.SGD``."""

    target: str = "torch.optim.SGD"
    params: dict = field(default_factory=dict)
    step_iteration: int = 1

    @classmethod
    def parse(cls, section: Any, key_path: str) -> "OptimizerConfig":
        section = _mapping(section, key_path)
        check_known_keys(section, ("target", "params", "step_iteration"), key_path)
        return cls(target=_target(section, key_path, cls.target), params=_params(section, key_path),
                   step_iteration=_int(section.get("step_iteration", 1), f"{key_path}.step_iteration"))


@dataclass(frozen=True)
class SchedulerConfig:
    """``optimizers_and_schedulers[i].scheduler``; ``step_iteration`` may be ``'epoch'`` (official)."""

    target: str
    params: dict = field(default_factory=dict)
    step_iteration: Union[int, str] = 1

    @classmethod
    def parse(cls, section: Any, key_path: str) -> "SchedulerConfig":
        section = _mapping(section, key_path)
        check_known_keys(section, ("target", "params", "step_iteration"), key_path)
        return cls(target=_target(section, key_path), params=_params(section, key_path),
                   step_iteration=_int_or_epoch(section.get("step_iteration", 1), f"{key_path}.step_iteration"))

    def step_every(self, train_iterations: int) -> int:
        """Iterations between two scheduler steps (``'epoch'`` = the iterations of one epoch)."""
        return int(train_iterations) if self.step_iteration == "epoch" else int(self.step_iteration)


@dataclass(frozen=True)
class OptimizerAndSchedulerConfig:
    """One entry of ``solver.optimizers_and_schedulers`` (active within the epoch/iteration window)."""

    name: str = "none"
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: Optional[SchedulerConfig] = None
    start_epoch: int = 0
    end_epoch: int = -1
    start_iteration: int = 0
    end_iteration: int = -1

    @classmethod
    def parse(cls, section: Any, key_path: str) -> "OptimizerAndSchedulerConfig":
        section = _mapping(section, key_path)
        check_known_keys(section, ("name", "optimizer", "scheduler", "start_epoch", "end_epoch",
                                   "start_iteration", "end_iteration"), key_path)
        name = section.get("name", "none")
        if not isinstance(name, str):
            raise ConfigError(f"'{key_path}.name' must be a string, got {name!r}")
        sched = section.get("scheduler")
        windows = {k: _int(section.get(k, d), f"{key_path}.{k}") for k, d in
                   (("start_epoch", 0), ("end_epoch", -1), ("start_iteration", 0), ("end_iteration", -1))}
        return cls(name=name, optimizer=OptimizerConfig.parse(section.get("optimizer", {}), f"{key_path}.optimizer"),
                   scheduler=SchedulerConfig.parse(sched, f"{key_path}.scheduler") if sched is not None else None,
                   **windows)


_ADJUST_LR = ("none", "sqrt", "linear")
# official keys that change nothing here (the official solver reads ``debug`` for its debug loader only;
# ``print_specific_things`` is read by no official code)
_IGNORED_OFFICIAL_KEYS = ("debug", "print_specific_things")


@dataclass(frozen=True)
class SolverConfig:
    """The typed ``solver:`` section; defaults are the official solver's (``adjust_lr: sqrt``,
    ``validation_epochs: 2``, ``sample_iterations: epoch``), ``amp_dtype: fp16`` as the official ``--amp``.

    Args:
        base_lr: learning rate before ``adjust_lr`` (none | sqrt | linear x world size x batch size).
        max_epochs: epochs to run; ``max_iterations`` (> 0) stops the run earlier.
        save_epochs / validation_epochs: every N epochs (N <= 0: never) or a list of epoch numbers.
        save_iterations: also save ``{epoch}e_{iter}iter.pth`` when ``(iter + 1) % N == 0`` at an epoch end.
        sample_iterations: iterations between sample grids, or ``'epoch'``; <= 0: never.
        grad_accumulation_steps: micro-batches per optimizer step (1 = official).
        max_nonfinite_steps: stop after this many skipped non-finite steps in a row (<= 0: never stop).
        amp_dtype: the autocast dtype under ``--amp`` when the flag names none: fp16 (with a GradScaler), bf16
            (also on the CPU) or auto (bf16 where the device runs it natively; ``vqdiff.engine.amp``).
        ema: the typed EMA section (None when absent); clip_grad_norm: the sub-section as given (None when absent).
        lora: the typed LoRA section (``lora_config``; None: every trainable weight trains, as official).
    """

    base_lr: float
    max_epochs: int
    optimizers_and_schedulers: tuple
    adjust_lr: str = "sqrt"
    save_epochs: EpochRule = -1
    save_iterations: int = -1
    validation_epochs: EpochRule = 2
    sample_iterations: Union[int, str] = "epoch"
    max_iterations: Optional[int] = None
    grad_accumulation_steps: int = 1
    max_nonfinite_steps: int = 10
    amp_dtype: str = "fp16"
    ema: Optional[EMAConfig] = None
    clip_grad_norm: Optional[Mapping] = None
    lora: Optional[LoraConfig] = None

    def total_iterations(self, train_iterations: int) -> int:
        """Iterations the run will make: ``max_epochs x train_iterations``, or fewer with ``max_iterations``."""
        total = self.max_epochs * int(train_iterations)
        return min(total, self.max_iterations) if self.max_iterations is not None else total

    def sample_every(self, train_iterations: int) -> int:
        return int(train_iterations) if self.sample_iterations == "epoch" else int(self.sample_iterations)


_KNOWN_KEYS = tuple(f for f in SolverConfig.__dataclass_fields__) + _IGNORED_OFFICIAL_KEYS


def parse_solver_config(section: Any, key_path: str = "solver") -> SolverConfig:
    """Check ``section`` (the config's ``solver:`` mapping) key by key and return a :class:`SolverConfig`."""
    if section is None:
        raise ConfigError(f"config has no '{key_path}' section")
    section = _mapping(section, key_path)
    check_known_keys(section, _KNOWN_KEYS, key_path)
    for key in ("base_lr", "max_epochs", "optimizers_and_schedulers"):
        if key not in section:
            raise ConfigError(f"'{key_path}.{key}' is required")

    def kp(key: str) -> str:
        return f"{key_path}.{key}"

    entries = section["optimizers_and_schedulers"]
    if not isinstance(entries, (list, tuple)) or not entries:
        raise ConfigError(f"'{kp('optimizers_and_schedulers')}' must be a non-empty list, got {entries!r}")
    ops = tuple(OptimizerAndSchedulerConfig.parse(e, f"{kp('optimizers_and_schedulers')}.{i}")
                for i, e in enumerate(entries))
    names = [o.name for o in ops]
    if len(set(names)) != len(names):
        raise ConfigError(f"'{kp('optimizers_and_schedulers')}' names must differ, got {names}")

    adjust = section.get("adjust_lr", "sqrt")
    if adjust not in _ADJUST_LR:
        raise ConfigError(f"'{kp('adjust_lr')}' must be one of {', '.join(_ADJUST_LR)}, got {adjust!r}")
    amp_dtype = section.get("amp_dtype", "fp16")
    if amp_dtype not in AMP_DTYPE_NAMES:
        raise ConfigError(f"'{kp('amp_dtype')}' must be 'fp16', 'bf16' or 'auto', got {amp_dtype!r}")
    max_iterations = section.get("max_iterations")
    max_iterations = None if max_iterations is None else _int(max_iterations, kp("max_iterations"))
    accum = _int(section.get("grad_accumulation_steps", 1), kp("grad_accumulation_steps"))
    if accum < 1:
        raise ConfigError(f"'{kp('grad_accumulation_steps')}' must be >= 1, got {accum}")
    if accum > 1:
        for i, o in enumerate(ops):
            if o.optimizer.step_iteration != 1:
                raise ConfigError(f"'{kp('optimizers_and_schedulers')}.{i}.optimizer.step_iteration' must be 1 "
                                  f"with grad_accumulation_steps > 1")
    max_epochs = _int(section["max_epochs"], kp("max_epochs"))
    if max_epochs < 1:
        raise ConfigError(f"'{kp('max_epochs')}' must be >= 1, got {max_epochs}")
    ema = section.get("ema")
    clip_grad_norm = section.get("clip_grad_norm")
    if clip_grad_norm is not None:
        _mapping(clip_grad_norm, kp("clip_grad_norm"))
    return SolverConfig(
        base_lr=_float(section["base_lr"], kp("base_lr")),
        max_epochs=max_epochs,
        optimizers_and_schedulers=ops,
        adjust_lr=adjust,
        save_epochs=_epoch_rule(section.get("save_epochs", -1), kp("save_epochs")),
        save_iterations=_int(section.get("save_iterations", -1) or -1, kp("save_iterations")),
        validation_epochs=_epoch_rule(section.get("validation_epochs", 2), kp("validation_epochs")),
        sample_iterations=_int_or_epoch(section.get("sample_iterations", "epoch") or -1, kp("sample_iterations")),
        max_iterations=max_iterations if max_iterations is not None and max_iterations > 0 else None,
        grad_accumulation_steps=accum,
        max_nonfinite_steps=_int(section.get("max_nonfinite_steps", 10), kp("max_nonfinite_steps")),
        amp_dtype=amp_dtype,
        ema=parse_ema_config(ema, kp("ema")) if ema is not None else None,
        clip_grad_norm=clip_grad_norm,
        lora=parse_lora_config(section["lora"], kp("lora")) if section.get("lora") is not None else None,
    )
