"""Ablation grids: every setting of a cartesian grid of config overrides trained and tested in its own run
folder, then the earlier port's result tables (ka-tsu-mo/pytorch-uniformface README: per-fold LFW accuracy
per `alpha=../beta=..` row, and the mean minimum class-center distance), which it assembled by hand.

A grid is `KEY=V1,V2,...` per axis, the values parsed as YAML (as `train.py --set` parses one value), so
`beta=0,1e-3` gives floats and `milestones=[10,20],[30,40]` two lists. Every setting's config is built and
validated before any training starts, so a misspelt key or a bad value costs nothing.

Resumable: a setting whose `lfw_results.json` exists is not rerun; one with final weights but no results is
only tested; one with a `checkpoint.pt` resumes from it (train.py --resume semantics); one whose loss went
non-finite is marked `diverged.txt` and reported, and the others go on (the earlier port saw NaN at
beta 0.01 and 0.1: a grid over such settings should still finish).
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from ..base.atomic import atomic_write_text
from ..base.config import Config, ConfigError, from_dict, get_key, load_config, to_dict, yaml_load
from .plots import METRICS_FILE, curves_figure, load_runs, save_png
from .report import RESULTS_FILE, gather_markdown, load_run, setting_name
from ..train.divergence import TrainingDiverged
from ..train.trainer import STATE_FILE, weights_filename

DIVERGED_FILE = "diverged.txt"
RESULTS_MD = "results.md"
CURVES_PNG = "curves.png"  # the settings' training curves, beside results.md and linked from it
# Keys that change how a run is carried out, not what it computes: a rerun may change them (another
# machine, more loader workers) and still continue the folder's run.
RUN_ONLY_KEYS = ("device", "num_workers", "log_every", "checkpoint_every", "eval_every", "compile",
                 "check_finite_every_step")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._=+-]")


@dataclass
class Setting:
    values: dict[str, Any]       # grid key -> value, in the grid's key order
    cfg: Config
    folder: Path
    state: str = "train"         # done | evaluate | resume | train | diverged
    note: str = ""               # what the state was read from (shown in the plan)

    @property
    def label(self) -> str:
        return self.folder.name


def parse_grid(items: Sequence[str]) -> list[tuple[str, list]]:
    """`["alpha=0,1", "beta=0,1e-3"]` -> `[("alpha", [0, 1]), ("beta", [0, 0.001])]`. The text after `=`
    is read as a YAML flow sequence, so commas inside brackets stay within one value."""
    axes: list[tuple[str, list]] = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,...")
        if not raw.strip():
            raise ConfigError(f"--grid {key}: no values after '='")
        try:
            values = yaml_load(f"[{raw}]")
        except yaml.YAMLError as exc:
            raise ConfigError(f"--grid {key}: cannot parse {raw!r} as comma-separated YAML values ({exc})") from exc
        if key in (k for k, _ in axes):
            raise ConfigError(f"--grid {key}: given twice; list all its values in one KEY=V1,V2,...")
        axes.append((key, values))
    if not axes:
        raise ConfigError("--grid: give at least one KEY=V1,V2,...")
    return axes


def expand(axes: Sequence[tuple[str, list]]) -> list[dict[str, Any]]:
    """Cartesian product, the first axis varying slowest (the order the rows of the tables follow)."""
    keys = [k for k, _ in axes]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values for _, values in axes))]


def override_text(value: Any) -> str:
    """A value written back as `--set` text that YAML reads as the same value (JSON is a YAML subset)."""
    return json.dumps(value)


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return f"{value:g}"
    if isinstance(value, list):
        return "-".join(_value_text(v) for v in value)
    return str(value)


def folder_name(values: dict[str, Any]) -> str:
    """`{"alpha": 1, "beta": 0.001}` -> `alpha=1_beta=0.001` (characters unsafe in a path become '-')."""
    return _UNSAFE_CHARS.sub("-", "_".join(f"{k}={_value_text(v)}" for k, v in values.items()))


def _differences(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(wanted)):
        dotted = prefix + key
        a, b = saved.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, dotted + ".")
        elif a != b and dotted not in RUN_ONLY_KEYS:
            out.append(f"{dotted}: {a!r} in the folder, {b!r} asked")
    return out


def read_state(setting: Setting) -> tuple[str, str]:
    """(state, note) of a setting's folder; raises ConfigError when the folder holds a run of other
    settings (a rerun with another base `--set` into the same --logdir must not mix the two)."""
    folder = setting.folder
    results = folder / RESULTS_FILE
    weights = folder / weights_filename(setting.cfg)
    saved = folder / "config.yaml"
    if saved.is_file() and any(p.is_file() for p in (results, weights, folder / STATE_FILE)):
        differ = _differences(to_dict(load_config(saved)), to_dict(setting.cfg))
        if differ:
            raise ConfigError(f"{folder} holds a run of other settings ({'; '.join(differ[:4])}); "
                              "use another --logdir, or delete the folder to train it anew")
    if results.is_file():
        try:
            finished = "fold_accuracies" in json.loads(results.read_text())
        except json.JSONDecodeError:
            finished = False
        if finished:
            return "done", f"{results} exists"
    if (folder / DIVERGED_FILE).is_file():
        return "diverged", (folder / DIVERGED_FILE).read_text().strip()
    if weights.is_file():
        return "evaluate", f"{weights.name} exists, no results yet"
    if (folder / STATE_FILE).is_file():
        return "resume", f"continues {folder / STATE_FILE}"
    return "train", "new"


def plan(config_path: str | Path, logdir: str | Path, grid: Sequence[str], base_overrides: Sequence[str] = ()
         ) -> list[Setting]:
    """Every setting's validated config, folder and state, before any work. Raises ConfigError."""
    settings: list[Setting] = []
    seen: dict[str, dict] = {}
    for values in expand(parse_grid(grid)):
        overrides = list(base_overrides) + [f"{k}={override_text(v)}" for k, v in values.items()]
        cfg = load_config(config_path, overrides)
        name = folder_name(values)
        resolved = to_dict(cfg)
        if name in seen:
            what = "the same settings" if seen[name] == resolved else "one folder name"
            raise ConfigError(f"--grid: two settings give {what} ({name}); list each value once")
        seen[name] = resolved
        setting = Setting(values, cfg, Path(logdir) / name)
        setting.state, setting.note = read_state(setting)
        settings.append(setting)
    return settings


