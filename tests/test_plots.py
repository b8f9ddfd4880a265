"""plots.py: metrics.jsonl read as a live or resumed run leaves it, the curves figure read back (panels, lines
per panel, their data), the sphere's geometry against float64 references, the sphere figure read back, and
a tiny network's panel."""
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import write_aligned_tree
from uniformface.tools import plots
from uniformface.train.checkpoint import export_weights
from uniformface.nn.models import build_model, normalize_pixels
from uniformface.tools.plots import (PANELS, curves_figure, load_runs, mean_nearest_angle, model_sphere_view,
                                     moving_average, read_metrics, save_png, sphere_figure, sphere_view)

TITLES = ["training accuracy", "cross-entropy", "uniform loss", "A-Softmax λ", "learning rate",
          "mean nearest-center angle (°)"]


def training_record(i, alpha, lfw=False):
    """A training line as the trainer writes it (metrics.training_record), with values that tell the
    iterations and the runs apart."""
    return {"iteration": i, "loss": 5.0 / i + alpha, "cross_entropy": 4.0 / i, "uniform_loss": alpha * (0.7 - i / 1000),
            "accuracy": min(1.0, i / 100), "lr": 0.1 if i < 60 else 0.01, "images_per_s": 100.0 + i,
            "broken_images": 0, "lambda": 1000 / (1 + 0.5 * i), "mean_min_center_distance": 0.5 + i / 1000,
            "mean_min_center_angle": 30.0 + i / 2 + 5 * alpha, "mean_min_weight_angle": 70.0}


def write_run(folder, alpha, iterations=(20, 40, 60, 80), lfw_at=(), text=None, config=True):
    folder.mkdir(parents=True)
    if config:
        (folder / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "alpha": alpha, "beta": 0.5,
                                                            "loss": {"name": "sphereface"}}))
    if text is None:
        lines = []
        for i in iterations:
            lines.append(json.dumps(training_record(i, alpha)))
            if i in lfw_at:
                lines.append(json.dumps({"iteration": i, "lfw_accuracy": 0.5 + i / 200, "lfw_accuracy_std": 0.01}))
        text = "".join(line + "\n" for line in lines)
    (folder / "metrics.jsonl").write_text(text)
    return folder


def panels(figure):
    """{title: {label: (x, y)}} of every panel holding a line (a panel's title without its window note)."""
    out = {}
    for axes in figure.axes:
        title = axes.get_title().split(" (mean of")[0]
        out[title] = {line.get_label(): (np.asarray(line.get_xdata()), np.asarray(line.get_ydata()))
                      for line in axes.get_lines()}
    return out


def is_png(path, size=None):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # decodes every row: a cut file fails here
        assert size is None or image.size == size
    return True


def test_the_curves_of_two_runs_read_back(tmp_path):
    a = write_run(tmp_path / "a", 0.0)
    b = write_run(tmp_path / "b", 1.0, lfw_at=(40, 80))
    runs = load_runs([a, b / "metrics.jsonl"])  # a run folder, or its metrics.jsonl
    assert [r.label for r in runs] == ["alpha=0.0/beta=0.5", "alpha=1.0/beta=0.5"]  # as the result tables
    figure = curves_figure(runs)
    drawn = panels(figure)
    assert list(drawn) == TITLES + ["LFW accuracy during training"]  # LFW: logged by one run
    for title, panel in zip(TITLES, PANELS):
        assert list(drawn[title]) == ["alpha=0.0/beta=0.5", "alpha=1.0/beta=0.5"], title
        for label, alpha in (("alpha=0.0/beta=0.5", 0.0), ("alpha=1.0/beta=0.5", 1.0)):
            x, y = drawn[title][label]
            assert x.tolist() == [20, 40, 60, 80]
            np.testing.assert_array_equal(y, [training_record(i, alpha)[panel.key] for i in (20, 40, 60, 80)])
    x, y = drawn["LFW accuracy during training"]["alpha=1.0/beta=0.5"]
    assert x.tolist() == [40, 80] and y.tolist() == [0.7, 0.9]
    assert list(drawn["LFW accuracy during training"]) == ["alpha=1.0/beta=0.5"]
    scales = {axes.get_title(): axes.get_yscale() for axes in figure.axes}
    assert scales["A-Softmax λ"] == scales["learning rate"] == "log" and scales["cross-entropy"] == "linear"
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend == ["alpha=0.0/beta=0.5", "alpha=1.0/beta=0.5"]

    png = save_png(figure, tmp_path / "out" / "curves.png")
    width, height = figure.get_size_inches() * figure.dpi
    assert is_png(png, (round(width), round(height)))
    assert [p.name for p in png.parent.iterdir()] == ["curves.png"]  # no temporary file left beside it


