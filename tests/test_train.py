"""train.py end to end: a bad config is a usage error (exit 2) before anything is written; the run folder,
resume and the faults in training are tried in test_trainer.py and test_checkpoint.py."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "code" / "configs" / "toy.yaml")


def test_a_misspelt_key_is_refused_before_any_work(tmp_path):
    # The dataset path does not exist either: the config error must be reported first, with exit 2.
    proc = subprocess.run([sys.executable, str(ROOT / "code" / "train.py"), "--config", TOY, "--logdir", str(tmp_path),
                           "--set", "bach_size=8"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("train.py: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "unknown key 'bach_size'" in proc.stderr and "batch_size" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_a_nan_learning_rate_is_refused_before_any_work(tmp_path, capsys):
    import train as train_cli

    status = train_cli.main(["--config", TOY, "--logdir", str(tmp_path), "--set", "lr=.nan"])
    assert status == 2 and "key 'lr' must be a finite number, got nan" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_an_installation_without_the_source_trees_config_asks_for_one(tmp_path, capsys, monkeypatch):
    """After `pip install .` the package has no code/config.yaml beside it: the default --config is refused
    as a usage error that says what to pass."""
    from uniformface.commands import train

    monkeypatch.setattr(train, "DEFAULT_CONFIG", tmp_path / "site-packages" / "config.yaml")
    assert train.main(["--logdir", str(tmp_path / "log")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train.py: error: --config: this installation has no ") and "pass --config FILE" in err
    assert not (tmp_path / "log").exists()
