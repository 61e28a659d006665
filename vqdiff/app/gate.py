"""One generation at a time per model, a bounded number waiting, and a clear "busy" answer beyond it."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

__all__ = ["RequestGate", "ServerBusy"]


class ServerBusy(RuntimeError):
    """Too many requests are already waiting for the model; the message says so (shown in the page)."""


class RequestGate:
    """Admission for one model: one request runs, at most ``max_waiting`` wait for it, the rest are refused.

    The web framework hands every request to its own worker thread at once (its concurrency limit is set
    above ``1 + max_waiting``), so the count here sees the running and the waiting requests and can refuse
    the surplus with :class:`ServerBusy` instead of queueing without bound.
    """

    def __init__(self, max_waiting: int):
        if isinstance(max_waiting, bool) or not isinstance(max_waiting, int) or max_waiting < 0:
            raise ValueError(f"max_waiting must be an int >= 0, got {max_waiting!r}")
        self.max_waiting = max_waiting
        self._count_lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._admitted = 0  # running + waiting

    @property
    def admitted(self) -> int:
        """Requests running or waiting now."""
        with self._count_lock:
            return self._admitted

    @contextmanager
    def slot(self, on_admitted: Optional[Callable[[int], None]] = None) -> Iterator[int]:
        """Hold the model for one request; yields how many requests were ahead when it was admitted.
        ``on_admitted(ahead)`` runs once admitted, before waiting for the model (to tell the user).

        Raises:
            ServerBusy: one request runs and ``max_waiting`` already wait.
        """
        with self._count_lock:
            if self._admitted > self.max_waiting:
                raise ServerBusy(f"the model is busy: one request is running and {self._admitted - 1} are "
                                 f"waiting (this server lets {self.max_waiting} wait). Please try again in a moment.")
            ahead = self._admitted
            self._admitted += 1
        try:
            if on_admitted is not None:
                on_admitted(ahead)
            with self._model_lock:
                yield ahead
        finally:
            with self._count_lock:
                self._admitted -= 1
