"""Pictures of runs: the training curves of several runs side by side, read from their `metrics.jsonl`
(docs/DESIGN.md §8.3), and a trained network's classes on the unit sphere, the picture the UniformFace
paper draws to show what the uniform loss does to the geometry.

Figures are drawn on matplotlib's Agg canvas through its object API (`Figure` + `FigureCanvasAgg`), never
through pyplot: no display is needed, and no global backend or state is chosen for anyone else in the
process. PNGs are written atomically (`atomic.py`). Torch is imported only by `model_sphere_view`, which
runs a network; the curves need none.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..base.atomic import atomic_write_bytes
from ..base.config import history_lines
from ..base.paths import shown
from ..base.registry import VAL_PREFIX
from .report import Run, read_run_settings, set_order, setting_names
from ..eval.protocols import figure_png_bytes, l2_normalize, new_figure

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"  # the trainer's log of a run folder (trainer.METRICS_FILE)
# the key that marks an evaluation line (eval_every) of metrics.jsonl; so does any key of VAL_PREFIX
EVALUATION_KEY = "lfw_accuracy"


def is_evaluation_key(key: str) -> bool:
    """A key of an evaluation line: the LFW folder's accuracy (and its std), or a val_targets set's."""
    return key in (EVALUATION_KEY, "lfw_accuracy_std") or key.startswith(VAL_PREFIX)


# ----------------------------------------------------------------------------------------- metrics.jsonl

@dataclass
class Metrics:
    """One run's metrics.jsonl: training lines and evaluation lines (those holding `lfw_accuracy` or a
    `val/<set>` accuracy), each kind by iteration, in iteration order."""
    path: Path
    training: dict[int, dict] = field(default_factory=dict)
    evaluation: dict[int, dict] = field(default_factory=dict)
    cut_last_line: bool = False  # the last line was incomplete and is left out

    @property
    def empty(self) -> bool:
        return not self.training and not self.evaluation

    def has(self, key: str) -> bool:
        return any(key in record for record in self._records(key).values())

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(iterations, values as float64) of every record holding `key`, by iteration."""
        points = sorted((i, r[key]) for i, r in self._records(key).items() if key in r)
        iterations = np.array([i for i, _ in points], dtype=np.int64)
        values = np.array([math.nan if v is None else v for _, v in points], dtype=np.float64)
        return iterations, values

    def validation_sets(self) -> list[str]:
        """The names of the `.bin` sets (val_targets) the run logs, in insightface's order of its sets."""
        return set_order({key[len(VAL_PREFIX):] for record in self.evaluation.values() for key in record
                          if key.startswith(VAL_PREFIX)})

    def _records(self, key: str) -> dict[int, dict]:
        return self.evaluation if is_evaluation_key(key) else self.training


# The trainer computes in float32: no value it logs lies beyond float32's range (a loss that reached it
# would be inf, and the run stops at a non-finite loss before logging it); nor does an iteration pass
# int64, the type the curves are drawn from. Beyond these, matplotlib's axis arithmetic overflows too.
LARGEST_VALUE = float(np.finfo(np.float32).max)
LARGEST_ITERATION = int(np.iinfo(np.int64).max)


def _is_number(value) -> bool:
    """A number that can be drawn, or a gap (null, NaN: a figure the log point did not have)."""
    if value is None:
        return True
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    return math.isnan(value) or abs(value) <= LARGEST_VALUE


