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


@pytest.fixture
def victim(tmp_path):
    """A file of the user's outside the folder, which a planted `.lock` link leads to."""
    path = tmp_path / "victim.txt"
    path.write_text("the user's own text\n")
    return path


def unsafe_lock_files(folder, victim):
    """Each kind of `.lock` that is not a file of its own, made for real in `folder`: (kind, maker)."""
    return [("symbolic link", lambda: (folder / LOCK_FILE).symlink_to(os.path.relpath(victim, folder))),
            ("dangling link", lambda: (folder / LOCK_FILE).symlink_to("../created-by-the-lock.txt")),
            ("hard link", lambda: os.link(victim, folder / LOCK_FILE)),
            ("folder", lambda: (folder / LOCK_FILE).mkdir()),
            ("FIFO", lambda: os.mkfifo(folder / LOCK_FILE))]


def test_a_lock_file_that_is_a_link_or_not_a_regular_file_is_never_written(tmp_path, victim):
    """`ln -s ../victim.txt OUT/.lock` made FolderLock truncate victim.txt and write its JSON there. Now
    a `.lock` that is a symbolic link (dangling too), a hard link, a folder or a FIFO is refused at once,
    naming the path, and whatever it leads to is left as it was (nothing created either)."""
    import shutil

    from uniformface.base.locks import FolderBusy, UnsafeLockFile

    folder = tmp_path / "run"
    for kind, make in unsafe_lock_files(folder, victim):
        folder.mkdir()
        make()
        start = time.perf_counter()
        with pytest.raises(UnsafeLockFile) as err:
            FolderLock(folder).acquire()
        assert time.perf_counter() - start < 1, kind  # a FIFO does not block the open
        assert isinstance(err.value, FolderBusy)  # callers refuse it as they refuse a busy folder
        message = str(err.value)
        assert message.startswith(f"{folder / LOCK_FILE} is ") and "not a lock file" in message, message
        assert f"rm {folder / LOCK_FILE}" in message or f"rm -r {folder / LOCK_FILE}" in message, message
        assert victim.read_text() == "the user's own text\n", kind
        assert not (tmp_path / "created-by-the-lock.txt").exists(), kind
        shutil.rmtree(folder)
    folder.mkdir()
    (folder / LOCK_FILE).symlink_to(victim)
    assert f"symbolic link (to {victim})" in str(pytest.raises(UnsafeLockFile, FolderLock(folder).acquire).value)
    (folder / LOCK_FILE).unlink()  # the fix the message gives
    with FolderLock(folder):
        assert f'"pid": {os.getpid()}' in (folder / LOCK_FILE).read_text()
    assert victim.read_text() == "the user's own text\n"


def test_preprocess_and_train_refuse_a_planted_lock_link_and_overwrite_nothing(tmp_path, victim, capsys):
    """The two commands that lock a folder: `preprocess.py --output_dir OUT` and `train.py --resume` into a run
    folder, each holding `.lock -> ../victim.txt`: exit 1, one line naming the link, victim.txt intact."""
    from conftest import load_script
    from hostile import one_line_error

    out, dataset = tmp_path / "out", tmp_path / "set"
    dataset.mkdir()
    out.mkdir()
    (out / LOCK_FILE).symlink_to("../victim.txt")
    assert load_script("preprocess").main(["--dataset", str(dataset), "--output_dir", str(out), "--workers", "0",
                                           "--no_progress"]) == 1
    one_line_error(capsys.readouterr().err, "preprocess.py: error: ", f"{out.resolve() / LOCK_FILE} is a symbolic link")
    run_dir = tmp_path / "log" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / LOCK_FILE).symlink_to("../../victim.txt")
    args = ["--config", str(ROOT / "code/configs/toy.yaml"), "--logdir", str(tmp_path / "log"), "--run_name", "run",
            "--resume", "--no_progress"]
    assert load_script("train").main(args) == 1
    one_line_error(capsys.readouterr().err, "train.py: error: ", f"{run_dir / LOCK_FILE} is a symbolic link")
    assert victim.read_text() == "the user's own text\n"
    assert [p.name for p in out.iterdir()] == [LOCK_FILE] and [p.name for p in run_dir.iterdir()] == [LOCK_FILE]
