"""Atomic file writes: the content goes to a temporary file beside the target, which is then renamed
over it (`os.replace`), so that a run killed at any moment leaves either the old file or the complete
new one, never half of one. Torch-free, and the process umask is never read or changed here.

Temporaries are hidden files named `.<name>.<8 random characters>.partial` in the target's folder, so
that a later run can recognise and sweep up what a killed one left behind (`remove_stale_partials`,
`preprocessing.stale_partials`) and an error about one can name the file it stood for (`cli.describe`).
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

PARTIAL_SUFFIX = ".partial"
# O_EXCL: never reuse or follow an existing name; the mode 0o666 is filtered by the kernel through the
# process umask (and a folder's default ACL), as for any file the process creates with open().
_CREATE_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
                 | getattr(os, "O_NOFOLLOW", 0))
_ATTEMPTS = 100


def temporary_path(path: str | Path) -> Path:
    """A fresh temporary name for `path` in its folder: `.<name>.<8 hex digits>.partial`."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")


def _create_temporary(path: Path) -> tuple[int, Path]:
    """(descriptor open for writing, name) of a new temporary file for `path`."""
    for _ in range(_ATTEMPTS):
        tmp = temporary_path(path)
        try:
            return os.open(tmp, _CREATE_FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name} after {_ATTEMPTS} attempts")


def fsync_folder(folder: str | Path) -> None:
    """Make a rename inside `folder` durable (its directory entry reaches the disk). Where folders cannot
    be opened or synced (some file systems refuse), the rename stays as durable as the system makes it."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", durable: bool = True) -> Iterator[Any]:
    """`with atomic_open(path) as handle:` writes to a temporary file that replaces `path` when the block
    ends without an exception, and is removed when it raises (or the rename fails). `durable` also
    fsyncs the file before the rename and its folder after it (checkpoints, results, configs); bulk outputs
    such as aligned images skip that cost: the rename alone already guarantees old-or-new after a kill."""
    if not mode.startswith("w") or "+" in mode:
        raise ValueError(f"atomic_open writes a new file: mode {mode!r} is not 'w' or 'wb'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, mode) as handle:
            fd = -1  # the handle owns it now
            yield handle
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_folder(path.parent)


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb", durable: bool = True) -> None:
    """Call `write(handle)` on a temporary file beside `path`, then rename it into place (`atomic_open`)."""
    with atomic_open(path, mode, durable) as handle:
        write(handle)


def atomic_write_text(path: str | Path, text: str, durable: bool = True) -> None:
    atomic_write(path, lambda handle: handle.write(text), "w", durable)


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> None:
    atomic_write(path, lambda handle: handle.write(data), "wb", durable)


def glob_escape(name: str) -> str:
    """`name` as a glob pattern matching only itself (`*`, `?` and `[` bracketed)."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def remove_stale_partials(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete the temporaries that a killed `atomic_write` of one of `names` left in `folder` (call it only
    while holding the folder's lock: a live writer's temporary looks the same). Returns what was removed."""
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for name in names:
        for leftover in folder.glob(f".{glob_escape(name)}.*{PARTIAL_SUFFIX}"):
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return sorted(removed)
