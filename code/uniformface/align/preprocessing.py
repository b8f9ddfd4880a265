"""Align a whole image tree: `DATASET/<identity>/<file>` -> `OUT/<identity>/<file>` (SphereFace's face_detect_demo.m and face_align_demo.m).

One pass over chunks of files: DataLoader workers decode them and MTCNN runs on batches of same-size
images (on a CPU inside each worker, single-threaded; on a GPU in the main process), then the main process
aligns and writes them. A face the detector misses is either skipped (training sets) or aligned
with the mean landmarks of the detected images of the same size (test sets, so that no pair is lost;
with `pairs`, only the images a pairs file names); those misses are kept aside and finished after the
pass, when the means are known. Such a fallback crop never trains: the report names it, and a training
set read from the output folder leaves it out (`data.folder.fallback_crops`). Every miss, fallback
and broken file is listed in `OUT/preprocess_report.tsv`; the landmarks used for every aligned image go
to `OUT/landmarks.txt` (the `lfw_landmark.txt` format, so `--landmarks OUT/landmarks.txt` replays them).
A rerun skips outputs that exist; each output is written to a temporary file and renamed into place.
One run at a time writes into an output folder: it holds the folder's lock (`locks.FolderLock`, a
`flock` on the hidden `OUT/.lock`) from before it sweeps a killed run's temporaries to its end, so that a
second run, which would take the first one's live temporaries for a killed run's and delete them, is
refused at once, naming the holder (docs/RELIABILITY.md, "Reliability: hostile inputs and faults
in preprocessing and evaluation").

After a kill, the rerun's report and landmarks.txt are those of an uninterrupted run: an image's
landmarks line (or its fallback row, in `OUT/.preprocess_journal.tsv`) is written before its output is
renamed into place, so an output never exists without its record; the means behind the fallbacks are
summed exactly (integer units of the landmarks file's last decimal), whatever order the images came in.
Identity folders reached through a symbolic link are aligned like the others (train.py follows them
too), under the link's name; a link that leads back into its own chain of folders (a loop) or into
the output folder is not followed, and is reported.
"""
from __future__ import annotations

import csv
import io
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from torch.utils.data import DataLoader, Dataset

from .face import DETECTION_MAX_SIDE, FaceDetector, align_face
from ..base.atomic import PARTIAL_SUFFIX, atomic_write_text
from ..base.locks import FolderLock
from .crop import to_original, to_reduced
from ..base.defaults import SMALLEST_MIN_FACE_SIZE
from ..base.images import (ImageLoadError, ImageTooLargeError, image_header_size, read_rgb, walk_images,
                           write_image)
from ..base.paths import read_utf8_text
from ..base.registry import FALLBACKS
# The report and the journal (a killed run's fallback rows) are read back by training sets, which leave
# the fallback crops out: their names and format are defined there, once.
from ..data.folder import FALLBACK, JOURNAL_NAME, REPORT_HEADER, REPORT_NAME

LANDMARKS_NAME = "landmarks.txt"
DETECTOR_FAILED = "face detector failed"
LFW_NAME = re.compile(r"^(?P<identity>[^/]+)/(?P=identity)_\d{4}\.[A-Za-z]+$")
# Misses waiting for the mean landmarks keep their pixels up to this many bytes; beyond, they are decoded again.
MISS_PIXEL_BUDGET = 512 * 2**20


@dataclass
class Options:
    dataset: Path
    output_dir: Path
    output_size: tuple[int, int] = (112, 96)
    device: str = "cpu"
    batch_size: int | None = None      # images per detector call; None: 8 on CPU, 128 on CUDA
    workers: int = 2
    landmarks: Path | None = None      # lfw_landmark.txt-style file: align with these points, no detector
    fallback: str = "auto"             # auto | mean | skip
    min_face_size: int = 20
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.9)
    factor: float = 0.85
    max_side: int = DETECTION_MAX_SIDE
    progress: bool = True
    max_pixels: float | None = None    # decompression-bomb limit (inf: none); None: Pillow's, 178,956,970
    overwrite: bool = False            # replace a report / landmarks file there that this tool did not write
    # A test set named explicitly: the relative paths of the images its pairs file (`pairs_file`) needs. Only
    # these get the mean-landmark fallback; a missed face elsewhere is skipped (and reported).
    pair_images: frozenset[str] | None = None
    pairs_file: Path | None = None
    announce: Callable[[str], None] | None = None   # where the fallback decision is told (preprocess.py: print)


