"""How every script in code/ (and its installed `uniformface-...` command) behaves on the command line
(docs/RELIABILITY.md).

- Exit status: 0 success; 2 a usage error, before any work (argparse's own, or a `UsageError` such as a
  config key out of range); 1 a runtime failure; 130 Ctrl-C.
- One error format: `<script>: error: <message>` on stderr, the format argparse uses for usage errors
  (after its `usage:` line). An expected failure (a missing or unreadable file, a bad value, a full disk,
  a read-only folder, a device that is not there) is that one line, with no traceback; `--debug` (or
  UNIFORMFACE_DEBUG=1) shows the traceback too. A bug (any other exception) keeps its traceback, since
  that is what a report of it needs.
- Help: every option has help text that shows its default (`HelpFormatter`). Scripts import torch only
  after parsing their arguments, so that `--help` and a usage error answer at once.
- The library's messages (module loggers under `uniformface`) are shown on stderr while a script runs,
  beside any live progress bar.

A script (uniformface/commands/<name>.py):

    NAME = "train"

    def build_parser():
        parser = new_parser(NAME, __doc__)                 # with --debug
        parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
        return parser

    def run(args, parser) -> int:
        from uniformface.base.devices import resolve_device     # torch: only after parsing
        device = resolve_device(args.device)               # ValueError naming the device and a fix
        ...
        raise ScriptError(f"{path}: ... (fix: ...)")       # or FileNotFoundError / ValueError / OSError
        return 0

    def main(argv=None) -> int:
        return run_command(NAME, build_parser, run, argv)
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .paths import ensure_writable, os_fix, refuse_overwrite

DEBUG_FLAG = "--debug"
COMMAND_PREFIX = "uniformface-"  # the installed commands: uniformface-train, uniformface-gather-results, ...
USAGE_STATUS = 2  # argparse's status for a usage error


class ScriptError(Exception):
    """An expected failure whose message already names the file / key / device and the fix."""


class UsageError(ScriptError):
    """A command line that cannot be used (a config key out of range, two options that exclude each other),
    found before any work: exit status 2, as argparse's own usage errors."""


# What a script turns into a one-line error. OSError covers FileNotFoundError, PermissionError,
# IsADirectoryError, a full disk (ENOSPC) and a read-only file system (EROFS).
EXPECTED: tuple[type[BaseException], ...] = (ScriptError, ValueError, OSError)

# atomic.py's temporary files: ".<name>.<8 random characters>.partial" beside <name>.
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


def command_name(name: str) -> str:
    """The installed console command of script `name`: `gather_results` -> `uniformface-gather-results`."""
    return COMMAND_PREFIX + name.replace("_", "-")


