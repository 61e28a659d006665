"""Learning-rate schedules: what the solver asks of one, how one is built from its config entry, and
vqdiff's schedules (the official ``image_synthesis.engine.lr_scheduler`` and taming's warm-up cosine).

The protocol (:class:`LRSchedule`): ``step(metric=None)`` once every ``step_iteration`` optimizer steps,
``metric`` being the training loss of that step (schedules that do not use it ignore it; the plateau
schedules reduce on it, as the official ``STEP_WITH_LOSS_SCHEDULERS``), ``total_steps`` (the steps the
schedule spans, ``None`` when open-ended) and ``state_dict``/``load_state_dict`` for checkpoints. The two
warm-up schedules below implement it; a torch scheduler is wrapped in :class:`TorchLRSchedule`.

A schedule whose constructor takes ``T_max`` spans the whole run: :func:`build_lr_schedule` sets
``T_max`` to the run's iterations (official: ``max_epochs x iterations per epoch``; ``max_iterations``
when that ends the run sooner), whatever the config says.

The warm-up schedules hold plain Python state so that ``state_dict()`` (everything but the optimizer) can be
saved in the official checkpoint's ``optimizer_and_scheduler.<name>.scheduler.module`` entry. Warm-up: with
``warmup = W`` and ``warmup_lr = w`` the per-step increment is ``delta = max(0, (w - lr_0) / W)``; step
``e <= W`` sets ``lr <- max(lr + delta, min_lr)``. :class:`LambdaWarmUpCosineScheduler` is taming's
multiplier for ``torch.optim.lr_scheduler.LambdaLR`` (the released codec configs name it).

Config ``target`` strings and checkpoints name the classes as ``vqdiff.engine.lr_scheduler.<Class>`` (this
module); ``vqdiff.engine.lr_schedule`` is the protocol's former module, kept as an alias.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Optional, Protocol, Sequence, runtime_checkable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from vqdiff.utils.config import ConfigError, resolve_target

__all__ = ["LRSchedule", "TorchLRSchedule", "build_lr_schedule", "ReduceLROnPlateauWithWarmup",
           "CosineAnnealingLRWithWarmup", "LambdaWarmUpCosineScheduler"]


@runtime_checkable
class LRSchedule(Protocol):
    """A learning-rate schedule the solver can step and checkpoint."""

    @property
    def total_steps(self) -> Optional[int]: ...

    def step(self, metric: Optional[float] = None) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state_dict: dict) -> None: ...


class TorchLRSchedule:
    """A torch scheduler behind the :class:`LRSchedule` protocol: ``ReduceLROnPlateau`` is stepped with
    the metric, every other torch scheduler without it. Other attributes (``T_max``, ``best``,
    ``last_epoch``, ...) are read from the wrapped scheduler; its ``state_dict`` is the checkpoint entry."""

    def __init__(self, scheduler: LRScheduler | ReduceLROnPlateau):
        self.scheduler = scheduler

    @property
    def total_steps(self) -> Optional[int]:
        steps = getattr(self.scheduler, "T_max", None)
        return int(steps) if steps is not None else None

    def step(self, metric: Optional[float] = None) -> None:
        if isinstance(self.scheduler, ReduceLROnPlateau):
            if metric is None:
                raise ValueError("ReduceLROnPlateau is stepped with a metric (the training loss), got None")
            self.scheduler.step(metric)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.scheduler.load_state_dict(state_dict)

    def __getattr__(self, name: str) -> Any:
        if name == "scheduler":  # not yet set (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.scheduler, name)


def _takes(cls: type, name: str) -> bool:
    try:
        return name in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def build_lr_schedule(target: str, params: dict, optimizer: Optimizer, run_iterations: int,
                      key_path: str) -> LRSchedule:
    """Build ``target(optimizer, **params)`` (``T_max = run_iterations`` when it takes ``T_max``) as an
    :class:`LRSchedule`; errors name ``key_path`` (``solver.optimizers_and_schedulers.<i>.scheduler``)."""
    cls = resolve_target(target, f"{key_path}.target")
    params = dict(params)
    if _takes(cls, "T_max"):
        params["T_max"] = int(run_iterations)
    try:
        schedule = cls(optimizer, **params)
    except TypeError as e:
        raise ConfigError(f"'{key_path}.params' do not fit {target}: {e}") from e
    if isinstance(schedule, (LRScheduler, ReduceLROnPlateau)):
        return TorchLRSchedule(schedule)
    if not isinstance(schedule, LRSchedule):
        raise ConfigError(f"'{key_path}.target' {target} is neither a torch scheduler nor an LRSchedule "
                          f"(step(metric=None), total_steps, state_dict, load_state_dict)")
    return schedule


def _per_group(value: Any, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"expected {n} values of {name} (one per param group), got {len(value)}")
        return list(value)
    return [value] * n


class _WarmupMixin:
    optimizer: Optimizer
    warmup: int
    warmup_lr: Any
    min_lrs: list
    last_epoch: int

    def _prepare_for_warmup(self) -> None:
        groups = self.optimizer.param_groups
        if self.warmup_lr is not None:
            self.warmup_lrs = [float(v) for v in _per_group(self.warmup_lr, len(groups), "warmup_lr")]
        else:
            self.warmup_lrs = None
        if self.warmup_lrs is not None and self.warmup > self.last_epoch:
            self.warmup_lr_steps = [max(0.0, (w - float(g["lr"])) / float(self.warmup))
                                    for w, g in zip(self.warmup_lrs, groups)]
        else:
            self.warmup_lr_steps = None

    def _increase_lr(self) -> None:
        if self.warmup_lr_steps is None:
            return
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = max(float(group["lr"]) + self.warmup_lr_steps[i], self.min_lrs[i])

    def get_last_lr(self) -> list:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        """Every attribute except the optimizer (official format)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict) -> None:
        self.__dict__.update(state_dict)