def write_validated_run(folder, alpha, figures):
    """A run whose evaluation lines hold val_targets accuracies: `figures` {iteration: {set: accuracy}}."""
    lines = []
    for i in (20, 40, 60, 80):
        lines.append(json.dumps(training_record(i, alpha)))
        if i in figures:
            lines.append(json.dumps({"iteration": i, **{f"val/{name}": value for name, value in figures[i].items()}}))
    return write_run(folder, alpha, text="".join(line + "\n" for line in lines))


def test_each_val_targets_set_gets_a_panel_in_insightfaces_order(tmp_path):
    """A run that logs val/<set> figures (and no LFW folder) draws one panel per set, after the fixed ones,
    lfw, cfp_fp, agedb_30 first and other sets after them by name; a run that does not log a set has no
    line in its panel; the evaluation lines are not mistaken for training lines."""
    a = write_validated_run(tmp_path / "a", 0.0, {40: {"agedb_30": 0.6, "lfw": 0.7, "zz": 0.1},
                                                  80: {"agedb_30": 0.8, "lfw": 0.9, "zz": 0.2}})
    b = write_validated_run(tmp_path / "b", 1.0, {80: {"cfp_fp": 0.75}})
    runs = load_runs([a, b])
    assert runs[0].metrics.validation_sets() == ["lfw", "agedb_30", "zz"]
    assert sorted(runs[0].metrics.training) == [20, 40, 60, 80] and sorted(runs[0].metrics.evaluation) == [40, 80]
    drawn = panels(curves_figure(runs))
    sets = ["lfw", "cfp_fp", "agedb_30", "zz"]
    assert list(drawn) == TITLES + [f"{name}.bin accuracy during training (val/{name})" for name in sets]
    x, y = drawn["lfw.bin accuracy during training (val/lfw)"]["alpha=0.0/beta=0.5"]
    assert x.tolist() == [40, 80] and y.tolist() == [0.7, 0.9]
    assert list(drawn["cfp_fp.bin accuracy during training (val/cfp_fp)"]) == ["alpha=1.0/beta=0.5"]
    assert drawn["cfp_fp.bin accuracy during training (val/cfp_fp)"]["alpha=1.0/beta=0.5"][1].tolist() == [0.75]
    # a val/ figure that is not a number is named like any other drawn key
    bad = write_run(tmp_path / "bad", 1.0, text='{"iteration": 2, "val/lfw": "high"}\n')
    with pytest.raises(ValueError, match=rf"^{bad / 'metrics.jsonl'}:1: 'val/lfw' is 'high', not a number$"):
        load_runs([bad])


def test_six_panels_without_evaluation_and_a_missing_key_is_no_line(tmp_path):
    plain = write_run(tmp_path / "plain", 0.0)
    text = "".join(json.dumps({k: v for k, v in training_record(i, 1.0).items() if k != "lambda"}) + "\n"
                   for i in (10, 20))
    cosface = write_run(tmp_path / "cos", 1.0, text=text, config=False)
    runs = load_runs([plain, cosface])
    assert [r.label for r in runs] == ["alpha=0.0/beta=0.5", "cos"]  # no config.yaml: the folder's name
    drawn = panels(curves_figure(runs))
    assert list(drawn) == TITLES
    assert list(drawn["A-Softmax λ"]) == ["alpha=0.0/beta=0.5"] and list(drawn["uniform loss"]) == ["alpha=0.0/beta=0.5", "cos"]
    assert load_runs([plain], names=["baseline"])[0].label == "baseline"
    with pytest.raises(ValueError, match="2 names for 1 runs"):
        load_runs([plain], names=["a", "b"])


