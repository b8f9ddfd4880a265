"""insightface .bin verification sets: round trip, numpy-only unpickling, the shared sample."""
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_bin
from uniformface.eval.binfile import RefusedGlobal, read_bin

SHARED_BIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "insightface" / "small_lfw.bin"


def flat_images(n, size=(16, 24), seed=0):
    """Images of flat colour blocks, which JPEG keeps almost exactly."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        image = np.empty((*size, 3), np.uint8)
        image[: size[0] // 2] = rng.integers(0, 256, 3)
        image[size[0] // 2:] = rng.integers(0, 256, 3)
        images.append(image)
    return images


def png_bytes(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_round_trip(tmp_path):
    images, issame = flat_images(6), [True, False, True]
    path = tmp_path / "set.bin"
    write_bin(path, images, issame)
    assert [p.name for p in tmp_path.iterdir()] == ["set.bin"]          # atomic: no temp file left
    decoded, same = read_bin(path)
    assert same.dtype == bool and same.tolist() == issame
    assert len(decoded) == 6
    for original, image in zip(images, decoded):
        assert image.dtype == np.uint8 and image.shape == original.shape
        assert np.abs(image.astype(int) - original).mean() < 3             # JPEG is lossy, but barely here
    encoded, _ = read_bin(path, decode=False)
    assert all(isinstance(b, bytes) and b[:2] == b"\xff\xd8" for b in encoded)   # JPEG start marker


def test_pre_encoded_images_and_numpy_array_form(tmp_path):
    """insightface also stores each image as a uint8 array of its encoded bytes (as small_lfw.bin does);
    both pickle protocols numpy uses for arrays (4: _reconstruct, 5: _frombuffer) must pass the allow-list."""
    images = flat_images(4, seed=1)
    for protocol in (4, 5):
        bins = [np.frombuffer(png_bytes(im), np.uint8).reshape(-1, 1) for im in images]
        path = tmp_path / f"p{protocol}.bin"
        path.write_bytes(pickle.dumps((bins, np.array([True, False])), protocol=protocol))
        decoded, same = read_bin(path)
        assert same.tolist() == [True, False]
        for original, image in zip(images, decoded):
            np.testing.assert_array_equal(image, original)                 # PNG is lossless
    path = tmp_path / "bytes.bin"
    write_bin(path, [png_bytes(im) for im in images], np.array([False, True]))
    decoded, same = read_bin(path)
    assert same.tolist() == [False, True] and all((a == b).all() for a, b in zip(decoded, images))


def _payloads(marker):
    class Exploit:
        def __reduce__(self):
            import os
            return os.system, (f"touch {marker}",)

    yield "os.system", b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    yield "builtins.eval", b"cbuiltins\neval\n(Vopen(" + repr(str(marker)).encode() + b", 'w')\ntR."
    yield "system", pickle.dumps(([b"a", Exploit()], np.array([True])), protocol=4)   # posix.system, nested


def test_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    for name, payload in _payloads(marker):
        path = tmp_path / "evil.bin"
        path.write_bytes(payload)
        with pytest.raises(RefusedGlobal) as error:
            read_bin(path)
        assert str(path) in str(error.value) and name in str(error.value)
        assert isinstance(error.value, pickle.UnpicklingError)
        assert not marker.exists()
        # the payload is real: a plain unpickle does run it
        result = pickle.loads(payload)
        if hasattr(result, "close"):
            result.close()
        assert marker.exists()
        marker.unlink()


@pytest.mark.parametrize("payload, phrase", [
    (pickle.dumps(([b"a", b"b", b"c"], [True])), "3 images but 1 issame"),
    (pickle.dumps([b"a"]), "expected a pickled (images, issame) pair"),
    (pickle.dumps(([b"not an image", b"x"], [True])), "image 0 (pair 0) cannot be decoded"),
    (pickle.dumps(([1, 2], [True])), "image 0 is a int"),
    (pickle.dumps(([b"a", b"b"], [[True]])), "issame must be a flat list"),
    (b"garbage", "not a readable insightface .bin"),
])
def test_malformed_files_name_the_file(tmp_path, payload, phrase):
    path = tmp_path / "bad.bin"
    path.write_bytes(payload)
    with pytest.raises(ValueError) as error:
        read_bin(path)
    assert str(path) in str(error.value) and phrase in str(error.value)


def test_write_bin_rejects_wrong_counts_and_shapes(tmp_path):
    with pytest.raises(ValueError, match="3 images for 1 pairs"):
        write_bin(tmp_path / "x.bin", flat_images(3), [True])
    with pytest.raises(ValueError, match="uint8"):
        write_bin(tmp_path / "x.bin", [np.zeros((4, 4), np.uint8)] * 2, [True])


def test_shared_small_lfw_bin():
    if not SHARED_BIN.is_file():
        pytest.skip(f"{SHARED_BIN} not present")
    images, issame = read_bin(SHARED_BIN)
    # an independent read of the same (trusted) file: plain pickle + PIL
    with open(SHARED_BIN, "rb") as handle:
        bins, plain_issame = pickle.load(handle, encoding="bytes")
    assert len(images) == len(bins) == 20 and issame.tolist() == [bool(s) for s in plain_issame]
    assert len(issame) == 10
    for image, raw in zip(images, bins):
        expected = np.asarray(Image.open(io.BytesIO(bytes(np.asarray(raw).tobytes()))).convert("RGB"))
        assert image.dtype == np.uint8 and image.shape == expected.shape == (112, 112, 3)
        np.testing.assert_array_equal(image, expected)


def test_a_refused_global_is_also_a_value_error(tmp_path):
    """test.py --bin printed a traceback for a refused .bin (an UnpicklingError only)."""
    path = tmp_path / "evil.bin"
    path.write_bytes(next(_payloads(tmp_path / "pwned"))[1])
    with pytest.raises(ValueError, match="refused to unpickle global 'os.system'"):
        read_bin(path)
    assert not (tmp_path / "pwned").exists()
