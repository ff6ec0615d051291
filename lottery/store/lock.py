"""One server per data directory: an advisory lock the server holds while it runs.

Two servers on one data directory would split the agencies between them,
and each would wait forever for the agencies the other holds. So the server
takes an exclusive ``flock`` on ``<data_dir>/lottery.lock`` before it opens
the store, and writes who it is into the file; a second server fails at once,
naming the holder. The kernel drops the lock when the holder's process ends,
however it ends (kill -9 included), so a crash never leaves a stale lock.
Readers (``lottery export``, ``lottery status``) take no lock.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import socket
from pathlib import Path

from ..errors import ConfigError

__all__ = ["LOCK_FILENAME", "DataDirLock"]

LOCK_FILENAME = "lottery.lock"


class DataDirLock:
    """The exclusive lock on a data directory; `release` (or process exit) frees it."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.path = Path(data_dir) / LOCK_FILENAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise `ConfigError` naming the server that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(
                f"{self.path.parent} is in use by another server ({holder}); "
                "stop it, or give this server another --data-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Free the lock (safe to call twice)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