def missing_inputs(settings: Sequence[Setting]) -> list[str]:
    """`key: path` for each input that a setting still to run needs and that does not exist (the training
    set, the val_targets sets its training evaluates, the LFW folder and pairs it is tested on), and
    `key: null` for an LFW folder a config leaves out: every setting is tested on one."""
    missing: dict[str, str] = {}  # what is missing -> its line
    for s in settings:
        wanted = []  # (key, path, how it must exist)
        if s.state in ("train", "resume"):
            wanted.append(("dataset.train", s.cfg.dataset.train, Path.exists))
            wanted += [("val_targets", path, Path.is_file) for path in s.cfg.val_targets]  # a folder: missing
        if s.state in ("train", "resume", "evaluate"):
            wanted += [("dataset.test", s.cfg.dataset.test, Path.exists),
                       ("dataset.pairs", s.cfg.dataset.pairs, Path.exists)]
        for key, path, exists in wanted:
            if path is None:
                missing.setdefault(key, f"{key}: null (ablate.py tests each setting on the aligned LFW folder)")
            elif not exists(Path(path)):
                missing.setdefault(str(path), f"{key}: {path}")
    return list(missing.values())


TrainFn = Callable[[Config, Path, bool], Path]
EvaluateFn = Callable[[Path, Config], None]


