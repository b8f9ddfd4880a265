"""insightface's `train.rec` + `train.idx` (mxnet RecordIO) read and written without mxnet (dmlc-core's recordio.cc, mxnet's recordio.py).

Framing follows dmlc-core `src/recordio.cc`: a record is uint32 magic 0xced7230a, uint32 lrec =
cflag << 29 | length, `length` payload bytes, zero padding to a multiple of 4. The writer cuts a payload
wherever the magic itself occurs at a 4-byte-aligned position, dropping those 4 bytes (cflag 1 = first
part, 2 = middle, 3 = last; 0 = whole record); the reader joins the parts with the magic put back.
The payload follows mxnet `python/mxnet/recordio.py` (`pack`/`unpack`): header `<IfQQ` (flag, label, id,
id2); when flag > 0, `flag` float32 labels follow (and the header's own label is 0); then the encoded image.
The `.idx` has lines `key<TAB>byte offset`.

insightface's layout (`recognition/arcface_torch/dataset.py`, read with mxnet): record 0 is a header with
flag 2 and labels (a, b); images are keys 1 .. a-1; keys a .. b-1 are identity records whose labels are
the (first, end) image keys of one identity (so b - a = number of identities). A file whose record 0 has
flag 0 has no header: every key of the `.idx` is an image.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..base.atomic import atomic_open
from ..base.paths import decimal, is_decimal, shown
from .trainset import TrainSet, image_tensor, select_classes

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
FRAME = struct.Struct("<II")          # magic, cflag << 29 | length
IMAGE_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2 (mxnet's `IfQQ`: 24 bytes, no padding)
LENGTH_BITS = 29
MAX_LENGTH = (1 << LENGTH_BITS) - 1
WHOLE, FIRST, MIDDLE, LAST = 0, 1, 2, 3


class RecordIOError(ValueError):
    """A malformed `.rec` / `.idx`; the message names the file and the byte offset or line."""


def _padded(length: int) -> int:
    return (length + 3) & ~3


@dataclass(frozen=True)
class RecordHeader:
    flag: int
    label: float | np.ndarray  # a float when flag == 0, else `flag` float32 labels (mxnet's convention)
    id: int
    id2: int


def pack_payload(label: float | Sequence[float], data: bytes = b"", record_id: int = 0, id2: int = 0) -> bytes:
    """mxnet's `recordio.pack`: a number is stored in the header (flag 0); a sequence as flag = its size
    float32 labels after the header, the header's label then 0."""
    if np.ndim(label) == 0:
        return IMAGE_HEADER.pack(0, float(label), record_id, id2) + data
    labels = np.asarray(label, dtype="<f4").ravel()
    return IMAGE_HEADER.pack(labels.size, 0.0, record_id, id2) + labels.tobytes() + data


def unpack_payload(payload: bytes) -> tuple[RecordHeader, bytes]:
    """mxnet's `recordio.unpack`: (header, encoded image bytes)."""
    if len(payload) < IMAGE_HEADER.size:
        raise RecordIOError(f"record payload of {len(payload)} bytes is shorter than its "
                            f"{IMAGE_HEADER.size}-byte header")
    flag, label, record_id, id2 = IMAGE_HEADER.unpack_from(payload)
    start = IMAGE_HEADER.size
    if flag > 0:
        end = start + 4 * flag
        if len(payload) < end:
            raise RecordIOError(f"record payload of {len(payload)} bytes cannot hold its {flag} float32 labels")
        label = np.frombuffer(payload[start:end], dtype="<f4").copy()
        start = end
    return RecordHeader(flag, label, record_id, id2), payload[start:]


def encode_record(payload: bytes) -> bytes:
    """One payload -> its framed bytes, split at every 4-byte-aligned magic as dmlc's writer does."""
    if len(payload) > MAX_LENGTH:
        raise ValueError(f"a RecordIO record holds at most {MAX_LENGTH} bytes, got {len(payload)}")
    frames, start, found = [], 0, payload.find(MAGIC_BYTES)
    while found >= 0:
        if found % 4 == 0:
            frames.append((FIRST if not frames else MIDDLE, payload[start:found]))
            start = found + 4
        found = payload.find(MAGIC_BYTES, found + 1)
    frames.append((LAST if frames else WHOLE, payload[start:]))
    out = bytearray()
    for cflag, part in frames:
        out += FRAME.pack(MAGIC, cflag << LENGTH_BITS | len(part)) + part + bytes(_padded(len(part)) - len(part))
    return bytes(out)


# Byte offsets beyond this cannot be read (os.pread takes a signed 64-bit offset)
MAX_OFFSET = 2 ** 63 - 1


