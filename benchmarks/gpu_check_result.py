"""The result types of ``benchmarks/gpu_check.py``: one :class:`Check` per table line, the :class:`Context`
each section gets (device, mode, scratch folder, time cap), and the section status rule."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

STATUSES = ("pass", "fail", "skipped")


@dataclass
class Check:
    """One line of the table: ``status`` is pass/fail/skipped; ``reason`` says why (required unless pass)."""

    name: str
    status: str
    reason: str = ""
    values: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"check {self.name!r}: status must be one of {STATUSES}, got {self.status!r}")
        if self.status != "pass" and not self.reason:
            raise ValueError(f"check {self.name!r}: a {self.status} check needs a reason")


@dataclass
class Context:
    """What every section gets: the device, the mode, a scratch folder and the section's deadline."""

    device: torch.device
    quick: bool
    workdir: Path
    compile_backend: str
    cap_s: float
    start: float = field(default_factory=time.monotonic)

    def time_left(self) -> float:
        return self.cap_s - (time.monotonic() - self.start)

    def over_cap(self, name: str) -> Optional[Check]:
        """A skipped check when the section's cap is reached (so the rest of it is not run), else None."""
        if self.time_left() > 0:
            return None
        return Check(name, "skipped", f"section time cap ({self.cap_s:.0f} s) reached")

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def check_from_values(name: str, ok: bool, why_not: str, **values) -> Check:
    return Check(name, "pass" if ok else "fail", "" if ok else why_not, values)


def section_status(checks: list[Check]) -> str:
    if any(c.status == "fail" for c in checks):
        return "fail"
    return "skipped" if checks and all(c.status == "skipped" for c in checks) else "pass"
