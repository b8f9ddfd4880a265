"""A model's results file (test.py's `lfw_results.json` or `--json`, read by verify.py, ablate.py and
gather_results.py): what marks a file as one, refusing to replace a file test.py did not write, merging a
new LFW or `.bin` run into the earlier results, and the ROC figure's name beside it."""
from __future__ import annotations

import json
from pathlib import Path

from .atomic import atomic_write_text
from .paths import ensure_writable

# A results file test.py wrote holds at least one of these keys; anything else at its path is not ours to replace.
RESULT_KEYS = ("accuracy_mean", "fold_accuracies", "bin", "evaluated", "verify_rule")


def roc_path(results_path: str | Path) -> Path:
    """lfw_results.json -> lfw_roc.png; r.json -> r_roc.png."""
    results_path = Path(results_path)
    return results_path.with_name(f"{results_path.stem.removesuffix('_results')}_roc.png")


def read_results(path: str | Path | None, overwrite: bool = False) -> dict | None:
    """The earlier results file to merge into, or None when there is none (or `overwrite`). A file at `path`
    that test.py did not write (not JSON, or JSON without its keys) is never replaced unless `overwrite`:
    FileExistsError naming it."""
    if path is None or not (Path(path).exists() or Path(path).is_symlink()):
        return None
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: --json takes a file name")
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
        problem = None if isinstance(previous, dict) and any(k in previous for k in RESULT_KEYS) else \
            "JSON without the keys test.py writes"
    except json.JSONDecodeError as exc:
        previous, problem = None, f"line {exc.lineno}: not valid JSON ({exc.msg})"
    except UnicodeDecodeError as exc:
        previous, problem = None, f"not UTF-8 text (byte {exc.start})"
    if problem is None:
        return previous
    if overwrite:
        return None
    raise FileExistsError(f"{path} exists and is not a results file of test.py ({problem}): pass --overwrite "
                          "to replace it, or --json another file")


def prepare_results(results_path: str | Path | None, overwrite: bool = False, roc: bool = True) -> None:
    """Before an evaluation: the results file (and its ROC figure) may be written now, and replacing them
    loses nothing that test.py did not write; else the error comes at once, not after the features."""
    if results_path is None:
        return
    ensure_writable(results_path)
    previous = read_results(results_path, overwrite)
    figure = roc_path(results_path)
    if roc and previous is None and not overwrite and (figure.exists() or figure.is_symlink()):
        raise FileExistsError(f"{figure} exists and no results file of test.py is beside it: pass --overwrite to "
                              "replace it, or --json another file")


def merge_results(previous: dict | None, lfw: dict | None = None, bins: dict | None = None) -> dict:
    """One results file per model: an LFW run replaces the LFW part and keeps earlier `.bin` results;
    a `.bin` run replaces only the sets it evaluated."""
    previous = dict(previous or {})
    kept_bins = dict(previous.get("bin", {}))
    merged = dict(lfw) if lfw is not None else {k: v for k, v in previous.items() if k != "bin"}
    kept_bins.update(bins or {})
    if kept_bins:
        merged["bin"] = kept_bins
    return merged


def update_results(results_path: str | Path, overwrite: bool = False, lfw: dict | None = None,
                   bins: dict | None = None) -> dict:
    """Merge a new LFW or `.bin` run into the results file at `results_path` (see `merge_results`) and write
    it atomically; returns what was written."""
    merged = merge_results(read_results(results_path, overwrite), lfw=lfw, bins=bins)
    atomic_write_text(results_path, json.dumps(merged, indent=2))
    return merged
