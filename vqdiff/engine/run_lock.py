"""One run per output folder: a lock file that names its holder, and the refusal to overwrite a finished run.

``OUTPUT/<name>/run.lock`` is locked with ``flock`` for the life of the training process and holds the
holder's PID and host. The kernel drops the lock when the process dies (also on ``kill -9``), so a lock
left by a dead process is simply taken over (the file's old PID is logged). A second process that finds
the lock held refuses with :class:`RunLockError` naming the lock file and the holder's PID. Where
``fcntl`` is missing (Windows), the file is created exclusively instead and a lock whose PID is no longer
running counts as stale.

:func:`refuse_overwrite` stops a fresh start (no ``--auto_resume``) in a folder that already holds a
``checkpoint/last.pth`` unless the caller passes ``--overwrite``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Callable, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunLock", "RunLockError", "refuse_overwrite", "LOCK_NAME"]

LOCK_NAME = "run.lock"


class RunLockError(RuntimeError):
    """The output folder is in use by another run, or holds a finished run that would be overwritten."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_holder(path: Path) -> tuple[int, str]:
    try:
        pid, _, host = path.read_text(encoding="utf-8").strip().partition(" ")
        return int(pid), host
    except (OSError, ValueError):
        return -1, ""


class RunLock:
    """``with RunLock(folder, log=logger.info): ...`` holds ``folder/run.lock`` for the block."""

    def __init__(self, folder: str | os.PathLike, log: Optional[Callable[[str], None]] = None):
        self.path = Path(folder) / LOCK_NAME
        self.log = log or (lambda msg: None)
        self._fd: Optional[int] = None

    def _busy(self, pid: int, host: str) -> RunLockError:
        who = f"PID {pid}" + (f" on {host}" if host else "") if pid > 0 else "another process"
        return RunLockError(f"output folder {self.path.parent} is in use by another run ({who} holds the lock "
                            f"{self.path}); wait for it to end, stop it, or choose another --name")

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover - Windows
            return self._acquire_exclusive_file()
        fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._busy(*_read_holder(self.path)) from None
        old_pid, _ = _read_holder(self.path)
        if old_pid > 0 and old_pid != os.getpid():
            self.log(f"took over the lock {self.path} left by PID {old_pid} (no longer running)")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode("utf-8"))
        self._fd = fd
        return self

    def _acquire_exclusive_file(self) -> "RunLock":  # pragma: no cover - Windows
        for _ in range(2):
            try:
                fd = os.open(str(self.path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pid, host = _read_holder(self.path)
                if _pid_alive(pid):
                    raise self._busy(pid, host) from None
                self.log(f"took over the lock {self.path} left by PID {pid} (no longer running)")
                self.path.unlink(missing_ok=True)
                continue
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode("utf-8"))
            self._fd = fd
            return self
        raise self._busy(*_read_holder(self.path))

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # an empty lock file: nobody holds it
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None
            if fcntl is None:  # pragma: no cover - Windows
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def refuse_overwrite(folder: str | os.PathLike, auto_resume: bool, overwrite: bool) -> None:
    """Raise :class:`RunLockError` when a fresh start would replace ``folder/checkpoint/last.pth``."""
    last = Path(folder) / "checkpoint" / "last.pth"
    if last.is_file() and not auto_resume and not overwrite:
        raise RunLockError(f"{folder} already holds a run ({last}); pass --auto_resume to continue it, "
                           "--overwrite to start it again from scratch, or choose another --name")
