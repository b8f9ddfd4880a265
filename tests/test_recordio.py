import io
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from uniformface.data import ImageFolderTrainSet, collate_skip_broken, mix_seed, open_train_set
from uniformface.data.recordio import (RecordIOError, RecordTrainSet, encode_record, pack_payload, unpack_payload,
                                       write_record_file)

# The format, written out here from its description (dmlc-core recordio.cc, mxnet recordio.py),
# independently of the module under test.
MAGIC = 0xCED7230A


def frame(cflag, data):
    return struct.pack("<II", MAGIC, cflag << 29 | len(data)) + data + b"\0" * (-len(data) % 4)


def payload(label, data=b"", record_id=0):
    if isinstance(label, (list, tuple)):
        return struct.pack("<IfQQ", len(label), 0.0, record_id, 0) + struct.pack(f"<{len(label)}f", *label) + data
    return struct.pack("<IfQQ", 0, label, record_id, 0) + data


def walk_records(blob):
    """Sequential reader written by hand: {offset: payload}, multi-part records joined with the magic."""
    records, pos = {}, 0
    while pos < len(blob):
        start, parts = pos, []
        while True:
            magic, lrec = struct.unpack_from("<II", blob, pos)
            assert magic == MAGIC
            cflag, length = lrec >> 29, lrec & (2 ** 29 - 1)
            parts.append(blob[pos + 8:pos + 8 + length])
            pos += 8 + (length + 3) // 4 * 4
            if cflag in (0, 3):
                break
        records[start] = struct.pack("<I", MAGIC).join(parts)
    return records


def png_bytes(seed, size=(20, 16)):
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue(), pixels


def write_by_hand(tmp_path, records):
    """records: list of (key, framed bytes) -> (rec path, {key: offset})."""
    blob, index = b"", {}
    for key, data in records:
        index[key] = len(blob)
        blob += data
    rec = tmp_path / "hand.rec"
    rec.write_bytes(blob)
    rec.with_suffix(".idx").write_text("".join(f"{k}\t{o}\n" for k, o in index.items()))
    return rec, index


def test_reader_follows_the_format_written_by_hand(tmp_path):
    (img1, px1), (img2, px2), (img3, px3) = png_bytes(1), png_bytes(2), png_bytes(3)
    # flag = 2 float labels (the class is the first); an id whose two halves are the magic puts it at the
    # aligned offsets 8 and 12, so dmlc's writer emits three parts and drops those 8 bytes
    record_id = MAGIC | MAGIC << 32
    record2 = payload([7.0, 2.5], img2, record_id)
    parts = frame(1, record2[:8]) + frame(2, b"") + frame(3, record2[16:])
    rec, _ = write_by_hand(tmp_path, [
        (0, frame(0, payload([4.0, 6.0]))),          # header: images are keys 1..3, identities 4..5
        (1, frame(0, payload(3.0, img1, 1))),
        (2, parts),
        (3, frame(0, payload(3.0, img3, 3))),
        (4, frame(0, payload([1.0, 2.0]))), (5, frame(0, payload([2.0, 4.0]))),
    ])
    ds = open_train_set(rec)
    assert isinstance(ds, RecordTrainSet) and len(ds) == 3
    assert ds.classes == ["3", "7"] and ds.num_classes == 2  # sorted distinct labels, as strings
    assert [ds[i][1] for i in range(3)] == [0, 1, 0]
    for i, pixels in enumerate((px1, px2, px3)):
        image, _ = ds[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 20, 16)
        assert np.array_equal(image.permute(1, 2, 0).numpy(), pixels)  # PNG: lossless
    assert ds.read_encoded(1) == img2 and encode_record(record2) == parts
    assert pack_payload([7.0, 2.5], img2, record_id) == record2
    header, image_bytes = unpack_payload(record2)
    assert (header.flag, header.id, list(header.label), image_bytes) == (2, record_id, [7.0, 2.5], img2)


