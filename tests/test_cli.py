"""uniformface.cli: expected failures end in one line and exit 1; --debug shows the traceback; bugs keep it."""
import argparse

import pytest
import torch

from hostile import one_line_error, read_only_folder
from uniformface.cli import ScriptError, add_debug_flag, describe, refuse_overwrite, resolve_device, run_script


def script(exc):
    def main(argv=None):
        parser = argparse.ArgumentParser()
        add_debug_flag(parser)
        parser.parse_args(argv)
        raise exc
    return main


def test_expected_errors_are_one_line_with_status_1(tmp_path, capsys):
    with read_only_folder(tmp_path / "ro") as folder, pytest.raises(PermissionError) as caught:
        (folder / "x.json").write_text("{}")
    for exc, words in [(caught.value, [str(folder / "x.json"), "check the permissions"]),
                       (OSError(28, "No space left on device", "/data/ckpt.pt"), ["/data/ckpt.pt", "disk is full"]),
                       (ScriptError("w.pt: spec says resnet; fix: ..."), ["w.pt: spec says resnet"]),
                       (FileNotFoundError("model file not found: m.pt"), ["m.pt"])]:
        assert run_script(script(exc), []) == 1
        err = capsys.readouterr().err
        one_line_error(err, *words)


def test_debug_flag_shows_the_traceback(capsys):
    assert run_script(script(ValueError("bad key lr")), ["--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.rstrip().endswith("error: bad key lr")


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        run_script(script(ZeroDivisionError("a bug")), [])


def test_status_of_main_is_returned():
    assert run_script(lambda argv: 3, []) == 3
    assert run_script(lambda argv: None, []) == 0


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


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"--device 'gpu0': not a device name \(use cpu, cuda"):
        resolve_device("gpu0")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(ValueError, match=r"--device cuda: no CUDA GPU .* \(use --device cpu\)"):
            resolve_device("cuda")


def test_refuse_overwrite(tmp_path):
    target = tmp_path / "pairs.txt"
    refuse_overwrite(target, overwrite=False)  # absent: fine
    target.write_text("10\t300\n")
    with pytest.raises(FileExistsError, match="pairs.txt already exists .* --overwrite"):
        refuse_overwrite(target, overwrite=False)
    refuse_overwrite(target, overwrite=True)
    refuse_overwrite(target, overwrite=False, created={target})


def test_ensure_writable_names_the_target_and_creates_nothing(tmp_path):
    from uniformface.cli import ensure_writable

    ensure_writable(tmp_path / "new" / "deeper" / "r.json")   # its folder will be created by the write itself
    assert list(tmp_path.iterdir()) == []
    with read_only_folder(tmp_path / "ro") as ro:
        with pytest.raises(OSError) as caught:
            ensure_writable(ro / "sub" / "r.json")
        assert caught.value.filename == str(ro / "sub" / "r.json") and list(ro.iterdir()) == []
    with pytest.raises(IsADirectoryError):
        ensure_writable(tmp_path)
    # an atomic write's temporary file stands for its target in the message
    temporary = PermissionError(13, "Permission denied", str(tmp_path / ".r.json.k2x_9abc.partial"))
    assert describe(temporary).startswith(f"{tmp_path / 'r.json'}: permission denied")
