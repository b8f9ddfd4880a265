"""Result tables in the earlier port's README format: several runs' lfw_results.json and config.yaml read and
gathered into them. gather_results.py's own tests are in test_gather_results.py."""
import json

import pytest
import yaml

from uniformface.tools.report import (bin_table, center_distance_table, fold_table, gather_markdown, load_run,
                                      setting_names)


def write_validation(folder, figures, training=(20, 40)):
    """A metrics.jsonl as the trainer writes it: training lines, and at each iteration of `figures` an
    evaluation line {"iteration": i, "val/<set>": accuracy, ...}."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [{"iteration": i, "loss": 1.0, "accuracy": 0.5} for i in training]
    lines += [{"iteration": i, **{f"val/{name}": value for name, value in sets.items()}} for i, sets in figures.items()]
    lines.sort(key=lambda line: line["iteration"])
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def cells(line):
    return [c.strip() for c in line.strip("|").split("|")]


def test_fold_table_in_percent_with_three_decimals():
    folds = [593 / 600, 1.0, 0.5]
    table = fold_table([("alpha=1.0/beta=0.001", {"fold_accuracies": folds, "accuracy_mean": sum(folds) / 3}),
                        ("short", {"fold_accuracies": folds[:2], "accuracy_mean": 0.9})])
    header, rule, first, second = table.splitlines()
    assert cells(header) == ["", "Avg.", "1", "2", "3"]
    assert set(rule) <= set("|- ") and len(rule) == len(header) == len(first) == len(second)
    assert cells(first) == ["alpha=1.0/beta=0.001", "82.944", "98.833", "100.000", "50.000"]
    assert cells(second) == ["short", "90.000", "98.833", "100.000", ""]   # fewer folds: blank cell


def test_center_distance_table():
    header, _, row = center_distance_table([("alpha=0.0/beta=0.0", 0.15164)]).splitlines()
    assert cells(header) == ["", "Min Avg."] and cells(row) == ["alpha=0.0/beta=0.0", "0.1516"]


def test_bin_table_one_row_per_set_and_dash_without_roc():
    result = {"n_pairs": 6000, "accuracy_mean": 0.99345, "accuracy_std": 0.0041, "tar_at_far_1e-3": 0.9,
              "tar_at_far_1e-2": 0.95, "auc": 0.998, "eer": 0.012}
    same_only = dict(result, n_pairs=10, **{"tar_at_far_1e-3": None, "tar_at_far_1e-2": None, "auc": None, "eer": None})
    lines = bin_table([("lfw", result), ("small_lfw", same_only)]).splitlines()
    assert cells(lines[0])[:3] == ["set", "pairs", "Acc. (%)"]
    assert cells(lines[2]) == ["lfw", "6000", "99.345", "0.410", "0.9000", "0.9500", "0.9980", "0.0120"]
    assert cells(lines[3])[4:] == ["-", "-", "-", "-"]
    with pytest.raises(KeyError):
        bin_table([("broken", {"n_pairs": 1})])


def test_a_resumed_run_is_named_by_its_final_settings_and_its_changes_listed(tmp_path):
    import json

    import yaml

    from uniformface.tools.report import gather_markdown, load_run

    for name, history in (("resumed", [{"iteration": 300, "time": "", "changed": {
            "beta": {"from": 0.5, "to": 0.1}, "milestones": {"from": [16000], "to": [400]}}}]), ("plain", None)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.yaml").write_text(yaml.safe_dump({"alpha": 1.0, "beta": 0.1 if history else 0.5}))
        (folder / "lfw_results.json").write_text(json.dumps({"fold_accuracies": [0.9], "accuracy_mean": 0.9}))
        if history:
            (folder / "config_history.yaml").write_text(yaml.safe_dump(history))
    runs = [load_run(tmp_path / "resumed"), load_run(tmp_path / "plain")]
    assert runs[0].config["beta"] == 0.1 and runs[0].history[0]["iteration"] == 300 and runs[1].history == []
    markdown = gather_markdown(runs)
    rows = [cells(line)[0] for line in markdown.splitlines() if line.startswith("| alpha")]
    assert rows == ["alpha=1.0/beta=0.1", "alpha=1.0/beta=0.5"]
    section = markdown[markdown.index("- settings changed when resumed"):]
    assert section.splitlines()[2:] == ["  - alpha=1.0/beta=0.1: from iteration 300: beta 0.5 -> 0.1, "
                                        "milestones [16000] -> [400]"]
    assert "settings changed" not in gather_markdown(runs[1:])


# ------------------------------------------------------------------ runs gathered into tables

def make_run(folder, alpha, beta, correct_per_fold, center_distance=None, center_mode="feature", bins=None,
             beta_text=None):
    """A run folder as train.py + test.py leave it; folds of 600 pairs with the given numbers right."""
    folder.mkdir(parents=True)
    config = {"seed": 0, "model_name": "sphereface20", "alpha": alpha, "beta": beta, "center_mode": center_mode,
              "loss": {"name": "sphereface", "m": 4}}
    text = yaml.safe_dump(config, sort_keys=False)
    if beta_text is not None:  # as a user writes it: PyYAML alone would read 1e-3 as a string
        text = text.replace(f"beta: {beta}", f"beta: {beta_text}")
    (folder / "config.yaml").write_text(text)
    folds = [c / 600 for c in correct_per_fold]
    results = {"protocol": "sphereface", "fold_accuracies": folds, "accuracy_mean": sum(folds) / len(folds)}
    if center_distance is not None:
        results["mean_min_center_distance"] = center_distance
    if bins:
        results["bin"] = bins
    (folder / "lfw_results.json").write_text(json.dumps(results))
    return folder, folds


def table_rows(markdown, title):
    """{row name: [cells as floats]} of the table after the line starting with `title`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title)) + 2
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = [float(c) if c != "-" else None for c in cells[1:]]
    return rows


