"""images.py: the one decoder (modes, EXIF orientation, limits), the one header reader, the one tree walker and
the one JPEG/PNG writer; and that every path of the project that reads an image (alignment, the training sets,
embedding, `.bin` sets) gives the same pixels for the same file. References are built with Pillow and numpy
directly, not with the module under test."""
import io
import math
import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import bomb_png, write_bin
from uniformface.base import images
from uniformface.base.atomic import atomic_write
from uniformface.eval.binfile import read_bin
from uniformface.data import (ImageFolderTrainSet, PackedTrainSet, RecordTrainSet, open_train_set, pack,
                              write_record_file)
from uniformface.eval.embedding import EncodedImages, ImageFiles, list_images
from uniformface.base.images import (ImageLoadError, ImageTooLargeError, decode_rgb, encode_image, image_header_size,
                                     read_rgb, walk_images, write_image)
from uniformface.align.preprocessing import _ChunkSet

HEIGHT, WIDTH = 56, 40  # every test image below is this size once upright


def texture(height, width, seed=0):
    """A smooth colour pattern (JPEG-friendly) with a bright marker in the top-left corner, so that a
    wrong orientation cannot pass unseen."""
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    rng = np.random.default_rng(seed)
    freq = rng.uniform(1, 4, size=(3, 2))
    pixels = np.stack([127 + 80 * np.sin(2 * np.pi * (f[0] * yy + f[1] * xx)) for f in freq], -1)
    pixels[:8, :8] = 250
    return np.clip(pixels, 0, 255).astype(np.uint8)


def exif_rotated_jpeg(path):
    """A JPEG stored 40x56 (rows x cols) with EXIF orientation 6: shown (and to be used) turned 90 degrees
    clockwise, 56x40. Returns the pixels a viewer shows: Pillow's plain decoding, turned by numpy."""
    stored = texture(WIDTH, HEIGHT, seed=1)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    with Image.open(path) as img:
        assert img.size == (HEIGHT, WIDTH) and img.getexif()[0x0112] == 6
        plain = np.asarray(img.convert("RGB"))
    return np.ascontiguousarray(np.rot90(plain, k=-1))  # orientation 6: rotate 90 degrees clockwise


def deep_png(path):
    """A 16-bit greyscale PNG; the expected pixels are the values scaled to 0..255 (not clipped)."""
    values = (np.arange(HEIGHT * WIDTH, dtype=np.float64).reshape(HEIGHT, WIDTH) * 65535 / (HEIGHT * WIDTH - 1))
    values = np.rint(values).astype(np.uint16)
    Image.fromarray(values).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")
    grey = np.array([round(int(v) * 255 / 65535) for v in values.ravel()], np.uint8).reshape(HEIGHT, WIDTH)
    return np.repeat(grey[:, :, None], 3, axis=2)


def palette_png(path):
    """A palette PNG with a transparent entry; expected: each index's palette colour (alpha dropped)."""
    img = Image.fromarray(texture(HEIGHT, WIDTH, seed=2)).quantize(12)
    img.save(path, transparency=0)
    with Image.open(path) as reread:
        assert reread.mode == "P" and reread.info.get("transparency") == 0
        table = np.array(reread.getpalette(), np.uint8).reshape(-1, 3)
        return table[np.asarray(reread)]


MAKERS = {"turned.jpg": exif_rotated_jpeg, "deep.png": deep_png, "palette.png": palette_png}


@pytest.fixture
def odd_files(tmp_path):
    """An identity folder of the three awkward files, and the pixels each should decode to."""
    folder = tmp_path / "set" / "person"
    folder.mkdir(parents=True)
    expected = {name: make(folder / name) for name, make in MAKERS.items()}
    for name, pixels in expected.items():
        assert pixels.shape == (HEIGHT, WIDTH, 3), name
    return tmp_path / "set", expected


def chw(tensor):
    assert tensor.dtype == torch.uint8 and tensor.shape[0] == 3
    return tensor.permute(1, 2, 0).numpy()