def run_grid(settings: Sequence[Setting], train_fn: TrainFn, evaluate_fn: EvaluateFn,
             log: Callable[[str], None] = print) -> None:
    """Train and test what each setting still lacks. `train_fn(cfg, run_dir, resume)` returns the final
    weights; `evaluate_fn(weights, cfg)` writes `lfw_results.json` beside them. A setting whose training
    raises `divergence.TrainingDiverged` is marked and skipped; any other error stops the grid (a rerun
    continues where it stopped)."""
    for index, s in enumerate(settings, 1):
        head = f"[{index}/{len(settings)}] {s.label}"
        if s.state in ("done", "diverged"):
            log(f"{head}: {s.state} ({s.note}); skipped")
            continue
        weights = s.folder / weights_filename(s.cfg)
        if s.state in ("train", "resume"):
            log(f"{head}: {'resuming' if s.state == 'resume' else 'training'} in {s.folder}")
            try:
                weights = train_fn(s.cfg, s.folder, s.state == "resume")
            except TrainingDiverged as exc:
                atomic_write_text(s.folder / DIVERGED_FILE, f"{exc}\n")
                s.state, s.note = "diverged", str(exc)
                log(f"{head}: diverged, marked {s.folder / DIVERGED_FILE}; going on with the others")
                continue
        log(f"{head}: testing {weights}")
        evaluate_fn(weights, s.cfg)
        if not (s.folder / RESULTS_FILE).is_file():
            raise RuntimeError(f"{s.label}: testing left no {s.folder / RESULTS_FILE}")
        s.state, s.note = "done", f"{s.folder / RESULTS_FILE} written"


def row_name(setting: Setting, cfg: Config | None = None) -> str:
    """The earlier port's row name `alpha=1.0/beta=0.001`, then `/key=value` for the grid's other keys,
    read from `cfg` (the run folder's config.yaml: the settings in force at the run's end, which a
    resume with other settings rewrites) or else from the setting's own config."""
    cfg = cfg if cfg is not None else setting.cfg
    extra = "".join(f"/{k}={get_key(cfg, k)}" for k in setting.values if k not in ("alpha", "beta"))
    return setting_name(to_dict(cfg)) + extra


def _row_name_of(setting: Setting, run_config: dict | None) -> str:
    """`row_name` with the settings the run folder's config.yaml says were in force at its end."""
    return row_name(setting, from_dict(run_config, str(setting.folder / "config.yaml")) if run_config else None)


def draw_curves(settings: Sequence[Setting], path: str | Path) -> bool:
    """The training curves of every setting that has logged (finished, diverged or stopped), one line each
    named as its row of the tables, written to `path` (a PNG). False when no setting has logged yet."""
    logged = [s for s in settings if (s.folder / METRICS_FILE).is_file()]
    runs = load_runs([s.folder for s in logged])
    for s, run in zip(logged, runs):
        run.label = _row_name_of(s, run.config)
    runs = [run for run in runs if not run.metrics.empty]
    if not runs:
        return False
    save_png(curves_figure(runs), path)
    return True


def results_markdown(settings: Sequence[Setting], title: str, curves: str | None = None) -> str:
    """`title`, the earlier port's tables over the finished settings (in grid order, rows named by
    `row_name`), a line per diverged setting, and the training curves' figure `curves` (a path relative
    to the markdown file) when given."""
    finished = [s for s in settings if s.state == "done"]
    parts = [f"{title}\n"]
    if finished:
        runs = [load_run(s.folder) for s in finished]
        names = [_row_name_of(s, run.config) for s, run in zip(finished, runs)]
        parts.append(gather_markdown(runs, names))
    diverged = [s for s in settings if s.state == "diverged"]
    if diverged:
        parts.append("- diverged (no results):\n\n" + "".join(f"  - {s.label}: {s.note}\n" for s in diverged))
    if curves:
        parts.append(f"- training curves of the settings\n\n![training curves]({curves})\n")
    return "\n".join(parts)