def read_metrics(path: str | Path) -> Metrics:
    """A run's metrics.jsonl, as a run still training or a resumed one leaves it:
    - a last line without its newline that is not a complete record is left out (the trainer is writing
      it, or was killed while it did: the trainer drops it itself on --resume);
    - when a line's iteration is not past the one before it of its kind, the log went back to a
      checkpoint (a resume): the records from that iteration on that came before it are replaced by what
      follows, so the last record of an iteration wins and a branch the resume abandoned is not drawn;
    - any other line that is not a JSON object with an integer `iteration` and numbers for the keys drawn
      (PANELS) is a ValueError naming the file and line. A missing or unreadable file is an OSError naming it.
    A file with no record yet (a run before its first log point) gives empty Metrics."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder; give a run folder or its {METRICS_FILE}")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (train.py writes it in the run folder at the first "
                                "log point)")
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    unfinished = lines[-1] != ""  # the last line has no newline yet
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    metrics = Metrics(path)
    latest = {"training": -1, "evaluation": -1}  # each kind's last iteration so far
    for position, (number, line) in enumerate(numbered):
        last = position == len(numbered) - 1
        try:
            record = _parse_record(line)
        except ValueError as exc:
            if last and unfinished:
                metrics.cut_last_line = True
                log.info("note: %s:%d: the last line is incomplete (the run is writing it, or was killed "
                         "while it did); drawn without it", path, number)
                break
            raise ValueError(f"{path}:{number}: {exc}") from None
        name = "evaluation" if any(is_evaluation_key(key) for key in record) else "training"
        kind, iteration = getattr(metrics, name), record["iteration"]
        if iteration <= latest[name]:
            for stale in [i for i in kind if i >= iteration]:
                del kind[stale]
        kind[iteration] = record
        latest[name] = iteration
    return metrics


def _parse_record(line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a JSON record ({exc.msg}: {shown(line, 40)})") from None
    if not isinstance(record, dict):
        raise ValueError(f"not a JSON object but a {type(record).__name__}")
    iteration = record.get("iteration")
    if not isinstance(iteration, int) or isinstance(iteration, bool) or not 0 <= iteration <= LARGEST_ITERATION:
        raise ValueError(f"'iteration' is {shown(iteration, 40)}, not an iteration number"
                         + (" (beyond int64)" if isinstance(iteration, int) and iteration > 0 else ""))
    # the keys drawn; others are carried along unread (a later trainer may add some)
    for key in [panel.key for panel in PANELS] + [key for key in record if key.startswith(VAL_PREFIX)]:
        value = record.get(key)
        if not _is_number(value):
            beyond = isinstance(value, (int, float)) and not isinstance(value, bool)
            raise ValueError(f"'{key}' is {shown(value, 40)}, not a number"
                             + (f" a run logs (beyond float32's range, {LARGEST_VALUE:.3g})" if beyond else ""))
    return record


# ------------------------------------------------------------------------------------------------ curves

@dataclass(frozen=True)
class Panel:
    key: str              # the metrics.jsonl key
    title: str
    log_scale: bool = False
    smoothed: bool = False  # a batch statistic, which the moving average applies to
    optional: bool = False  # drawn only when some run logs it


# What a researcher reads a run by: how well it fits, the two terms of its loss, the A-Softmax lambda and
# learning-rate schedules it ran, and the spread of its class centers (the quantity the uniform loss acts
# on, docs/DESIGN.md §4.8); the LFW accuracy during training when eval_every logs it, and after it one
# panel per val_targets set that a run logs (`validation_panel`).
PANELS = (
    Panel("accuracy", "training accuracy", smoothed=True),
    Panel("cross_entropy", "cross-entropy", smoothed=True),
    Panel("uniform_loss", "uniform loss", smoothed=True),
    Panel("lambda", "A-Softmax λ", log_scale=True),
    Panel("lr", "learning rate", log_scale=True),
    Panel("mean_min_center_angle", "mean nearest-center angle (°)"),
    Panel(EVALUATION_KEY, "LFW accuracy during training", optional=True),
)


def validation_panel(name: str) -> Panel:
    """The panel of a `.bin` set of val_targets: its accuracy during training, key val/<name>."""
    return Panel(VAL_PREFIX + name, f"{name}.bin accuracy during training ({VAL_PREFIX}{name})", optional=True)


@dataclass
class RunCurves:
    label: str
    folder: Path
    metrics: Metrics
    config: dict | None = None
    history: list[dict] = field(default_factory=list)


def load_runs(paths: Sequence[str | Path], names: Sequence[str] | None = None) -> list[RunCurves]:
    """Each run folder (or its metrics.jsonl) with its metrics and the settings in force at its end
    (config.yaml, config_history.yaml), labelled as the result tables name its row (`alpha=1.0/beta=0.5`,
    `report.setting_names`) unless `names` are given."""
    if names is not None and len(names) != len(paths):
        raise ValueError(f"{len(names)} names for {len(paths)} runs")
    runs = []
    for path in paths:
        path = Path(path)
        folder = path.parent if path.suffix == ".jsonl" else path
        metrics = read_metrics(path if path.suffix == ".jsonl" else path / METRICS_FILE)
        config, history = read_run_settings(folder)
        runs.append(RunCurves(folder.name, folder, metrics, config, history))
    labels = list(names) if names is not None else setting_names([Run(r.folder, {}, r.config, r.history) for r in runs])
    for run, label in zip(runs, labels):
        run.label = label
    return runs


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last `window` points (fewer at the start), one value per point. Each window
    is summed on its own (a convolution; a running sum's differences would lose every small value after a
    spike of 1e38, and carry a gap to the end). A gap (NaN: a log point without the figure) is left out of
    the windows holding it; a window holding nothing else is a gap."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or values.size == 0:
        return values.copy()
    present = ~np.isnan(values)
    sums = np.convolve(np.where(present, values, 0.0), np.ones(window))[:values.size]
    counts = np.concatenate([[0], np.cumsum(present)])
    end = np.arange(1, values.size + 1)
    held = counts[end] - counts[np.maximum(0, end - window)]
    return np.where(held > 0, sums / np.maximum(held, 1), np.nan)


def run_colour(index: int) -> str:
    return f"C{index % 10}"


def run_style(index: int) -> str:
    return ("-", "--", ":", "-.")[(index // 10) % 4]  # past ten runs the colours repeat, the dashes differ


def wrap_label(label: str, width: int = 110) -> str:
    """A long run name on several lines, broken after its `/` separators (`alpha=1.0/beta=0.5/lr=0.01`)."""
    lines, current = [], ""
    for part in label.replace("/", "/\0").split("\0"):
        if current and len(current) + len(part) > width:
            lines.append(current)
            current = ""
        current += part
    return "\n".join(lines + [current])


def curves_figure(runs: Sequence[RunCurves], window: int = 1, title: str | None = None):
    """One panel per PANELS entry (the optional ones when some run logs them) and per val_targets set some
    run logs, one line per run that logs the panel's key, labelled with the run's label; the batch
    statistics averaged over `window` logged points. Returns the matplotlib Figure; its axes are the
    panels drawn, in PANELS order."""
    from matplotlib.lines import Line2D

    if not runs:
        raise ValueError("no runs to draw")
    if all(run.metrics.empty for run in runs):
        raise ValueError(f"no metrics records yet in {', '.join(str(run.metrics.path) for run in runs)} (train.py "
                         "logs every log_every iterations)")
    if window < 1:
        raise ValueError(f"moving-average window must be at least 1, got {window}")
    panels = [p for p in PANELS if not p.optional or any(r.metrics.has(p.key) for r in runs)]
    logged_sets = set_order(name for run in runs for name in run.metrics.validation_sets())
    panels += [validation_panel(name) for name in logged_sets]
    columns = 3 if len(panels) <= 6 else 4
    rows = math.ceil(len(panels) / columns)
    figure = new_figure(4.2 * columns, 3.1 * rows + 0.5 + 0.25 * math.ceil(len(runs) / 3))
    for number, panel in enumerate(panels, 1):
        axes = figure.add_subplot(rows, columns, number)
        smoothing = panel.smoothed and window > 1
        axes.set_title(panel.title + (f" (mean of {window} log points)" if smoothing else ""), fontsize=10)
        axes.set_xlabel("iteration", fontsize=9)
        axes.tick_params(labelsize=8)
        axes.grid(alpha=0.3)
        positive = True
        drawn = 0
        for index, run in enumerate(runs):
            if not run.metrics.has(panel.key):
                continue
            iterations, values = run.metrics.series(panel.key)
            if smoothing:
                values = moving_average(values, window)
            axes.plot(iterations, values, color=run_colour(index), linestyle=run_style(index), linewidth=1.3,
                      label=run.label, marker="." if len(iterations) == 1 else None)
            positive = positive and bool(np.all(values[np.isfinite(values)] > 0))
            drawn += 1
        if not drawn:
            axes.text(0.5, 0.5, "not logged by these runs", ha="center", va="center", color="0.5",
                      transform=axes.transAxes)
        elif panel.log_scale and positive:
            axes.set_yscale("log")
    handles = [Line2D([], [], color=run_colour(i), linestyle=run_style(i), label=wrap_label(r.label))
               for i, r in enumerate(runs)]
    wide = any(len(r.label) > 45 for r in runs)
    figure.legend(handles=handles, loc="outside upper center", ncols=1 if wide else min(3, len(runs)), fontsize=9,
                  frameon=False)
    if title:
        figure.suptitle(title)
    notes = [f"{run.label}: settings changed {line}" for run in runs for line in history_lines(run.history)]
    notes += [f"{run.label}: still training, or killed while logging: last line of {run.metrics.path.name} "
              "left out" for run in runs if run.metrics.cut_last_line]
    if notes:
        figure.supxlabel("\n".join(notes), fontsize=8, color="0.3")
    return figure


def save_png(figure, path: str | Path, dpi: int = 100) -> Path:
    """The figure as a PNG at `path`, written atomically (a temporary file renamed into place)."""
    atomic_write_bytes(path, figure_png_bytes(figure, dpi=dpi))
    return Path(path)


# ---------------------------------------------------------------------------------------------- the sphere

@dataclass
class SphereView:
    """What one panel of the sphere figure shows: unit feature vectors and class centers in 3-d."""
    label: str
    classes: list[str]
    features: np.ndarray    # (N, 3) unit rows, as drawn
    labels: np.ndarray      # (N,) row -> index into classes
    centers: np.ndarray     # (C, 3) unit rows, as drawn
    mean_angle: float       # mean over the classes of the angle to the nearest other center, degrees,
                            # in the network's own dimensions
    dims: int               # the network's embedding dimension
    centers_from: str       # what the centers are
    projection: str | None  # how the dims were brought to 3 (None: the features are 3-d)


def _unit(x) -> np.ndarray:
    return l2_normalize(np.asarray(x, dtype=np.float64))


def mean_nearest_angle(rows: np.ndarray) -> float:
    """Mean over rows of the angle (degrees) to the nearest other row, after unit normalisation: the
    figure the trainer logs as mean_min_center_angle (docs/DESIGN.md §4.8), here in float64 numpy."""
    unit = _unit(rows)
    if len(unit) < 2:
        raise ValueError(f"need at least 2 centers for a nearest-center angle, got {len(unit)}")
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -np.inf)
    return float(np.degrees(np.arccos(np.clip(cosine.max(axis=1), -1.0, 1.0))).mean())


def principal_axes(points: np.ndarray, k: int = 3) -> tuple[np.ndarray, float]:
    """(k x D axes, fraction of the points' sum of squares they keep): PCA through the origin (the SVD of
    the points themselves, no mean removed), so that a direction stays a direction and the origin, the
    sphere's center, stays where it is. Each axis's sign is fixed (its largest component positive)."""
    points = np.asarray(points, dtype=np.float64)
    _, singular, vt = np.linalg.svd(points, full_matrices=False)
    axes = vt[:k].copy()
    largest = np.argmax(np.abs(axes), axis=1)
    axes *= np.where(axes[np.arange(len(axes)), largest] < 0, -1.0, 1.0)[:, None]
    total = float((singular ** 2).sum())
    kept = float((singular[:k] ** 2).sum()) / total if total > 0 else 0.0
    return axes, kept


def sphere_view(label: str, classes: Sequence[str], features: np.ndarray, labels: np.ndarray, centers: np.ndarray,
                centers_from: str) -> SphereView:
    """A panel from features (N, D) labelled by index into `classes` and one center per class (C, D).
    Rows are normalised to the unit sphere; D > 3 is projected on the centers' three principal axes
    (through the origin; the features' too when there are fewer than 3 classes) and normalised again;
    D < 3 is drawn with zeros for the missing coordinates. The angle is measured in D dimensions."""
    features, centers = _unit(features), _unit(centers)
    labels = np.asarray(labels, dtype=np.int64)
    if centers.shape[0] != len(classes) or features.shape[1] != centers.shape[1] or len(labels) != len(features):
        raise ValueError(f"sphere_view: {len(classes)} classes, centers {centers.shape}, features {features.shape}, "
                         f"{len(labels)} labels do not fit together")
    dims = centers.shape[1]
    angle = mean_nearest_angle(centers)
    projection = None
    if dims > 3:
        fitted_on = centers if len(centers) >= 3 else np.vstack([centers, features])
        axes, kept = principal_axes(fitted_on)
        features, centers = _unit(features @ axes.T), _unit(centers @ axes.T)
        projection = (f"{dims}-d: PCA of the unit {'centers' if len(fitted_on) == len(centers) else 'vectors'} to "
                      f"3-d ({100 * kept:.0f} % kept), renormalised")
    if features.shape[1] < 3:
        pad = 3 - features.shape[1]
        features, centers = np.pad(features, ((0, 0), (0, pad))), np.pad(centers, ((0, 0), (0, pad)))
        projection = f"{dims}-d features, drawn with zeros for the missing axes"
    return SphereView(label, list(classes), features, labels, centers, angle, dims, centers_from, projection)


def class_colours(n: int) -> list:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["hsv"](i / n) for i in range(n)]


def _view_angles(centers: np.ndarray) -> tuple[float, float]:
    """(elevation, azimuth) that faces the centers' mean direction, so that the side of the sphere where
    the classes gather is the one in front; a fixed view when they have no mean direction."""
    mean = centers.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if norm < 0.1:
        return 20.0, 35.0
    x, y, z = mean / norm
    return float(np.degrees(np.arcsin(np.clip(z, -1, 1)))), float(np.degrees(np.arctan2(y, x)))


def _viewer(elevation: float, azimuth: float) -> np.ndarray:
    """The unit vector from the sphere's center towards the viewer of `view_init(elevation, azimuth)`."""
    e, a = np.radians(elevation), np.radians(azimuth)
    return np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])


