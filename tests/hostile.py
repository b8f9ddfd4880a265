"""Hostile conditions the suite can make for real (docs/RELIABILITY.md), and the check
that a script ended in one clear line."""
import contextlib
import os
import re
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def read_only_folder(path):
    """`path` (created) made unwritable for this process: mode 0555, and for root, who ignores modes,
    the immutable attribute (chattr +i). Skips the test where neither works."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o555)
    immutable = False
    if os.access(path, os.W_OK):
        immutable = subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
        if not immutable:
            path.chmod(0o755)
            pytest.skip("cannot make a folder read-only here (root without chattr)")
    try:
        yield path
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(0o755)


def one_line_error(err: str, *words: str) -> str:
    """`err` (a script's stderr) is exactly one line `<script>: error: ...` (uniformface.base.cli's format, e.g.
    `train.py: error: ...`), with no traceback, holding every word."""
    assert re.match(r"[\w.-]+: error: ", err) and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    return err