class ReduceLROnPlateauWithWarmup(_WarmupMixin):
    """``ReduceLROnPlateau`` on the per-iteration training loss, after ``warmup`` linear warm-up steps.

    After warm-up, ``metric`` is "better" when ``metric < best * (1 - threshold)`` (``rel``) or
    ``metric < best - threshold`` (``abs``) (``max`` mode mirrored); more than ``patience`` steps without
    improvement multiply the lr by ``factor`` (floored at ``min_lr``; changes smaller than ``eps`` skipped).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float | Sequence[float] = 0,
        eps: float = 1e-8,
        verbose: bool = False,
        warmup_lr: float | Sequence[float] | None = None,
        warmup: int = 0,
    ):
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateauWithWarmup: factor should be < 1.0, got {factor}")
        if mode not in ("min", "max"):
            raise ValueError(f"ReduceLROnPlateauWithWarmup: mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"ReduceLROnPlateauWithWarmup: threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.optimizer = optimizer
        self.factor = float(factor)
        self.min_lrs = [float(v) for v in _per_group(min_lr, len(optimizer.param_groups), "min_lr")]
        self.patience = int(patience)
        self.verbose = bool(verbose)
        self.cooldown = int(cooldown)
        self.cooldown_counter = 0
        self.mode = mode
        self.threshold = float(threshold)
        self.threshold_mode = threshold_mode
        self.eps = float(eps)
        self.last_epoch = 0
        self.warmup_lr = warmup_lr
        self.warmup = int(warmup)
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.best = self.mode_worse
        self.num_bad_epochs = 0
        self._prepare_for_warmup()
        self._last_lr = self.get_last_lr()

    def is_better(self, a: float, best: float) -> bool:
        if self.mode == "min":
            return a < (best * (1.0 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold)
        return a > (best * (1.0 + self.threshold) if self.threshold_mode == "rel" else best + self.threshold)

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def _reduce_lr(self) -> None:
        for i, group in enumerate(self.optimizer.param_groups):
            old = float(group["lr"])
            new = max(old * self.factor, self.min_lrs[i])
            if old - new > self.eps:
                group["lr"] = new

    @property
    def total_steps(self) -> Optional[int]:
        """Open-ended: the lr changes with the metric, not with a step count."""
        return None

    def step(self, metric: Optional[float] = None) -> None:
        """One step with ``metric`` (the training loss); required."""
        if metric is None:
            raise ValueError("ReduceLROnPlateauWithWarmup.step needs the metric (the training loss), got None")
        current = float(metric)
        self.last_epoch += 1
        if self.last_epoch <= self.warmup:
            self._increase_lr()
        else:
            if self.is_better(current, self.best):
                self.best = current
                self.num_bad_epochs = 0
            else:
                self.num_bad_epochs += 1
            if self.in_cooldown:
                self.cooldown_counter -= 1
                self.num_bad_epochs = 0
            if self.num_bad_epochs > self.patience:
                self._reduce_lr()
                self.cooldown_counter = self.cooldown
                self.num_bad_epochs = 0
        self._last_lr = self.get_last_lr()


class CosineAnnealingLRWithWarmup(_WarmupMixin):
    """Linear warm-up to ``warmup_lr`` then cosine decay to ``min_lr`` over ``T_max`` steps.

    Like a torch ``_LRScheduler`` the constructor takes one step (``e = 0``), so warm-up applies
    ``warmup + 1`` increments (official behaviour). After warm-up,
    ``lr = max(max_lr * max(0, (1 + cos(pi p)) / 2), min_lr)`` with ``p = (e - W) / max(1, T_max - W)``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        T_max: int,
        last_epoch: int = -1,
        verbose: bool = False,
        min_lr: float | Sequence[float] = 0,
        warmup_lr: float | Sequence[float] | None = None,
        warmup: int = 0,
    ):
        self.optimizer = optimizer
        self.T_max = int(T_max)
        self.last_epoch = int(last_epoch)
        self.verbose = bool(verbose)
        self.min_lrs = [float(v) for v in _per_group(min_lr, len(optimizer.param_groups), "min_lr")]
        self.max_lrs = list(self.min_lrs)
        self.warmup_lr = warmup_lr
        self.warmup = int(warmup)
        self._prepare_for_warmup()
        self.step()

    @property
    def total_steps(self) -> Optional[int]:
        return self.T_max

    def step(self, metric: Optional[float] = None) -> None:
        """One step of the schedule; ``metric`` is not used."""
        epoch = self.last_epoch + 1
        self.last_epoch = epoch
        if epoch <= self.warmup:
            self._increase_lr()
            self.max_lrs = [max(m, float(g["lr"])) for m, g in zip(self.max_lrs, self.optimizer.param_groups)]
        else:
            progress = (epoch - self.warmup) / float(max(1, self.T_max - self.warmup))
            factor = max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
            for i, group in enumerate(self.optimizer.param_groups):
                group["lr"] = max(self.max_lrs[i] * factor, self.min_lrs[i])
        self._last_lr = self.get_last_lr()


