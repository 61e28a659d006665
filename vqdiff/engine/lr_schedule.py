"""What the solver asks of a learning-rate schedule, and how one is built from its config entry.

The protocol (:class:`LRSchedule`): ``step(metric=None)`` once every ``step_iteration`` optimizer steps,
``metric`` being the training loss of that step (schedules that do not use it ignore it; the plateau
schedules reduce on it, as the official ``STEP_WITH_LOSS_SCHEDULERS``), ``total_steps`` (the steps the
schedule spans, ``None`` when open-ended) and ``state_dict``/``load_state_dict`` for checkpoints.
vqdiff's schedules (``vqdiff.engine.lr_scheduler``) implement it; a torch scheduler is wrapped in
:class:`TorchLRSchedule`.

A schedule whose constructor takes ``T_max`` spans the whole run: :func:`build_lr_schedule` sets
``T_max`` to the run's iterations (official: ``max_epochs x iterations per epoch``; ``max_iterations``
when that ends the run sooner), whatever the config says.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional, Protocol, runtime_checkable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from vqdiff.utils.config import ConfigError, resolve_target

__all__ = ["LRSchedule", "TorchLRSchedule", "build_lr_schedule"]


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
