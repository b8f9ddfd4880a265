"""IJB-B and IJB-C 1:1 template verification (Whitelam et al., CVPRW 2017; Maze et al., ICB 2018) on the loose
crops and meta files insightface publishes (docs/DESIGN.md §7.8, §8.13):

* `<name>_face_tid_mid.txt`: `image template_id media_id` per face image;
* `<name>_template_pair_label.txt`: `template_id_1 template_id_2 label` per pair (1 genuine, 0 impostor);
* `<name>_name_5pts_score.txt`: `image x1 y1 ... x5 y5 score`, the five landmarks (0-based pixel
  coordinates of the loose crop) and the detector's score;

with `<name>` `ijbb` or `ijbc`. Each crop is aligned from its landmarks with the project's crop (`align/face.py`,
SphereFace's template and cp2tform); image feature f(img) + f(flip(img)); per template, the images of one
media are averaged and the media summed, then normalised; score = cosine of the two templates; TAR at
FAR 1e-6 ... 1e-1 over all pairs (by default the best TAR whose FAR does not exceed the target; with
`tar_rule="insightface"` the ROC point insightface's `ijb_11.py` reports, see `insightface_tar_at_far`).
This is the aggregation of insightface's IJB evaluation with its flip option F2 and without feature
normalisation before pooling (N1); its detector-score weighting (D1) is `detector_score`, off by default.
"""
from __future__ import annotations

from array import array
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..align.face import align_face
from ..base.atomic import atomic_write_bytes
from ..align.crop import template
from .embedding import extract_features
from .feature_cache import cached_features, chunked, file_stamp, listing_digest, model_identity
from ..base.images import decode_rgb
from ..base.paths import decimal, first_and_more, is_decimal, read_utf8_text, shown
from ..base.registry import TAR_RULES
from .results import beside_results, prepare_results, roc_path, update_results
from .trained_network import load_embedder
from .protocols import curve_metrics, figure_png_bytes, l2_normalize, new_figure, roc_points

NAMES = {"ijbb": "IJB-B", "ijbc": "IJB-C"}
FAR_TARGETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
# Images per chunk of the feature cache: a killed run loses at most this much work.
CHUNK_IMAGES = 16384
# Score of a pair one of whose templates has no image left (--allow_missing): below every cosine, so the
# pair is rejected at every threshold a FAR target can reach.
NO_FEATURE_SCORE = -2.0
DEFAULT_CROP = (112, 96)
# The largest id the meta files may hold: ids are kept as numpy int64.
LARGEST_ID = np.iinfo(np.int64).max


def far_key(far: float) -> str:
    """1e-06 -> 'tar_at_far_1e-6' (the LFW results' spelling)."""
    return "tar_at_far_" + f"{far:.0e}".replace("e-0", "e-")


def meta_files(meta_dir: str | Path, name: str) -> dict[str, Path]:
    """The three meta files of `name` (ijbb, ijbc) in `meta_dir`; FileNotFoundError naming a missing one."""
    if name not in NAMES:
        raise ValueError(f"unknown IJB set {name!r}; expected one of {', '.join(NAMES)}")
    meta_dir = Path(meta_dir)
    files = {"tid_mid": meta_dir / f"{name}_face_tid_mid.txt",
             "pairs": meta_dir / f"{name}_template_pair_label.txt",
             "landmarks": meta_dir / f"{name}_name_5pts_score.txt"}
    for path in files.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: --meta must be the folder of insightface's {NAMES[name]} meta "
                                    f"files ({', '.join(p.name for p in files.values())})")
    return files


def _lines(path: Path):
    """(line number, stripped text) of every non-blank line, UTF-8 with or without a byte-order mark."""
    # numbered as editors do: only "\n" ends a line
    for number, line in enumerate(read_utf8_text(path).split("\n"), 1):
        if line.strip():
            yield number, line.strip()


