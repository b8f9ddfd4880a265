"""uniformface.base.cli and every script's command line: exit status 2 for a usage error, 1 for a runtime failure,
0 for success; one error format `<script>: error: ...`; --debug shows the traceback; every option's help
shows its default; `--help` imports no torch; the library's log messages are shown while a script runs."""
import argparse
import importlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hostile import read_only_folder
from uniformface.base.cli import (ERRORS_EPILOG, ScriptError, UsageError, add_debug_flag, describe, new_parser,
                                  run_script)
from uniformface.commands import INSTALLED, SCRIPTS

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "code" / "configs" / "toy.yaml")


def script(exc):
    def main(argv=None):
        parser = argparse.ArgumentParser()
        add_debug_flag(parser)
        parser.parse_args(argv)
        raise exc
    return main


def one_error_line(err: str, prog: str) -> str:
    """`err` (a script's stderr) ends in exactly one line `<prog>: error: ...`, with no traceback."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert lines and lines[-1].startswith(f"{prog}: error: "), err
    return lines[-1]


def test_expected_errors_are_one_line_with_status_1(tmp_path, capsys):
    with read_only_folder(tmp_path / "ro") as folder, pytest.raises(PermissionError) as caught:
        (folder / "x.json").write_text("{}")
    for exc, words in [(caught.value, [str(folder / "x.json"), "check the permissions"]),
                       (OSError(28, "No space left on device", "/data/ckpt.pt"), ["/data/ckpt.pt", "disk is full"]),
                       (ScriptError("w.pt: spec says resnet; fix: ..."), ["w.pt: spec says resnet"]),
                       (FileNotFoundError("model file not found: m.pt"), ["m.pt"])]:
        assert run_script(script(exc), [], prog="embed") == 1
        err = capsys.readouterr().err
        assert err.startswith("embed.py: error: ") and err.count("\n") == 1, err
        assert all(word in err for word in words), (words, err)


def test_a_usage_error_found_after_parsing_is_status_2_in_the_same_format(capsys):
    assert run_script(script(UsageError("key 'lr' must be a finite number, got nan")), [], prog="train") == 2
    assert capsys.readouterr().err == "train.py: error: key 'lr' must be a finite number, got nan\n"


def test_argparse_exits_become_statuses(capsys):
    def main(argv):
        parser = new_parser("gather_results", "what it does")
        parser.add_argument("--names", nargs="+", help="row names")
        parser.parse_args(argv)
        return 0

    assert run_script(main, ["--bogus"], prog="gather_results") == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: gather_results.py ") and \
        err.splitlines()[-1] == "gather_results.py: error: unrecognized arguments: --bogus"
    assert run_script(main, ["--help"], prog="gather_results") == 0
    assert capsys.readouterr().out.startswith("usage: gather_results.py ")


def test_debug_flag_shows_the_traceback(capsys, monkeypatch):
    assert run_script(script(ValueError("bad key lr")), ["--debug"], prog="train") == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.rstrip().endswith("train.py: error: bad key lr")
    monkeypatch.setenv("UNIFORMFACE_DEBUG", "1")
    assert run_script(script(ValueError("bad key lr")), [], prog="train") == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        run_script(script(ZeroDivisionError("a bug")), [], prog="train")


def test_ctrl_c_is_status_130(capsys):
    assert run_script(script(KeyboardInterrupt()), [], prog="ablate") == 130
    assert capsys.readouterr().err == "ablate.py: interrupted\n"


def test_status_of_main_is_returned():
    assert run_script(lambda argv: 3, [], prog="train") == 3
    assert run_script(lambda argv: None, [], prog="train") == 0


def test_an_exception_named_by_its_module_is_expected_once_that_module_is_loaded(capsys):
    class Failure(RuntimeError):
        pass

    expected = (f"{__name__}.Failure",)
    globals()["Failure"] = Failure
    try:
        assert run_script(script(Failure("run diverged at iteration 7")), [], expected, prog="train") == 1
        assert capsys.readouterr().err == "train.py: error: run diverged at iteration 7\n"
        with pytest.raises(RuntimeError):  # a RuntimeError that is not a Failure is a bug
            run_script(script(RuntimeError("other")), [], expected, prog="train")
        # a module that was never imported cannot have raised; it is not imported to find out
        assert run_script(lambda argv: 0, [], ("uniformface_not_a_module.Failure",), prog="train") == 0
        assert "uniformface_not_a_module" not in sys.modules
    finally:
        del globals()["Failure"]


def test_the_prog_is_how_the_script_was_called(monkeypatch):
    from uniformface.base.cli import command_name, script_name

    assert command_name("gather_results") == "uniformface-gather-results"
    monkeypatch.setattr(sys, "argv", ["/usr/bin/uniformface-gather-results"])
    assert script_name("gather_results") == "uniformface-gather-results"
    monkeypatch.setattr(sys, "argv", ["code/gather_results.py"])
    assert script_name("gather_results") == "gather_results.py"
    monkeypatch.setattr(sys, "argv", ["/x/bin/pytest"])  # run inside another program: the script's file name
    assert script_name("gather_results") == "gather_results.py"


def test_library_messages_are_shown_on_stderr_while_a_script_runs(capsys):
    logger = logging.getLogger("uniformface.train.trainer")

    def main(argv):
        logger.info("note: removed 1 temporary file(s)")
        logger.warning("warning: skipped a training image: a.jpg")
        logger.debug("not shown")
        return 0

    assert run_script(main, [], prog="train") == 0
    assert capsys.readouterr().err == "note: removed 1 temporary file(s)\nwarning: skipped a training image: a.jpg\n"
    # a script run by a script shows each message once
    assert run_script(lambda argv: run_script(main, [], prog="train"), [], prog="ablate") == 0
    assert capsys.readouterr().err.count("note: removed") == 1
    # afterwards the library is silent again at INFO (a program that imports it decides)
    assert not logging.getLogger("uniformface").handlers and logging.getLogger("uniformface").level == logging.NOTSET


def test_a_dataloader_worker_error_becomes_its_own_message():
    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise ValueError(f"img_{index}.jpg: cannot decode (truncated)")

    with pytest.raises(ValueError) as caught:
        next(iter(torch.utils.data.DataLoader(Broken(), num_workers=1)))
    assert "Original Traceback" in str(caught.value)  # what torch re-raises: the worker's whole traceback
    assert describe(caught.value) == "img_0.jpg: cannot decode (truncated)"


def test_an_atomic_writes_temporary_file_stands_for_its_target(tmp_path):
    temporary = PermissionError(13, "Permission denied", str(tmp_path / ".r.json.k2x_9abc.partial"))
    assert describe(temporary) == f"{tmp_path / 'r.json'}: permission denied (check the permissions, or choose " \
                                  "another path)"
    moved = OSError(18, "Invalid cross-device link", "a", None, str(tmp_path / ".b.json.0123abcd.partial"))
    assert describe(moved) == f"a -> {tmp_path / 'b.json'}: invalid cross-device link"


# ------------------------------------------------------------------------------------- every script


def command(name):
    return importlib.import_module(f"uniformface.commands.{name}")


def test_the_scripts_of_code_are_the_commands():
    """Each code/<name>.py runs uniformface.commands.<name>.main, with no sys.path edits of its own."""
    assert sorted(p.stem for p in (ROOT / "code").glob("*.py")) == sorted(SCRIPTS)
    assert sorted(p.stem for p in (ROOT / "code" / "uniformface" / "commands").glob("*.py")
                  if p.stem != "__init__") == sorted(SCRIPTS)
    for name in SCRIPTS:
        text = (ROOT / "code" / f"{name}.py").read_text()
        assert f"from uniformface.commands.{name} import main" in text and "sys.path" not in text, name
    assert set(INSTALLED) == set(SCRIPTS) - {"demo", "figure"}


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_help_imports_no_torch_and_shows_every_options_default(name):
    """`python code/<name>.py --help` exits 0 and imports no torch (so no CUDA query either, and it
    answers at once); every option has help text that states its default."""
    done = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "code" / f"{name}.py"), "--help"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"usage: {name}.py "), done.stdout[:200]
    imported = {line.rpartition("|")[2].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "uniformface.base.cli" in imported  # the probe sees the imports
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}, f"{name}.py --help imports torch"

    parser = command(name).build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        assert action.help, (name, action.dest)
        shown = formatter._expand_help(action)
        if action.option_strings and not action.required:
            assert "default" in shown and "(default: None)" not in shown, (name, action.option_strings, shown)


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_scripts_help_ends_with_the_one_error_convention(name):
    """The exit statuses and the error line are told once, in cli.py, and every script's --help ends with
    them under its own name."""
    text = command(name).build_parser().format_help()
    assert text.endswith(ERRORS_EPILOG % {"prog": f"{name}.py"} + "\n"), text[-400:]
    assert f"`{name}.py: error: ...`" in text and "2 for a usage" in text and "130 for Ctrl-C" in text


def usage_errors(tmp):
    """One command line per script that argparse itself refuses."""
    return {name: ["--no_such_option"] for name in SCRIPTS}


def runtime_failures(tmp: Path):
    """One command line per script that parses and then fails at run time, quickly."""
    (tmp / "file").write_text("not a folder")
    missing = str(tmp / "missing")
    model = ["--model_path", str(tmp / "missing.pt")]
    return {
        "preprocess": ["--dataset", missing, "--output_dir", str(tmp / "out"), "--no_progress"],
        "train": ["--config", TOY, "--logdir", str(tmp / "log"), "--set", "device=cpu", "--set",
                  f"dataset.train={missing}", "--no_progress"],
        "test": [*model, "--dataset", str(tmp), "--pairs_path", str(tmp / "pairs.txt"), "--device", "cpu"],
        "verify": [str(tmp / "a.jpg"), str(tmp / "b.jpg"), *model, "--device", "cpu"],
        "embed": [*model, "--dataset", str(tmp), "--output", str(tmp / "e.npy"), "--device", "cpu"],
        "export": model,
        "ablate": ["--config", TOY, "--logdir", str(tmp / "ablation"), "--grid", "alpha=0", "--set", "device=cpu",
                   f"dataset.train={missing}", "--no_progress"],
        "gather_results": [missing],
        "pack_dataset": ["--dataset", missing, "--output", str(tmp / "packed"), "--no_progress"],
        "make_toy_data": ["--output", str(tmp / "file" / "toy"), "--check_images", "0", "--no_progress"],
        "demo": ["--data", str(tmp / "file" / "toy"), "--logdir", str(tmp / "log")],
        "plot_runs": [missing, "--output", str(tmp / "curves.png")],
        "plot_sphere": [*model, "--dataset", str(tmp), "--output", str(tmp / "sphere.png"), "--device", "cpu"],
        "figure": ["--data", str(tmp / "file" / "figure"), "--logdir", str(tmp / "log")],
    }


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_exits_2_on_a_usage_error_and_1_on_a_runtime_failure(name, tmp_path, capsys):
    main = command(name).main
    assert main(usage_errors(tmp_path)[name]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {name}.py "), err
    one_error_line(err, f"{name}.py")

    assert main(runtime_failures(tmp_path)[name]) == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1, err  # the one line, and nothing else on stderr
    one_error_line(err, f"{name}.py")


def test_config_errors_are_usage_errors(tmp_path, capsys):
    from uniformface.commands import ablate, train

    assert train.main(["--config", TOY, "--logdir", str(tmp_path), "--set", "lr=.nan"]) == 2
    assert capsys.readouterr().err == \
        f"train.py: error: {TOY} (with --set): key 'lr' must be a finite number, got nan\n"
    assert ablate.main(["--config", TOY, "--logdir", str(tmp_path), "--grid", "alpah=0,1"]) == 2
    one_error_line(capsys.readouterr().err, "ablate.py")
    assert list(tmp_path.iterdir()) == []


def test_an_installed_command_names_itself(tmp_path):
    """The console command runs the same main, and its messages carry its own name."""
    executable = Path(sys.executable).parent / "uniformface-gather-results"
    if not executable.exists():
        pytest.skip("the package is not installed in this environment (`make` installs it)")
    done = subprocess.run([str(executable), str(tmp_path / "missing")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 1 and done.stderr.startswith("uniformface-gather-results: error: "), done.stderr