def test_the_moving_average_is_trailing_and_applies_to_the_batch_statistics_only(tmp_path):
    values = np.array([1.0, 4.0, 2.0, 8.0, 5.0])
    reference = [sum(values[max(0, i - 2):i + 1]) / len(values[max(0, i - 2):i + 1]) for i in range(5)]
    np.testing.assert_allclose(moving_average(values, 3), reference, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(moving_average(values, 1), values)
    run = write_run(tmp_path / "a", 1.0, iterations=(10, 20, 30, 40, 50))
    figure = curves_figure(load_runs([run]), window=3)
    drawn = panels(figure)
    accuracy = [training_record(i, 1.0)["accuracy"] for i in (10, 20, 30, 40, 50)]
    np.testing.assert_allclose(drawn["training accuracy"]["alpha=1.0/beta=0.5"][1], moving_average(accuracy, 3))
    assert drawn["learning rate"]["alpha=1.0/beta=0.5"][1].tolist() == [0.1] * 5  # a schedule, not averaged
    titles = [axes.get_title() for axes in figure.axes]
    assert "training accuracy (mean of 3 log points)" in titles and "learning rate" in titles
    with pytest.raises(ValueError, match="at least 1"):
        curves_figure(load_runs([run]), window=0)


def test_the_largest_loggable_values_draw_and_a_gap_stays_in_its_window(tmp_path):
    """Values up to float32's largest and iterations up to int64's draw (a spike of 3.4e38 does not wipe
    out the small values after it); a gap (null) is left out of the moving average's windows holding it,
    not carried to the end of the curve as a running sum carried it."""
    values = np.array([0.5, 3.4e38, 0.25, 0.25, 0.25, np.nan, 0.5, 0.25])
    reference = []
    for i in range(len(values)):
        window = [v for v in values[max(0, i - 1):i + 1] if not np.isnan(v)]
        reference.append(sum(window) / len(window) if window else np.nan)
    np.testing.assert_allclose(moving_average(values, 2), reference, rtol=1e-15, atol=0)
    assert np.isnan(moving_average(np.array([1.0, np.nan, np.nan, 2.0]), 2)[2])
    records = [{"iteration": i, "accuracy": v if np.isfinite(v) else None} for i, v in zip((0, 10, 20, 30, 40, 50, 60,
                                                                                            2 ** 63 - 1), values)]
    run = write_run(tmp_path / "a", 1.0, text="".join(json.dumps(r) + "\n" for r in records))
    drawn = panels(curves_figure(load_runs([run]), window=2))["training accuracy"]["alpha=1.0/beta=0.5"]
    assert drawn[0].tolist() == [0, 10, 20, 30, 40, 50, 60, 2 ** 63 - 1]
    np.testing.assert_allclose(drawn[1], reference, rtol=1e-15, atol=0)


def test_a_resumed_run_draws_its_last_records_and_a_cut_last_line_is_left_out(tmp_path):
    """The log of a run resumed from its checkpoint at 20 after reaching 40 without the trainer's own clean-up
    (the branch 30, 40 abandoned), evaluated at 20, and killed while writing the line of iteration 40."""
    lines = [training_record(10, 1.0), training_record(20, 1.0),
             {"iteration": 20, "lfw_accuracy": 0.6, "lfw_accuracy_std": 0.0},
             {**training_record(30, 1.0), "accuracy": 0.111}, {**training_record(40, 1.0), "accuracy": 0.222},
             {**training_record(30, 1.0), "accuracy": 0.333}]
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"iteration": 40, "loss": 0.5, "cross_ent'
    run = write_run(tmp_path / "run", 1.0, text=text)
    metrics = read_metrics(run / "metrics.jsonl")
    assert sorted(metrics.training) == [10, 20, 30] and metrics.cut_last_line
    assert metrics.series("accuracy")[1].tolist() == [0.1, 0.2, 0.333]  # the resumed 30; 40 was abandoned
    assert metrics.series("lfw_accuracy")[0].tolist() == [20]           # evaluations are their own kind
    figure = curves_figure(load_runs([run]))
    assert panels(figure)["training accuracy"]["alpha=1.0/beta=0.5"][0].tolist() == [10, 20, 30]
    assert "last line of metrics.jsonl left out" in figure.get_supxlabel()

    # the same iteration twice in a row (a copy appended twice): the last one wins; keys not drawn are not read
    text = "".join(json.dumps({**training_record(10, 0.0), "accuracy": a, "host": "vm"}) + "\n" for a in (0.25, 0.5))
    (run / "metrics.jsonl").write_text(text)
    assert read_metrics(run / "metrics.jsonl").series("accuracy")[1].tolist() == [0.5]


@pytest.mark.parametrize("text, message", [
    ('{"iteration": 10, "loss": 1}\n{"iteration": 20, "lo\n{"iteration": 30, "loss": 1}\n',
     r":2: not a JSON record \("),
    ('{"iteration": 10, "loss": 1}\nnot json\n', r":2: not a JSON record"),  # complete with its newline: damage
    ('{"iteration": 10, "cross_entropy": "1.5", "note": "text"}\n', r":1: 'cross_entropy' is '1.5', not a number"),
    ('{"loss": 1}\n', r":1: 'iteration' is None, not an iteration number"),
    ('[1, 2]\n{"iteration": 1}\n', r":1: not a JSON object but a list"),
    ('\n\n{"iteration": 1, "accuracy": true}\n', r":3: 'accuracy' is True, not a number"),
    # no run logs these; matplotlib's axis arithmetic overflowed on them ("arange: cannot compute length"),
    # and an iteration past int64 was an OverflowError traceback
    ('{"iteration": 1, "cross_entropy": 1e308}\n', r":1: 'cross_entropy' is 1e\+308, not a number a run logs "
                                                   r"\(beyond float32's range, 3.4e\+38\)$"),
    ('{"iteration": 1, "lr": -Infinity}\n', r":1: 'lr' is -inf, not a number a run logs"),
    ('{"iteration": 1000000000000000000000000000000, "accuracy": 0.5}\n',
     r":1: 'iteration' is 1000000000000000000000000000000, not an iteration number \(beyond int64\)$"),
    ('{"iteration": 1, "loss": 1}\n{"iteration": 1%s}\n' % ("0" * 100),
     r":2: 'iteration' is 1%s\.\.\. \(101 characters\), not an iteration number" % ("0" * 39)),  # shown cut
])
def test_a_damaged_line_is_an_error_naming_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "metrics.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"^{path}{message}") as caught:
        read_metrics(path)
    assert "\n" not in str(caught.value)


def test_missing_empty_and_folder_metrics(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'none.jsonl'}: no such file"):
        read_metrics(tmp_path / "none.jsonl")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        read_metrics(tmp_path)
    with pytest.raises(FileNotFoundError, match="metrics.jsonl: no such file"):
        load_runs([tmp_path])  # a folder that is no run
    run = write_run(tmp_path / "new", 1.0, text="")  # before the first log point
    assert read_metrics(run / "metrics.jsonl").empty
    with pytest.raises(ValueError, match="no metrics records yet"):
        curves_figure(load_runs([run]))
    started = write_run(tmp_path / "started", 0.0, iterations=(10,))
    drawn = panels(curves_figure(load_runs([run, started])))  # drawn beside a run that has logged
    assert list(drawn["cross-entropy"]) == ["alpha=0.0/beta=0.5"]


def test_the_library_leaves_matplotlibs_global_state_alone(tmp_path):
    """No pyplot and no backend switch: a program that uses matplotlib interactively is not changed."""
    import matplotlib

    before, had_pyplot = matplotlib.rcParams["backend"], "matplotlib.pyplot" in sys.modules
    figure = curves_figure(load_runs([write_run(tmp_path / "a", 1.0)]))
    save_png(figure, tmp_path / "a.png")
    save_png(sphere_figure([sphere_view("x", ["a", "b"], np.eye(3)[:2], [0, 1], np.eye(3)[:2], "c")]),
             tmp_path / "b.png")
    assert matplotlib.rcParams["backend"] == before
    assert had_pyplot or "matplotlib.pyplot" not in sys.modules


def test_the_metrics_file_name_is_the_trainers():
    """plots.py stays torch-free, so it names the file itself; it must be the name the trainer writes."""
    import ast

    source = (Path(plots.__file__).parents[1] / "train" / "trainer.py").read_text()
    assigned = {node.targets[0].id: node.value.value for node in ast.parse(source).body
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant)}
    assert assigned["METRICS_FILE"] == plots.METRICS_FILE == "metrics.jsonl"


