"""The lock that keeps two runs out of one folder (a run folder, an aligned output folder)."""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import stat
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
    """The folder cannot be taken: another live process holds its lock (the message names it: process id,
    host), or its lock file is unsafe to write (`UnsafeLockFile`). Either way nothing was touched."""


class UnsafeLockFile(FolderBusy):
    """`<folder>/.lock` is not a file of its own: a symbolic link, a hard link of another file, a folder, a
    FIFO or a device. Writing the lock's text through it would overwrite whatever it leads to (a link
    planted in a downloaded or shared folder, `ln -s ~/.bashrc OUT/.lock`), so the run is refused, naming
    the path; deleting it is the fix. Callers treat it as a busy folder: refuse, touch nothing."""


class FolderLock:
    """An exclusive `flock` on `folder/.lock`, held while a run writes into the folder. The kernel drops
    it when the holder exits, however it exits, so the lock of a killed run never blocks the next one
    (the file stays; its text, the last holder, is only information). The holder's process id, host,
    start time and command are written into the file so that a refused run can name it. A `.lock` that
    is not a regular file of its own (a symbolic or hard link, ...) is never written: `UnsafeLockFile`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "FolderLock":
        """Take the lock or raise `FolderBusy` at once (no waiting; `UnsafeLockFile` for a lock file that is
        a link or not a regular file); an OSError (read-only folder, ...) propagates with the lock file's name."""
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = _open_own_file(self.path)
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


def _open_own_file(path: Path) -> int:
    """A read-write descriptor of the regular file at `path` (created when absent; the kernel applies the
    umask), never of what a link there leads to: O_NOFOLLOW refuses a symbolic link in the kernel (no
    window between a check and the open), O_NONBLOCK keeps a FIFO from blocking the open, and the
    descriptor's own fstat refuses anything that is not a regular file with a single name. Raises
    UnsafeLockFile naming the path; other OSErrors (a read-only folder) propagate."""
    fix = f"delete it (rm {path}; a lock file holds nothing of value) and run again"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise UnsafeLockFile(f"{path} is a symbolic link (to {_link_target(path)}), not a lock file: refusing "
                                 f"to write through it; delete the link (rm {path}: what it leads to is kept) and "
                                 "run again") from None
        if exc.errno == errno.EISDIR:
            raise UnsafeLockFile(f"{path} is a folder, not a lock file; {fix.replace('rm ', 'rm -r ')}") from None
        if exc.errno == errno.ENXIO:  # a socket, or a device without its driver
            raise UnsafeLockFile(f"{path} is a socket or a device, not a lock file; {fix}") from None
        raise
    info = os.fstat(fd)
    kind = (None if stat.S_ISREG(info.st_mode) and info.st_nlink == 1 else
            f"a hard link of another file ({info.st_nlink} names)" if stat.S_ISREG(info.st_mode) else
            "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device or other special file")
    if kind is not None:
        os.close(fd)
        raise UnsafeLockFile(f"{path} is {kind}, not a lock file: refusing to write to it; {fix}")
    os.set_blocking(fd, True)
    return fd


def _link_target(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


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
