"""checkpoint.py: checkpoints read with weights_only=True, the previous checkpoint kept, leftovers of killed
writes swept."""

import pytest

from uniformface.base.atomic import atomic_write_text, remove_stale_partials
from uniformface.train.checkpoint import CheckpointError, keep_previous, safe_torch_load


@pytest.mark.parametrize("content, words", [(b"\xff\xd8\xff\xe0 a JPEG renamed", "not a checkpoint PyTorch can read"),
                                             (b"", "damaged or not a checkpoint")])
def test_unreadable_checkpoint_is_one_line_naming_the_file(tmp_path, content, words):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        safe_torch_load(path)
    assert str(path) in str(err.value) and words in str(err.value) and "\n" not in str(err.value)
    assert "weights_only=False" not in str(err.value)


def test_keep_previous_and_stale_partials(tmp_path):
    state = tmp_path / "checkpoint.pt"
    assert not keep_previous(state, tmp_path / "checkpoint.prev.pt")
    atomic_write_text(state, "one")
    assert keep_previous(state, tmp_path / "checkpoint.prev.pt")
    atomic_write_text(state, "two")  # a new file replaces the name; the kept one still has the old content
    assert (tmp_path / "checkpoint.prev.pt").read_text() == "one" and state.read_text() == "two"
    stale = [tmp_path / ".checkpoint.pt.k1ll3d_x.partial", tmp_path / ".metrics.jsonl.abcdefgh.partial"]
    other = tmp_path / ".lfw_results.json.abcdefgh.partial"  # not a file of the run: not touched
    for path in stale + [other]:
        path.write_text("half")
    assert remove_stale_partials(tmp_path, ["checkpoint.pt", "metrics.jsonl"]) == sorted(stale)
    assert other.exists() and not any(p.exists() for p in stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lfw_results.json.abcdefgh.partial", "checkpoint.prev.pt",
                                                          "checkpoint.pt"]


def test_keep_previous_of_a_checkpoint_that_is_already_its_previous_leaves_no_temporary(tmp_path):
    """A kill between keeping the previous checkpoint (a hard link) and writing the new one leaves the two
    names as links of one file; rename() between two links of one file does nothing."""
    import os

    state, previous = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    atomic_write_text(state, "one")
    os.link(state, previous)
    assert keep_previous(state, previous)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]
    assert previous.read_text() == "one"