# ---------------------------------------------------------------------------------------------- the sphere

def reference_nearest_angle(rows):
    """Mean over rows of the angle to the nearest other row, by atan2(|a x b|, a.b) on each pair (float64,
    accurate at small angles, unlike arccos)."""
    rows = [np.asarray(r, dtype=np.float64) for r in rows]
    nearest = []
    for i, a in enumerate(rows):
        angles = []
        for j, b in enumerate(rows):
            if i != j:
                cross = math.sqrt(max(0.0, (a @ a) * (b @ b) - (a @ b) ** 2))
                angles.append(math.degrees(math.atan2(cross, a @ b)))
        nearest.append(min(angles))
    return sum(nearest) / len(nearest)


def test_the_mean_nearest_center_angle():
    square = np.array([[1.0, 0, 0], [0, 3.0, 0], [-2.0, 0, 0], [0, -1.0, 0]])  # 90 degrees apart, any lengths
    assert mean_nearest_angle(square) == pytest.approx(90.0, abs=1e-12)
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(12, 3))
    assert mean_nearest_angle(centers) == pytest.approx(reference_nearest_angle(centers), abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        mean_nearest_angle(centers[:1])


def test_a_3d_view_is_the_unit_vectors_themselves():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(4, 3))
    features = np.repeat(centers, 3, axis=0) + rng.normal(scale=0.1, size=(12, 3))
    view = sphere_view("run", list("abcd"), 5 * features, np.repeat(np.arange(4), 3), centers, "the run's class centers")
    np.testing.assert_allclose(view.features, features / np.linalg.norm(features, axis=1, keepdims=True), atol=1e-15)
    np.testing.assert_allclose(np.linalg.norm(view.centers, axis=1), 1.0, atol=1e-15)
    assert view.projection is None and view.dims == 3
    assert view.mean_angle == pytest.approx(reference_nearest_angle(centers), abs=1e-6)