def _fields(path: Path, layout: str, count: int | None = None):
    """(where = "path:line", fields, line) of every non-blank line, which must hold `count` fields (default:
    as many as `layout` names, e.g. "image template_id media_id"); anything else is a ValueError naming
    file and line."""
    count = len(layout.split()) if count is None else count
    for number, line in _lines(path):
        fields = line.split()
        if len(fields) != count:
            raise ValueError(f"{path}:{number}: expected '{layout}' ({count} fields), found {len(fields)}: {line!r}")
        yield f"{path}:{number}", fields, line


def _line_of_entry(path: Path, index: int) -> int:
    """The line number of the `index`-th (0-based) non-blank line, for errors found after a fast parse."""
    for k, (number, _) in enumerate(_lines(path)):
        if k == index:
            return number
    raise IndexError(index)


def _image_name(value: str, where: str) -> str:
    name = value.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"{where}: image name {value!r} is not a path inside the crop folder")
    return name


def _integer(value: str, what: str, where: str, line: str) -> int:
    if not is_decimal(value):
        raise ValueError(f"{where}: {what} {value!r} is not a non-negative integer: {line!r}")
    number = decimal(value, len(str(LARGEST_ID)))
    if number is None or number > LARGEST_ID:
        raise ValueError(f"{where}: {what} {shown(value, 40)} is larger than {LARGEST_ID} (the largest 64-bit "
                         f"integer): {shown(line, 120)}")
    return number


def read_template_media(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """`<name>_face_tid_mid.txt`: (image names, template ids, media ids), one entry per line, in file order.
    A line is `image template_id media_id` separated by spaces or tabs; anything else is a ValueError
    naming the file and line."""
    path = Path(path)
    names, templates, media = [], [], []
    for where, fields, line in _fields(path, "image template_id media_id"):
        names.append(_image_name(fields[0], where))
        templates.append(_integer(fields[1], "template id", where, line))
        media.append(_integer(fields[2], "media id", where, line))
    if not names:
        raise ValueError(f"{path}: no lines 'image template_id media_id'")
    return names, np.array(templates, np.int64), np.array(media, np.int64)


# Bytes a plain pair file is made of; a file of only these, 3 numbers a line, is parsed in one numpy call.
_PAIR_BYTES = np.zeros(256, bool)
_PAIR_BYTES[list(b"0123456789 \t\r\n")] = True
_FAST_BLOCK = 1 << 25   # bytes per vectorised step (bounded memory on IJB-C's 200 MB file)
_FAST_LIMIT = 10 ** 18  # every number below has at most 18 digits, far from int64's end


def _fast_pairs(data: bytes) -> np.ndarray | None:
    """(n, 3) int64 of `data` (ending in a newline) when every line is blank or three unsigned integers
    below 10**18 with label 0 or 1, else None (the line-by-line reader then names the first bad line).
    numpy's parse (strtoll) saturates a number beyond int64 at its largest value: any number of 19 digits
    or more goes to the line-by-line reader, which reads it exactly or names it as written."""
    parts = []
    start = 0
    while start < len(data):
        end = len(data) if start + _FAST_BLOCK >= len(data) else data.rfind(b"\n", start, start + _FAST_BLOCK) + 1
        if end <= start:
            return None
        piece = np.frombuffer(data, np.uint8, end - start, start)
        if not _PAIR_BYTES[piece].all():
            return None
        digit = (piece >= ord("0")) & (piece <= ord("9"))
        number_starts = digit.copy()
        number_starts[1:] &= ~digit[:-1]
        counts = np.cumsum(number_starts, dtype=np.int64)[np.flatnonzero(piece == ord("\n"))]
        per_line = np.diff(counts, prepend=0)
        if not np.isin(per_line, (0, 3)).all():
            return None
        if counts[-1]:
            values = np.fromstring(data[start:end], dtype=np.int64, sep=" ")
            if len(values) != counts[-1] or not np.isin(values[2::3], (0, 1)).all() or (values >= _FAST_LIMIT).any():
                return None
            parts.append(values.reshape(-1, 3))
        start = end
    return np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)


