"""checkpoint.py: checkpoints read with weights_only=True, the run-folder lock, the previous
checkpoint kept, leftovers of killed writes swept."""
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from uniformface.atomic import atomic_write_text, remove_stale_partials
from uniformface.checkpoint import LOCK_FILE, CheckpointError, FolderLock, _holder_text, keep_previous, safe_torch_load

ROOT = Path(__file__).resolve().parents[1]
HOLD = ("import os, sys, time; sys.path.insert(0, sys.argv[2]); from uniformface.checkpoint import FolderLock; "
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


@pytest.mark.parametrize("content, words", [(b"\xff\xd8\xff\xe0 a JPEG renamed", "not a checkpoint PyTorch can read"),
                                             (b"", "damaged or not a checkpoint")])
def test_unreadable_checkpoint_is_one_line_naming_the_file(tmp_path, content, words):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        safe_torch_load(path)
    assert str(path) in str(err.value) and words in str(err.value) and "\n" not in str(err.value)
    assert "weights_only=False" not in str(err.value)


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


def test_keep_previous_and_stale_partials(tmp_path):
    state = tmp_path / "checkpoint.pt"
    assert not keep_previous(state, tmp_path / "checkpoint.prev.pt")
    atomic_write_text(state, "one")
    assert keep_previous(state, tmp_path / "checkpoint.prev.pt")
    atomic_write_text(state, "two")  # a new file replaces the name; the kept one still has the old content
    assert (tmp_path / "checkpoint.prev.pt").read_text() == "one" and state.read_text() == "two"
    stale = [tmp_path / ".checkpoint.pt.k1ll3d_x.partial", tmp_path / ".metrics.jsonl.abcdefgh.partial"]
    other = tmp_path / ".lfw_results.json.abcdefgh.partial"  # not a file of the run: not touched
    for path in stale + [other]:
        path.write_text("half")
    assert remove_stale_partials(tmp_path, ["checkpoint.pt", "metrics.jsonl"]) == sorted(stale)
    assert other.exists() and not any(p.exists() for p in stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lfw_results.json.abcdefgh.partial", "checkpoint.prev.pt",
                                                          "checkpoint.pt"]