def test_writer_output_parsed_by_hand(tmp_path, aligned_tree):
    folder = ImageFolderTrainSet(aligned_tree)
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    n = write_record_file(rec, idx, [(s.path, s.label) for s in folder.samples])
    assert n == len(folder.samples) == 24
    index = {int(k): int(o) for k, o in (line.split("\t") for line in idx.read_text().splitlines())}
    records = walk_records(rec.read_bytes())
    assert sorted(index.values()) == sorted(records)
    flag, label, _, _ = struct.unpack_from("<IfQQ", records[index[0]])
    assert flag == 2 and struct.unpack_from("<2f", records[index[0]], 24) == (n + 1, n + 1 + 4)
    for key, sample in enumerate(folder.samples, 1):
        flag, label, record_id, _ = struct.unpack_from("<IfQQ", records[index[key]])
        assert (flag, label, record_id) == (0, float(sample.label), key)
        assert records[index[key]][24:] == open(sample.path, "rb").read()  # the file's bytes, unchanged
    for c in range(4):  # identity records: [first, end) image keys of each class
        data = records[index[n + 1 + c]]
        assert struct.unpack_from("<I", data)[0] == 2 and struct.unpack_from("<2f", data, 24) == (1 + 6 * c, 7 + 6 * c)
    with pytest.raises(ValueError, match="not consecutive"):
        write_record_file(rec, idx, [(b"x", 0), (b"y", 1), (b"z", 0)])


def test_rec_from_folder_reads_back_identical_items(tmp_path, aligned_tree):
    folder = ImageFolderTrainSet(aligned_tree, flip=True, seed=5)
    data = tmp_path / "faces_webface"
    write_record_file(data / "train.rec", data / "train.idx", [(s.path, s.label) for s in folder.samples])
    (data / "property").write_text("4,112,96\n")  # insightface's download folder also holds this file
    for ds in (open_train_set(data / "train.rec", flip=True, seed=5), open_train_set(data, flip=True, seed=5)):
        assert isinstance(ds, RecordTrainSet) and len(ds) == len(folder)
        assert ds.classes == ["0", "1", "2", "3"]
        flips = []
        for epoch in range(2):
            for i in range(len(ds)):
                image, label = ds[(epoch, i)]
                expected, expected_label = folder[(epoch, i)]
                assert torch.equal(image, expected) and label == expected_label
                flips.append(mix_seed(5, epoch, i) & 1)
        assert 0 < np.mean(flips) < 1  # both flip branches were compared
    subset = open_train_set(data / "train.rec", exclude=["1"], min_images_per_class=2)
    assert subset.classes == ["0", "2", "3"] and len(subset) == 18
    assert [subset[i][1] for i in (0, 6, 12)] == [0, 1, 2]
    assert torch.equal(subset[6][0], folder[12][0].flip(-1) if mix_seed(5, 0, 12) & 1 else folder[12][0])


def test_multipart_records_split_and_join_like_dmlc(tmp_path):
    m = struct.pack("<I", MAGIC)
    data = m + b"abcd" + b"xy" + m + b"zw" + m + b"tail!"  # magic at 0 and 16 (aligned), 10 (not)
    expected = frame(1, b"") + frame(2, b"abcdxy" + m + b"zw") + frame(3, b"tail!")
    assert encode_record(data) == expected
    assert encode_record(b"plain") == frame(0, b"plain")
    img, pixels = png_bytes(4)
    # record id = the magic puts it at aligned offset 8 of the payload: a real three-frame record
    rec, index = write_by_hand(tmp_path, [(0, frame(0, payload(0.0, img))),
                                          (1, encode_record(payload(1.0, img, record_id=MAGIC)))])
    assert walk_records(rec.read_bytes())[index[1]] == payload(1.0, img, record_id=MAGIC)
    ds = RecordTrainSet(rec)  # record 0 has flag 0: no header, every key is an image
    assert len(ds) == 2 and [ds[i][1] for i in range(2)] == [0, 1]
    assert np.array_equal(ds[1][0].permute(1, 2, 0).numpy(), pixels)


def test_broken_image_record_is_skipped_and_counted(tmp_path):
    img, _ = png_bytes(5)
    rec, _ = write_by_hand(tmp_path, [(0, frame(0, payload([3.0, 3.0]))), (1, frame(0, payload(0.0, img))),
                                      (2, frame(0, payload(1.0, b"not an image")))])
    ds = RecordTrainSet(rec)
    assert ds[1] == (None, 1)
    images, labels, n_broken = collate_skip_broken([ds[0], ds[1]])
    assert n_broken == 1 and labels.tolist() == [0] and images.shape == (1, 3, 20, 16)


