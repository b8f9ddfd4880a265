"""Checks on the files a command is about to write, before the work whose result they would hold, and the
one table of what to do about a system error (torch-free).

`refuse_overwrite(path, overwrite)`: a file that exists and that this run did not write is kept unless the
user asked for it to be replaced (docs/RELIABILITY.md). `ensure_writable(path)`: can the file
be created now? (a read-only folder or a full disk found before an hour of work, not after it).
`os_fix(errno)`: the fix to name for a permission, read-only, full-disk or missing-path error.
`first_and_more(items, limit)`: the first few of a long list of missing files, for a one-line error.
`shown(value)`, `decimal(text, max_digits)`: a value cut short for a message, a number read from a file.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Sequence

_OS_FIXES = {
    errno.EACCES: "check the permissions, or choose another path",
    errno.EPERM: "check the permissions, or choose another path",
    errno.EROFS: "the file system is read-only: choose a writable path",
    errno.ENOSPC: "free space on that disk (the disk is full), or choose another path",
    errno.EDQUOT: "free space on that disk (the disk quota is exceeded), or choose another path",
    errno.ENOENT: "check the path",
    errno.EISDIR: "this is a folder: give a file path",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
}


def read_utf8_text(path: str | Path) -> str:
    """The file's text, UTF-8 with or without a byte-order mark (Windows editors add one); anything else is
    a ValueError naming `path:line` and the offending byte."""
    return decode_utf8_text(Path(path).read_bytes(), path)


def decode_utf8_text(data: bytes, path: str | Path) -> str:
    """`data`, read from `path`, as `read_utf8_text` decodes it."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
                         "save the file as UTF-8") from None


def shown(value, limit: int = 80) -> str:
    """A value as a message shows it: its repr, cut at `limit` characters (a list of a million items
    makes a one-line error, not megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def is_decimal(text: str) -> bool:
    """Plain ASCII digits, at least one: int() also takes signs, underscores, spaces and other scripts' digits."""
    return text.isascii() and text.isdigit()


def decimal(text: str, max_digits: int) -> int | None:
    """The number `text` writes in plain digits (`is_decimal`, leading zeros allowed) when at most
    `max_digits` follow the zeros; None otherwise. A file's numbers are bounded before int(), which refuses
    over 4,300 digits in a message that names no file."""
    if not is_decimal(text):
        return None
    significant = text.lstrip("0") or "0"
    return int(significant) if len(significant) <= max_digits else None


def first_and_more(items: Sequence, limit: int = 10) -> str:
    """The first `limit` items joined by ", ", then " and N more" when there are more: an error about
    thousands of missing files stays one readable line."""
    shown = ", ".join(str(item) for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def os_fix(number: int | None) -> str | None:
    """What to do about a system error of this errno (a full disk, a read-only folder, ...), or None."""
    return _OS_FIXES.get(number)


def refuse_overwrite(path: str | Path, overwrite: bool, option: str = "--overwrite",
                     created: set[Path] | None = None) -> None:
    """Raise FileExistsError (one line, naming the file and `option`) when `path` exists, unless
    `overwrite` is set or `path` is in `created` (files this run wrote itself)."""
    path = Path(path)
    if overwrite or not (path.exists() or path.is_symlink()):
        return
    if created is not None and path.resolve() in {Path(p).resolve() for p in created}:
        return
    raise FileExistsError(f"{path} already exists and this run did not create it: pass {option} to replace it, "
                          "or choose another name")


def ensure_writable(path: str | Path) -> None:
    """Check, now, before a long computation whose result would be lost, that `path` can be written: a
    file can be created in its folder (or, when that folder does not exist yet, in the nearest folder
    above it that does). Creates nothing; raises the OSError (PermissionError, read-only file system,
    full disk, a file where a folder should be) with `path` as its file name."""
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".write-test.", suffix=".partial")
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        if exc.errno is None:
            raise
        raise type(exc)(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc
