"""Result tables in the earlier port's README format (ka-tsu-mo/pytorch-uniformface: per-fold LFW accuracy
in percent with 3 decimals; mean minimum class-center distance with 4), and the gathering of several
runs' `lfw_results.json` into them, with the last accuracies each run logged on its val_targets `.bin`
sets while it trained (`metrics.jsonl`)."""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..base.config import history_lines, read_history, read_yaml
from ..base.paths import read_utf8_text
from ..base.registry import VAL_PREFIX
from ..eval.results import RESULTS_FILE

# insightface's usual order of its verification sets; others follow alphabetically.
BIN_SET_ORDER = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")


def set_order(names) -> list[str]:
    """`.bin` set names in BIN_SET_ORDER, the others after them alphabetically."""
    names = set(names)
    return [n for n in BIN_SET_ORDER if n in names] + sorted(names - set(BIN_SET_ORDER))


def fold_table(rows: Sequence[tuple[str, dict]]) -> str:
    """Markdown table: one row per setting, `Avg.` then folds 1..n, accuracies as percentages (cells 7
    wide, so that a 100.000 fold keeps the columns aligned)."""
    n_folds = max(len(result["fold_accuracies"]) for _, result in rows)
    width = max([18] + [len(name) for name, _ in rows])
    header = f"| {'':<{width}} |    Avg. | " + " | ".join(f"{i:^7}" for i in range(1, n_folds + 1)) + " |"
    rule = f"| {'-' * width} | ------- | " + " | ".join("-------" for _ in range(n_folds)) + " |"
    lines = [header, rule]
    for name, result in rows:
        folds = [f"{100 * a:7.3f}" for a in result["fold_accuracies"]]
        folds += [" " * 7] * (n_folds - len(folds))
        lines.append(f"| {name:<{width}} | {100 * result['accuracy_mean']:7.3f} | {' | '.join(folds)} |")
    return "\n".join(lines)


def accuracy_lines(label: str, result: dict, benchmark: str, protocol: str, over: str) -> list[str]:
    """The per-fold table, the mean accuracy with its spread, and the ROC figures when there are any."""
    lines = [fold_table([(label, result)]),
             f"{label}: {benchmark} accuracy ({protocol} protocol) {100 * result['accuracy_mean']:.3f} "
             f"+- {100 * result['accuracy_std']:.3f} % {over}"]
    if result.get("auc") is not None:
        lines.append(f"TAR@FAR=1e-3 {result['tar_at_far_1e-3']:.4f}, TAR@FAR=1e-2 {result['tar_at_far_1e-2']:.4f}, "
                     f"AUC {result['auc']:.4f}, EER {result['eer']:.4f}")
    return lines


def lfw_summary(label: str, lfw: dict, protocol: str) -> str:
    """What test.py prints for one model on LFW: the per-fold table, the mean, the ROC figures, the
    center spread, and a warning when pairs were counted as wrong for a missing image."""
    lines = accuracy_lines(label, lfw, "LFW", protocol, f"over {lfw['n_pairs']} pairs")
    if "mean_min_center_distance" in lfw:
        angle = lfw.get("mean_min_center_angle")
        lines.append(f"mean minimum distance between class centers ({lfw['centers_from']}): "
                     f"{lfw['mean_min_center_distance']:.4f}" + ("" if angle is None else f" ({angle:.2f}°)"))
    if lfw.get("n_missing_pairs"):
        lines.append(f"warning: {lfw['n_missing_pairs']} pair(s) had a missing image and were counted as wrong")
    return "\n".join(lines)


def center_distance_table(rows: Sequence[tuple[str, float]]) -> str:
    """The earlier port's second table: mean over classes of the distance to the nearest other center."""
    width = max([18] + [len(name) for name, _ in rows])
    lines = [f"| {'':<{width}} |   Min Avg. |", f"| {'-' * width} | ---------  |"]
    lines += [f"| {name:<{width}} | {value:^10.4f} |" for name, value in rows]
    return "\n".join(lines)


def bin_table(rows: Sequence[tuple[str, dict]]) -> str:
    """One row per insightface `.bin` set: pairs, mean accuracy +- std (%), TAR@FAR, AUC, EER."""
    width = max([8] + [len(name) for name, _ in rows])
    lines = [f"| {'set':<{width}} | pairs |  Acc. (%) |    std | TAR@FAR=1e-3 | TAR@FAR=1e-2 |    AUC |    EER |",
             f"| {'-' * width} | ----- | --------- | ------ | ------------ | ------------ | ------ | ------ |"]
    def cell(value, width):  # None: the set has no ROC (only one kind of pair)
        return f"{value:{width}.4f}" if value is not None else f"{'-':>{width}}"

    for name, r in rows:
        lines.append(f"| {name:<{width}} | {r['n_pairs']:>5} | {100 * r['accuracy_mean']:9.3f} | "
                     f"{100 * r['accuracy_std']:6.3f} | {cell(r['tar_at_far_1e-3'], 12)} | "
                     f"{cell(r['tar_at_far_1e-2'], 12)} | {cell(r['auc'], 6)} | {cell(r['eer'], 6)} |")
    return "\n".join(lines)


def validation_table(rows: Sequence[tuple[str, Validation]]) -> str:
    """Runs x val_targets sets: the last accuracy (%) each run logged while it trained, and the iteration of
    its last evaluation; a set whose last figure is older than that says from which iteration (`@N`), '-'
    where a run never logged the set."""
    columns = set_order(s for _, v in rows for s in v.sets)
    cells = [[_validation_cell(v, c) for c in columns] for _, v in rows]
    return _runs_by_sets([name for name, _ in rows], columns, cells,
                         lead=("iteration", [str(v.iteration) for _, v in rows]))


def _validation_cell(validation: Validation, name: str) -> str:
    if name not in validation.sets:
        return "-"
    value, iteration = validation.sets[name]
    return f"{100 * value:.3f}" + ("" if iteration == validation.iteration else f" @{iteration}")


def bin_accuracy_table(rows: Sequence[tuple[str, dict]]) -> str:
    """Runs x `.bin` sets: mean 10-fold accuracy (%), '-' where a run has no result for a set."""
    columns = set_order(s for _, sets in rows for s in sets)
    cells = [[f"{100 * sets[c]['accuracy_mean']:.3f}" if c in sets else "-" for c in columns] for _, sets in rows]
    return _runs_by_sets([name for name, _ in rows], columns, cells)


def _runs_by_sets(names: list[str], columns: list[str], cells: list[list[str]],
                  lead: tuple[str, list[str]] | None = None) -> str:
    """Markdown: a row per run, a column per set (cells centred, at least 8 wide), after an optional `lead`
    column (its header, its values right-aligned)."""
    width = max([18] + [len(name) for name in names])
    widths = [max([8, len(c)] + [len(row[k]) for row in cells]) for k, c in enumerate(columns)]
    lead_header, lead_values = lead or ("", [])
    lead_width = len(lead_header)

    def line(first: str, lead_cell: str | None, row: Sequence[str]) -> str:
        lead_part = "" if lead is None else f" {lead_cell} |"
        return f"| {first} |{lead_part} " + " | ".join(f"{c:^{w}}" for c, w in zip(row, widths)) + " |"

    lines = [line(f"{'':<{width}}", lead_header, columns),
             line("-" * width, "-" * lead_width, ["-" * w for w in widths])]
    lines += [line(f"{name:<{width}}", None if lead is None else f"{lead_values[k]:>{lead_width}}", row)
              for k, (name, row) in enumerate(zip(names, cells))]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- gathering

@dataclass
class Validation:
    """What a run logged on its val_targets sets while it trained: by set name, the last accuracy (a
    fraction) and the iteration it was logged at; `iteration`: the run's last evaluation of any set."""
    iteration: int
    sets: dict[str, tuple[float, int]]


@dataclass
class Run:
    folder: Path            # the run's folder (where lfw_results.json and config.yaml are)
    results: dict
    config: dict | None     # the run's config.yaml (the settings in force at its end), None when absent
    history: list[dict] = field(default_factory=list)  # settings changed on resume (config.HISTORY_FILE)
    results_path: Path | None = None  # the results file read (None: the folder's RESULTS_FILE)
    validation: Validation | None = None  # from the folder's metrics.jsonl, when the run logged val_targets

    @property
    def source(self) -> Path:
        return self.results_path or self.folder / RESULTS_FILE


