"""locks.py: the folder lock that keeps two runs out of one folder."""
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from uniformface.base.locks import LOCK_FILE, FolderLock, _holder_text

ROOT = Path(__file__).resolve().parents[1]
HOLD = ("import os, sys, time; sys.path.insert(0, sys.argv[2]); from uniformface.base.locks import FolderLock; "
        "lock = FolderLock(sys.argv[1]).acquire(); child = os.fork() if sys.argv[3:] == ['fork'] else 1; "
        "child or time.sleep(600); print('held', child, flush=True); time.sleep(600)")


def folder_holder(folder):
    """Who holds `folder`'s lock now (as FolderBusy names it), or None when nobody does."""
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder_text(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def hold_lock(folder, fork=False):
    """Another live process holding `folder`'s lock (`fork`: and a forked child of it, as a DataLoader
    worker is; its pid is `proc.child`)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(ROOT / "code")] + (["fork"] if fork else []),
                            stdout=subprocess.PIPE, text=True)
    said, child = proc.stdout.readline().split()
    assert said == "held"
    proc.child = int(child)
    return proc




def test_folder_lock_refuses_a_second_holder_naming_it_and_a_killed_holder_leaves_no_lock(tmp_path):
    folder = tmp_path / "run"
    proc = hold_lock(folder)
    try:
        start = time.perf_counter()
        with pytest.raises(RuntimeError) as err:
            FolderLock(folder).acquire()
        assert time.perf_counter() - start < 1  # refused at once, no waiting
        message = str(err.value)
        assert f"process {proc.pid} on host {socket.gethostname()}" in message and str(folder) in message
        assert folder_holder(folder).startswith(f"process {proc.pid}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (folder / ".lock").is_file()  # the killed holder's lock file stays behind ...
    assert folder_holder(folder) is None  # ... and holds nothing
    with FolderLock(folder) as lock:
        assert lock.held and f'"pid": {os.getpid()}' in (folder / ".lock").read_text()
        with pytest.raises(RuntimeError, match=f"process {os.getpid()}"):
            FolderLock(folder).acquire()  # a second lock in the same process is refused too
    FolderLock(folder).acquire().release()  # released on exit


def test_a_forked_child_outliving_a_killed_holder_does_not_keep_the_lock(tmp_path):
    """DataLoader workers are forked children; killed with their parent, they live on for seconds."""
    folder = tmp_path / "run"
    proc = hold_lock(folder, fork=True)
    try:
        with pytest.raises(RuntimeError, match=f"process {proc.pid}"):
            FolderLock(folder).acquire()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        os.kill(proc.child, 0)  # the child still lives ...
        FolderLock(folder).acquire().release()  # ... and the lock is free
    finally:
        for pid in (proc.pid, proc.child):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