def test_damaged_files_fail_naming_file_and_offset(tmp_path, tree_factory):
    tree = tree_factory(tmp_path / "t", n_classes=2, per_class=2)
    folder = ImageFolderTrainSet(tree)
    rec, idx = tmp_path / "x" / "train.rec", tmp_path / "x" / "train.idx"
    write_record_file(rec, idx, [(s.path, s.label) for s in folder.samples])
    offsets = {int(k): int(o) for k, o in (line.split("\t") for line in idx.read_text().splitlines())}
    blob = rec.read_bytes()

    rec.write_bytes(blob[:offsets[5] - 3])  # cuts into image record 4, whose frame starts at offsets[4]
    with pytest.raises(RecordIOError, match=rf"train\.rec: truncated record at offset {offsets[4]}\b"):
        open_train_set(rec)

    damaged = bytearray(blob)
    damaged[offsets[2]:offsets[2] + 4] = b"JUNK"
    rec.write_bytes(bytes(damaged))
    with pytest.raises(RecordIOError, match=rf"train\.rec: bad magic 0x4b4e554a at offset {offsets[2]}\b"):
        open_train_set(rec)

    rec.write_bytes(blob)
    idx.write_text(idx.read_text() + "7 oops\n")
    with pytest.raises(RecordIOError, match=r"train\.idx: line 8: expected 'key<TAB>offset'"):
        open_train_set(rec)
    idx.unlink()
    with pytest.raises(FileNotFoundError, match=r"train\.rec: its index .*train\.idx is missing"):
        open_train_set(rec)


def test_non_integer_label_is_refused(tmp_path):
    rec, _ = write_by_hand(tmp_path, [(0, frame(0, payload([2.0, 2.0]))), (1, frame(0, payload(0.5, b"")))])
    with pytest.raises(RecordIOError, match="record 1 has the non-integer label 0.5"):
        RecordTrainSet(rec)


def test_damaged_header_end_key_fails_at_once(tmp_path):
    # record 0's first label is the image end key: 3e38 (a damaged header) must be answered from the
    # index's two keys, not by a walk over 1..3e38
    rec, _ = write_by_hand(tmp_path, [(0, frame(0, payload([3e38, 3e38]))), (1, frame(0, payload(0.0, b"")))])
    with pytest.raises(RecordIOError, match=r"hand\.idx: the header record says images are keys 1\.\.\d+, but key 2 "
                                            r"is not in the index \(\d+ missing\)"):
        RecordTrainSet(rec)
    rec, _ = write_by_hand(tmp_path, [(0, frame(0, payload([float("nan"), 2.0]))), (1, frame(0, payload(0.0, b"")))])
    with pytest.raises(RecordIOError, match=r"hand\.rec: the header record gives the image end key nan, not a number"):
        RecordTrainSet(rec)
    rec, _ = write_by_hand(tmp_path, [(0, frame(0, payload([3.0, 3.0]))), (1, frame(0, payload(0.0, b""))),
                                      (2, frame(0, payload(float("inf"), b"")))])
    with pytest.raises(RecordIOError, match="record 2 has the non-integer label inf"):
        RecordTrainSet(rec)


@pytest.mark.parametrize("line, problem", [("2\t-16", "a negative byte offset"), ("-2\t16", "a negative key"),
                                           (f"2\t{2 ** 63}", "a byte offset beyond any file"),
                                           ("2\t\u0661\u0666", "expected 'key<TAB>offset'"),
                                           (f"{'2' * 5000}\t16", r"a number of 5000 characters \(a key or byte "
                                                                  r"offset has at most 19 digits\): '2222"),
                                           (f"2\t{'1' * 21}", "a number of 21 characters")])
def test_an_impossible_index_line_is_named(tmp_path, line, problem):
    """A negative offset in the .idx reached os.pread, whose EINVAL named neither file nor line
    (and an offset past 2**63 its OverflowError, a traceback); Arabic-Indic digits were taken as a number;
    a number of thousands of digits was int()'s ValueError, naming no file."""
    img, _ = png_bytes(1)
    rec, _ = write_by_hand(tmp_path, [(0, frame(0, payload([3.0, 3.0]))), (1, frame(0, payload(0.0, img))),
                                      (2, frame(0, payload(1.0, img)))])
    idx = rec.with_suffix(".idx")
    lines = idx.read_text().splitlines()
    lines[2] = line
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordIOError, match=rf"hand\.idx: line 3: {problem}"):
        RecordTrainSet(rec)
