from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import write_bin_set
from uniformface.base.config import Config, ConfigError, load_config, parse_overrides, run_name

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_default_config_is_the_official_solver_and_the_papers_losses():
    cfg = load_config(ROOT / "code" / "config.yaml")
    assert (cfg.model_name, cfg.emb_dim, cfg.input_size) == ("sphereface20", 512, [112, 96])
    assert (cfg.lr, cfg.momentum, cfg.weight_decay) == (0.1, 0.9, 5e-4)
    # The official run: 256 images on each of 2 GPUs, gradients averaged -> a global batch of 512.
    assert (cfg.milestones, cfg.max_iters, cfg.batch_size, cfg.lr_gamma) == ([16000, 24000], 28000, 2 * 256, 0.1)
    assert cfg.loss.name == "sphereface" and cfg.loss.m == 4
    assert (cfg.loss.base, cfg.loss.gamma, cfg.loss.power, cfg.loss.lambda_min) == (1000, 0.12, 1, 5)
    assert cfg.alpha == 1.0 and cfg.flip
    # the uniform loss on the hypersphere, with the per-center reduction (docs/DESIGN.md §4.3, §4.4)
    assert cfg.normalize_centers and cfg.uniform_reduction == "center" and cfg.center_mode == "feature"
    assert Config().normalize_centers and Config().uniform_reduction == "center"
    assert sorted(cfg.dataset.exclude_identities) == ["0166921", "1056413", "1193098"]


def test_toy_config_loads():
    cfg = load_config(ROOT / "code" / "configs" / "toy.yaml")
    assert cfg.device == "cpu" and cfg.max_iters > 0


def test_misspelt_key_names_key_and_closest(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, {"learning_rate": 0.1, "momentun": 0.9}))
    assert "learning_rate" in str(err.value) and str(tmp_path / "c.yaml") in str(err.value)
    with pytest.raises(ConfigError, match=r"unknown key 'momentun'.*did you mean 'momentum'"):
        load_config(write(tmp_path, {"momentun": 0.9}))
    with pytest.raises(ConfigError, match=r"unknown key 'loss.nmae'.*did you mean 'loss.name'"):
        load_config(write(tmp_path, {"loss": {"nmae": "cosface"}}))


def test_wrong_type_and_bad_choice(tmp_path):
    with pytest.raises(ConfigError, match="'lr' expects float"):
        load_config(write(tmp_path, {"lr": "fast"}))
    with pytest.raises(ConfigError, match="'batch_size' expects int"):
        load_config(write(tmp_path, {"batch_size": 2.5}))
    with pytest.raises(ConfigError, match="'loss.name' is 'sphere'"):
        load_config(write(tmp_path, {"loss": {"name": "sphere"}}))
    with pytest.raises(ConfigError, match="'beta'"):
        load_config(None, ["beta=2"])