def read_index(idx_path: str | Path) -> dict[int, int]:
    """`.idx` -> {key: byte offset}: lines of two non-negative decimal integers (ASCII digits) separated by a
    tab. Anything else, a negative offset among them, is a RecordIOError naming the file and line."""
    index = {}
    with open(idx_path, encoding="ascii", errors="replace", newline="\n") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            fields = [field.strip() for field in line.split("\t", 2)[:2]]
            if len(fields) < 2 or not all(is_decimal(field.removeprefix("-")) for field in fields):
                raise RecordIOError(f"{idx_path}: line {number}: expected 'key<TAB>offset', "
                                    f"got {shown(line.rstrip())}")
            key, offset = (decimal(field.removeprefix("-"), 19) for field in fields)
            if key is None or offset is None:
                raise RecordIOError(f"{idx_path}: line {number}: a number of {max(map(len, fields))} characters "
                                    f"(a key or byte offset has at most 19 digits): {shown(line.rstrip())}")
            key, offset = (-n if field.startswith("-") else n for n, field in zip((key, offset), fields))
            problem = ("a negative key" if key < 0 else "a negative byte offset" if offset < 0 else
                       "a byte offset beyond any file" if offset > MAX_OFFSET else None)
            if problem:
                raise RecordIOError(f"{idx_path}: line {number}: {problem}: {shown(line.rstrip())}")
            index[key] = offset
    return index