def read_template_pairs(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`<name>_template_pair_label.txt`: (template 1, template 2, label 0/1) per line, in file order. IJB-C
    has 15.7 million lines: a file of plain `int int 0|1` lines is parsed by numpy in a few seconds; any
    other is read line by line, which names the file and line of the first malformed one."""
    path = Path(path)
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if data and not data.endswith(b"\n"):
        data += b"\n"
    values = _fast_pairs(data)
    if values is None:
        first, second, labels = array("q"), array("q"), array("b")   # compact: 15.7M entries stay small
        for where, fields, line in _fields(path, "template_id_1 template_id_2 label"):
            first.append(_integer(fields[0], "template id", where, line))
            second.append(_integer(fields[1], "template id", where, line))
            if fields[2] not in ("0", "1"):
                raise ValueError(f"{where}: label {fields[2]!r} is not 0 (impostor) or 1 (genuine): {line!r}")
            labels.append(fields[2] == "1")
        values = np.stack([np.frombuffer(first, np.int64), np.frombuffer(second, np.int64),
                           np.frombuffer(labels, np.int8).astype(np.int64)], axis=1) if labels else np.zeros((0, 3))
    if len(values) == 0:
        raise ValueError(f"{path}: no lines 'template_id_1 template_id_2 label'")
    return values[:, 0].astype(np.int64), values[:, 1].astype(np.int64), values[:, 2].astype(bool)


def read_landmarks_scores(path: str | Path) -> dict[str, tuple[np.ndarray, float]]:
    """`<name>_name_5pts_score.txt`: image name -> (landmarks (5, 2) float64 as written, 0-based (x, y);
    detector score). A line is the name, 10 coordinates and the score (12 fields); a name listed twice
    with different values, a value that is not a finite number, is a ValueError naming file and line."""
    path = Path(path)
    found: dict[str, tuple[np.ndarray, float]] = {}
    for where, fields, line in _fields(path, "image x1 y1 ... x5 y5 score", 12):
        try:
            values = np.array([float(v) for v in fields[1:]])
        except ValueError:
            values = np.array([np.nan])
        if not np.isfinite(values).all():
            raise ValueError(f"{where}: the landmarks and score must be finite numbers: {line!r}")
        name = _image_name(fields[0], where)
        entry = (values[:10].reshape(5, 2), float(values[10]))
        if name in found and not (np.array_equal(found[name][0], entry[0]) and found[name][1] == entry[1]):
            raise ValueError(f"{where}: image {name} is listed again with other landmarks or score")
        found[name] = entry
    if not found:
        raise ValueError(f"{path}: no lines 'image x1 y1 ... x5 y5 score'")
    return found


class AlignedCrops(Dataset):
    """Loose crops aligned from their landmarks (`align.align_face`): item (uint8 (3, rows, cols), index).
    `landmarks` are 1-based (Matlab's convention, docs/DESIGN.md §6.2)."""

    def __init__(self, root: str | Path, names: Sequence[str], landmarks: np.ndarray,
                 output_size: Sequence[int] = DEFAULT_CROP):
        self.root = Path(root)
        self.names = list(names)
        self.landmarks = np.asarray(landmarks, np.float64)
        self.output_size = tuple(int(v) for v in output_size)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int):
        path = self.root / self.names[index]
        pixels = decode_rgb(path)  # ImageLoadError names the file
        try:
            crop = align_face(pixels, self.landmarks[index], self.output_size)
        except ValueError as exc:
            raise ValueError(f"{path}: cannot align from its landmarks: {exc}") from None
        return torch.from_numpy(crop).permute(2, 0, 1).contiguous(), index


def image_features(embed: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, batch_size: int,
                   num_workers: int, device: str) -> np.ndarray:
    """f(img) + f(flip(img)) per image, float32: both from the one flip path (`embedding.extract_features`,
    sphereface mode [f, f_flip]), then added."""
    both = extract_features(embed, dataset, "sphereface", batch_size, num_workers, device, progress=False)
    half = both.shape[1] // 2
    return (both[:, :half] + both[:, half:]).astype(np.float32)


def template_features(features: np.ndarray, rows: np.ndarray, templates: np.ndarray, media: np.ndarray,
                      weights: np.ndarray | None = None, block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(template ids, sorted; their unit features float64): entry i of (rows, templates, media) puts image
    features[rows[i]] (times weights[i]) into media media[i] of template templates[i]; a media's feature is
    the mean of its images', a template's the sum of its media's, normalised (an all-zero one stays zero).
    Worked in blocks of whole media so that memory stays at `block` images beyond the features."""
    rows, templates, media = (np.asarray(a, np.int64) for a in (rows, templates, media))
    order = np.lexsort((media, templates))
    t_sorted, m_sorted = templates[order], media[order]
    new_media = np.ones(len(order), bool)
    new_media[1:] = (t_sorted[1:] != t_sorted[:-1]) | (m_sorted[1:] != m_sorted[:-1])
    media_starts = np.flatnonzero(new_media)
    media_counts = np.diff(np.append(media_starts, len(order)))
    media_sums = np.zeros((len(media_starts), features.shape[1]))
    first = 0
    while first < len(media_starts):
        last = int(np.searchsorted(media_starts, media_starts[first] + block, side="left"))
        last = max(last, first + 1)
        begin = media_starts[first]
        end = media_starts[last] if last < len(media_starts) else len(order)
        chosen = order[begin:end]
        values = features[rows[chosen]].astype(np.float64)
        if weights is not None:
            values *= np.asarray(weights, np.float64)[chosen][:, None]
        media_sums[first:last] = np.add.reduceat(values, media_starts[first:last] - begin, axis=0)
        first = last
    media_means = media_sums / media_counts[:, None]
    media_templates = t_sorted[media_starts]
    new_template = np.ones(len(media_templates), bool)
    new_template[1:] = media_templates[1:] != media_templates[:-1]
    template_starts = np.flatnonzero(new_template)
    sums = np.add.reduceat(media_means, template_starts, axis=0)
    return media_templates[template_starts], l2_normalize(sums)


def pair_cosines(template_ids: np.ndarray, template_feats: np.ndarray, first: np.ndarray, second: np.ndarray,
                 block: int = 2048) -> np.ndarray:
    """Cosine of each pair's two template features (unit already), float64; NO_FEATURE_SCORE where a
    template has no feature (no image of it was left). Computed as rows of the templates' Gram matrix,
    `block` templates at a time, and read off for the pairs whose first template is among them: IJB-C's
    15.7 million pairs among 23k templates cost one matrix product instead of 15.7 million gathered rows."""
    def locate(ids):
        at = np.minimum(np.searchsorted(template_ids, ids), len(template_ids) - 1)
        return at, template_ids[at] == ids

    a, found_a = locate(np.asarray(first, np.int64))
    b, found_b = locate(np.asarray(second, np.int64))
    scores = np.full(len(a), NO_FEATURE_SCORE)
    order = np.argsort(a, kind="stable")
    bounds = np.searchsorted(a[order], np.arange(0, len(template_ids) + block, block))
    for k, top in enumerate(range(0, len(template_ids), block)):
        chosen = order[bounds[k]:bounds[k + 1]]
        if len(chosen):
            gram = template_feats[top:top + block] @ template_feats.T
            scores[chosen] = gram[a[chosen] - top, b[chosen]]
    scores[~(found_a & found_b)] = NO_FEATURE_SCORE
    return scores


def check_tar_rule(rule: str) -> None:
    """ValueError naming the rules unless `rule` is one of TAR_RULES."""
    if rule not in TAR_RULES:
        raise ValueError(f"unknown TAR rule {rule!r}; expected one of {', '.join(TAR_RULES)}")


def tar_at_far(fpr: np.ndarray, tpr: np.ndarray, targets: Sequence[float] = FAR_TARGETS, rule: str = TAR_RULES[0],
               n_impostor: int | None = None, n_genuine: int | None = None) -> dict:
    """TAR at each FAR target (keys `far_key(far)`) from the full ROC of `protocols.roc_points` (every
    threshold). Rule "at_most" (the default): the best TAR whose FAR does not exceed the target, no
    interpolation (docs/DESIGN.md §7.5). Rule "insightface": the ROC point insightface's IJB table reports
    (`insightface_tar_at_far`), which needs the numbers of impostor and genuine pairs."""
    check_tar_rule(rule)
    if rule == "insightface":
        return insightface_tar_at_far(fpr, tpr, n_impostor, n_genuine, targets)
    return {far_key(far): float(tpr[fpr <= far].max()) for far in targets}


def kept_roc_points(fpr: np.ndarray, tpr: np.ndarray, n_impostor: int, n_genuine: int) -> np.ndarray:
    """Which points of the full ROC (`roc_points`: (0, 0), then one point per distinct score, highest first)
    sklearn's `roc_curve` keeps with its default drop_intermediate=True: (0, 0), the first and the last
    score's points, and every point where the count of false or of true accepts changes its step (a nonzero
    second difference of either count). A point inside a straight, evenly spaced run is dropped. Worked on
    the counts, as sklearn does: the rates' float steps may differ where the counts' do not."""
    false_accepts = np.rint(np.asarray(fpr, np.float64) * n_impostor).astype(np.int64)   # rate = count / total
    true_accepts = np.rint(np.asarray(tpr, np.float64) * n_genuine).astype(np.int64)
    if false_accepts[-1] != n_impostor or true_accepts[-1] != n_genuine or false_accepts[0] or true_accepts[0]:
        raise ValueError(f"not a full ROC of {n_impostor} impostor and {n_genuine} genuine pairs: it runs from "
                         f"({fpr[0]}, {tpr[0]}) to ({fpr[-1]}, {tpr[-1]})")
    keep = np.ones(len(false_accepts), bool)
    if len(keep) > 3:   # more than two score points: sklearn drops only between the first and the last
        keep[2:-1] = (np.diff(false_accepts[1:], 2) != 0) | (np.diff(true_accepts[1:], 2) != 0)
    return keep


def insightface_tar_at_far(fpr: np.ndarray, tpr: np.ndarray, n_impostor: int, n_genuine: int,
                           targets: Sequence[float] = FAR_TARGETS) -> dict:
    """TAR at each FAR target as insightface's IJB table reports it (`recognition/_evaluation_/ijb/
    ijb_11.py`): among the points sklearn's `roc_curve` keeps by default (`kept_roc_points`), the one whose
    FAR is nearest the target, above or below it; of equally near points the last along the curve, the
    highest TAR (ijb_11.py reverses the curve and takes the first minimum of |FAR - target|). Its FAR may
    exceed the target, and a dropped point is never chosen: docs/DESIGN.md §7.8 compares it with ours."""
    if n_impostor is None or n_genuine is None:
        raise ValueError("the insightface TAR rule needs the numbers of impostor and genuine pairs")
    keep = kept_roc_points(fpr, tpr, n_impostor, n_genuine)
    kept_fpr, kept_tpr = np.asarray(fpr, np.float64)[keep], np.asarray(tpr, np.float64)[keep]
    out = {}
    for far in targets:
        distance = np.abs(kept_fpr - far)
        last_nearest = len(distance) - 1 - int(np.argmin(distance[::-1]))   # argmin: the first of equals
        out[far_key(far)] = float(kept_tpr[last_nearest])
    return out


def save_log_roc_png(fpr: np.ndarray, tpr: np.ndarray, path: str | Path, label: str, title: str) -> None:
    """The ROC with the false accept rate on a log axis from 1e-6 (IJB reports TAR down to FAR 1e-6: on
    a linear axis that whole range is one pixel wide), written atomically. Millions of ROC points are
    thinned to the step curve at 2,000 log-spaced FARs (the best TAR not exceeding each)."""
    grid = np.logspace(-7, 0, 2000)
    positions = np.searchsorted(fpr, grid, side="right") - 1   # fpr is non-decreasing along the ROC
    best = np.maximum.accumulate(tpr)[np.maximum(positions, 0)]
    figure = new_figure(6, 5, layout=None)
    axes = figure.add_subplot()
    axes.plot(grid, best, label=label)
    axes.set(xscale="log", xlim=(1e-6, 1), ylim=(0, 1.01), xlabel="false accept rate", ylabel="true accept rate",
             title=title)
    axes.grid(alpha=0.3, which="both")
    axes.legend(loc="lower right")
    atomic_write_bytes(path, figure_png_bytes(figure))


def _missing_error(missing: Sequence[str], root) -> FileNotFoundError:
    return FileNotFoundError(f"{len(missing)} image(s) of the meta files missing under {root}: "
                             f"{first_and_more(missing)} "
                             "(pass --allow_missing to leave them out of their templates)")


def evaluate_ijb(embed: Callable[[torch.Tensor], torch.Tensor], root: str | Path,
                 meta_dir: str | Path | dict[str, Path], name: str,
                 input_size: Sequence[int] | None = None, detector_score: bool = False, allow_missing: bool = False,
                 batch_size: int = 128, num_workers: int = 2, device: str = "cpu", progress: bool = True,
                 roc_png: str | Path | None = None, label: str | None = None, cache_path: str | Path | None = None,
                 cache_key: dict | None = None, tar_rule: str = TAR_RULES[0]) -> dict:
    """IJB-B / IJB-C 1:1 verification of the loose crops under `root` with the meta files of `name` in
    `meta_dir` (or those files themselves, as `meta_files` located them). Crops are aligned at the network's
    `input_size` (112x96 when None). An image file that is missing is an error listing every one; with
    `allow_missing` it is left out of its templates (a template left empty scores NO_FEATURE_SCORE). With
    `cache_path` the image features are kept there (resumable) under `cache_key` (the model's identity) and
    reused by a later run of the same key. TAR at FAR follows `tar_rule` (`tar_at_far`); the rule and the
    detector-score weighting are named in the results (`tar_rule`, `detector_score_weighting`)."""
    check_tar_rule(tar_rule)
    crop = tuple(int(v) for v in input_size) if input_size is not None else DEFAULT_CROP
    try:
        template(crop)
    except ValueError:
        raise ValueError(f"the network takes {crop[0]}x{crop[1]} images; IJB crops are aligned at 112x96 or "
                         "112x112 (the templates of docs/DESIGN.md §6.3)") from None
    files = meta_dir if isinstance(meta_dir, dict) else meta_files(meta_dir, name)
    names, templates, media = read_template_media(files["tid_mid"])
    first, second, labels = read_template_pairs(files["pairs"])
    known = np.unique(templates)
    for which, ids in (("first", first), ("second", second)):
        unknown = ~np.isin(ids, known)
        if unknown.any():
            index = int(np.argmax(unknown))
            raise ValueError(f"{files['pairs']}:{_line_of_entry(files['pairs'], index)}: the {which} template "
                             f"{ids[index]} has no image in {files['tid_mid'].name}")
    if labels.all() or not labels.any():
        raise ValueError(f"{files['pairs']}: all pairs are {'genuine' if labels.all() else 'impostor'}: no ROC")
    points = read_landmarks_scores(files["landmarks"])

    compared = np.union1d(first, second)
    used = np.isin(templates, compared)   # only the images of templates some pair compares
    images = list(dict.fromkeys(n for n, u in zip(names, used) if u))
    unlisted = [n for n in images if n not in points]
    if unlisted:
        raise ValueError(f"{files['landmarks']}: no landmarks for {len(unlisted)} image(s) of {files['tid_mid'].name}: "
                         f"{first_and_more(unlisted, 5)}")
    root = Path(root)
    missing = sorted(n for n in images if not (root / n).is_file())
    if missing and not allow_missing:
        raise _missing_error(missing, root)
    missing_set = set(missing)
    present = [n for n in images if n not in missing_set]
    if not present:
        raise FileNotFoundError(f"none of the {len(images)} images of the meta files is under {root}")

    # The meta files' landmarks are 0-based pixel positions (insightface warps with them as such); the
    # project's alignment takes Matlab's 1-based ones (docs/DESIGN.md §6.2).
    landmarks = np.stack([points[n][0] for n in present]) + 1.0
    chunks = chunked([1] * len(present), CHUNK_IMAGES)
    key = {**(cache_key or {}), "benchmark": name, "crop": list(crop),
           "items": listing_digest(f"{n}\t{' '.join(repr(v) for v in points[n][0].ravel())}\t{file_stamp(root / n)}"
                                   for n in present)}
    dataset = AlignedCrops(root, present, landmarks, crop)
    features, cache_note = cached_features(
        cache_path, key, chunks, [len(c) for c in chunks],
        lambda chunk: image_features(embed, Subset(dataset, chunk), batch_size, num_workers, device),
        progress=progress, desc=f"{NAMES[name]} crops", unit="img")

    row = {n: i for i, n in enumerate(present)}
    keep = np.array([u and n in row for n, u in zip(names, used)])
    rows = np.array([row[n] for n, k in zip(names, keep) if k], np.int64)
    weights = np.array([points[n][1] for n, k in zip(names, keep) if k]) if detector_score else None
    template_ids, template_feats = template_features(features, rows, templates[keep], media[keep], weights)
    scores = pair_cosines(template_ids, template_feats, first, second)
    no_feature = int((scores == NO_FEATURE_SCORE).sum())

    fpr, tpr = roc_points(scores, labels)
    metrics = curve_metrics(fpr, tpr)
    tars = tar_at_far(fpr, tpr, rule=tar_rule, n_impostor=int((~labels).sum()), n_genuine=int(labels.sum()))
    result = {"set": NAMES[name], "tar_rule": tar_rule, **tars, "auc": metrics["auc"], "eer": metrics["eer"]}
    if roc_png is not None:
        save_log_roc_png(fpr, tpr, roc_png, label=f"{label or 'model'} (AUC {metrics['auc']:.4f})",
                         title=f"{NAMES[name]} 1:1 verification, {len(scores):,} template pairs")
        result["roc_png"] = str(roc_png)
    result.update(n_pairs=int(len(scores)), n_genuine=int(labels.sum()), n_templates=int(len(compared)),
                  n_images=len(present), n_missing_images=len(missing), missing_images=missing,
                  n_pairs_without_features=no_feature, detector_score_weighting=bool(detector_score),
                  crop=f"{crop[0]}x{crop[1]}", **cache_note)
    return result


def evaluate_model_on_ijb(model_path: str | Path | None, name: str, dataset: str | Path, meta_dir: str | Path,
                          results_path: str | Path | None, detector_score: bool = False, allow_missing: bool = False,
                          baseline: str | None = None, seed: int = 0, overwrite: bool = False,
                          tar_rule: str = TAR_RULES[0], **common) -> tuple[str, dict]:
    """What `test.py --benchmark ijbb|ijbc` does: evaluate the model (or a baseline), keep the image features
    beside `results_path` (`ijbc_features.npy`), save the ROC figure (`ijbc_roc.png`) and merge the results
    into the file's section of that name (everything else kept). Returns (label, the results)."""
    # The cheap checks come before the weights are read: a wrong --meta, or a results file or figure that
    # is not test.py's to replace, is reported at once. The meta files are located once, here.
    check_tar_rule(tar_rule)
    files = meta_files(meta_dir, name)
    prepare_results(results_path, overwrite, benchmark=name)
    cache_key = model_identity(model_path, baseline, seed)  # before loading: a file replaced later cannot mix in
    embed, label, input_size, _ = load_embedder(model_path, baseline, seed, common.get("device", "cpu"))
    result = evaluate_ijb(embed, dataset, files, name, input_size=input_size, detector_score=detector_score,
                          allow_missing=allow_missing, roc_png=roc_path(results_path, name) if results_path else None,
                          label=label,
                          cache_path=beside_results(results_path, name, "_features.npy") if results_path else None,
                          cache_key=cache_key, tar_rule=tar_rule, **common)
    result.update(model_path=str(model_path) if model_path else None, dataset=str(dataset), meta=str(meta_dir),
                  evaluated=label)
    if results_path is not None:
        update_results(results_path, overwrite, sections={name: result})
    return label, result
