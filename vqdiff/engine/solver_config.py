"""The ``solver:`` section of a training config, parsed once into frozen dataclasses.

Every key the official ``image_synthesis.engine.solver.Solver`` reads is accepted in every form it accepts
(``save_epochs``/``validation_epochs`` as an int or a list of epoch numbers, a scheduler
``step_iteration: epoch``, ``sample_iterations: epoch``), plus vqdiff's additions (``max_iterations``,
``grad_accumulation_steps``, ``max_nonfinite_steps``, ``amp_dtype``, ``lora``). An unknown key (a typo such as
``max_iteratons``) or a value of the wrong type is a :class:`ConfigError` that names the key path
(``solver.optimizers_and_schedulers.0.scheduler.step_iteration``) and, for typos, the closest and every known
key: each section is a ``ConfigSection`` parsed by ``vqdiff.utils.config_sections.parse_section``.

``ema`` is parsed into the typed ``EMAConfig`` (``vqdiff.utils.config_sections``: the official flat form
or target/params); ``clip_grad_norm`` is kept as a mapping for ``instantiate_from_config`` (which checks
its ``params`` against the class signature).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

from vqdiff.engine.amp import AMP_DTYPE_NAMES
from vqdiff.adapters.config import LoraConfig
from vqdiff.utils.config import ConfigError
from vqdiff.utils.config_sections import (ConfigSection, EMAConfig, as_int, parse_ema_config, parse_section,
                                          parse_value, setting)

__all__ = ["SolverConfig", "OptimizerConfig", "SchedulerConfig", "OptimizerAndSchedulerConfig",
           "parse_solver_config", "epoch_rule_due"]

EpochRule = Union[int, tuple]  # every N epochs (N <= 0: never), or the listed epoch numbers (1-based)


def _int_or_epoch(value: Any, key_path: str) -> Union[int, str]:
    """An iteration count, or the word ``epoch`` (once per epoch; official)."""
    if value == "epoch":
        return "epoch"
    try:
        return as_int(value, key_path)
    except ConfigError:
        raise ConfigError(f"'{key_path}' must be an integer or 'epoch', got {value!r}") from None


def _epoch_rule(value: Any, key_path: str) -> EpochRule:
    """``save_epochs``/``validation_epochs``: an int N (every N epochs) or a list of epoch numbers."""
    if value is None:
        return -1
    if isinstance(value, (list, tuple)):
        return tuple(as_int(v, f"{key_path}.{i}") for i, v in enumerate(value))
    try:
        return as_int(value, key_path)
    except ConfigError:
        raise ConfigError(f"'{key_path}' must be an integer or a list of epoch numbers, got {value!r}") from None


def epoch_rule_due(rule: EpochRule, finished_epochs: int) -> bool:
    """Whether an epoch rule fires after ``finished_epochs`` epochs (official: ``(last_epoch + 1) % N == 0``,
    or ``last_epoch + 1 in list``)."""
    if isinstance(rule, tuple):
        return finished_epochs in rule
    return rule > 0 and finished_epochs % rule == 0


@dataclass(frozen=True)
class OptimizerConfig(ConfigSection):
    """``optimizers_and_schedulers[i].optimizer``; the official default target is ``torch.optim.SGD``."""

    KEY_PATH = "solver.optimizers_and_schedulers.<i>.optimizer"

    target: str = setting("torch.optim.SGD", check=bool, must="a dotted class path")
    params: dict = setting(default_factory=dict)
    step_iteration: int = 1


@dataclass(frozen=True)
class SchedulerConfig(ConfigSection):
    """``optimizers_and_schedulers[i].scheduler``; ``step_iteration`` may be ``'epoch'`` (official)."""

    KEY_PATH = "solver.optimizers_and_schedulers.<i>.scheduler"

    target: str = setting(check=bool, must="a dotted class path")
    params: dict = setting(default_factory=dict)
    step_iteration: Union[int, str] = setting(1, parse=_int_or_epoch)

    def step_every(self, train_iterations: int) -> int:
        """Iterations between two scheduler steps (``'epoch'`` = the iterations of one epoch)."""
        return int(train_iterations) if self.step_iteration == "epoch" else int(self.step_iteration)


@dataclass(frozen=True)
class OptimizerAndSchedulerConfig(ConfigSection):
    """One entry of ``solver.optimizers_and_schedulers`` (active within the epoch/iteration window)."""

    KEY_PATH = "solver.optimizers_and_schedulers.<i>"

    name: str = "none"
    optimizer: OptimizerConfig = setting(default_factory=OptimizerConfig)
    scheduler: Optional[SchedulerConfig] = None
    start_epoch: int = 0
    end_epoch: int = -1
    start_iteration: int = 0
    end_iteration: int = -1


def _entries(value: Any, key_path: str) -> tuple:
    """The non-empty list of optimizer/scheduler entries, each parsed under ``key_path.<i>``; names differ."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"'{key_path}' must be a non-empty list, got {value!r}")
    entries = tuple(parse_value(e, OptimizerAndSchedulerConfig, f"{key_path}.{i}") for i, e in enumerate(value))
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ConfigError(f"'{key_path}' names must differ, got {names}")
    return entries


