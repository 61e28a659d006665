"""The former module of the schedule protocol and builder, kept so that code importing it keeps working; the
schedules, the protocol and the builder all live in :mod:`vqdiff.engine.lr_scheduler`."""

from vqdiff.engine.lr_scheduler import LRSchedule, TorchLRSchedule, build_lr_schedule

__all__ = ["LRSchedule", "TorchLRSchedule", "build_lr_schedule"]