def test_more_than_3_dims_are_projected_on_the_centers_principal_axes():
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(6, 8))
    features = rng.normal(size=(18, 8))
    view = sphere_view("run", list("abcdef"), features, np.repeat(np.arange(6), 3), centers, "c")
    unit = centers / np.linalg.norm(centers, axis=1, keepdims=True)
    # independent reference: the top 3 eigenvectors of the unit centers' second-moment matrix (no mean removed)
    eigenvalues, eigenvectors = np.linalg.eigh(unit.T @ unit)
    top = eigenvectors[:, ::-1][:, :3]
    expected = unit @ top
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    # the same points up to each axis's sign: compare the Gram matrices (angles between the drawn points)
    np.testing.assert_allclose(view.centers @ view.centers.T, expected @ expected.T, atol=1e-10)
    f = features / np.linalg.norm(features, axis=1, keepdims=True) @ top
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    np.testing.assert_allclose(view.features @ view.centers.T, f @ expected.T, atol=1e-10)
    kept = eigenvalues[::-1][:3].sum() / eigenvalues.sum()
    assert view.projection == f"8-d: PCA of the unit centers to 3-d ({100 * kept:.0f} % kept), renormalised"
    assert view.mean_angle == pytest.approx(reference_nearest_angle(centers), abs=1e-6)  # in 8 dimensions

    flat = sphere_view("run", ["a", "b"], np.array([[1.0, 0.0], [0.0, 2.0]]), [0, 1], np.eye(2), "c")
    assert flat.features.tolist() == [[1, 0, 0], [0, 1, 0]] and "2-d features" in flat.projection
    with pytest.raises(ValueError, match="do not fit together"):
        sphere_view("run", ["a"], features, np.zeros(18), centers, "c")