def _faded(colour, points: np.ndarray, viewer: np.ndarray, front: float, back: float) -> np.ndarray:
    """One RGBA row per point: `colour` opaque to `front` on the near half of the sphere, to `back` on the
    far half (a flat picture of a sphere otherwise mixes both halves)."""
    rgba = np.tile(np.asarray(colour, dtype=np.float64)[:4], (len(points), 1))
    rgba[:, 3] = np.where(points @ viewer >= 0, front, back)
    return rgba


def sphere_figure(views: Sequence[SphereView], note: str | None = None, panel_size: float = 4.6):
    """The views side by side on the unit sphere (matplotlib 3-D axes): each class's features as dots in its
    own colour, its center as a star of the same colour (both paler on the far half of the sphere), and the
    mean nearest-center angle in each title. Each panel faces the mean direction of its centers. Returns
    the Figure; its axes are the panels, in order."""
    if not views:
        raise ValueError("no models to draw")
    titles = []
    for view in views:
        lines = [wrap_label(view.label, 48),
                 f"mean nearest-center angle {view.mean_angle:.1f}° ({len(view.classes)} classes)"]
        titles.append("\n".join(lines + ([view.projection] if view.projection else [])))
    # No constrained layout: it does not place the titles of 3-D axes; the margins are set by hand, the top
    # one for the longest title (inches).
    top = 0.1 + 0.19 * max(title.count("\n") + 1 for title in titles)
    height = panel_size + top + (0.3 if note else 0.05)
    figure = new_figure(panel_size * len(views), height, layout=None)
    figure.subplots_adjust(left=0.0, right=1.0, bottom=(0.3 if note else 0.05) / height, top=1 - top / height,
                           wspace=0.0)
    u = np.linspace(0.0, 2.0 * np.pi, 25)
    v = np.linspace(0.0, np.pi, 13)
    sphere = (np.outer(np.cos(u), np.sin(v)), np.outer(np.sin(u), np.sin(v)), np.outer(np.ones_like(u), np.cos(v)))
    for number, (view, title) in enumerate(zip(views, titles), 1):
        axes = figure.add_subplot(1, len(views), number, projection="3d")
        elevation, azimuth = _view_angles(view.centers)
        viewer = _viewer(elevation, azimuth)
        axes.plot_wireframe(*sphere, color="0.85", linewidth=0.4)
        colours = class_colours(len(view.classes))
        for c, colour in enumerate(colours):
            points = view.features[view.labels == c]
            axes.scatter(points[:, 0], points[:, 1], points[:, 2], s=10, c=_faded(colour, points, viewer, 0.9, 0.3),
                         depthshade=False, label=view.classes[c])
        centers = np.vstack([_faded(colour, view.centers[c:c + 1], viewer, 1.0, 0.4) for c, colour in enumerate(colours)])
        axes.scatter(view.centers[:, 0], view.centers[:, 1], view.centers[:, 2], marker="*", s=240, c=centers,
                     edgecolors="black", linewidths=0.7, depthshade=False, label="centers")
        axes.view_init(elev=elevation, azim=azimuth)
        axes.set(xlim=(-1, 1), ylim=(-1, 1), zlim=(-1, 1))
        axes.set_box_aspect((1, 1, 1), zoom=1.3)
        axes.set_axis_off()
        axes.set_title(title, fontsize=10, y=1.0)
    if note:
        figure.text(0.5, 0.08 / height, note, ha="center", va="bottom", fontsize=8, color="0.3")
    return figure


