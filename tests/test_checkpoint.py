"""checkpoint.py: checkpoints read with weights_only=True, the run-folder lock, the previous
checkpoint kept, leftovers of killed writes swept."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train as train_cli
from conftest import write_aligned_tree
from uniformface.atomic import atomic_write_text, remove_stale_partials
from uniformface.checkpoint import CheckpointError, FolderLock, folder_holder, keep_previous, safe_torch_load
from uniformface.config import load_config, save_config

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "code" / "configs" / "toy.yaml")
HOLD = ("import os, sys, time; sys.path.insert(0, sys.argv[2]); from uniformface.checkpoint import FolderLock; "
        "lock = FolderLock(sys.argv[1]).acquire(); child = os.fork() if sys.argv[3:] == ['fork'] else 1; "
        "child or time.sleep(600); print('held', child, flush=True); time.sleep(600)")


class Exploit:
    """A pickle that runs a shell command when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hold_lock(folder, fork=False):
    """Another live process holding `folder`'s lock (`fork`: and a forked child of it, as a DataLoader
    worker is; its pid is `proc.child`)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(ROOT / "code")] + (["fork"] if fork else []),
                            stdout=subprocess.PIPE, text=True)
    said, child = proc.stdout.readline().split()
    assert said == "held"
    proc.child = int(child)
    return proc


def test_a_checkpoint_that_runs_code_is_refused_and_nothing_runs(tmp_path, capsys):
    tree = write_aligned_tree(tmp_path / "train", n_classes=2, per_class=4)
    run = tmp_path / "log" / "run"
    cfg = load_config(TOY, [f"dataset.train={tree}", "model_name=sphereface4", "emb_dim=8", "batch_size=4",
                            "num_workers=0", "device=cpu"])
    save_config(cfg, run / "config.yaml")
    marker = tmp_path / "pwned"
    torch.save({"iteration": 1, "model": {}, "rng": Exploit(marker)}, run / "checkpoint.pt")
    status = train_cli.main(["--config", TOY, "--logdir", str(tmp_path / "log"), "--run_name", "run", "--resume",
                             "--no_progress"])
    err = capsys.readouterr().err
    assert status == 1 and not marker.exists()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{run / 'checkpoint.pt'}: refused" in err and "'posix.system'" in err and "nothing in it was run" in err
    # the payload is real: a plain unpickling does run it
    torch.load(run / "checkpoint.pt", weights_only=False)
    assert marker.exists()


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