def load_run(path: str | Path) -> Run:
    """A run folder (holding lfw_results.json, and config.yaml as train.py writes it) or a results file,
    with the val_targets accuracies logged in the folder's metrics.jsonl (a run folder that has those and
    no results file yet is read for them alone). A run resumed with changed settings is read with those in
    force at its end (train.py rewrites config.yaml) and the history of the changes."""
    path = Path(path)
    results_path = path if path.suffix == ".json" else path / RESULTS_FILE
    validation = last_validation(results_path.parent)
    if not results_path.is_file() and validation is not None and path.suffix != ".json":
        try:
            config, history = read_run_settings(path)
        except ValueError as exc:
            raise ValueError(f"{exc}; fix it, or pass the results file itself") from None
        return Run(path, {}, config, history, results_path, validation)
    if not results_path.is_file():
        raise FileNotFoundError(f"{results_path}: no results file (run test.py --model_path on the run's weights)")
    try:
        results = json.loads(read_utf8_text(results_path))  # a ValueError naming the file and line
    except json.JSONDecodeError as exc:
        raise ValueError(f"{results_path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
    if not isinstance(results, dict):
        raise ValueError(f"{results_path}: expected a JSON object of results")
    check_result_numbers(results, results_path)
    try:
        config, history = read_run_settings(results_path.parent)
    except ValueError as exc:
        raise ValueError(f"{exc}; fix it, or pass the results file itself") from None
    return Run(results_path.parent, results, config, history, results_path, validation)


def last_validation(folder: Path) -> Validation | None:
    """The last figure of each val_targets set in `folder`'s metrics.jsonl (read as plot_runs reads it: a
    resumed run's abandoned records and a last line being written are left out), or None when the folder
    has no such figure. A damaged line, or a figure that is not an accuracy, is a ValueError naming the file
    (and the line, or the key and iteration)."""
    from .plots import METRICS_FILE, read_metrics  # plots draws with this module's names

    path = folder / METRICS_FILE
    if not path.is_file():
        return None
    sets: dict[str, tuple[float, int]] = {}
    for iteration, record in sorted(read_metrics(path).evaluation.items()):
        for key, value in record.items():
            if not key.startswith(VAL_PREFIX) or value is None or math.isnan(value):
                continue  # a gap: no figure at this evaluation
            if not 0 <= value <= 1:
                raise ValueError(f"{path}: '{key}' at iteration {iteration} is {_shown(value)}, not an accuracy "
                                 "(a fraction in [0, 1]) as train.py logs it")
            sets[key[len(VAL_PREFIX):]] = (float(value), iteration)
    if not sets:
        return None
    return Validation(max(iteration for _, iteration in sets.values()), sets)


def check_result_numbers(results: dict, path: Path) -> None:
    """The numbers the tables print, as test.py writes them, or a ValueError naming the file and the key:
    accuracies finite fractions in [0, 1] (`accuracy_mean: 1e400`, which JSON reads as inf, printed `inf`;
    folds written as strings were a format error naming nothing), the center distance a finite number."""
    def refuse(key: str, value, wanted: str):
        raise ValueError(f"{path}: {key} is {_shown(value)}, not {wanted}; rerun test.py --model_path on the "
                         "run's weights")

    def check_accuracy(key: str, value) -> None:
        if not _is_number(value) or not 0 <= value <= 1:
            refuse(key, value, "an accuracy (a fraction in [0, 1])")

    if "accuracy_mean" in results:
        check_accuracy("'accuracy_mean'", results["accuracy_mean"])
    if "fold_accuracies" in results:
        folds = results["fold_accuracies"]
        if not isinstance(folds, list) or not folds:
            refuse("'fold_accuracies'", folds, "a list of per-fold accuracies")
        for number, value in enumerate(folds, 1):
            check_accuracy(f"fold {number} of 'fold_accuracies'", value)
    distance = results.get("mean_min_center_distance")
    if distance is not None and (not _is_number(distance) or distance < 0):
        refuse("'mean_min_center_distance'", distance, "a distance (a finite number >= 0)")
    sets = results.get("bin")
    if sets:
        if not isinstance(sets, dict):
            refuse("'bin'", sets, "a mapping of .bin set names to their results")
        for name, result in sets.items():
            if not isinstance(result, dict) or "accuracy_mean" not in result:
                refuse(f"bin set {name!r}", result, "a mapping holding 'accuracy_mean'")
            check_accuracy(f"'accuracy_mean' of bin set {name!r}", result["accuracy_mean"])


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def read_run_settings(folder: Path) -> tuple[dict | None, list]:
    """A run folder's settings in force at its end: config.yaml (None when absent) and the changes
    config_history.yaml records. A config that is not a mapping is a ValueError naming it."""
    config_path = folder / "config.yaml"
    config = read_yaml(config_path) if config_path.is_file() else None
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a mapping of settings")
    return config, (read_history(folder) if config is not None else [])


def setting_name(config: dict | None) -> str | None:
    """`alpha=1.0/beta=0.001`, the earlier port's row names (alpha: uniform-loss weight, beta: center rate)."""
    if not config or "alpha" not in config or "beta" not in config:
        return None
    return f"alpha={_setting(config['alpha'])}/beta={_setting(config['beta'])}"


def _setting(value) -> str:
    """A number as the earlier port's names write it (`1.0`); anything else (a config.yaml edited by
    hand) as its text, not a float() traceback naming nothing."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(float(value))
    return value[:60] if isinstance(value, str) else _shown(value)


def setting_names(runs: Sequence[Run]) -> list[str]:
    """Row names: alpha/beta from each run's config (else the folder's name). Runs sharing a name get the
    settings in which they differ appended (`/center_mode=weight`), then their folder if still equal."""
    names = [setting_name(run.config) or run.folder.name for run in runs]
    for name in [n for n, count in Counter(names).items() if count > 1]:
        group = [i for i, n in enumerate(names) if n == name]
        flat = [_flatten(runs[i].config or {}) for i in group]
        keys = sorted({k for f in flat for k in f} - {"alpha", "beta"})
        differing = [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1]
        for i, f in zip(group, flat):
            names[i] = name + "".join(f"/{k}={f.get(k)}" for k in differing)
    for name in [n for n, count in Counter(names).items() if count > 1]:
        for i in [i for i, n in enumerate(names) if n == name]:
            names[i] = f"{name} ({runs[i].folder.name})"
    return names


def gather_markdown(runs: Sequence[Run], names: Sequence[str] | None = None) -> str:
    """The earlier port's README result section for these runs: the per-fold LFW table, the mean minimum
    center distance table (runs that report one), `.bin` set accuracies when any run has them (test.py's),
    and the last val_targets accuracies logged during training when any run has those."""
    names = list(names) if names is not None else setting_names(runs)
    if len(names) != len(runs):
        raise ValueError(f"{len(names)} names for {len(runs)} runs")
    sections = []
    for run in runs:
        has_lfw = "fold_accuracies" in run.results or "accuracy_mean" in run.results
        if has_lfw and not ("fold_accuracies" in run.results and "accuracy_mean" in run.results):
            raise ValueError(f"{run.source}: needs both 'accuracy_mean' and 'fold_accuracies'")
        if not has_lfw and not run.results.get("bin") and run.validation is None:
            raise ValueError(f"{run.source}: holds neither LFW results ('fold_accuracies') nor .bin results ('bin')")
    lfw = [(name, run) for name, run in zip(names, runs) if "fold_accuracies" in run.results]
    if lfw:
        protocols = sorted({str(run.results.get("protocol", "sphereface")) for _, run in lfw})
        rows = [(name if len(protocols) == 1 else f"{name} [{run.results.get('protocol', 'sphereface')}]", run.results)
                for name, run in lfw]
        n_folds = max(len(r["fold_accuracies"]) for _, r in rows)
        sections.append(f"- LFW accuracy ({n_folds}-fold, {' / '.join(protocols)} protocol)\n\n{fold_table(rows)}")
    centers = [(name, float(run.results["mean_min_center_distance"])) for name, run in zip(names, runs)
               if run.results.get("mean_min_center_distance") is not None]
    if centers:
        sections.append("- average of minimum class distance for all class centers\n\n"
                        + center_distance_table(centers))
    bins = [(name, run.results["bin"]) for name, run in zip(names, runs) if run.results.get("bin")]
    if bins:
        sections.append("- insightface .bin sets, accuracy (10-fold, insightface protocol)\n\n"
                        + bin_accuracy_table(bins))
    validated = [(name, run.validation) for name, run in zip(names, runs) if run.validation is not None]
    if validated:
        sections.append("- val_targets during training, last accuracy logged (%, 10-fold, insightface protocol; "
                        "metrics.jsonl's val/<set>)\n\n" + validation_table(validated))
    changed = [(name, run.history) for name, run in zip(names, runs) if run.history]
    if changed:
        sections.append("- settings changed when resumed (the rows show those in force at the end)\n\n"
                        + "\n".join(f"  - {name}: {line}" for name, history in changed
                                    for line in history_lines(history)))
    return "\n\n".join(sections) + "\n"


def _flatten(mapping: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