class LambdaWarmUpCosineScheduler:
    """taming's multiplier schedule for ``torch.optim.lr_scheduler.LambdaLR``: linear from ``lr_start`` to
    ``lr_max`` over ``warm_up_steps``, then cosine to ``lr_min`` at ``max_decay_steps`` (held after)."""

    def __init__(self, warm_up_steps: int, lr_min: float, lr_max: float, lr_start: float, max_decay_steps: int,
                 verbosity_interval: int = 0):
        if max_decay_steps < warm_up_steps:
            raise ValueError(f"LambdaWarmUpCosineScheduler: max_decay_steps ({max_decay_steps}) < warm_up_steps ({warm_up_steps})")
        self.lr_warm_up_steps = int(warm_up_steps)
        self.lr_start = float(lr_start)
        self.lr_min = float(lr_min)
        self.lr_max = float(lr_max)
        self.lr_max_decay_steps = int(max_decay_steps)
        self.last_lr = 0.0
        self.verbosity_interval = int(verbosity_interval)

    def schedule(self, n: int) -> float:
        if n < self.lr_warm_up_steps:
            lr = (self.lr_max - self.lr_start) / self.lr_warm_up_steps * n + self.lr_start
        else:
            span = max(1, self.lr_max_decay_steps - self.lr_warm_up_steps)
            t = min((n - self.lr_warm_up_steps) / span, 1.0)
            lr = self.lr_min + 0.5 * (self.lr_max - self.lr_min) * (1 + math.cos(t * math.pi))
        self.last_lr = lr
        return lr

    def __call__(self, n: int) -> float:
        return self.schedule(n)

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state_dict: dict) -> None:
        self.__dict__.update(state_dict)