def test_one_file_gives_the_same_pixels_on_every_path(odd_files, tmp_path):
    """An EXIF-turned JPEG, a 16-bit PNG and a palette PNG through alignment's reader, the training sets (folder,
    RecordIO record, packed), embedding's folder reader and the reader of encoded images (`.bin` sets)."""
    root, expected = odd_files
    folder = ImageFolderTrainSet(root)
    names = [os.path.basename(s.path) for s in folder.samples]
    assert names == sorted(MAKERS)
    encoded = [(root / "person" / name).read_bytes() for name in names]

    write_record_file(tmp_path / "train.rec", tmp_path / "train.idx", [(root / "person" / n, 0) for n in names])
    record = RecordTrainSet(tmp_path / "train.rec")
    packed = open_train_set(pack(root, tmp_path / "set", progress=False).output)
    assert isinstance(packed, PackedTrainSet) and len(packed) == 3 and not packed.skipped
    files = ImageFiles(root, [f"person/{n}" for n in names])
    in_memory = EncodedImages(encoded, source="test.bin")
    write_bin(tmp_path / "test.bin", encoded + encoded[:1], [True, False])
    from_bin, _ = read_bin(tmp_path / "test.bin")
    aligner = _ChunkSet(root, [[f"person/{n}" for n in names]], max_side=1600, detector_options=None)[0]

    for index, name in enumerate(names):
        want = expected[name]
        got = {
            "alignment (preprocess)": aligner[index]["pixels"],
            "images.decode_rgb(path)": decode_rgb(root / "person" / name),
            "images.decode_rgb(bytes)": decode_rgb(encoded[index]),
            "training folder": chw(folder.load(index)),
            "training RecordIO record": chw(record.load(index)),
            "training packed set": chw(packed.load(index)),
            "embedding folder reader": chw(files[index][0]),
            "embedding encoded reader": chw(in_memory[index][0]),
            ".bin reader": from_bin[index],
        }
        for path, pixels in got.items():
            assert pixels.shape == want.shape, (name, path)
            np.testing.assert_array_equal(pixels, want, err_msg=f"{name} through {path}")
        assert aligner[index]["scale"] == (1.0, 1.0)
        assert image_header_size(root / "person" / name) == (HEIGHT, WIDTH)  # upright, from the header alone
        assert image_header_size(encoded[index]) == (HEIGHT, WIDTH)
    sizes, unreadable = folder.header_sizes()
    assert sizes.tolist() == [[HEIGHT, WIDTH]] * 3 and unreadable == {}


def test_modes_are_converted_to_rgb(tmp_path):
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("L").save(tmp_path / "grey.png")
    grey = np.asarray(Image.open(tmp_path / "grey.png"))
    np.testing.assert_array_equal(decode_rgb(tmp_path / "grey.png"), np.repeat(grey[:, :, None], 3, axis=2))

    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(decode_rgb(tmp_path / "rgba.png"), rgb)  # alpha dropped, as Matlab's imread
    Image.fromarray(np.dstack([grey, np.full(grey.shape, 9, np.uint8)]), mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(decode_rgb(tmp_path / "la.png"), np.repeat(grey[:, :, None], 3, axis=2))

    Image.fromarray(rgb).quantize(16).save(tmp_path / "palette.png")
    with Image.open(tmp_path / "palette.png") as img:
        table = np.array(img.getpalette(), np.uint8).reshape(-1, 3)
        expected = table[np.asarray(img)]
    np.testing.assert_array_equal(decode_rgb(tmp_path / "palette.png"), expected)

    smooth = np.asarray(Image.fromarray(rgb).resize((14, 10)).resize((56, 40), Image.Resampling.BILINEAR))
    Image.fromarray(smooth).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=98)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    assert np.abs(decode_rgb(tmp_path / "cmyk.jpg").astype(int) - smooth).mean() < 3

    deep = np.array([[0, 1000, 32896, 65535]], np.uint16).repeat(3, axis=0)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    got = decode_rgb(tmp_path / "deep.png")
    expected_row = [round(v * 255 / 65535) for v in (0, 1000, 32896, 65535)]  # 0, 4, 128, 255: scaled, not clipped
    assert got.dtype == np.uint8 and got[1, :, 0].tolist() == expected_row and (got[..., 0] == got[..., 2]).all()


@pytest.mark.parametrize("values, mode, full_scale", [([0, 100, 255], "I", 255), ([0, 300, 65535], "I", 65535),
                                                      ([0, 7e5, 1.4e6], "I", 1.4e6), ([0.0, 0.5, 200.0], "F", 255)])
def test_32_bit_greys_are_scaled_by_the_range_they_use(tmp_path, values, mode, full_scale):
    array = np.array([values] * 2, np.float32 if mode == "F" else np.int32)
    Image.fromarray(array, mode=mode).save(tmp_path / "deep.tif")
    assert Image.open(tmp_path / "deep.tif").mode == mode
    got = decode_rgb(tmp_path / "deep.tif")
    assert got[0, :, 1].tolist() == [min(255, round(v * 255 / full_scale)) for v in values]