class RecordFile:
    """Random access to the records of one `.rec` by byte offset (positional reads: no shared seek state)."""

    def __init__(self, path: str | Path):
        self.path, self._fd = Path(path), None
        self._fd = os.open(self.path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.close()

    def _read_exact(self, offset: int, count: int, record_offset: int) -> bytes:
        data = os.pread(self._fd, count, offset)
        if len(data) != count:
            raise RecordIOError(f"{self.path}: truncated record at offset {record_offset}: needs bytes up to "
                                f"{offset + count}, the file ends at {self.size}")
        return data

    def read(self, offset: int, limit: int | None = None) -> bytes:
        """The payload of the record at `offset`, multi-part records joined; with `limit`, at most its
        first `limit` bytes (every frame read is still checked to lie inside the file)."""
        out, position, first = bytearray(), offset, True
        while True:
            magic, lrec = FRAME.unpack(self._read_exact(position, FRAME.size, position))
            if magic != MAGIC:
                raise RecordIOError(f"{self.path}: bad magic 0x{magic:08x} at offset {position} (expected "
                                    f"0x{MAGIC:08x}): not a RecordIO file, or the .idx does not match it")
            cflag, length = lrec >> LENGTH_BITS, lrec & MAX_LENGTH
            if cflag not in ((WHOLE, FIRST) if first else (MIDDLE, LAST)):
                where = "a record's start" if first else f"a continuation of the record at offset {offset}"
                raise RecordIOError(f"{self.path}: part flag {cflag} at offset {position} is not valid for {where}")
            if position + FRAME.size + _padded(length) > self.size:
                raise RecordIOError(f"{self.path}: truncated record at offset {position}: {length} payload bytes "
                                    f"announced, the file ends at {self.size}")
            wanted = length if limit is None else min(length, limit - len(out))
            if wanted > 0:
                out += self._read_exact(position + FRAME.size, wanted, position)
            position += FRAME.size + _padded(length)
            if cflag in (WHOLE, LAST) or (limit is not None and len(out) >= limit):
                break
            out += MAGIC_BYTES
            first = False
        return bytes(out if limit is None else out[:limit])

    def read_header(self, offset: int) -> RecordHeader:
        """Only the payload header (and its float labels) of the record at `offset`."""
        head = self.read(offset, IMAGE_HEADER.size + 8)
        flag = IMAGE_HEADER.unpack_from(head)[0] if len(head) >= IMAGE_HEADER.size else 0
        if flag > 2:
            head = self.read(offset, IMAGE_HEADER.size + 4 * flag)
        try:
            return unpack_payload(head)[0]
        except RecordIOError as exc:
            raise RecordIOError(f"{self.path}: record at offset {offset}: {exc}") from None


def image_keys(rec: RecordFile, index: dict[int, int], idx_path: Path) -> list[int]:
    """Image keys per insightface: 1 .. a-1 from the header record 0's labels (a, b), else every key."""
    if 0 not in index:
        return sorted(index)
    header = rec.read_header(index[0])
    if header.flag == 0:
        return sorted(index)
    if not np.isfinite(header.label[0]):
        raise RecordIOError(f"{rec.path}: the header record gives the image end key {header.label[0]}, "
                            "not a number")
    end = int(header.label[0])
    # Counted over the index, not over 1..end-1: a damaged header's end key (up to 3e38) must not
    # start a loop that never finishes.
    present = sum(1 for k in index if 1 <= k < end)
    if present < end - 1:
        first = next(k for k in range(1, end) if k not in index)  # at most present + 1 steps
        raise RecordIOError(f"{idx_path}: the header record says images are keys 1..{end - 1}, but key "
                            f"{first} is not in the index ({end - 1 - present} missing)")
    return list(range(1, end))


def class_label(header: RecordHeader) -> float:
    """The identity of an image record: its label, or the first of its labels (insightface's choice)."""
    return float(header.label) if header.flag == 0 else float(header.label[0])


class RecordTrainSet(TrainSet):
    """An insightface `.rec` as a training set, with the interface of `folder.ImageFolderTrainSet`:
    items keyed by (epoch, index), flip a function of (seed, epoch, index), uint8 (3,H,W) RGB images,
    `(None, label)` for an undecodable image.

    Labels: each image's (first) float label is made an int; `classes` are the sorted distinct labels
    written as decimal strings ("0", "1", ...), and an item's label is its position in `classes` (the
    same number when the file's labels are 0..C-1, as insightface's are). `exclude` matches those strings.
    The file is opened on first use in each process (descriptors and forked loader workers do not mix)."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None, exclude: Sequence[str] = (),
                 min_images_per_class: int = 0, flip: bool = False, seed: int = 0):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        if not self.rec_path.is_file():
            raise FileNotFoundError(f"training set not found: {self.rec_path}")
        if not self.idx_path.is_file():
            raise FileNotFoundError(f"{self.rec_path}: its index {self.idx_path} is missing (insightface ships "
                                    "train.idx beside train.rec; both are needed)")
        self.flip, self.seed = flip, seed
        index = read_index(self.idx_path)
        rec = RecordFile(self.rec_path)
        try:
            keys = image_keys(rec, index, self.idx_path)
            raw = np.array([class_label(rec.read_header(index[k])) for k in keys], dtype=np.float64)
        finally:
            rec.close()
        if not keys:
            raise ValueError(f"training set {self.rec_path} holds no image records")
        bad = np.flatnonzero(~np.isfinite(raw) | (raw != np.round(raw)))  # inf would cast to a garbage class
        if bad.size:
            raise RecordIOError(f"{self.rec_path}: record {keys[bad[0]]} has the non-integer label {raw[bad[0]]}")
        distinct, dense = np.unique(raw.astype(np.int64), return_inverse=True)
        self.classes, rows, self.labels = select_classes(dense, [str(v) for v in distinct], exclude,
                                                         min_images_per_class, self.rec_path)
        self.keys = np.asarray(keys, dtype=np.int64)[rows]
        self.offsets = np.array([index[int(k)] for k in self.keys], dtype=np.int64)
        self._file: RecordFile | None = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.keys)

    def describe(self, index: int) -> str:
        return f"{self.rec_path} record {int(self.keys[index])}"

    def __getstate__(self):
        return {**self.__dict__, "_file": None, "_pid": None}

    def _record_file(self) -> RecordFile:
        if self._pid != os.getpid():
            self._file, self._pid = RecordFile(self.rec_path), os.getpid()
        return self._file

    def read_encoded(self, index: int) -> bytes:
        """The stored (encoded) image bytes of item `index`."""
        return unpack_payload(self._record_file().read(int(self.offsets[index])))[1]

    def label(self, index: int) -> int:
        return int(self.labels[index])

    def load(self, index: int) -> torch.Tensor:
        # RecordIOError is a ValueError: a damaged record counts as a broken image
        return image_tensor(self.read_encoded(index), self.describe(index))


def _encoded_bytes(image: bytes | str | Path) -> bytes:
    return image if isinstance(image, (bytes, bytearray)) else Path(image).read_bytes()


def write_record_file(rec_path: str | Path, idx_path: str | Path,
                      samples: Iterable[tuple[bytes | str | Path, float | Sequence[float]]],
                      progress: bool = False) -> int:
    """Write `(image, label)` pairs in insightface's layout: header record 0 (flag 2, labels (a, b)),
    images as keys 1..a-1, one identity record per class as keys a..b-1 (labels: first and end image key).
    `image` is encoded bytes or a file path whose bytes are stored unchanged (a JPEG stays bit-exact);
    `label` a number (flag 0) or a sequence of floats whose first is the class (flag = its length).
    Images of one class must be consecutive. Both files are written atomically. Returns the image count."""
    samples = list(samples)
    ranges: dict[float, list[int]] = {}  # class -> [first key, end key), in order of appearance
    for key, (_, label) in enumerate(samples, 1):
        cls = float(np.asarray(label, dtype=np.float32).ravel()[0])
        span = ranges.setdefault(cls, [key, key])
        if span[1] != key:
            raise ValueError(f"write_record_file: the images of class {cls:g} are not consecutive (key {key})")
        span[1] = key + 1
    n = len(samples)
    identity_start = n + 1
    rec_path, idx_path = Path(rec_path), Path(idx_path)
    # The index is renamed into place last: until then the previous pair's index is there (or none).
    with atomic_open(idx_path, "w") as idx, atomic_open(rec_path, "wb") as rec:
        def put(key: int, payload: bytes) -> None:
            idx.write(f"{key}\t{rec.tell()}\n")
            rec.write(encode_record(payload))

        put(0, pack_payload([identity_start, identity_start + len(ranges)]))
        items = samples
        if progress:
            from tqdm import tqdm
            items = tqdm(samples, desc=f"write {rec_path.name}", unit="img", dynamic_ncols=True)
        for key, (image, label) in enumerate(items, 1):
            put(key, pack_payload(label, _encoded_bytes(image), record_id=key))
        for key, span in enumerate(ranges.values(), identity_start):
            put(key, pack_payload(span, record_id=key))
    return n
