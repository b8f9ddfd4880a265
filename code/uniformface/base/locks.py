"""The lock that keeps two runs out of one folder (a run folder, an aligned output folder)."""
from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
import weakref
from pathlib import Path

logger = logging.getLogger(__name__)


LOCK_FILE = ".lock"
_HELD: "weakref.WeakSet[FolderLock]" = weakref.WeakSet()


def _forget_locks_in_child() -> None:
    """A forked child (a DataLoader worker) shares the parent's lock; it closes its copy at once, so that a
    killed run's orphaned workers, which outlive it by seconds, do not keep its folder locked. Closing a
    copy releases nothing: the lock goes only with its last descriptor (or an explicit unlock)."""
    for lock in list(_HELD):
        fd, lock._fd = lock._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_locks_in_child)


class FolderBusy(RuntimeError):
    """Another live process holds the folder's lock; the message names it (process id, host)."""


class FolderLock:
    """An exclusive `flock` on `folder/.lock`, held while a run writes into the folder. The kernel drops
    it when the holder exits, however it exits, so the lock of a killed run never blocks the next one
    (the file stays; its text, the last holder, is only information). The holder's process id, host,
    start time and command are written into the file so that a refused run can name it."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "FolderLock":
        """Take the lock or raise `FolderBusy` at once (no waiting); an OSError (read-only folder, ...)
        propagates with the lock file's name."""
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # the kernel applies the umask
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(fd)
            os.close(fd)
            raise FolderBusy(f"{self.folder} is in use by {holder} (lock file {self.path}); wait for that run "
                             "to end, or use another folder") from None
        except OSError as exc:  # a file system without flock (ENOLCK): go on unlocked, and say so
            logger.warning(f"warning: cannot lock {self.path} ({exc.strerror}); a second run into this folder "
                           "would not be noticed")
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        _HELD.add(self)
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        _HELD.discard(self)
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def __del__(self):
        try:
            self.release()
        except OSError:
            pass


def _holder_text(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except ValueError:
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process (it has not written its name yet)"
    since = f", since {info['started']}" if info.get("started") else ""
    command = f": {info['command']}" if info.get("command") else ""
    return f"process {info['pid']} on host {info.get('host', '?')}{since}{command}"