def test_tables_from_three_runs(tmp_path):
    plain, plain_folds = make_run(tmp_path / "a", 0.0, 0.0, [594, 594, 593, 590, 594, 594, 594, 592, 597, 594], 0.1516)
    moving, moving_folds = make_run(tmp_path / "b", 1.0, 0.001, [592, 590, 592, 588, 593, 592, 592, 593, 597, 595],
                                    14.1534, beta_text="1e-3")
    fixed, fixed_folds = make_run(tmp_path / "c", 1.0, 0.0, [590, 590, 592, 592, 591, 591, 592, 593, 598, 592])
    markdown = gather_markdown([load_run(plain), load_run(moving / "lfw_results.json"), load_run(fixed)])
    rows = table_rows(markdown, "- LFW accuracy")
    assert list(rows) == ["alpha=0.0/beta=0.0", "alpha=1.0/beta=0.001", "alpha=1.0/beta=0.0"]
    for name, folds in zip(rows, (plain_folds, moving_folds, fixed_folds)):
        average, *cells = rows[name]
        assert len(cells) == 10
        assert average == pytest.approx(100 * sum(folds) / 10, abs=5e-4)
        assert cells == pytest.approx([100 * f for f in folds], abs=5e-4)
    assert "(10-fold, sphereface protocol)" in markdown
    centers = table_rows(markdown, "- average of minimum class distance")
    assert centers == {"alpha=0.0/beta=0.0": [0.1516], "alpha=1.0/beta=0.001": [14.1534]}   # c reports none
    assert "insightface .bin" not in markdown


def test_runs_sharing_alpha_beta_are_told_apart(tmp_path):
    folds = [590] * 10
    runs = [load_run(make_run(tmp_path / name, 1.0, 0.5, folds, center_mode=mode)[0])
            for name, mode in (("f", "feature"), ("w", "weight"))]
    runs.append(load_run(make_run(tmp_path / "f_again", 1.0, 0.5, folds)[0]))
    assert setting_names(runs) == ["alpha=1.0/beta=0.5/center_mode=feature (f)",
                                   "alpha=1.0/beta=0.5/center_mode=weight",
                                   "alpha=1.0/beta=0.5/center_mode=feature (f_again)"]


