"""A model's results file (test.py's `lfw_results.json` or `--json`, read by verify.py, ablate.py and
gather_results.py): what marks a file as one, refusing to replace a file test.py did not write, merging a
new LFW, `.bin`, YouTube Faces or IJB run into the earlier results, and the names of the ROC figures and
feature caches beside it."""
from __future__ import annotations

import json
from pathlib import Path

from ..base.atomic import atomic_write_text
from ..base.paths import ensure_writable
from ..base.registry import BENCHMARKS

RESULTS_FILE = "lfw_results.json"

# The benchmarks other than LFW each keep their results in a section of their own name ("ytf", "ijbb",
# "ijbc"), replaced only by a run of that benchmark.
SECTIONS = tuple(b for b in BENCHMARKS if b != "lfw")
# A results file test.py wrote holds at least one of these keys; anything else at its path is not ours to replace.
RESULT_KEYS = ("accuracy_mean", "fold_accuracies", "bin", "evaluated", "verify_rule", *SECTIONS)


def beside_results(results_path: str | Path, benchmark: str, ending: str) -> Path:
    """A file of `benchmark` beside the results file: `<benchmark><ending>` beside the default
    lfw_results.json (ytf_roc.png, ijbc_features.npy), `<stem>_<benchmark><ending>` beside any other
    (r.json -> r_ytf_roc.png), the stem without a "_results" ending."""
    results_path = Path(results_path)
    prefix = "" if results_path.name == RESULTS_FILE else f"{results_path.stem.removesuffix('_results')}_"
    return results_path.with_name(f"{prefix}{benchmark}{ending}")


def roc_path(results_path: str | Path, benchmark: str = "lfw") -> Path:
    """lfw_results.json -> lfw_roc.png; r.json -> r_roc.png; another benchmark's: `beside_results`
    (lfw_results.json -> ytf_roc.png, r.json -> r_ijbc_roc.png)."""
    results_path = Path(results_path)
    if benchmark != "lfw":
        return beside_results(results_path, benchmark, "_roc.png")
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


def prepare_results(results_path: str | Path | None, overwrite: bool = False, roc: bool = True,
                    benchmark: str = "lfw") -> None:
    """Before an evaluation: the results file (and the benchmark's ROC figure) may be written now, and
    replacing them loses nothing that test.py did not write; else the error comes at once, not after the
    features."""
    if results_path is None:
        return
    ensure_writable(results_path)
    previous = read_results(results_path, overwrite)
    figure = roc_path(results_path, benchmark)
    if roc and previous is None and not overwrite and (figure.exists() or figure.is_symlink()):
        raise FileExistsError(f"{figure} exists and no results file of test.py is beside it: pass --overwrite to "
                              "replace it, or --json another file")


def merge_results(previous: dict | None, lfw: dict | None = None, bins: dict | None = None,
                  sections: dict | None = None) -> dict:
    """One results file per model: an LFW run replaces the LFW part (the top-level keys) and keeps the
    rest; a `.bin` run replaces only the sets it evaluated; a YouTube Faces or IJB run (`sections`, e.g.
    {"ytf": {...}}) replaces only its own section."""
    unknown = set(sections or {}) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown results section(s) {sorted(unknown)}; expected {', '.join(SECTIONS)}")
    previous = dict(previous or {})
    kept = ("bin", *SECTIONS)
    merged = dict(lfw) if lfw is not None else {k: v for k, v in previous.items() if k not in kept}
    for name in SECTIONS:
        value = (sections or {}).get(name, previous.get(name))
        if value is not None:
            merged[name] = value
    kept_bins = dict(previous.get("bin", {}))
    kept_bins.update(bins or {})
    if kept_bins:
        merged["bin"] = kept_bins
    return merged


def update_results(results_path: str | Path, overwrite: bool = False, lfw: dict | None = None,
                   bins: dict | None = None, sections: dict | None = None) -> dict:
    """Merge a new LFW, `.bin`, YouTube Faces or IJB run into the results file at `results_path` (see
    `merge_results`) and write it atomically; returns what was written."""
    merged = merge_results(read_results(results_path, overwrite), lfw=lfw, bins=bins, sections=sections)
    atomic_write_text(results_path, json.dumps(merged, indent=2))
    return merged
