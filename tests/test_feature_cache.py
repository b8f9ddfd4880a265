"""The feature cache beside the results: a complete cache of the same key is returned as it is, chunks of a
killed run are reused only under their own key, a damaged or foreign file is recomputed, and the model's
identity follows its content, not its name or time stamp."""
import hashlib
import json
import os

import numpy as np
import pytest

from uniformface.eval.feature_cache import (cached_features, chunk_folder, chunked, listing_digest, load_cached,
                                            model_identity, sidecar)


class Counter:
    """compute(chunk) = rows i * 10 + column, float32; remembers which chunks it computed; may be killed."""

    def __init__(self, kill_at=None):
        self.computed = []
        self.kill_at = kill_at

    def __call__(self, chunk):
        if self.kill_at is not None and len(self.computed) == self.kill_at:
            raise KeyboardInterrupt("killed")
        self.computed.append(tuple(chunk))
        return np.array([[i * 10.0 + c for c in range(3)] for i in chunk], np.float32)


CHUNKS = [[0, 1], [2, 3], [4]]
ROWS = [2, 2, 1]
EXPECTED = np.array([[i * 10.0 + c for c in range(3)] for i in range(5)], np.float32)


def run(path, key, compute):
    return cached_features(path, key, CHUNKS, ROWS, compute, progress=False)


def test_computed_once_then_read_back(tmp_path):
    path = tmp_path / "ytf_features.npy"
    compute = Counter()
    features, note = run(path, {"model": "a"}, compute)
    np.testing.assert_array_equal(features, EXPECTED)
    assert compute.computed == [(0, 1), (2, 3), (4,)] and note == {"features": str(path), "features_reused": "none"}
    assert json.loads(sidecar(path).read_text())["rows"] == 5 and not chunk_folder(path).exists()
    again = Counter()
    features, note = run(path, {"model": "a"}, again)
    assert again.computed == [] and note["features_reused"] == "all"
    np.testing.assert_array_equal(features, EXPECTED)
    assert load_cached(path, {"model": "b"}) is None
    other = Counter()
    run(path, {"model": "b"}, other)
    assert len(other.computed) == 3 and load_cached(path, {"model": "a"}) is None   # replaced, not kept beside
    without = Counter()
    features, note = run(None, {"model": "a"}, without)
    assert len(without.computed) == 3 and note == {}


def test_chunks_of_a_killed_run_are_reused_under_their_key_only(tmp_path):
    path = tmp_path / "f.npy"
    with pytest.raises(KeyboardInterrupt):
        run(path, {"model": "a"}, Counter(kill_at=2))
    assert sorted(p.name for p in chunk_folder(path).glob("chunk_*")) == ["chunk_000000.npy", "chunk_000001.npy"]
    (chunk_folder(path) / ".chunk_000002.npy.1234abcd.partial").write_bytes(b"half a chunk")
    other_model = Counter()
    run(path, {"model": "b"}, other_model)      # the killed run's chunks belong to model a: not used
    assert len(other_model.computed) == 3
    with pytest.raises(KeyboardInterrupt):
        run(path, {"model": "a"}, Counter(kill_at=1))
    resumed = Counter()
    features, note = run(path, {"model": "a"}, resumed)
    assert resumed.computed == [(2, 3), (4,)] and note["features_reused"] == "1 of 3 chunks (resumed)"
    np.testing.assert_array_equal(features, EXPECTED)


def test_a_damaged_cache_or_chunk_is_computed_again(tmp_path):
    path = tmp_path / "f.npy"
    run(path, {"model": "a"}, Counter())
    path.write_bytes(b"not an array")
    again = Counter()
    np.testing.assert_array_equal(run(path, {"model": "a"}, again)[0], EXPECTED)
    assert len(again.computed) == 3
    np.save(path, EXPECTED[:4])                 # an array, but not the rows the key describes
    assert load_cached(path, {"model": "a"}) is None
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "g.npy", {"model": "a"}, Counter(kill_at=2))
    (chunk_folder(tmp_path / "g.npy") / "chunk_000001.npy").write_bytes(b"")   # lost to a power failure
    redo = Counter()
    run(tmp_path / "g.npy", {"model": "a"}, redo)
    assert redo.computed == [(2, 3), (4,)]
    with pytest.raises(RuntimeError, match=r"chunk 0: \(1, 3\) computed, 2 rows expected"):
        cached_features(None, {}, [[0, 1]], [2], lambda chunk: np.zeros((1, 3)), progress=False)


