"""One-line errors for the scripts in code/ (README, "Security and reliability").

A script's expected failures (a missing or unreadable file, a bad value, a full disk, a read-only
folder, a device that is not there) end in one line `error: <message>` on stderr and exit status 1,
with no traceback; `--debug` shows the traceback as well. A bug (any other exception) keeps its
traceback, since that is what a report of it needs.

Use in a script:

    from uniformface.cli import add_debug_flag, run_script, resolve_device

    def main(argv=None) -> int:
        parser = argparse.ArgumentParser(...)
        add_debug_flag(parser)
        args = parser.parse_args(argv)
        device = resolve_device(args.device)          # ValueError naming the device and a fix
        ...
        raise ScriptError(f"{path}: ... (fix: ...)")  # or FileNotFoundError / ValueError / OSError
        return 0

    if __name__ == "__main__":
        sys.exit(run_script(main))

The API: `ScriptError`, `EXPECTED`, `describe(exc)`, `run_script(main, argv=None)`,
`add_debug_flag(parser)`, `resolve_device(text, option="--device")`, `refuse_overwrite(path, ...)`,
`ensure_writable(path)` (before a long computation: can a file be created beside `path` now?).
"""
from __future__ import annotations

import errno
import os
import re
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable, Sequence

DEBUG_FLAG = "--debug"


class ScriptError(Exception):
    """An expected failure whose message already names the file / key / device and the fix."""


# What a script turns into a one-line error. OSError covers FileNotFoundError, PermissionError,
# IsADirectoryError, a full disk (ENOSPC) and a read-only file system (EROFS).
EXPECTED: tuple[type[BaseException], ...] = (ScriptError, ValueError, OSError)

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


def os_fix(number: int | None) -> str | None:
    """What to do about a system error of this errno (a full disk, a read-only folder, ...), or None."""
    return _OS_FIXES.get(number)


# checkpoint.atomic_write's temporary files: ".<name>.<8 random characters>.partial" beside <name>.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.partial$")


def _target(filename) -> str:
    """The file a write was for: an atomic write's temporary file stands for the file it would replace."""
    path = Path(os.fsdecode(filename))
    match = _TEMPORARY.match(path.name)
    return str(path.with_name(match["name"])) if match else str(path)


def describe(exc: BaseException) -> str:
    """The exception as one line. An OSError from the system ("[Errno 13] Permission denied: 'x'") becomes
    "x: permission denied (fix: ...)"; an error re-raised by a DataLoader worker (whose message is the
    worker's whole traceback) becomes the original error's own message."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        target = _target(exc.filename) if exc.filename is not None else None
        if exc.filename2 is not None:
            target = f"{target} -> {_target(exc.filename2)}"
        reason = exc.strerror[:1].lower() + exc.strerror[1:]
        fix = os_fix(exc.errno)
        text = f"{target}: {reason}" if target is not None else reason
        return text + (f" ({fix})" if fix else "")
    message = str(exc)
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        message = str(exc.args[0])
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1 and lines[0].startswith("Caught ") and "Original Traceback" in message:
        # torch.utils.data's ExceptionWrapper: "Caught X in DataLoader worker process 0.\nOriginal Traceback
        # ...\nX: <the message>": the last line is the original "Type: message".
        last = lines[-1]
        name, _, rest = last.partition(": ")
        return rest if rest and name.replace(".", "").replace("_", "").isalnum() else last
    return "; ".join(lines) if len(lines) <= 3 else f"{lines[0]} ... {lines[-1]}"


def _debug_requested(argv: Sequence[str] | None) -> bool:
    arguments = sys.argv[1:] if argv is None else argv
    return DEBUG_FLAG in arguments or os.environ.get("UNIFORMFACE_DEBUG", "") not in ("", "0")


def run_script(main: Callable[..., int | None], argv: Sequence[str] | None = None,
               expected: tuple[type[BaseException], ...] = EXPECTED) -> int:
    """`main(argv)`'s exit status; an `expected` exception becomes `error: <describe(exc)>` on stderr and
    status 1 (with its traceback first when `--debug` is among the arguments or UNIFORMFACE_DEBUG is set).
    Ctrl-C ends with status 130 and one line. Anything else propagates with its traceback (a bug)."""
    debug = _debug_requested(argv)
    try:
        status = main(argv)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("interrupted", file=sys.stderr)
        return 130
    except expected as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {describe(exc)}", file=sys.stderr)
        return 1
    return 0 if status is None else int(status)


def add_debug_flag(parser) -> None:
    """`--debug` on an argparse parser (run_script reads it from the arguments)."""
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help="on an error, also show the Python traceback (for a bug report)")


def resolve_device(text: str, option: str = "--device", use: str | None = None):
    """A torch.device that exists on this machine, or ValueError naming it and the fix (an unknown name,
    CUDA without a GPU, cuda:N beyond the GPUs there are, MPS unavailable). `option` names where the
    device came from, `use` how to give another one ("{}" is replaced by the device; default: option)."""
    import torch

    use = use or f"{option} {{}}"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{option} {text!r}: not a device name (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {text}: no CUDA GPU is available to this PyTorch (use {use.format('cpu')})")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"{option} {text}: this machine has {count} CUDA device(s), "
                             f"cuda:0..cuda:{count - 1} (use one of them, or {use.format('cpu')})")
    elif device.type == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise ValueError(f"{option} {text}: MPS is not available on this machine (use {use.format('cpu')})")
    elif device.type != "cpu":
        raise ValueError(f"{option} {text}: unsupported device type {device.type!r} (use cpu or cuda)")
    return device


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