def _every_or_never(value: Any, key_path: str) -> int:
    """An iteration period; empty or 0 is -1 (never), as the official ``save_iterations``."""
    return as_int(value or -1, key_path)


def _sample_period(value: Any, key_path: str) -> Union[int, str]:
    """``sample_iterations``: an iteration period or ``'epoch'``; empty or 0 is -1 (never)."""
    return _int_or_epoch(value or -1, key_path)


def _optional_limit(value: Any, key_path: str) -> Optional[int]:
    """``max_iterations``: a positive limit, or None (absent, empty or <= 0: the epochs decide)."""
    if value is None:
        return None
    limit = as_int(value, key_path)
    return limit if limit > 0 else None


def _ema(value: Any, key_path: str) -> Optional[EMAConfig]:
    if value is None or isinstance(value, EMAConfig):
        return value
    return parse_ema_config(value, key_path)


_ADJUST_LR = ("none", "sqrt", "linear")


@dataclass(frozen=True)
class SolverConfig(ConfigSection):
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

    KEY_PATH = "solver"
    # official keys that change nothing here (the official solver reads ``debug`` for its debug loader only;
    # ``print_specific_things`` is read by no official code)
    IGNORED_KEYS = ("debug", "print_specific_things")

    base_lr: float
    max_epochs: int = setting(check=lambda v: v >= 1, must=">= 1")
    optimizers_and_schedulers: tuple = setting(parse=_entries)
    adjust_lr: str = setting("sqrt", check=lambda v: v in _ADJUST_LR, must=f"one of {', '.join(_ADJUST_LR)}")
    save_epochs: EpochRule = setting(-1, parse=_epoch_rule)
    save_iterations: int = setting(-1, parse=_every_or_never)
    validation_epochs: EpochRule = setting(2, parse=_epoch_rule)
    sample_iterations: Union[int, str] = setting("epoch", parse=_sample_period)
    max_iterations: Optional[int] = setting(None, parse=_optional_limit)
    grad_accumulation_steps: int = setting(1, check=lambda v: v >= 1, must=">= 1")
    max_nonfinite_steps: int = 10
    amp_dtype: str = setting("fp16", check=lambda v: v in AMP_DTYPE_NAMES, must="'fp16', 'bf16' or 'auto'")
    ema: Optional[EMAConfig] = setting(None, parse=_ema)
    clip_grad_norm: Optional[Mapping] = None
    lora: Optional[LoraConfig] = None

    @classmethod
    def check_together(cls, values: Mapping[str, Any], key_path: str) -> None:
        """Accumulated micro-batches step every optimizer once per step: each ``step_iteration`` must be 1."""
        if values["grad_accumulation_steps"] > 1:
            for i, o in enumerate(values["optimizers_and_schedulers"]):
                if o.optimizer.step_iteration != 1:
                    raise ConfigError(f"'{key_path}.optimizers_and_schedulers.{i}.optimizer.step_iteration' "
                                      "must be 1 with grad_accumulation_steps > 1")

    def total_iterations(self, train_iterations: int) -> int:
        """Iterations the run will make: ``max_epochs x train_iterations``, or fewer with ``max_iterations``."""
        total = self.max_epochs * int(train_iterations)
        return min(total, self.max_iterations) if self.max_iterations is not None else total

    def sample_every(self, train_iterations: int) -> int:
        return int(train_iterations) if self.sample_iterations == "epoch" else int(self.sample_iterations)


def parse_solver_config(section: Any, key_path: str = "solver") -> SolverConfig:
    """Check ``section`` (the config's ``solver:`` mapping) key by key and return a :class:`SolverConfig`."""
    if section is None:
        raise ConfigError(f"config has no '{key_path}' section")
    return parse_section(section, SolverConfig, key_path)