def test_model_identity_follows_the_content(tmp_path):
    model = tmp_path / "m.pt"
    model.write_bytes(b"weights one")
    first = model_identity(model)
    assert first == {"model_sha256": hashlib.sha256(b"weights one").hexdigest(), "model_size": 11}
    os.utime(model, (1, 1))
    copy = tmp_path / "copy.pt"
    copy.write_bytes(model.read_bytes())
    assert model_identity(model) == model_identity(copy) == first      # a touch or a copy keeps the cache
    model.write_bytes(b"weights two")
    assert model_identity(model)["model_sha256"] != first["model_sha256"]
    assert model_identity(None, "raw") == {"baseline": "raw"}
    assert model_identity(model, "untrained", 3)["seed"] == 3
    assert listing_digest(["a", "b"]) != listing_digest(["b", "a"]) != listing_digest(["ab"])


def test_chunked_groups_consecutive_items_until_the_budget():
    assert chunked([3, 5, 4, 4, 3], 8) == [[0, 1], [2, 3], [4]]
    assert chunked([20, 1], 8) == [[0], [1]]
    assert chunked([1] * 5, 2) == [[0, 1], [2, 3], [4]]
    assert chunked([], 4) == []


def test_a_kill_between_the_array_and_its_key_never_pairs_new_rows_with_the_old_key(tmp_path, monkeypatch):
    import uniformface.eval.feature_cache as feature_cache

    path = tmp_path / "f.npy"
    run(path, {"model": "a"}, Counter())
    real = feature_cache.atomic_write_text

    def killed_at_the_key(target, text, *args, **kwargs):
        if target == sidecar(path):
            raise KeyboardInterrupt("killed")
        return real(target, text, *args, **kwargs)

    monkeypatch.setattr(feature_cache, "atomic_write_text", killed_at_the_key)
    with pytest.raises(KeyboardInterrupt):
        cached_features(path, {"model": "b"}, CHUNKS, ROWS, lambda chunk: np.full((len(chunk), 3), -1.0),
                        progress=False)
    assert np.load(path)[0, 0] == -1.0                     # model b's rows are in place ...
    assert load_cached(path, {"model": "a"}) is None       # ... and nothing says they are model a's


def test_a_cache_whose_array_disagrees_with_its_key_file_is_computed_again(tmp_path):
    """The rows alone were compared with the key file: an array of the right length but another width or
    type (another model's features copied over, a hand edit) was returned as this model's."""
    path = tmp_path / "f.npy"
    run(path, {"model": "a"}, Counter())
    for impostor in (np.zeros((5, 4), np.float32), EXPECTED.astype(np.float64), np.zeros((5, 3, 1), np.float32)):
        np.save(path, impostor)
        assert load_cached(path, {"model": "a"}) is None
        again = Counter()
        features, note = run(path, {"model": "a"}, again)
        assert len(again.computed) == 3 and note["features_reused"] == "none"
        assert features.dtype == np.float32
        np.testing.assert_array_equal(features, EXPECTED)
        np.testing.assert_array_equal(np.load(path), EXPECTED)          # the file is repaired, not kept
        assert json.loads(sidecar(path).read_text())["shape"] == [5, 3]


def test_a_chunk_that_disagrees_with_the_others_is_computed_again(tmp_path):
    path = tmp_path / "f.npy"
    with pytest.raises(KeyboardInterrupt):
        run(path, {"model": "a"}, Counter(kill_at=2))
    np.save(chunk_folder(path) / "chunk_000001.npy", np.zeros((2, 5), np.float32))   # the right rows, wrong width
    resumed = Counter()
    features, note = run(path, {"model": "a"}, resumed)
    np.testing.assert_array_equal(features, EXPECTED)
    assert sorted(resumed.computed) == [(0, 1), (2, 3), (4,)] and note["features_reused"] == "none"