def model_sphere_view(model_path: str | Path, dataset: str | Path, label: str, classes: Sequence[str] | None = None,
                      max_classes: int = 10, device: str = "cpu", batch_size: int = 64, num_workers: int = 0,
                      progress: bool = False) -> SphereView:
    """The panel of a trained network (train.py's weights file) on an image folder DATASET/<class>/<image>:
    the features of the images of `classes` (else of the first `max_classes` class folders, sorted), and each
    class's center: the run's own center of that class when the weights file has one (center_mode: feature),
    else the head's class weight (center_mode: weight), else, for a class the network was not trained on,
    the mean direction of its features here."""
    import torch

    from ..eval.embedding import ImageFiles, extract_features, list_images
    from ..eval.trained_network import load_backbone

    model, spec, payload = load_backbone(model_path, device)
    names = list_images(dataset)
    by_class: dict[str, list[str]] = {}
    for name in names:
        folder, _, rest = name.partition("/")
        if rest:
            by_class.setdefault(folder, []).append(name)
    if not by_class:
        raise ValueError(f"{dataset}: holds no class folders (expected {dataset}/<class>/<image>)")
    if classes:
        unknown = [c for c in classes if c not in by_class]
        if unknown:
            raise ValueError(f"{dataset}: no class folder {unknown[0]!r} (it has {len(by_class)}: "
                             f"{', '.join(sorted(by_class)[:5])}{', ...' if len(by_class) > 5 else ''})")
        chosen = list(dict.fromkeys(classes))
    else:
        chosen = sorted(by_class)[:max_classes]
    if len(chosen) < 2:
        raise ValueError(f"{dataset}: need at least 2 classes to draw, found {len(chosen)}")
    files = [f for c in chosen for f in by_class[c]]
    labels = np.array([k for k, c in enumerate(chosen) for _ in by_class[c]], dtype=np.int64)
    features = extract_features(model, ImageFiles(dataset, files, spec["input_size"]), "plain", batch_size,
                                num_workers, device, progress)

    trained = [str(c) for c in payload.get("classes", [])]
    row_of = {name: row for row, name in enumerate(trained)}
    stored, source = None, None
    if isinstance(payload.get("centers"), torch.Tensor):
        stored, source = payload["centers"].double().cpu().numpy(), "the run's class centers"
        known = payload.get("centers_initialized")
        usable = known.bool().cpu().numpy() if isinstance(known, torch.Tensor) else np.ones(len(stored), bool)
    elif isinstance(payload.get("head"), dict) and isinstance(payload["head"].get("weight"), torch.Tensor):
        stored, source = payload["head"]["weight"].double().cpu().numpy(), "the head's class weights"
        usable = np.ones(len(stored), bool)
    centers, from_run = [], 0
    for k, name in enumerate(chosen):
        row = row_of.get(name)
        if stored is not None and row is not None and row < len(stored) and usable[row]:
            centers.append(stored[row])
            from_run += 1
        else:
            centers.append(_unit(features[labels == k]).mean(axis=0))
    if from_run == len(chosen):
        centers_from = source
    elif from_run == 0:
        centers_from = "the mean direction of each class's features"
    else:
        centers_from = f"{source} ({from_run}), the mean direction of the features ({len(chosen) - from_run})"
    return sphere_view(label, chosen, features, labels, np.stack(centers), centers_from)