def test_exif_orientation_is_applied(tmp_path):
    pattern = np.zeros((60, 100, 3), np.uint8)
    pattern[:, 50:] = 220  # bright right half
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    Image.fromarray(pattern).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    pixels, scale = read_rgb(tmp_path / "turned.jpg")
    assert pixels.shape == (100, 60, 3) and scale == (1.0, 1.0)
    assert np.abs(pixels.astype(int) - np.rot90(pattern, k=-1)).mean() < 3
    assert image_header_size(tmp_path / "turned.jpg") == (100, 60)
    assert pixels.flags.writeable  # torch.from_numpy takes it as it is


def test_broken_files_raise_a_clear_error_naming_the_file(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(texture(120, 120)).save(good)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    (tmp_path / "text.jpg").write_text("not a picture")
    for name in ("empty.jpg", "truncated.jpg", "text.jpg", "absent.jpg"):
        with pytest.raises(ImageLoadError, match=name):
            decode_rgb(tmp_path / name)
    for name in ("empty.jpg", "text.jpg", "absent.jpg"):
        with pytest.raises(ImageLoadError, match=f"cannot read the header of image .*{name}"):
            image_header_size(tmp_path / name)
    with pytest.raises(ImageLoadError, match="cannot decode image record 7: not an image file"):
        decode_rgb(b"not a picture", name="record 7")


def test_the_pixel_limit_is_per_call_and_leaves_pillow_alone(tmp_path):
    bomb = bomb_png()
    with pytest.raises(ImageTooLargeError, match="400000000 pixels"):
        image_header_size(bomb)
    with pytest.raises(ImageTooLargeError, match="400000000 pixels"):
        decode_rgb(bomb)
    assert image_header_size(bomb, max_pixels=math.inf) == (20000, 20000)
    assert image_header_size(bomb, max_pixels=4e8) == (20000, 20000)
    with pytest.raises(ImageTooLargeError, match="limit of 1000 pixels"):
        image_header_size(encode_image(texture(40, 30), "PNG"), max_pixels=1000)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485


def test_the_pixel_limit_of_one_thread_never_reaches_another():
    """Pillow keeps its limit in a module global: a call with a raised limit must not let a concurrent call
    with the default limit through, nor the reverse."""
    bomb, rounds = bomb_png(), 300
    outcomes = {"default": [], "raised": []}

    def reader(kind):
        for _ in range(rounds):
            try:
                image_header_size(bomb, max_pixels=None if kind == "default" else math.inf)
                outcomes[kind].append("read")
            except ImageTooLargeError:
                outcomes[kind].append("refused")

    threads = [threading.Thread(target=reader, args=(kind,)) for kind in ("default", "raised", "default", "raised")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes["default"] == ["refused"] * 2 * rounds and outcomes["raised"] == ["read"] * 2 * rounds
    assert Image.MAX_IMAGE_PIXELS == 89_478_485


def test_large_images_are_reduced_from_bytes_as_from_files(tmp_path):
    photo = texture(900, 1200)
    Image.fromarray(photo).save(tmp_path / "big.jpg", quality=90)
    from_file, scale = read_rgb(tmp_path / "big.jpg", max_side=300)
    from_bytes, scale_bytes = read_rgb((tmp_path / "big.jpg").read_bytes(), max_side=300)
    assert from_file.shape == (225, 300, 3) and scale == scale_bytes == (4.0, 4.0)
    np.testing.assert_array_equal(from_file, from_bytes)


# ------------------------------------------------------------------------------------------------ writing

def test_write_image_encodes_as_pillow_does_by_extension(tmp_path):
    rgb = texture(112, 96)
    for name, options in (("a.jpg", {"format": "JPEG", "quality": 95}), ("b.png", {"format": "PNG"}),
                          ("c.unknown", {"format": "JPEG", "quality": 95})):
        write_image(tmp_path / name, rgb)
        reference = io.BytesIO()
        Image.fromarray(rgb).save(reference, **options)
        assert (tmp_path / name).read_bytes() == reference.getvalue(), name
    write_image(tmp_path / "q.jpg", rgb, quality=60)
    reference = io.BytesIO()
    Image.fromarray(rgb).save(reference, format="JPEG", quality=60)
    assert (tmp_path / "q.jpg").read_bytes() == reference.getvalue()
    np.testing.assert_array_equal(decode_rgb(tmp_path / "b.png"), rgb)  # PNG: lossless


def test_a_failed_image_write_leaves_nothing(tmp_path, monkeypatch):
    (tmp_path / "A").mkdir()
    write_image(tmp_path / "A" / "1.jpg", texture(20, 20))
    before = (tmp_path / "A" / "1.jpg").read_bytes()

    def interrupted(handle):
        handle.write(b"\xff\xd8 half a JPEG")
        raise KeyboardInterrupt

    monkeypatch.setattr(images, "atomic_write_bytes", lambda path, data, durable: atomic_write(
        path, interrupted, "wb", durable))
    with pytest.raises(KeyboardInterrupt):
        write_image(tmp_path / "A" / "1.jpg", texture(20, 20, seed=3))
    assert sorted(p.name for p in (tmp_path / "A").iterdir()) == ["1.jpg"]
    assert (tmp_path / "A" / "1.jpg").read_bytes() == before
    with pytest.raises(ValueError, match="uint8"):
        write_image(tmp_path / "A" / "2.jpg", np.zeros((4, 4, 3), np.float32))
    assert not (tmp_path / "A" / "2.jpg").exists()


# ------------------------------------------------------------------------------------------------ walking

def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_walk_lists_files_before_subfolders_follows_links_and_reports_loops(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    for name in ("b.jpg", "a.PNG", "notes.txt", ".hidden.jpg", "sub/z.jpg", "sub/deeper/y.webp", ".dot/x.jpg",
                 "c.jpeg"):
        touch(root / name)
    touch(elsewhere / "k.bmp")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "out").mkdir()
    (root / "into_out").symlink_to(root / "out", target_is_directory=True)
    (root / "dangling.jpg").symlink_to(tmp_path / "absent.jpg")

    tree = walk_images(root, avoid=root / "out", avoid_label="--output_dir")
    assert tree.images == ["a.PNG", "b.jpg", "c.jpeg", "dangling.jpg", "linked/k.bmp", "sub/z.jpg",
                           "sub/deeper/y.webp"]
    assert tree.others == ["notes.txt"]
    assert [path for path, _ in tree.skipped] == ["into_out", "out", "sub/loop"]  # the output folder itself too
    reasons = dict(tree.skipped)
    assert "--output_dir" in reasons["into_out"] and "loop" in reasons["sub/loop"]

    assert walk_images(root, max_depth=2).images == ["a.PNG", "b.jpg", "c.jpeg", "dangling.jpg", "linked/k.bmp",
                                                     "sub/z.jpg"]
    assert walk_images(root, max_depth=1).images == ["a.PNG", "b.jpg", "c.jpeg", "dangling.jpg"]
    # embedding lists the same files, sorted as whole paths
    assert list_images(root) == sorted(walk_images(root).images)
    with pytest.raises(OSError):
        walk_images(tmp_path / "absent")


def test_walk_lists_each_folder_once_skips_fifos_and_a_tree_inside_the_avoided_folder_is_walked(tmp_path):
    """Folders linked to each other without a loop are listed once (17 levels of two links each used to make
    65,536 listings); a FIFO named *.jpg is not handed to a reader (opening it would block); a dataset kept
    inside the folder to avoid is walked, not skipped folder by folder."""
    root = tmp_path / "root"
    touch(root / "level0" / "x.jpg")
    for level in range(1, 18):
        (root / f"level{level}").mkdir()
        (root / f"level{level}" / "a").symlink_to(root / f"level{level - 1}", target_is_directory=True)
        (root / f"level{level}" / "b").symlink_to(root / f"level{level - 1}", target_is_directory=True)
    os.mkfifo(root / "level0" / "pipe.jpg")
    tree = walk_images(root)
    assert tree.images.count("level0/x.jpg") == 1 and len(tree.images) == 1
    reasons = dict(tree.skipped)
    assert "regular file" in reasons["level0/pipe.jpg"]
    assert sum("listed once" in reason for reason in reasons.values()) >= 17

    output = tmp_path / "out"
    touch(output / "raw" / "Alice" / "1.jpg")
    assert walk_images(output / "raw", avoid=output).images == ["Alice/1.jpg"]


def test_a_float_image_with_nan_pixels_is_refused_not_decoded_black():
    pixels = np.full((8, 8), 300.0, np.float32)
    pixels[2, 3] = np.nan
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="F").save(buffer, format="TIFF")
    with pytest.raises(ImageLoadError, match="non-finite"):
        decode_rgb(buffer.getvalue(), name="nan.tif")