@dataclass
class Summary:
    aligned: int = 0          # with detected (or given) landmarks
    fallback: int = 0         # missed face, aligned with mean landmarks
    no_face: int = 0          # missed face, skipped
    broken: int = 0
    already_done: int = 0
    ignored: int = 0          # files without an image extension
    missing_files: int = 0    # landmark-file lines naming a file that is not in the dataset
    missing_pair_images: int = 0  # images the pairs file needs that are not in the dataset
    links_not_followed: int = 0   # symlinked folders that loop or lead into the output folder
    detector_failures: int = 0    # decoded images the face detector failed on (reported as broken)
    fallback_note: str = ""       # the fallback mode and why (auto's decision)
    detection_attempts: int = 0   # decoded images that needed landmarks
    detected: int = 0             # ... and got them (from the detector or the landmark file)
    report_path: Path | None = None
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def line(self) -> str:
        return (f"aligned {self.aligned}, fallback {self.fallback}, skipped-no-face {self.no_face}, "
                f"broken {self.broken}, already-done {self.already_done}"
                + (f", ignored {self.ignored}" if self.ignored else "")
                + (f", landmark lines without a file {self.missing_files}" if self.missing_files else "")
                + (f", pair images not in the dataset {self.missing_pair_images}" if self.missing_pair_images else "")
                + (f", symlinked folders not followed {self.links_not_followed}" if self.links_not_followed else ""))

    def detection_rate_line(self, label: str = "detection rate") -> str:
        if not self.detection_attempts:
            return f"{label}: no image needed landmarks in this run"
        rate = 100.0 * self.detected / self.detection_attempts
        return f"{label} {rate:.2f}% ({self.detected} of {self.detection_attempts} decoded images)"


# ------------------------------------------------------------------------------------------------ inputs

def looks_like_test_set(relative_paths: Sequence[str]) -> bool:
    """LFW naming, `<identity>/<identity>_NNNN.<ext>`, for most (more than half) of the files: a
    verification set. One stray file does not change the verdict for a whole set."""
    matching = sum(1 for p in relative_paths if LFW_NAME.match(p))
    return matching * 2 > len(relative_paths)


def choose_fallback(option: str, images: Sequence[str], pair_images: Sequence[str] | None = None,
                    pairs_file: Path | None = None) -> tuple[bool, str]:
    """(align missed faces with the mean landmarks?, the line that says so and why). With `pair_images`
    (a test set named by its pairs file) only those images fall back, whatever the option. Otherwise `auto`
    decides by the names: mean when more than half of the image files are named as LFW's (a test set,
    where every pair must keep its images), skip otherwise (a training set, where a face the detector
    missed is as likely to be no face at all)."""
    if option not in FALLBACKS:
        raise ValueError(f"fallback must be {', '.join(FALLBACKS[:-1])} or {FALLBACKS[-1]}, got {option!r}")
    if pair_images is not None:
        return False, (f"fallback: mean for the {len(pair_images)} images the pairs of {pairs_file} need, skip for "
                       f"the others (--pairs)")
    if option != "auto":
        return option == "mean", f"fallback: {option} (--fallback {option})"
    strays = [p for p in images if not LFW_NAME.match(p)]
    named = len(images) - len(strays)
    mean = looks_like_test_set(images)
    shown = (f"; not so named: {', '.join(strays[:3])}{' ...' if len(strays) > 3 else ''}"
             if mean and strays else "")
    return mean, (f"fallback: {'mean' if mean else 'skip'} (--fallback auto: {named} of {len(images)} image files "
                  f"are named <dir>/<dir>_NNNN.<ext> as in LFW; mean when more than half are{shown}; "
                  f"--fallback {'skip' if mean else 'mean'} to {'skip' if mean else 'align'} missed faces instead)")


