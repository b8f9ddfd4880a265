"""Result tables in the earlier port's README format."""
import pytest

from uniformface.report import bin_table, center_distance_table, fold_table


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

    from uniformface.report import gather_markdown, load_run

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