def script_name(name: str) -> str:
    """What the user typed to run script `name`, for its messages: `train.py` (`python code/train.py`) or
    `uniformface-train` (the installed command); `train.py` when it runs inside another program (a test)."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return invoked if invoked in (f"{name}.py", command_name(name)) else f"{name}.py"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The script's docstring as written, and after each option's help its default: `(default: X)`,
    `(default: off)` for a flag, nothing where the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.required or action.default is argparse.SUPPRESS
                or "%(default)" in text or "default" in text.lower()):
            return text
        if action.nargs == 0 and action.default is False:  # store_true
            return f"{text} (default: off)"
        return f"{text} (default: %(default)s)"


# What every script's --help says last, once for all of them (argparse fills in %(prog)s; the formatter
# keeps the line breaks).
ERRORS_EPILOG = ("Errors end in one line `%(prog)s: error: ...` on stderr, with exit status 2 for a usage\n"
                 "error (before any work), 1 for any other failure, 130 for Ctrl-C; --debug (or\n"
                 "UNIFORMFACE_DEBUG=1) adds the traceback.")


def new_parser(name: str, description: str | None) -> argparse.ArgumentParser:
    """The argument parser of script `name` (its docstring as the description, ERRORS_EPILOG after the
    options), with `--debug`."""
    parser = argparse.ArgumentParser(prog=script_name(name), description=description, epilog=ERRORS_EPILOG,
                                     formatter_class=HelpFormatter)
    add_debug_flag(parser)
    return parser


def check_png_output(parser: argparse.ArgumentParser, output: str, dpi: int, overwrite: bool,
                     names: Sequence[str] | None = None, inputs: Sequence[str] = (), what: str = "runs") -> None:
    """What a figure-writing script checks before any work: one --names label per input when given, a .png
    name, a sane --dpi, an output that is its own to write (--overwrite) in a writable folder."""
    if names is not None and len(names) != len(inputs):
        parser.error(f"--names: {len(names)} names for {len(inputs)} {what}")
    if not 10 <= dpi <= 1000:
        parser.error(f"--dpi: expected 10 to 1000, got {dpi}")
    if not output.lower().endswith(".png"):
        parser.error(f"--output {output}: expected a .png file name")
    refuse_overwrite(output, overwrite)
    ensure_writable(output)


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """`--debug` on an argparse parser (run_script reads it from the arguments)."""
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help="on an error, also show the Python traceback (for a bug report)")


class _ConsoleHandler(logging.Handler):
    """Each message as one line on the stderr of the moment (a test's captured stream too); through
    tqdm.write when tqdm is loaded, which keeps a live progress bar intact."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            tqdm = sys.modules.get("tqdm")
            if tqdm is not None:
                tqdm.tqdm.write(text, file=sys.stderr)
            else:
                sys.stderr.write(text + "\n")
                sys.stderr.flush()
        except Exception:  # logging's rule: a failing handler reports itself and never raises into the caller
            self.handleError(record)


@contextlib.contextmanager
def library_messages(level: int = logging.INFO) -> Iterator[None]:
    """While the block runs, the library's log messages at `level` and above are shown on stderr as they
    were written (the messages carry their own `note:` / `warning:` prefix)."""
    logger = logging.getLogger(__name__.split(".")[0])  # the package's root logger: every module's messages
    if any(isinstance(h, _ConsoleHandler) for h in logger.handlers):  # a script run by a script: shown once
        yield
        return
    handler = _ConsoleHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def _debug_requested(argv: Sequence[str] | None) -> bool:
    arguments = sys.argv[1:] if argv is None else argv
    return DEBUG_FLAG in arguments or os.environ.get("UNIFORMFACE_DEBUG", "") not in ("", "0")


def _is_expected(exc: BaseException, expected: Sequence[type[BaseException] | str]) -> bool:
    """`exc` is an instance of one of `expected`: classes, or "module.Class" names of classes in modules that
    need not be imported yet (an exception of a module that was never imported cannot have been raised)."""
    if isinstance(exc, UsageError):
        return True
    for kind in expected:
        if isinstance(kind, str):
            module, _, attribute = kind.rpartition(".")
            kind = getattr(sys.modules.get(module), attribute, None)
            if kind is None:
                continue
        if isinstance(exc, kind):
            return True
    return False


def _exit_status(code) -> int:
    """SystemExit's code as an exit status (None is success; a message is printed and is failure)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def run_script(main: Callable[..., int | None], argv: Sequence[str] | None = None,
               expected: Sequence[type[BaseException] | str] = EXPECTED, *, prog: str | None = None) -> int:
    """`main(argv)`'s exit status, with the library's messages shown on stderr meanwhile. argparse's exit
    (a usage error, `--help`) becomes its status; a UsageError `<prog>: error: <message>` and status 2; an
    `expected` exception `<prog>: error: <describe(exc)>` and status 1 (with its traceback first when
    `--debug` is among the arguments or UNIFORMFACE_DEBUG is set); Ctrl-C one line and status 130. Anything
    else propagates with its traceback (a bug). `prog` is the script's name (`train` for train.py)."""
    if prog:
        label = script_name(prog)
    else:
        label = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "uniformface"
    debug = _debug_requested(argv)
    try:
        with library_messages():
            status = main(argv)
    except SystemExit as exc:
        return _exit_status(exc.code)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{label}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not _is_expected(exc, expected):
            raise
        if debug:
            traceback.print_exc()
        print(f"{label}: error: {describe(exc)}", file=sys.stderr)
        return USAGE_STATUS if isinstance(exc, UsageError) else 1
    return 0 if status is None else int(status)


def run_command(name: str, build_parser: Callable[[], argparse.ArgumentParser],
                run: Callable[[argparse.Namespace, argparse.ArgumentParser], int | None],
                argv: Sequence[str] | None = None,
                expected: Sequence[type[BaseException] | str] = EXPECTED) -> int:
    """Script `name`'s exit status: its arguments parsed by `build_parser()`, then `run(args, parser)`, all
    under `run_script`'s rules (the parser comes along for usage errors found after parsing)."""
    def main(arguments: Sequence[str] | None) -> int | None:
        parser = build_parser()
        return run(parser.parse_args(arguments), parser)

    return run_script(main, argv, expected, prog=name)