def test_set_overrides_any_key_dotted_and_yaml_typed(tmp_path):
    cfg = load_config(write(tmp_path, {"lr": 0.1}),
                      ["lr=0.01", "loss.name=cosface", "milestones=[10, 20]", "compute_in_batch=true",
                       "dataset.train=/x"])
    assert cfg.lr == 0.01 and isinstance(cfg.lr, float)
    assert cfg.loss.name == "cosface" and cfg.milestones == [10, 20] and cfg.compute_in_batch is True
    assert cfg.dataset.train == "/x"
    # YAML 1.1 would read 1e-3 as a string; users write it that way
    assert load_config(None, ["lr=1e-3", "weight_decay=5E-4"]).lr == 1e-3
    with pytest.raises(ConfigError, match="unknown key 'dataset.tain'.*'dataset.train'"):
        load_config(None, ["dataset.tain=/x"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lr"])


def test_defaults_equal_dataclass_and_run_name_differs_by_setting():
    a, b = load_config(None), load_config(None, ["alpha=0"])
    assert a == Config()
    assert run_name(a) != run_name(b)
    # the uniform loss's reading shows in the name only where it is not the default
    assert "_raw" not in run_name(a) and "_pairs" not in run_name(a) and "_center" not in run_name(a)
    other = "pairs" if a.uniform_reduction == "center" else "center"
    names = {run_name(load_config(None, extra)) for extra in
             ([], ["normalize_centers=false"], [f"uniform_reduction={other}"])}
    assert len(names) == 3 and any(name.endswith("_raw") for name in names)


def float_keys(cls=Config, prefix=""):
    """Every float-typed key of the config (nested, optional ones included), from the dataclasses."""
    import dataclasses
    import typing

    keys = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys += float_keys(hint, f"{prefix}{f.name}.")
        elif hint is float or float in typing.get_args(hint):
            keys.append(prefix + f.name)
    return keys


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_every_float_key_must_be_finite(value):
    """YAML reads .nan and .inf as floats, which passed every `< 0` check."""
    keys = float_keys()
    assert {"lr", "momentum", "weight_decay", "alpha", "beta", "loss.m", "loss.s", "lr_gamma"} <= set(keys)
    for key in keys:
        with pytest.raises(ConfigError, match=rf"key '{key}' must be a finite number, got -?(nan|inf)"):
            load_config(None, [f"{key}={value}"])


@pytest.mark.parametrize("overrides, message", [
    (["lr=0"], r"'lr' must be > 0"), (["lr=1e39"], r"'lr' must be > 0 and < 1.7e38"),
    (["momentum=1"], r"'momentum' must be in \[0, 1\)"), (["momentum=-0.1"], r"'momentum' must be in \[0, 1\)"),
    (["lr_gamma=0"], r"'lr_gamma' must be in \(0, 1\]"), (["weight_decay=-1e-4"], r"'weight_decay' must be >= 0"),
    (["loss.m=2.5"], r"'loss.m' must be a positive integer for A-Softmax"),
    (["loss.name=cosface", "loss.m=1"], r"'loss.m' must be in \[0, 1\) for CosFace"),
    (["loss.name=arcface", "loss.m=2"], r"'loss.m' must be an angle in \[0, pi/2\) for ArcFace"),
    (["loss.name=arcface", "loss.s=0"], r"'loss.s' must be > 0"), (["loss.lambda_min=-1"], r"'loss.lambda_min' must be >= 0"),
    (["device=gpu"], r"key 'device' is 'gpu'; choose auto, cpu, cuda, cuda:N or mps"),
])
def test_numbers_out_of_range_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
    load_config(None, ["lr=0.01", "momentum=0", "loss.name=arcface", "loss.m=0.5", "device=cuda:1"])  # in range


def test_the_reproducing_guides_ablation_rows_name_the_run_folders_train_py_makes():
    """Each row of docs/REPRODUCING.md's "Train and test each setting" table: its `--set` overrides on
    code/config.yaml give the run folder the row names (a '...' prefix abbreviates the common part)."""
    import re

    rows = [line for line in (ROOT / "docs" / "REPRODUCING.md").read_text().splitlines()
            if line.startswith("| ") and ("earlier port" in line or "ours" in line) and "seed0_" in line or
            (line.startswith("| ") and "`..._alpha" in line)]
    assert len(rows) == 5, rows
    for row in rows:
        command, folder = [cell.strip() for cell in row.split("|")[2:4]]
        overrides = re.findall(r"--set (\S+?)(?=`| --set|$)", command)
        name = run_name(load_config(ROOT / "code" / "config.yaml", overrides))
        folder = folder.strip("`")
        assert name.endswith(folder[3:]) if folder.startswith("...") else name == folder, (row, name)


def test_check_finite_every_step_is_a_boolean_off_by_default(tmp_path):
    assert Config().check_finite_every_step is False
    assert load_config(None, ["check_finite_every_step=true"]).check_finite_every_step is True
    with pytest.raises(ConfigError, match="key 'check_finite_every_step' expects bool, got 'sometimes'"):
        load_config(None, ["check_finite_every_step=sometimes"])


def test_settings_changed_on_resume_are_recorded_once_and_config_rewritten(tmp_path):
    from uniformface.base.config import (HISTORY_FILE, changed_settings, history_lines, read_history, record_settings,
                                         save_config, to_dict)

    before = load_config(None)
    save_config(before, tmp_path / "config.yaml")
    after = load_config(tmp_path / "config.yaml", ["lr=0.01", "loss.name=cosface", "milestones=[10, 20]"])
    expected = {"lr": {"from": 0.1, "to": 0.01}, "milestones": {"from": [16000, 24000], "to": [10, 20]},
                "loss.name": {"from": "sphereface", "to": "cosface"}}
    assert changed_settings(to_dict(before), to_dict(after)) == expected
    assert record_settings(tmp_path, to_dict(before), before, 5) == {}  # nothing changed: nothing written
    assert not (tmp_path / HISTORY_FILE).exists()
    assert record_settings(tmp_path, to_dict(before), after, 5, "now") == expected
    assert load_config(tmp_path / "config.yaml") == after
    assert read_history(tmp_path) == [{"iteration": 5, "time": "now", "changed": expected}]
    assert history_lines(read_history(tmp_path)) == [
        "from iteration 5: lr 0.1 -> 0.01, milestones [16000, 24000] -> [10, 20], loss.name sphereface -> cosface"]
    # killed after the history was written and before config.yaml was: the rerun does not repeat the entry
    save_config(before, tmp_path / "config.yaml")
    record_settings(tmp_path, to_dict(before), after, 5, "later")
    assert len(read_history(tmp_path)) == 1 and load_config(tmp_path / "config.yaml") == after
    (tmp_path / HISTORY_FILE).write_text("lr: 0.1\n")
    with pytest.raises(ValueError, match=rf"{HISTORY_FILE}: expected a list of entries"):
        read_history(tmp_path)


def test_config_file_not_utf8_names_file_and_line_and_a_byte_order_mark_is_fine(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"seed: 1\nlr: 0.\xe91\n")
    with pytest.raises(ConfigError, match=rf"^{path}:2: not UTF-8 text \(byte 0xe9 at offset 14\)"):
        load_config(path)
    path.write_bytes(b"\xef\xbb\xbfseed: 3\n")
    assert load_config(path).seed == 3


def billion_laughs(key="milestones", indent="", levels=9):
    """YAML of one key whose list's last item stands for 10**levels numbers: each item holds ten aliases of
    the one before ("billion laughs"; the first alias is on the text's third line). PyYAML shares the
    aliased objects, so it reads at once; what walks the value (validation, a repr, json.dumps) goes
    through all 10**levels numbers."""
    lines = [f"{indent}{key}:", f"{indent}  - &l0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"]
    lines += [f"{indent}  - &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_at_once_naming_the_file_and_line(tmp_path):
    """A config whose milestones are a billion laughs made train.py hang in validation, growing to GBs:
    every alias is refused as the file is read (an alias a config never needs, a billion laughs too)."""
    import subprocess
    import sys

    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs())
    proc = subprocess.run([sys.executable, str(ROOT / "code/train.py"), "--config", str(path), "--logdir",
                           str(tmp_path / "log")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr == f"train.py: error: {path}:3: YAML alias *l0 refused (aliases can expand without bound); " \
                          "write the value out in full\n"
    path.write_text("lr: &rate 0.05\nalpha: *rate\n")  # one harmless alias: refused all the same
    with pytest.raises(ConfigError, match=rf"^{path}:2: YAML alias \*rate refused"):
        load_config(path)
    path.write_text("lr: &rate 0.05\n")  # an anchor alone expands nothing
    assert load_config(path).lr == 0.05


def test_set_values_and_every_yaml_read_refuse_aliases_and_deep_nesting(tmp_path):
    """`--set` values (and `--grid`'s, which ablation.py reads with the same `yaml_load`) refuse aliases;
    a nesting deeper than any setting (`[[[[...`, a RecursionError in PyYAML) is refused too."""
    from uniformface.base.config import MAX_YAML_DEPTH, UnsafeYAML, read_history, yaml_load

    with pytest.raises(ConfigError, match=r"^--set milestones: YAML alias \*a refused .* \(line 1, column 13\)$"):
        load_config(None, ["milestones=[&a [1, 2], *a]"])
    with pytest.raises(UnsafeYAML, match=r"YAML alias \*a refused"):
        yaml_load("[&a 1, *a]")  # the text ablation.py makes of `--grid alpha=&a 1, *a`
    deep = "[" * 5000 + "]" * 5000
    with pytest.raises(ConfigError, match=rf"^--set milestones: nested more than {MAX_YAML_DEPTH} levels deep"):
        load_config(None, [f"milestones={deep}"])
    assert yaml_load("[" * MAX_YAML_DEPTH + "]" * MAX_YAML_DEPTH) is not None  # as deep as allowed: read
    history = "- iteration: 3\n  changed:\n    lr:\n" + billion_laughs("from", " " * 6)
    (tmp_path / "config_history.yaml").write_text(history)
    with pytest.raises(ValueError, match=r"config_history.yaml:6: YAML alias \*l0 refused"):
        read_history(tmp_path)


def test_an_integer_of_thousands_of_digits_is_named_with_its_file_and_line(tmp_path):
    """Python's int() refuses over 4,300 digits with a message naming no file: the loader refuses any
    integer longer than a setting needs, in a config file (line named), a `--set` value or any YAML read."""
    from uniformface.base.config import MAX_YAML_INT_CHARS, UnsafeYAML, yaml_load

    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.1\nmax_iters: " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError, match=rf"^{path}:2: an integer of 5000 characters \(no setting needs more "
                                          rf"than {MAX_YAML_INT_CHARS}\)$"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"^--set milestones: an integer of 4400 characters"):
        load_config(None, ["milestones=[" + "1" * 4400 + "]"])
    with pytest.raises(UnsafeYAML):
        yaml_load("- " + "-" + "7" * MAX_YAML_INT_CHARS)
    assert yaml_load("- " + "7" * MAX_YAML_INT_CHARS) == [int("7" * MAX_YAML_INT_CHARS)]  # as long as allowed
    assert yaml_load("x: 0x1F\ny: 1_000") == {"x": 31, "y": 1000}  # YAML 1.1's other integers still read


def test_every_yaml_the_project_reads_goes_through_the_one_loader():
    """`yaml_load` is the only reader: no other module calls PyYAML's loaders, which accept aliases."""
    import re

    readers = re.compile(r"yaml\.(safe_load|load|full_load|unsafe_load|load_all|safe_load_all|compose)\(|"
                         r"yaml\.(Safe|Full|Unsafe|Base)?Loader\b|from yaml import")
    offenders = [f"{path.relative_to(ROOT)}:{number}" for path in sorted((ROOT / "code").rglob("*.py"))
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if readers.search(line) and path.name != "config.py"]
    assert offenders == []
    assert "yaml.load(text, Loader=_Loader)" in (ROOT / "code/uniformface/base/config.py").read_text()


def test_a_config_that_is_not_a_mapping_is_one_error_with_or_without_set(tmp_path):
    """A config file holding a list, with `--set`, was a TypeError traceback from the merge."""
    path = tmp_path / "c.yaml"
    for text, kind in (("- 1\n- 2\n", "list"), ("just text\n", "string"), ("3\n", "number")):
        path.write_text(text)
        for overrides in (None, ["lr=0.1"]):
            with pytest.raises(ConfigError, match=rf"^{path}: a config is a mapping of keys .* got a YAML {kind}$"):
                load_config(path, overrides)
    path.write_text("")  # an empty file is the defaults, as before
    assert load_config(path, ["lr=0.05"]).lr == 0.05


def test_a_huge_value_of_the_wrong_type_is_shown_cut(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("milestones: [" + ", ".join(["x"] * 2000) + "]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert len(str(err.value)) < 300 and "key 'milestones' expects list, got ['x', 'x'," in str(err.value)


def test_val_targets_are_bin_sets_of_distinct_names_named_when_missing(tmp_path):
    """val_targets: none by default; each a `.bin` name whose stem (its val/<stem>) no other shares, checked
    with the config; a file that is not there is named with its key by `check_evaluation_files`, before any
    work, and so are the LFW folder and its pairs when eval_every evaluates them."""
    from uniformface.base.config import check_evaluation_files

    assert Config().val_targets == [] and load_config(ROOT / "code" / "config.yaml").val_targets == []
    lfw = write_bin_set(tmp_path / "lfw.bin", n_pairs=10)
    cfg = load_config(None, [f"val_targets=[{lfw}]", "eval_every=10", "dataset.test=null", "dataset.pairs=null"])
    assert cfg.val_targets == [str(lfw)]
    check_evaluation_files(cfg)
    for listed, message in (([f"{tmp_path / 'cfp_fp.rec'}"], r"'.*cfp_fp\.rec' is not an insightface \.bin set"),
                            ([str(lfw), f"{tmp_path / 'other' / 'lfw.bin'}"], r"share the set name 'lfw'")):
        with pytest.raises(ConfigError, match=rf"key 'val_targets': .*{message}"):
            load_config(None, [f"val_targets=[{', '.join(listed)}]"])
    with pytest.raises(ConfigError, match="key 'val_targets' expects list"):
        load_config(None, [f"val_targets={lfw}"])
    for missing, why in ((tmp_path / "agedb_30.bin", f"no such file {tmp_path / 'agedb_30.bin'}"),
                         (tmp_path / "folder.bin", f"{tmp_path / 'folder.bin'} is a folder, not a .bin file")):
        if missing.name == "folder.bin":
            missing.mkdir()
        cfg = load_config(None, [f"val_targets=[{lfw}, {missing}]"])  # the config itself reads: no file opened
        with pytest.raises(ConfigError, match=rf"^config: key 'val_targets': {why} "):
            check_evaluation_files(cfg)
    with pytest.raises(ConfigError, match=rf"key 'dataset.test': {tmp_path / 'lfw'} is not the aligned LFW folder"):
        check_evaluation_files(load_config(None, ["eval_every=10", f"dataset.test={tmp_path / 'lfw'}"]))
    check_evaluation_files(load_config(None, [f"dataset.test={tmp_path / 'lfw'}"]))  # eval_every 0: not read


def test_the_lfw_folder_and_its_pairs_are_null_together_or_not_at_all():
    cfg = load_config(None, ["dataset.test=null", "dataset.pairs=null"])
    assert cfg.dataset.test is None and cfg.dataset.pairs is None
    for given in ("test", "pairs"):
        with pytest.raises(ConfigError, match=r"key 'dataset\.(test|pairs)' is null but 'dataset\.(test|pairs)' is "
                                              "not: give the LFW folder and its pairs.txt together, or neither"):
            load_config(None, [f"dataset.{given}=null"])


PAPER = ROOT / "code" / "configs" / "paper.yaml"


def test_the_papers_own_setting_holds_its_numbers():
    """code/configs/paper.yaml: faces_emore at 112x112, the paper's network and schedule, the batch the
    paper's 4 GPUs x 128 make, LFW / CFP-FP / AgeDB-30 checked every 2,000 iterations, the rest as
    code/config.yaml."""
    cfg, default = load_config(PAPER), load_config(ROOT / "code" / "config.yaml")
    assert cfg.dataset.train == "data/faces_emore/train.rec" and cfg.dataset.exclude_identities == []
    assert (cfg.model_name, cfg.emb_dim, cfg.input_size) == ("uniformface", 512, [112, 112])
    assert (cfg.lr, cfg.lr_gamma, cfg.milestones, cfg.max_iters) == (0.1, 0.1, [16000, 24000], 28000)
    assert cfg.batch_size == 4 * 128
    assert [Path(p).stem for p in cfg.val_targets] == ["lfw", "cfp_fp", "agedb_30"]
    assert {Path(p).parent for p in cfg.val_targets} == {Path("data/faces_emore")}
    assert cfg.eval_every == 2000 and cfg.dataset.test is None and cfg.dataset.pairs is None
    for key in ("momentum", "weight_decay", "loss", "alpha", "beta", "compute_in_batch", "center_mode",
                "normalize_centers", "uniform_reduction", "regularface", "flip", "amp", "min_images_per_class"):
        assert getattr(cfg, key) == getattr(default, key), key


@pytest.mark.slow
def test_the_papers_own_setting_builds_every_object_on_a_synthetic_faces_emore(tmp_path):
    """paper.yaml with its paths set by --set to a RecordIO of faces_emore's layout (train.rec + train.idx,
    header and identity records, 112x112 JPEGs) and three tiny .bin sets: the trainer builds its training
    set, network, head, centers and solver, a batch goes through the network and the head, and the
    evaluators decode the three sets at the network's size."""
    import torch

    from uniformface.base.images import encode_image
    from uniformface.data import write_record_file
    from uniformface.eval.during_training import training_evaluators
    from uniformface.nn.centers import ClassCenters
    from uniformface.nn.heads import ASoftmax
    from uniformface.nn.models import normalize_pixels
    from uniformface.train.trainer import Trainer

    emore = tmp_path / "faces_emore"
    emore.mkdir()
    rng = np.random.default_rng(0)
    samples = [(encode_image(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8), "JPEG", 90), float(c))
               for c in range(4) for _ in range(3)]
    write_record_file(emore / "train.rec", emore / "train.idx", samples)
    bins = [write_bin_set(emore / f"{name}.bin", n_pairs=10, seed=k)
            for k, name in enumerate(("lfw", "cfp_fp", "agedb_30"))]
    cfg = load_config(PAPER, [f"dataset.train={emore / 'train.rec'}", f"val_targets=[{', '.join(map(str, bins))}]",
                              "num_workers=0", "device=cpu"])
    evaluators = training_evaluators(cfg)
    assert [e.name for e in evaluators] == ["lfw", "cfp_fp", "agedb_30"]
    assert all(e.images.shape == (20, 3, 112, 112) for e in evaluators)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    try:
        assert trainer.dataset.num_classes == 4 and len(trainer.dataset) == 12
        # the Fig. 3 net: DESIGN §2.3's 28,972,736 parameters at 112x96, plus fc5's 7 more input columns at 112x112
        assert sum(p.numel() for p in trainer.model.backbone.parameters()) == 28_972_736 + 7 * 512 * 512
        assert isinstance(trainer.model.head, ASoftmax) and trainer.model.head.weight.shape == (4, 512)
        assert isinstance(trainer.centers, ClassCenters) and trainer.optimizer.param_groups[0]["lr"] == 0.1
        images, labels = zip(*(trainer.dataset[i] for i in (0, 5)))
        features, logits = trainer.model(normalize_pixels(torch.stack(images).float()), torch.tensor(labels))
        assert features.shape == (2, 512) and logits.shape == (2, 4)
    finally:
        trainer.close()