def test_bin_sets_get_a_table(tmp_path):
    run, _ = make_run(tmp_path / "a", 1.0, 0.5, [590] * 10,
                      bins={"cfp_fp": {"accuracy_mean": 0.9123}, "lfw": {"accuracy_mean": 0.99}})
    other, _ = make_run(tmp_path / "b", 0.0, 0.0, [580] * 10, bins={"lfw": {"accuracy_mean": 0.985}})
    markdown = gather_markdown([load_run(run), load_run(other)], names=["uniform", "plain"])
    table = markdown[markdown.index("- insightface .bin"):]
    header = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
    assert header == ["", "lfw", "cfp_fp"]                      # insightface's order, not alphabetical
    assert table_rows(markdown, "- insightface .bin") == {"uniform": [99.0, 91.23], "plain": [98.5, None]}


def test_damaged_results_name_the_file(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "lfw_results.json").write_text('{"accuracy_mean": 0.9,\n  "fold_accuracies": [0.9')
    with pytest.raises(ValueError, match=r"r/lfw_results.json:2: not valid JSON"):
        load_run(folder)
    (folder / "lfw_results.json").write_bytes(b'{"accuracy_mean": 0.9,\n  "protocol": "sph\xe9reface"}')
    with pytest.raises(ValueError, match=r"r/lfw_results.json:2: not UTF-8 text \(byte 0xe9 at offset 41\)"):
        load_run(folder)
    (folder / "lfw_results.json").write_text('{"accuracy_mean": 0.9}')
    with pytest.raises(ValueError, match=r"needs both 'accuracy_mean' and 'fold_accuracies'"):
        gather_markdown([load_run(folder)])
    (folder / "lfw_results.json").write_text('{"protocol": "sphereface"}')
    with pytest.raises(ValueError, match=r"holds neither LFW results"):
        gather_markdown([load_run(folder)])


@pytest.mark.parametrize("change, message", [
    ({"accuracy_mean": float("inf")}, "'accuracy_mean' is inf, not an accuracy"),  # json.loads("1e400")
    ({"accuracy_mean": 1.5}, "'accuracy_mean' is 1.5, not an accuracy"),
    ({"fold_accuracies": ["0.99", "0.98"]}, "fold 1 of 'fold_accuracies' is \"0.99\", not an accuracy"),
    ({"fold_accuracies": [0.99, None]}, "fold 2 of 'fold_accuracies' is null, not an accuracy"),
    ({"fold_accuracies": "0.99"}, "'fold_accuracies' is \"0.99\", not a list of per-fold accuracies"),
    ({"fold_accuracies": []}, "'fold_accuracies' is [], not a list of per-fold accuracies"),
    ({"mean_min_center_distance": "far"}, "'mean_min_center_distance' is \"far\", not a distance"),
    ({"bin": {"agedb_30": {"accuracy_mean": True}}}, "'accuracy_mean' of bin set 'agedb_30' is true, not an accuracy"),
    ({"bin": {"agedb_30": 0.9}}, "bin set 'agedb_30' is 0.9, not a mapping holding 'accuracy_mean'"),
])
def test_result_numbers_that_are_not_what_test_py_writes_name_the_file_and_key(tmp_path, change, message):
    """`accuracy_mean: 1e400` was printed as `inf` in the table; folds written as strings were a format
    error naming no file."""
    folder, _ = make_run(tmp_path / "r", 1.0, 0.5, [590] * 10)
    results = json.loads((folder / "lfw_results.json").read_text())
    (folder / "lfw_results.json").write_text(json.dumps({**results, **change}))
    with pytest.raises(ValueError) as err:
        gather_markdown([load_run(folder)])
    assert str(err.value).startswith(f"{folder / 'lfw_results.json'}: {message}"), str(err.value)
    assert "rerun test.py" in str(err.value)


