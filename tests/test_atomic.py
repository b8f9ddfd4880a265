"""atomic.py: writes that leave the old file or the new one, never half of one; permissions from the
process umask (applied by the kernel, the umask itself never read or changed); no torch."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from uniformface.base import atomic
from uniformface.base.atomic import (PARTIAL_SUFFIX, atomic_open, atomic_write, atomic_write_bytes, atomic_write_text,
                                     glob_escape, remove_stale_partials)

CODE = str(Path(__file__).resolve().parents[1] / "code")
# What cli.describe recognises as an atomic write's temporary (it names the file the write was for).
TEMPORARY = r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.partial$"


def run_python(source: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", source, CODE, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_it_needs_no_torch_and_leaves_the_umask_alone():
    out = run_python("import os, sys; sys.path.insert(0, sys.argv[1]); os.umask(0o027); "
                     "import uniformface.base.atomic; print('torch' in sys.modules, oct(os.umask(0o022)))")
    assert out.split() == ["False", "0o27"]


def test_the_module_never_calls_umask():
    source = Path(atomic.__file__).read_text()
    assert "umask(" not in source


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_permissions_follow_the_process_umask(tmp_path, umask, expected):
    """Run in a child process: the umask is process-wide, and the tests of this process must not see it move."""
    target = tmp_path / "result.json"
    script = ("import os, sys; sys.path.insert(0, sys.argv[1]); os.umask(int(sys.argv[3], 8)); "
              "from uniformface.base.atomic import atomic_write_text, atomic_write_bytes; "
              "atomic_write_text(sys.argv[2], 'text'); atomic_write_bytes(sys.argv[2] + '.bin', b'x', durable=False); "
              "print(oct(os.umask(0)))")
    assert run_python(script, str(target), oct(umask)).strip() == oct(umask)  # unchanged by the writes
    for path in (target, Path(f"{target}.bin")):
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
    assert target.read_text() == "text"


def test_an_exception_in_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old content")

    def half_then_fail(handle):
        handle.write(b"half of the new")
        handle.flush()
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(PARTIAL_SUFFIX)]  # it is being written
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]

    with pytest.raises(KeyboardInterrupt):  # an interrupt too (BaseException)
        with atomic_open(tmp_path / "new.txt", "w") as handle:
            handle.write("partial")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_failed_rename_removes_the_temporary(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "one")

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(PermissionError):
        atomic_write_text(target, "two")
    assert target.read_text() == "one" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_durable_writes_sync_the_file_and_then_its_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def record(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", record)
    atomic_write_bytes(tmp_path / "x.bin", b"data")
    assert synced == [False, True]  # the file before its rename, the folder after
    synced.clear()
    atomic_write_bytes(tmp_path / "y.bin", b"data", durable=False)
    assert synced == []
    assert (tmp_path / "x.bin").read_bytes() == (tmp_path / "y.bin").read_bytes() == b"data"


def test_temporaries_are_named_as_the_sweepers_expect(tmp_path):
    """`.<name>.<8 characters>.partial` beside the target: what cli.describe and preprocessing's sweep match."""
    import re

    seen = []

    def look(handle):
        seen.extend(p.name for p in tmp_path.iterdir())
        handle.write(b"x")

    atomic_write(tmp_path / "results [1].json", look)
    assert len(seen) == 1 and re.match(TEMPORARY, seen[0]) and re.match(TEMPORARY, seen[0])["name"] == "results [1].json"


def test_the_folder_is_made_and_text_is_written_as_given(tmp_path):
    target = tmp_path / "new" / "deeper" / "config.yaml"
    atomic_write_text(target, "a: 1\nb: é\n")
    assert target.read_text() == "a: 1\nb: é\n"
    atomic_write_text(target, "a: 2\n")  # replaces an existing file
    assert target.read_text() == "a: 2\n"
    with pytest.raises(ValueError, match="not 'w' or 'wb'"):
        with atomic_open(target, "a"):
            pass
    assert target.read_text() == "a: 2\n"


def test_stale_partials_of_named_files_only_are_removed(tmp_path):
    stale = [tmp_path / ".checkpoint.pt.k1ll3d_x.partial", tmp_path / ".run[1].jsonl.abcdefgh.partial"]
    kept = [tmp_path / ".lfw_results.json.abcdefgh.partial", tmp_path / ".run1.jsonl.abcdefgh.partial"]
    for path in stale + kept:
        path.write_text("half")
    assert remove_stale_partials(tmp_path, ["checkpoint.pt", "run[1].jsonl"]) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)
    assert remove_stale_partials(tmp_path / "absent", ["x"]) == []
    assert glob_escape("a*b?[c]") == "a[*]b[?][[]c]"
