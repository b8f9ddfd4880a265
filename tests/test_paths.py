"""uniformface.base.paths: a file this run did not write is kept unless asked; a write is checked before the work."""
import errno

import pytest

from hostile import read_only_folder
from uniformface.base.paths import ensure_writable, first_and_more, os_fix, refuse_overwrite


def test_refuse_overwrite(tmp_path):
    target = tmp_path / "pairs.txt"
    refuse_overwrite(target, overwrite=False)  # absent: fine
    target.write_text("10\t300\n")
    with pytest.raises(FileExistsError, match="pairs.txt already exists .* --overwrite"):
        refuse_overwrite(target, overwrite=False)
    refuse_overwrite(target, overwrite=True)
    refuse_overwrite(target, overwrite=False, created={target})
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")  # a link is something there too
    with pytest.raises(FileExistsError, match="--replace"):
        refuse_overwrite(tmp_path / "dangling", overwrite=False, option="--replace")


def test_ensure_writable_names_the_target_and_creates_nothing(tmp_path):
    ensure_writable(tmp_path / "new" / "deeper" / "r.json")   # its folder will be created by the write itself
    assert list(tmp_path.iterdir()) == []
    with read_only_folder(tmp_path / "ro") as ro:
        with pytest.raises(OSError) as caught:
            ensure_writable(ro / "sub" / "r.json")
        assert caught.value.filename == str(ro / "sub" / "r.json") and list(ro.iterdir()) == []
    with pytest.raises(IsADirectoryError):
        ensure_writable(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError) as caught:
        ensure_writable(tmp_path / "file" / "r.json")
    assert caught.value.filename == str(tmp_path / "file" / "r.json")


def test_os_fix_names_a_fix_for_the_errors_a_user_can_fix():
    assert "disk is full" in os_fix(errno.ENOSPC)
    assert "read-only" in os_fix(errno.EROFS)
    assert "permissions" in os_fix(errno.EACCES)
    assert os_fix(errno.EINTR) is None and os_fix(None) is None


@pytest.mark.parametrize("count, expected", [
    (2, "a0, a1"),                                  # fewer than the limit: all of them
    (3, "a0, a1, a2"),                              # exactly the limit: all of them, no "and 0 more"
    (5, "a0, a1, a2 and 2 more"),                   # more: the first `limit`, then how many are left
])
def test_first_and_more_lists_at_most_the_limit(count, expected):
    assert first_and_more([f"a{i}" for i in range(count)], limit=3) == expected


def test_first_and_more_shows_ten_by_default_and_any_item_as_text():
    from pathlib import PurePosixPath
    names = [PurePosixPath(f"p/{i}.jpg") for i in range(12)]
    assert first_and_more(names) == ", ".join(f"p/{i}.jpg" for i in range(10)) + " and 2 more"
    assert first_and_more([]) == ""


@pytest.mark.parametrize("text, max_digits, number", [
    ("7", 1, 7), ("007", 1, 7), ("0", 1, 0), ("0000", 1, 0), ("1234", 4, 1234), ("1234", 3, None),
    ("1" * 5000, 18, None),  # int() would raise "Exceeds the limit (4300 digits)", naming no file
    ("+1", 9, None), ("-1", 9, None), ("1_000", 9, None), (" 1", 9, None), ("", 9, None),
    ("\u0661\u0662", 9, None), ("\u00b2", 9, None),  # Arabic-Indic digits and a superscript: int() reads them
])
def test_a_files_number_is_plain_ascii_digits_bounded_before_int(text, max_digits, number):
    from uniformface.base.paths import decimal, is_decimal

    assert decimal(text, max_digits) == number
    assert is_decimal(text) == (text != "" and all("0" <= c <= "9" for c in text))