def test_the_sphere_figure_reads_back():
    from matplotlib.colors import to_rgba_array
    from mpl_toolkits.mplot3d import proj3d

    rng = np.random.default_rng(3)
    views = []
    for label, spread in (("alpha=0.0/beta=0.5", 0.3), ("alpha=1.0/beta=0.5", 1.0)):
        centers = np.eye(3) + spread * rng.normal(size=(3, 3))
        features = np.repeat(centers, 4, axis=0) + 0.05 * rng.normal(size=(12, 3))
        views.append(sphere_view(label, ["x", "y", "z"], features, np.repeat(np.arange(3), 4), centers, "c"))
    figure = sphere_figure(views, note="dots: features")
    assert len(figure.axes) == 2 and all(axes.name == "3d" for axes in figure.axes)
    for axes, view in zip(figure.axes, views):
        title = axes.get_title()
        assert title.startswith(view.label + "\n") and f"mean nearest-center angle {view.mean_angle:.1f}° (3 classes)" in title
        scatters = [c for c in axes.collections if hasattr(c, "_offsets3d")]
        assert [c.get_label() for c in scatters] == ["x", "y", "z", "centers"]  # a colour per class, then centers
        for k, scatter in enumerate(scatters[:3]):
            np.testing.assert_allclose(np.column_stack(scatter._offsets3d), view.features[view.labels == k])
        np.testing.assert_allclose(np.column_stack(scatters[3]._offsets3d), view.centers)
        colours = [tuple(np.round(s.get_facecolor()[0][:3], 6)) for s in scatters[:3]]
        assert len(set(colours)) == 3
        # paler on the far half: the panel faces the centers' mean direction, along the view axis
        viewer = view.centers.mean(axis=0) / np.linalg.norm(view.centers.mean(axis=0))
        for k, scatter in enumerate(scatters[:3]):
            near = view.features[view.labels == k] @ viewer >= 0
            given = to_rgba_array(scatter._original_facecolor)  # as passed (get_facecolor is in depth order once drawn)
            np.testing.assert_allclose(given[:, 3], np.where(near, 0.9, 0.3))
        ends = [proj3d.proj_transform(*(sign * viewer), axes.get_proj())[:2] for sign in (1, -1)]
        np.testing.assert_allclose(ends[0], ends[1], atol=1e-9)  # both ends of the axis meet on the screen
    assert [text.get_text() for text in figure.texts] == ["dots: features"]


def test_a_tiny_networks_panel(tmp_path):
    torch.manual_seed(0)
    model = build_model("sphereface4", 3).eval()
    tree = write_aligned_tree(tmp_path / "test", n_classes=4, per_class=2)
    classes = ["0000000", "0000001", "0000002", "9999999"]  # the last one is not among the tree's classes
    centers = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]])
    path = tmp_path / "run" / "sphereface4_3.pt"
    export_weights(path, model, {"model_name": "sphereface4", "emb_dim": 3, "input_size": [112, 96]},
                   {"centers": centers, "centers_initialized": torch.tensor([True, True, False, True]),
                    "classes": classes})
    view = model_sphere_view(path, tree, "tiny", max_classes=3)
    assert view.classes == ["0000000", "0000001", "0000002"] and view.labels.tolist() == [0, 0, 1, 1, 2, 2]
    images = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)
                          for c in view.classes for p in sorted((tree / c).iterdir())])
    with torch.no_grad():
        expected = model(normalize_pixels(images)).double().numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(view.features, expected, atol=1e-5)
    # classes 0 and 1: the run's centers; class 2's center was never initialised: its features' mean direction
    mean2 = expected[4:6].mean(axis=0)
    np.testing.assert_allclose(view.centers, [[1, 0, 0], [0, 1, 0], mean2 / np.linalg.norm(mean2)], atol=1e-5)
    assert view.centers_from == "the run's class centers (2), the mean direction of the features (1)"
    assert view.mean_angle == pytest.approx(reference_nearest_angle(view.centers), abs=1e-4)

    chosen = model_sphere_view(path, tree, "tiny", classes=["0000003", "0000001"])
    assert chosen.classes == ["0000003", "0000001"] and chosen.centers_from.startswith("the run's class centers (1)")
    with pytest.raises(ValueError, match="no class folder 'nobody'"):
        model_sphere_view(path, tree, "tiny", classes=["nobody", "0000001"])
    with pytest.raises(ValueError, match="need at least 2 classes"):
        model_sphere_view(path, tree, "tiny", classes=["0000001"])
