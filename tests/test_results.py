"""test.py's results file: its ROC figure's name, merging an LFW and a `.bin` run into one file, and never
replacing a file test.py did not write (unless --overwrite), checked before any feature is computed."""
import json

import pytest

from hostile import read_only_folder
from uniformface.eval.results import (RESULT_KEYS, merge_results, prepare_results, read_results, roc_path,
                                      update_results)


def test_merge_results_keeps_the_other_kind():
    lfw_old, lfw_new = {"accuracy_mean": 0.5, "stale": 1}, {"accuracy_mean": 0.7}
    merged = merge_results({**lfw_old, "bin": {"lfw": {"a": 1}, "calfw": {"a": 2}}}, bins={"lfw": {"a": 3}})
    assert merged == {"accuracy_mean": 0.5, "stale": 1, "bin": {"lfw": {"a": 3}, "calfw": {"a": 2}}}
    merged = merge_results(merged, lfw=lfw_new)
    assert merged == {"accuracy_mean": 0.7, "bin": {"lfw": {"a": 3}, "calfw": {"a": 2}}}
    assert merge_results(None, lfw=lfw_new) == lfw_new


def test_roc_path_sits_beside_the_results_file(tmp_path):
    assert roc_path(tmp_path / "run" / "lfw_results.json") == tmp_path / "run" / "lfw_roc.png"
    assert roc_path("r.json").name == "r_roc.png"
    assert roc_path("results.json").name == "results_roc.png"   # only a "_results" ending is dropped


def test_read_results_returns_ours_and_refuses_the_rest(tmp_path):
    assert read_results(None) is None and read_results(tmp_path / "absent.json") is None
    ours = tmp_path / "ours.json"
    for key in RESULT_KEYS:
        ours.write_text(json.dumps({key: 1, "other": 2}))
        assert read_results(ours) == {key: 1, "other": 2}
    foreign = tmp_path / "foreign.json"
    for content, problem in (('{"name": "a notebook"}', "JSON without the keys test.py writes"),
                             ("[1, 2]", "JSON without the keys test.py writes"),
                             ('{\n"a": ', "line 2: not valid JSON")):
        foreign.write_text(content)
        with pytest.raises(FileExistsError, match=f"{foreign} exists and is not a results file of test.py "
                                                  rf"\({problem}.*--overwrite"):
            read_results(foreign)
        assert read_results(foreign, overwrite=True) is None
    foreign.write_bytes(b'{"accuracy_mean": "\xff"}')
    with pytest.raises(FileExistsError, match=r"not UTF-8 text \(byte 19\)"):
        read_results(foreign)
    with pytest.raises(IsADirectoryError, match="is a folder: --json takes a file name"):
        read_results(tmp_path)


def test_prepare_results_refuses_before_the_work(tmp_path):
    prepare_results(None)                                      # no results file asked for: nothing to check
    results = tmp_path / "r.json"
    prepare_results(results)                                   # nothing there yet
    figure = roc_path(results)
    figure.write_bytes(b"someone's figure")
    with pytest.raises(FileExistsError, match="r_roc.png exists and no results file of test.py is beside it"):
        prepare_results(results)
    prepare_results(results, roc=False)                        # a .bin run draws no figure
    prepare_results(results, overwrite=True)
    results.write_text(json.dumps({"accuracy_mean": 0.9}))     # the figure is ours once our results are beside it
    prepare_results(results)
    assert figure.read_bytes() == b"someone's figure" and json.loads(results.read_text()) == {"accuracy_mean": 0.9}
    with read_only_folder(tmp_path / "ro") as ro:
        with pytest.raises(PermissionError) as caught:
            prepare_results(ro / "r.json")
    assert caught.value.filename == str(ro / "r.json")


def test_update_results_merges_into_the_file_and_leaves_no_temporary(tmp_path):
    results = tmp_path / "lfw_results.json"
    update_results(results, lfw={"accuracy_mean": 0.8})
    update_results(results, bins={"cfp_fp": {"accuracy_mean": 0.7}})
    written = update_results(results, lfw={"accuracy_mean": 0.9, "evaluated": "x"})
    assert json.loads(results.read_text()) == written == {"accuracy_mean": 0.9, "evaluated": "x",
                                                          "bin": {"cfp_fp": {"accuracy_mean": 0.7}}}
    assert [p.name for p in tmp_path.iterdir()] == ["lfw_results.json"]
    results.write_text("not json")
    with pytest.raises(FileExistsError):
        update_results(results, lfw={"accuracy_mean": 0.9})
    assert results.read_text() == "not json"
    update_results(results, overwrite=True, bins={"lfw": {"accuracy_mean": 0.6}})
    assert json.loads(results.read_text()) == {"bin": {"lfw": {"accuracy_mean": 0.6}}}


def test_each_benchmark_keeps_its_own_section():
    lfw = {"accuracy_mean": 0.7, "verify_rule": {}}
    merged = merge_results({**lfw, "bin": {"lfw": {"a": 1}}}, sections={"ytf": {"accuracy_mean": 0.9}})
    assert merged == {**lfw, "ytf": {"accuracy_mean": 0.9}, "bin": {"lfw": {"a": 1}}}
    merged = merge_results(merged, sections={"ijbc": {"tar_at_far_1e-4": 0.5}})
    merged = merge_results(merged, lfw={"accuracy_mean": 0.8})          # a new LFW run keeps every section
    assert merged == {"accuracy_mean": 0.8, "ytf": {"accuracy_mean": 0.9}, "ijbc": {"tar_at_far_1e-4": 0.5},
                      "bin": {"lfw": {"a": 1}}}
    merged = merge_results(merged, bins={"cfp_fp": {"a": 2}}, sections={"ytf": {"accuracy_mean": 0.95}})
    assert merged["ytf"] == {"accuracy_mean": 0.95} and merged["ijbc"] == {"tar_at_far_1e-4": 0.5}
    assert merged["bin"] == {"lfw": {"a": 1}, "cfp_fp": {"a": 2}} and merged["accuracy_mean"] == 0.8
    with pytest.raises(ValueError, match="unknown results section"):
        merge_results(None, sections={"megaface": {}})


def test_benchmark_files_sit_beside_the_results_file(tmp_path):
    from uniformface.eval.results import beside_results

    run = tmp_path / "run"
    assert roc_path(run / "lfw_results.json", "ytf") == run / "ytf_roc.png"
    assert beside_results(run / "lfw_results.json", "ijbc", "_features.npy") == run / "ijbc_features.npy"
    assert roc_path(run / "r.json", "ijbb") == run / "r_ijbb_roc.png"
    assert beside_results("model_results.json", "ytf", "_features.npy").name == "model_ytf_features.npy"
    assert roc_path(run / "lfw_results.json", "lfw") == roc_path(run / "lfw_results.json")


def test_prepare_results_checks_the_benchmark_s_own_figure(tmp_path):
    results = tmp_path / "r.json"
    (tmp_path / "r_ytf_roc.png").write_bytes(b"someone's figure")
    prepare_results(results)                                   # LFW draws r_roc.png: nothing in the way
    with pytest.raises(FileExistsError, match="r_ytf_roc.png exists and no results file of test.py is beside it"):
        prepare_results(results, benchmark="ytf")
    results.write_text(json.dumps({"ytf": {"accuracy_mean": 0.9}}))   # a file holding only a section is ours
    prepare_results(results, benchmark="ytf")