def read_landmark_file(path: Path, strict: bool = True) -> dict[str, np.ndarray]:
    """SphereFace's `lfw_landmark.txt`: per line a relative path, then x1 y1 ... x5 y5, tab separated
    (left eye, right eye, nose, left and right mouth corners, as the template), in Matlab's 1-based pixel
    coordinates, the convention of the detector and of `align.align_face` too (see `align`).
    Returns {relative path: (5, 2) float64}. A malformed line raises ValueError naming file and line;
    with strict=False it is skipped (our own file, whose last line a killed run may have cut)."""
    points: dict[str, np.ndarray] = {}
    for number, line in enumerate(read_utf8_text(path).split("\n"), 1):  # a byte-order mark is not a path
        if not line.strip():
            continue
        try:
            relative, values = parse_landmark_line(line)
        except ValueError as exc:
            if strict:
                raise ValueError(f"{path}, line {number}: {exc}") from None
            continue
        points[relative] = values
    return points


def parse_landmark_line(line: str) -> tuple[str, np.ndarray]:
    """One line of a landmarks file: (relative path, (5, 2) float64), or ValueError saying what is wrong."""
    line = line.rstrip("\r\n")
    fields = line.split("\t") if "\t" in line else line.split()  # tabs, or spaces in hand-made files
    if len(fields) != 11:
        raise ValueError(f"expected a path and 10 numbers separated by tabs, got {len(fields)} fields")
    values = np.array([float(v) for v in fields[1:]], dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("non-finite coordinate")
    return fields[0].replace("\\", "/"), values.reshape(5, 2)


def locate_faces(detector: FaceDetector, items: list[dict]) -> list[np.ndarray | None]:
    """Landmarks for decoded items, in one batched call; if MTCNN fails on the batch, image by image,
    and an image that makes it fail gets an error (reported as broken) instead of ending the run."""
    try:
        return detector.detect_batch([item["pixels"] for item in items])
    except Exception:
        found = []
        for item in items:
            try:
                found.append(detector.detect(item["pixels"]))
            except Exception as exc:
                item["error"] = f"{DETECTOR_FAILED}: {type(exc).__name__}: {exc}"
                found.append(None)
        return found


def _die_with_parent(_worker_id: int) -> None:
    """Loader workers end when the main process is killed (Linux); otherwise a `kill -9` of a run
    leaves them hanging on a full result queue."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _unchanged(item):
    """The loader's collate step: keep numpy arrays as they are (the default turns them into tensors)."""
    return item


class _ChunkSet(Dataset):
    """Item i: the records of the i-th chunk of files, decoded (a broken file becomes an error string,
    never an exception). With `detector_options` the chunk's faces are also located here, so that on a
    CPU each DataLoader worker runs its own single-threaded MTCNN on its own batch: MTCNN is many small
    operations, which share out across processes far better than across the threads of one."""

    def __init__(self, root: Path, chunks: Sequence[Sequence[str]], max_side: int, detector_options: dict | None,
                 max_pixels: float | None = None):
        self.root, self.chunks, self.max_side, self.max_pixels = root, chunks, max_side, max_pixels
        self.detector_options = detector_options
        self.detector: FaceDetector | None = None  # built in the process that uses it

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> list[dict]:
        items = []
        for relative in self.chunks[index]:
            try:
                pixels, scale = read_rgb(self.root / relative, self.max_side, self.max_pixels)
                items.append({"path": relative, "pixels": pixels, "scale": scale, "error": None})
            except ImageLoadError as exc:
                items.append({"path": relative, "pixels": None, "scale": None, "error": load_error(exc)})
        if self.detector_options is not None:
            if self.detector is None:
                self.detector = FaceDetector(**self.detector_options)
            decoded = [item for item in items if item["error"] is None]
            for item, points in zip(decoded, locate_faces(self.detector, decoded) if decoded else []):
                item["points"] = points
        return items


# ----------------------------------------------------------------------------------------------- outputs

def load_error(exc: ImageLoadError) -> str:
    """The report's line for an image that cannot be decoded; for one over the decompression-bomb limit,
    with the option that raises it."""
    if isinstance(exc, ImageTooLargeError):
        return f"{exc} (for a genuine photo this large, raise the limit: preprocess.py --max_megapixels)"
    return str(exc)


def _format_points(points: np.ndarray, separator: str = "\t", decimals: int = 2) -> str:
    return separator.join(f"{v:.{decimals}f}" for v in np.asarray(points, dtype=np.float64).ravel())


# landmarks.txt: 1e-4 px, so that `--landmarks OUT/landmarks.txt` replays the same crops (to rounding)
LANDMARK_DECIMALS = 4


class _SizeMeans:
    """Sums of landmarks per original image size, in integer units of landmarks.txt's last decimal: the
    means are exact and independent of the order the images came in, so that a rerun, which reads the
    earlier runs' landmarks back from landmarks.txt, falls back exactly as an uninterrupted run does."""

    UNIT = 10 ** LANDMARK_DECIMALS

    def __init__(self):
        self.sums: dict[tuple[int, int], list] = {}

    @property
    def count(self) -> int:
        return sum(count for _, count in self.sums.values())

    def add(self, points: np.ndarray, size: tuple[int, int]) -> None:
        entry = self.sums.setdefault(tuple(size), [np.zeros((5, 2), np.int64), 0])
        entry[0] += np.rint(np.asarray(points, dtype=np.float64) * self.UNIT).astype(np.int64)
        entry[1] += 1

    def mean_for(self, size: tuple[int, int]) -> tuple[np.ndarray | None, str]:
        if size in self.sums:
            total, count = self.sums[size]
            return total / (count * self.UNIT), f"mean landmarks of {count} images of size {size[0]}x{size[1]}"
        count = self.count
        if count:
            relative = np.zeros((5, 2))
            for other, (total, n) in sorted(self.sums.items()):  # 1-based -> fraction of the size, summed
                relative += (total / self.UNIT - 0.5 * n) / np.asarray(other, dtype=np.float64)
            points = relative / count * np.asarray(size, dtype=np.float64) + 0.5
            return points, (f"no other {size[0]}x{size[1]} image had landmarks; size-relative mean landmarks "
                            f"of {count} images")
        return None, "no image had landmarks to borrow"


# ------------------------------------------------------------------------------------------------- driver

class _Run:
    def __init__(self, options: Options):
        self.options = options
        self.summary = Summary()
        self.means = _SizeMeans()
        self.misses: list[dict] = []        # faceless images waiting for the mean landmarks
        self.miss_bytes = 0
        self.new_landmarks: dict[str, np.ndarray] = {}
        self.given: dict[str, np.ndarray] | None = None       # landmark-file mode
        self.detector: FaceDetector | None = None
        self.detector_options: dict = {}                      # for the loader workers' own detectors
        self.previous_landmarks: dict[str, np.ndarray] = {}   # OUT/landmarks.txt of earlier runs
        self.todo: list[str] = []
        self.done: set[str] = set()                           # images whose output an earlier run wrote
        self.fallback_mean = False
        self.miss_reason = "no face found"
        self.pair_images = options.pair_images

    def falls_back(self, relative: str) -> bool:
        """Is a missed face at `relative` aligned with the mean landmarks (rather than skipped)?"""
        return relative in self.pair_images if self.pair_images is not None else self.fallback_mean

    def report(self, path: str, status: str, detail: str) -> None:
        self.summary.rows.append((path, status, detail))

    def save(self, item: dict, points_reduced: np.ndarray, record: Callable[[], object]) -> bool:
        """Align and write one image; False (and a report line) when the landmarks cannot be used.
        `record()` logs the image (its landmarks line or fallback row) before the output is renamed into
        place: after a kill, an output never exists without its record."""
        try:
            face = align_face(item["pixels"], points_reduced, self.options.output_size)
        except ValueError as exc:
            self.summary.broken += 1
            self.report(item["path"], "broken", f"alignment failed: {exc}")
            return False
        record()
        write_image(self.options.output_dir / item["path"], face)
        return True

    def handle(self, item: dict, points_reduced: np.ndarray | None, landmarks_log) -> None:
        """One decoded image with its landmarks (reduced-image coordinates) or None for a miss."""
        height, width = item["pixels"].shape[:2]
        original_size = (round(width * item["scale"][0]), round(height * item["scale"][1]))
        self.summary.detection_attempts += 1
        if points_reduced is None:
            if self.falls_back(item["path"]):
                if self.miss_bytes + item["pixels"].nbytes > MISS_PIXEL_BUDGET:
                    item = dict(item, pixels=None)  # decoded again at the end
                else:
                    self.miss_bytes += item["pixels"].nbytes
                self.misses.append(dict(item, size=original_size))
            else:
                self.summary.no_face += 1
                elsewhere = f" (not an image of {self.options.pairs_file})" if self.pair_images is not None else ""
                self.report(item["path"], "no_face", f"{self.miss_reason}; skipped{elsewhere}")
            return
        self.summary.detected += 1
        original = to_original(points_reduced, item["scale"])
        line = f"{item['path']}\t{_format_points(original, decimals=LANDMARK_DECIMALS)}\n"
        if self.save(item, points_reduced, lambda: landmarks_log.write(line)):
            self.means.add(original, original_size)
            self.new_landmarks[item["path"]] = original
            self.summary.aligned += 1

    def process(self, items: list[dict], landmarks_log) -> None:
        """A chunk from the loader: report the broken files, locate the faces not yet located, align."""
        decoded = [item for item in items if item["error"] is None]
        missing = [item for item in decoded if "points" not in item]
        if missing:
            if self.given is not None:
                for item in missing:
                    given = self.given.get(item["path"])
                    item["points"] = None if given is None else to_reduced(given, item["scale"])
            else:
                for item, points in zip(missing, locate_faces(self.detector, missing)):
                    item["points"] = points
        for item in items:
            if item["error"] is not None:  # undecodable, or the detector failed on it
                self.summary.broken += 1
                self.summary.detector_failures += item["error"].startswith(DETECTOR_FAILED)
                self.report(item["path"], "broken", item["error"])
            else:
                self.handle(item, item["points"], landmarks_log)

    def finish_misses(self, journal) -> None:
        """Fallback: align each missed face with the mean landmarks of its size (docs/DESIGN.md §6.6). Each fallback's
        report row goes to the journal (line-buffered) before its output is renamed into place."""
        self.add_previous_landmarks()
        writer = csv.writer(journal, delimiter="\t", lineterminator="\n")
        for miss in self.misses:
            if miss["pixels"] is None:
                try:
                    miss["pixels"], miss["scale"] = read_rgb(self.options.dataset / miss["path"], self.options.max_side,
                                                             self.options.max_pixels)
                except ImageLoadError as exc:  # changed on disk since the first read
                    self.summary.broken += 1
                    self.report(miss["path"], "broken", load_error(exc))
                    continue
            mean, how = self.means.mean_for(miss["size"])
            if mean is None:
                self.summary.no_face += 1
                self.report(miss["path"], "no_face", f"{self.miss_reason}; {how}; skipped")
                continue
            row = (miss["path"], FALLBACK, f"{self.miss_reason}; aligned with the {how}: {_format_points(mean, ' ')}")
            if self.save(miss, to_reduced(mean, miss["scale"]), lambda: writer.writerow(row)):
                self.summary.fallback += 1
                self.report(*row)

    def add_previous_landmarks(self) -> None:
        """A rerun's means also count the images aligned by earlier runs (from OUT/landmarks.txt), those
        whose outputs exist: the images an uninterrupted run would have counted."""
        if not self.misses:
            return
        for relative, points in sorted(self.previous_landmarks.items()):
            if relative in self.new_landmarks or relative not in self.done:
                continue
            try:
                height, width = image_header_size(self.options.dataset / relative, max_pixels=self.options.max_pixels)
            except ImageLoadError:
                continue
            self.means.add(points, (width, height))

    def run(self) -> Summary:
        options = self.options
        validate_options(options)
        dataset, output_dir = options.dataset.resolve(), options.output_dir.resolve()
        if not dataset.is_dir():
            raise FileNotFoundError(f"--dataset {options.dataset} is not a folder")
        check_folders(options.dataset, options.output_dir)
        # Locked before anything in the folder is read or touched (and created here when new): another run's
        # landmarks.txt, report and temporaries are not this run's to check, sweep or rewrite.
        lock = lock_output_folder(output_dir)
        try:
            return self.align_tree(dataset, output_dir)
        finally:
            lock.release()

    def align_tree(self, dataset: Path, output_dir: Path) -> Summary:
        """The run itself, in a validated dataset and a locked output folder."""
        from tqdm import tqdm

        options = self.options
        report_path, landmarks_path = output_dir / REPORT_NAME, output_dir / LANDMARKS_NAME
        journal_path = output_dir / JOURNAL_NAME
        # landmarks.txt of earlier runs, parsed here once: checked as ours, and kept for the means and the rewrite
        self.previous_landmarks = check_own_files(report_path, landmarks_path, options.overwrite)

        tree = walk_images(dataset, avoid=output_dir, avoid_label="--output_dir")
        images, others, skipped = tree.images, tree.others, tree.skipped
        for relative in others:
            self.summary.ignored += 1
            self.report(relative, "ignored", "not an image file name (extension)")
        for relative, reason in skipped:
            self.summary.links_not_followed += 1
            self.report(relative, "not_followed", reason)
        self.fallback_mean, self.summary.fallback_note = choose_fallback(
            options.fallback, images, sorted(self.pair_images) if self.pair_images is not None else None,
            options.pairs_file)
        if options.announce is not None:
            options.announce(self.summary.fallback_note)
        if self.pair_images is not None:
            for relative in sorted(self.pair_images - set(images)):
                self.summary.missing_pair_images += 1
                self.report(relative, "missing_file", f"needed by the pairs of {options.pairs_file} but not found "
                                                      "in the dataset")

        if options.landmarks is not None:
            self.given = read_landmark_file(Path(options.landmarks))
            present = set(images)
            for relative in sorted(set(self.given) - present):
                self.summary.missing_files += 1
                self.report(relative, "missing_file", f"named in {options.landmarks} but not found in the dataset")
            self.miss_reason = f"no landmarks in {options.landmarks}"
        else:
            self.detector_options = dict(device="cpu", min_face_size=options.min_face_size,
                                         thresholds=options.thresholds, factor=options.factor,
                                         batch_size=options.batch_size)
            self.detector = FaceDetector(**dict(self.detector_options, device=options.device))

        for leftover in stale_partials(output_dir):  # a killed run's: the lock keeps every live writer out
            leftover.unlink(missing_ok=True)
        for relative in images:
            if (output_dir / relative).exists():
                self.summary.already_done += 1
                self.done.add(relative)
            else:
                self.todo.append(relative)
        todo = self.todo

        # On a CPU the loader's workers detect (see _ChunkSet); on a GPU, or with no workers, this process does.
        detect_in_loader = self.detector is not None and self.detector.device.type == "cpu" and options.workers > 0
        chunk_size = self.detector.batch_size if self.detector else 32
        chunks = [todo[i:i + chunk_size] for i in range(0, len(todo), chunk_size)]
        loader = DataLoader(_ChunkSet(dataset, chunks, options.max_side,
                                      self.detector_options if detect_in_loader else None, options.max_pixels),
                            batch_size=None, collate_fn=_unchanged, num_workers=options.workers,
                            worker_init_fn=_die_with_parent)
        # Line-buffered: each record reaches its file before the image's output is renamed into place.
        with open(landmarks_path, "a", encoding="utf-8", buffering=1) as landmarks_log, \
                tqdm(total=len(todo), unit="img", disable=not options.progress, file=sys.stderr,
                     desc="aligning") as progress:
            for items in loader:
                self.process(items, landmarks_log)
                progress.update(len(items))
            if self.misses:
                with open(journal_path, "a", encoding="utf-8", newline="", buffering=1) as journal:
                    self.finish_misses(journal)

        self.write_landmarks(landmarks_path)
        self.write_report(report_path, journal_path)
        journal_path.unlink(missing_ok=True)  # its rows are in the report now
        self.summary.report_path = report_path
        return self.summary

    def write_landmarks(self, path: Path) -> None:
        """Rewrite landmarks.txt sorted: this run's landmarks and the earlier runs' lines (our appends were
        the safety net) of the images whose outputs they wrote, which an uninterrupted run would list."""
        merged = {relative: points for relative, points in self.previous_landmarks.items() if relative in self.done}
        merged.update(self.new_landmarks)
        atomic_write_text(path, "".join(f"{relative}\t{_format_points(merged[relative], decimals=LANDMARK_DECIMALS)}\n"
                                        for relative in sorted(merged)))

    def write_report(self, path: Path, journal: Path) -> None:
        """This run's rows, plus the rows earlier runs wrote for the images whose outputs they wrote (their
        fallbacks): from the report of a completed run, or from the journal of a killed one."""
        rows = {}
        for source in (path, journal):
            for row in _read_rows(source):
                if row[0] in self.done and row[1] == FALLBACK:
                    rows[row[0]] = row
        for row in self.summary.rows:
            rows[row[0]] = list(row)
        text = io.StringIO()
        writer = csv.writer(text, delimiter="\t", lineterminator="\n")
        writer.writerow(REPORT_HEADER)
        writer.writerows(rows[key] for key in sorted(rows))
        atomic_write_text(path, text.getvalue())


def _read_rows(path: Path) -> list[list[str]]:
    """The (path, status, detail) rows of a report or journal; [] when there is none."""
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as handle:
        return [row for row in csv.reader(handle, delimiter="\t") if len(row) == 3 and row != REPORT_HEADER]


def check_own_files(report: Path, landmarks: Path, overwrite: bool = False) -> dict[str, np.ndarray]:
    """A report or landmarks file in the output folder that this tool did not write (another header, lines
    that are not `path` + 10 numbers) is never replaced unless `overwrite`: FileExistsError naming it.
    Returns the landmarks of the earlier runs, {relative path: (5, 2)}, from the well-formed lines of
    `landmarks` ({} when there is none), so that the file is read and parsed once."""
    if not overwrite and report.is_file():
        with open(report, encoding="utf-8", errors="replace") as handle:
            first = handle.readline().rstrip("\r\n")
        if first != "\t".join(REPORT_HEADER):
            raise FileExistsError(f"{report} exists and is not a report of preprocess.py (first line {first[:60]!r}): "
                                  "pass --overwrite to replace it, or choose another --output_dir")
    if not landmarks.exists():  # a folder of that name is an error naming it, as a file that cannot be read
        return {}
    try:
        text, not_utf8 = read_utf8_text(landmarks), None
    except ValueError as exc:
        # Not UTF-8: a file that is not ours is refused as such first (it needs --overwrite, not a new encoding)
        text, not_utf8 = landmarks.read_text(encoding="utf-8-sig", errors="replace"), exc
    # only "\n" ends a line, as in read_landmark_file: a file name may hold U+2028 and the like
    lines = [(number, line) for number, line in enumerate(text.split("\n"), 1) if line.strip()]
    points: dict[str, np.ndarray] = {}
    for position, (number, line) in enumerate(lines, 1):
        try:
            relative, values = parse_landmark_line(line)
        except ValueError:
            if overwrite or position == len(lines):  # the last line may be one a killed run cut
                continue
            raise FileExistsError(f"{landmarks}, line {number}: not a landmarks file of preprocess.py (path and "
                                  "10 numbers, tab separated): pass --overwrite to replace it, or choose another "
                                  "--output_dir") from None
        points[relative] = values
    if not_utf8 is not None and not overwrite:  # --overwrite replaces a file that is not ours, in any encoding
        raise not_utf8
    return points


def lock_output_folder(output_dir: Path) -> FolderLock:
    """The output folder's lock, taken (the folder is created when new): `locks.FolderBusy`, naming the
    holder's process id, host, start time and command, when another run holds it; the OSError of a folder
    that cannot be written names the folder, not the lock file in it. The kernel drops the lock when its
    holder exits, however it exits: a killed run leaves the hidden `.lock` file, never a lock."""
    lock = FolderLock(output_dir)
    try:
        return lock.acquire()
    except OSError as exc:
        if exc.errno is None:
            raise
        raise type(exc)(exc.errno, exc.strerror or os.strerror(exc.errno), str(output_dir)) from exc


def check_folders(dataset: Path, output_dir: Path) -> None:
    """ValueError when one of the two folders holds the other: outputs written among the inputs, or
    inputs inside the tree that is then trained on (their folder would be taken for an identity)."""
    dataset_real, output_real = Path(dataset).resolve(), Path(output_dir).resolve()
    if output_real == dataset_real or dataset_real in output_real.parents:
        raise ValueError(f"--output_dir {output_dir} must not be inside --dataset {dataset}")
    if output_real in dataset_real.parents:
        raise ValueError(f"--dataset {dataset} is inside --output_dir {output_dir}: the aligned tree would hold its "
                         "own input (and train.py would take its folders for identities); choose another --output_dir")


def validate_options(options: Options) -> None:
    """ValueError naming the first option out of range (before any work)."""
    def bad(option: str, value, wanted: str):
        raise ValueError(f"{option} {value}: {wanted}")

    if not isinstance(options.min_face_size, int) or options.min_face_size < SMALLEST_MIN_FACE_SIZE:
        bad("--min_face_size", options.min_face_size,
            f"must be an integer of at least {SMALLEST_MIN_FACE_SIZE} (pixels; the MTCNN P-net's window: a smaller "
            f"value enlarges every image 12/min_face_size times)")
    if len(options.thresholds) != 3 or not all(0 < t <= 1 for t in options.thresholds):
        bad("--thresholds", " ".join(map(str, options.thresholds)), "need 3 values in (0, 1] (P-, R-, O-net)")
    if not 0 < options.factor < 1:
        bad("--factor", options.factor, "must be in (0, 1) (the scale between pyramid levels)")
    if not isinstance(options.max_side, int) or options.max_side < 0:
        bad("--max_side", options.max_side, "must be a non-negative integer (0: never reduce)")
    if options.batch_size is not None and options.batch_size < 1:
        bad("--batch_size", options.batch_size, "must be at least 1")
    if options.workers < 0:
        bad("--workers", options.workers, "must be 0 or more")
    if options.max_pixels is not None and not options.max_pixels > 0:
        bad("--max_megapixels", options.max_pixels / 1e6, "must be a positive number (inf: no limit)")


def preprocess(options: Options) -> Summary:
    """Align every image under options.dataset; see the module docstring."""
    return _Run(options).run()


def parse_output_size(text: str) -> tuple[int, int]:
    """'112x96' -> (112, 96): rows x cols."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or (int(match[1]), int(match[2])) not in ((112, 96), (112, 112)):
        raise ValueError(f"output size must be 112x96 or 112x112, got {text!r}")
    return int(match[1]), int(match[2])


def stale_partials(output_dir: Path) -> Iterable[Path]:
    """Temporary files a killed run left behind."""
    return output_dir.rglob(f".*{PARTIAL_SUFFIX}") if output_dir.is_dir() else ()