def test_a_results_file_of_another_name_is_named_as_it_is(tmp_path):
    folder, _ = make_run(tmp_path / "r", 1.0, 0.5, [590] * 10)
    (folder / "old.json").write_text('{"protocol": "sphereface"}')
    with pytest.raises(ValueError, match=rf"^{folder / 'old.json'}: holds neither LFW results"):
        gather_markdown([load_run(folder / "old.json")])


def test_a_hand_edited_alpha_that_is_not_a_number_names_the_row_as_written(tmp_path):
    """float() of `alpha: high` in a run's config.yaml was a ValueError naming neither file nor key."""
    folder, _ = make_run(tmp_path / "r", 1.0, 0.5, [590] * 10)
    (folder / "config.yaml").write_text("alpha: high\nbeta: [0.5]\n")
    assert set(table_rows(gather_markdown([load_run(folder)]), "- LFW accuracy")) == {"alpha=high/beta=[0.5]"}


def test_the_last_val_targets_figures_of_each_run_are_listed(tmp_path):
    """gather_markdown lists the last val/<set> of each run (in insightface's order of sets) with its last
    evaluation's iteration; a set last logged earlier says when; a run folder with such figures and no
    results file yet is listed in that table alone; a resumed run's abandoned figures are not listed."""
    tested, _ = make_run(tmp_path / "a", 1.0, 0.5, [590] * 10)
    write_validation(tested, {2000: {"lfw": 0.9, "agedb_30": 0.7, "cfp_fp": 0.8},
                              4000: {"lfw": 0.95, "agedb_30": 0.75}})
    untested = tmp_path / "b"
    write_validation(untested, {2000: {"lfw": 0.5}, 4000: {"lfw": 0.6125}})
    (untested / "config.yaml").write_text(yaml.safe_dump({"alpha": 0.0, "beta": 0.5}))
    with open(untested / "metrics.jsonl", "a") as log:  # resumed from 2000: the 4000 above was abandoned
        log.write(json.dumps({"iteration": 2000, "val/lfw": 0.55}) + "\n")
    runs = [load_run(tested), load_run(untested)]
    assert runs[1].results == {} and runs[1].validation.sets == {"lfw": (0.55, 2000)}
    markdown = gather_markdown(runs)
    section = markdown[markdown.index("- val_targets during training"):].split("\n\n")[1].splitlines()
    assert [cells(line) for line in section] == [
        ["", "iteration", "lfw", "cfp_fp", "agedb_30"], ["-" * 18, "-" * 9, "-" * 8, "-" * 12, "-" * 8],
        ["alpha=1.0/beta=0.5", "4000", "95.000", "80.000 @2000", "75.000"],
        ["alpha=0.0/beta=0.5", "2000", "55.000", "-", "-"]]
    assert list(table_rows(markdown, "- LFW accuracy")) == ["alpha=1.0/beta=0.5"]  # the untested run: no LFW row
    assert "val_targets" not in gather_markdown([load_run(make_run(tmp_path / "c", 1.0, 0.1, [590] * 10)[0])])


def test_a_damaged_metrics_file_beside_the_results_names_its_line(tmp_path):
    folder, _ = make_run(tmp_path / "a", 1.0, 0.5, [590] * 10)
    (folder / "metrics.jsonl").write_text('{"iteration": 20, "loss": 1}\n{"iteration": 40, "val/lfw": [0.9]}\n')
    with pytest.raises(ValueError, match=rf"^{folder / 'metrics.jsonl'}:2: 'val/lfw' is \[0.9\], not a number$"):
        load_run(folder)
    (folder / "metrics.jsonl").write_text('{"iteration": 20, "loss": 1}\n{"iteration": 40, "val/lfw": 99.5}\n')
    with pytest.raises(ValueError, match=rf"^{folder / 'metrics.jsonl'}: 'val/lfw' at iteration 40 is 99.5, not an "
                                         r"accuracy \(a fraction in \[0, 1\]\)"):
        load_run(folder)
    empty = tmp_path / "empty"
    write_validation(empty, {})  # training lines only: no val figures, no results: nothing to list
    with pytest.raises(FileNotFoundError, match=f"{empty / 'lfw_results.json'}: no results file"):
        load_run(empty)
