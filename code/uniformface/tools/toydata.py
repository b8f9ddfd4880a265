"""The project's toy face set: a CASIA-like training tree, a disjoint LFW-like tree and an LFW-format
`pairs.txt`, generated deterministically from a seed out of real face photographs that ship inside
installed packages (no downloads). A smoke set for `make demo`, not a benchmark.

Every toy person starts from one of two real frontal portraits, scikit-image's `astronaut` (Eileen Collins)
and matplotlib's `grace_hopper.jpg` (scikit-image's `camera` was tried and dropped: a profile with a camera
in front of the face), and is given an identity that lives IN THE FACE:
  - shape: a smooth displacement field anchored at the eyes, brows, nose, mouth, cheeks and chin
    (face proportions that a 5-point similarity alignment cannot undo),
  - a real face's structure: the band-passed shading of one of the 100 LFW faces in
    `skimage.data.lfw_subset()` (25x25 crops of real people) blended into the face,
  - marks: moles, freckles, a scar, eyebrow shape and thickness, glasses, stubble or beard,
  - a mild skin tone.
Every image then gets its own pose (in-plane rotation, scale, shift, a little perspective), background
(textures from the package sample images), lighting (a directional gradient, gamma, contrast, brightness),
colour cast (or greyscale), blur, sensor noise and JPEG quality. Those per-image nuisances are what make
raw pixels a poor identity cue: tint and background are drawn afresh for every image, never per person.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..base.atomic import atomic_write_bytes
from ..align.crop import nonreflective_similarity
from ..base.images import decode_rgb, write_image
from ..eval.pairs import write_pairs

IMAGE_SIZE = 250  # CASIA-WebFace and LFW images are 250x250

# Where the five MTCNN landmarks (left eye, right eye, nose tip, left and right mouth corner; x, y) of an
# unposed toy face sit in the 250x250 frame (the generator's drawing coordinates: array indices, from 0): eye distance 42 px and the eyes a little above the centre,
# as in LFW's own crops. The eyes of every source photograph are mapped exactly onto these; its nose and
# mouth land near them, where that face has them (`_Source.landmarks`).
CANONICAL_LANDMARKS = np.array([[104.0, 112.0], [146.0, 112.0], [125.0, 137.0], [108.5, 160.0], [141.5, 160.0]])
EYE_DISTANCE = 42.0

# The five landmarks facenet-pytorch's MTCNN (official SphereFace settings) finds on each source photograph,
# measured once and fixed here so that generation needs no detector. MTCNN's numbers are Matlab's 1-based
# pixel coordinates (see `crop`): the feature at x is at array index x - 1. The true landmarks the generator
# reports are in that convention too (`_Source.truth`).
SOURCE_LANDMARKS = {
    "astronaut": [[204.4, 100.4], [247.5, 103.7], [225.0, 127.7], [202.5, 139.4], [245.8, 142.2]],
    "grace_hopper": [[222.7, 192.6], [309.4, 187.0], [268.2, 237.9], [232.4, 277.5], [306.9, 273.3]],
}

# Sample images with no faces in them, cropped and recoloured into per-image backgrounds.
# Files read straight from scikit-image's data folder (all ship with the package; nothing is fetched).
_BACKGROUND_FILES = ("brick.png", "grass.png", "gravel.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
                     "coins.png", "page.png", "text.png", "moon.png", "color.png", "motorcycle_left.png",
                     "retina.jpg", "ihc.png", "cell.png", "logo.png")


@dataclass(frozen=True)
class ToySettings:
    """The generator's knobs. Defaults give a set that `make demo` generates, aligns, trains on and
    verifies in a few minutes on two CPU cores, on which MTCNN finds nearly every face and raw pixels stay
    a weak baseline. The demo's measured figures (detection rate, accuracies, time) are kept in one place,
    docs/BENCHMARKS.md's "Measured on the 2-core development CPU" table, so that they are updated together."""
    # Sizes. ~100 classes x 15 images is ~1,500 training images: enough classes for a margin loss to
    # learn a general embedding, few enough for several epochs in the demo's CPU run (configs/toy.yaml:
    # 200 iterations of 64 images, about 8 epochs).
    train_identities: int = 100
    images_per_identity: int = 15
    # 60 test people in 10 folds of 6 (LFW's folds hold disjoint people), 4-8 images each: every fold has
    # enough same-person pairs for 30 distinct ones.
    lfw_identities: int = 60
    lfw_images_min: int = 4
    lfw_images_max: int = 8
    folds: int = 10
    pairs_per_fold: int = 30  # 30 same + 30 different per fold: 600 pairs (LFW has 300 + 300)

    # Identity (per person). Strengths are in units of the eye distance or as fractions of the intensity.
    shape_strength: float = 0.12        # std of each landmark-anchored displacement, in eye distances (~5 px)
    structure_strength: float = 0.35    # weight of the LFW face's band-passed shading (0 turns it off)
    skin_tone_std: float = 0.05         # per-channel log-gain of the skin, below the per-image cast on purpose
    mole_count: tuple[int, int] = (1, 5)
    freckles_probability: float = 0.3
    scar_probability: float = 0.35
    glasses_probability: float = 0.3
    beard_probability: float = 0.3      # dense beards cost MTCNN detections: 0.4 with darker beards gave ~95 %

    # Nuisance (per image). The photometric ranges are the widest that keep MTCNN (official settings) at
    # ~98 % detection: wider gamma/contrast/cast ranges lowered raw pixels to ~0.63 but detection to ~93 %.
    rotation_std_deg: float = 7.0       # in-plane roll; alignment undoes it, the detector must not miss it
    scale_range: tuple[float, float] = (0.88, 1.12)
    shift_std: float = 5.0              # pixels
    perspective_std: float = 0.0005     # projective terms (per pixel): a few degrees of yaw/pitch
    expression_strength: float = 0.04   # per-image mouth/brow jitter, in eye distances
    light_strength: tuple[float, float] = (0.2, 0.9)  # gain ramp across the face: 1 +- strength * tanh(.)
    gamma_range: tuple[float, float] = (0.8, 1.3)
    contrast_range: tuple[float, float] = (0.8, 1.2)
    brightness_std: float = 0.06
    color_cast_std: float = 0.08        # per-channel log-gain, drawn per image so tint carries no identity
    greyscale_probability: float = 0.1  # LFW has some greyscale images too
    blur_sigma: tuple[float, float] = (0.0, 1.0)    # pixels; more would erase the small marks
    noise_sigma: tuple[float, float] = (0.0, 6.0)   # in 0-255 units
    jpeg_quality: tuple[int, int] = (50, 95)


# ------------------------------------------------------------------------------------------ source photographs

@dataclass
class _Source:
    """A photograph resampled so that its eyes sit on CANONICAL_LANDMARKS' (250x250, float32 0..1)."""
    name: str
    rgb: np.ndarray
    landmarks: np.ndarray  # its own five landmarks in the canonical frame, as drawing coordinates
    truth: np.ndarray      # the same features' array positions in the canonical frame (MTCNN's numbers - 1)


def _source_photographs() -> dict[str, np.ndarray]:
    import matplotlib
    from skimage import data

    hopper = decode_rgb(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    return {"astronaut": data.astronaut(), "grace_hopper": hopper}


@lru_cache(maxsize=1)
def _sources() -> tuple[_Source, ...]:
    from scipy.ndimage import gaussian_filter, map_coordinates

    out = []
    for name, image in _source_photographs().items():
        measured = np.asarray(SOURCE_LANDMARKS[name], dtype=np.float64)
        to_source = nonreflective_similarity(CANONICAL_LANDMARKS[:2], measured[:2])[:2]
        to_canonical = nonreflective_similarity(measured[:2], CANONICAL_LANDMARKS[:2])[:2]
        step = math.hypot(to_source[0, 0], to_source[1, 0])  # source pixels per canonical pixel
        pixels = image.astype(np.float32) / 255.0
        if step > 1.2:  # shrinking (Grace Hopper's face is twice the size): low-pass first, against aliasing
            pixels = gaussian_filter(pixels, (0.45 * step, 0.45 * step, 0))
        xs, ys = _coords()
        sx = to_source[0, 0] * xs + to_source[0, 1] * ys + to_source[0, 2]
        sy = to_source[1, 0] * xs + to_source[1, 1] * ys + to_source[1, 2]
        rgb = np.stack([map_coordinates(pixels[:, :, c], [sy, sx], order=1, mode="nearest") for c in range(3)], -1)
        landmarks = measured @ to_canonical[:, :2].T + to_canonical[:, 2]
        truth = (measured - 1.0) @ to_canonical[:, :2].T + to_canonical[:, 2]
        out.append(_Source(name, rgb.astype(np.float32), landmarks, truth))
    return tuple(out)


@lru_cache(maxsize=1)
def _lfw_faces() -> np.ndarray:
    """The 100 real LFW face crops (25x25 greyscale, 0..1) of `skimage.data.lfw_subset()` (the other 100
    are non-faces)."""
    from skimage import data

    return data.lfw_subset()[:100].astype(np.float32)


@lru_cache(maxsize=1)
def _background_pool() -> tuple[np.ndarray, ...]:
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    return tuple(decode_rgb(folder / name) for name in _BACKGROUND_FILES)


# Approximate eye centres and mouth centre of the mean `lfw_subset` face, (x, y) in its 25x25 crop.
_LFW_SUBSET_POINTS = np.array([[6.2, 8.2], [15.4, 8.2], [10.8, 17.5]])


# ------------------------------------------------------------------------------------------------ identities

@dataclass
class Identity:
    """Everything that makes one toy person: drawn once, rendered into a canonical (unposed) RGBA face."""
    name: str
    source: int
    anchors: np.ndarray          # (K, 2) points of the shape displacement field
    offsets: np.ndarray          # (K, 2) their displacements (pixels)
    structure: int               # index into the LFW faces, or -1
    rgba: np.ndarray = field(repr=False, default=None)  # float32 (S, S, 4): colour 0..1 and head mask
    landmarks: np.ndarray = field(repr=False, default=None)  # (5, 2) after the shape displacement
    truth: np.ndarray = field(repr=False, default=None)      # (5, 2) true feature positions (array indices)


def _coords(size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs, ys


def _smoothstep_disc(dist: np.ndarray, radius: float, softness: float = 0.75) -> np.ndarray:
    """1 inside `radius`, 0 outside, a linear ramp `softness` pixels wide across the edge (anti-aliased)."""
    return np.clip((radius - dist) / (2 * softness) + 0.5, 0.0, 1.0)


def _polyline_distance(xs, ys, points: np.ndarray) -> np.ndarray:
    """Distance of every pixel to a polyline (points (N, 2))."""
    best = np.full(xs.shape, np.inf, dtype=np.float32)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
        best = np.minimum(best, np.hypot(xs - x0 - t * dx, ys - y0 - t * dy))
    return best


def _head_mask(xs, ys) -> np.ndarray:
    """Soft mask of head, hair and neck in canonical coordinates: what stays of the source photograph when
    the background is replaced."""
    cx = CANONICAL_LANDMARKS[:2, 0].mean()
    eye_y = CANONICAL_LANDMARKS[0, 1]
    ed = EYE_DISTANCE
    head = ((xs - cx) / (1.3 * ed)) ** 2 + ((ys - (eye_y + 0.25 * ed)) / (1.85 * ed)) ** 2
    mask = _smoothstep_disc(np.sqrt(head) * 1.3 * ed, 1.3 * ed, 3.0)
    # neck and shoulders: a band that widens below the chin
    below = ys - (eye_y + 1.6 * ed)
    half_width = 0.55 * ed + np.maximum(below - 0.6 * ed, 0) * 1.6
    neck = _smoothstep_disc(np.abs(xs - cx), half_width, 3.0) * np.clip(below / 6.0, 0, 1)
    return np.maximum(mask, neck)


def _skin_mask(xs, ys) -> np.ndarray:
    """Soft mask of the face's skin (forehead to chin, cheek to cheek), where tone and marks go."""
    cx = CANONICAL_LANDMARKS[:2, 0].mean()
    eye_y = CANONICAL_LANDMARKS[0, 1]
    ed = EYE_DISTANCE
    r = np.sqrt(((xs - cx) / (1.0 * ed)) ** 2 + ((ys - (eye_y + 0.45 * ed)) / (1.35 * ed)) ** 2)
    return _smoothstep_disc(r * ed, ed, 4.0)


def _shape_anchors(rng: np.random.Generator, strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Landmark-anchored displacements, mirror-symmetric (so that a horizontally flipped image, which the
    trainer uses as augmentation, shows the same person): eye spacing and height, brow height, nose
    length and width, mouth height and width, cheek and jaw width, chin and forehead height."""
    ed = EYE_DISTANCE
    cx = CANONICAL_LANDMARKS[:2, 0].mean()
    eye_y = CANONICAL_LANDMARKS[0, 1]
    s = strength * ed
    g = lambda: rng.normal(0.0, s)  # noqa: E731
    anchors, offsets = [], []

    def mirrored(dx_from_centre, y, dx, dy):
        for side in (-1, 1):
            anchors.append((cx + side * dx_from_centre, y))
            offsets.append((side * dx, dy))

    mirrored(0.5 * ed, eye_y, 0.6 * g(), 0.5 * g())            # eyes: spacing, height
    mirrored(0.5 * ed, eye_y - 0.42 * ed, 0.3 * g(), 0.8 * g())  # brows
    anchors.append((cx, eye_y + 0.6 * ed)); offsets.append((0.0, g()))   # nose tip: length
    mirrored(0.2 * ed, eye_y + 0.55 * ed, 0.4 * g(), 0.0)      # nostrils: nose width
    anchors.append((cx, eye_y + 1.15 * ed)); offsets.append((0.0, 0.8 * g()))  # mouth height
    mirrored(0.4 * ed, eye_y + 1.15 * ed, 0.5 * g(), 0.0)      # mouth width
    mirrored(0.95 * ed, eye_y + 0.6 * ed, g(), 0.0)            # cheeks
    mirrored(0.75 * ed, eye_y + 1.4 * ed, g(), 0.0)            # jaw
    anchors.append((cx, eye_y + 1.75 * ed)); offsets.append((0.0, g()))  # chin
    anchors.append((cx, eye_y - 1.0 * ed)); offsets.append((0.0, g()))   # forehead
    return np.asarray(anchors, dtype=np.float32), np.asarray(offsets, dtype=np.float32)


_SHAPE_SIGMA = 0.32 * EYE_DISTANCE  # reach of one anchor's displacement


def _displacement(xs, ys, anchors: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dx = np.zeros_like(xs)
    dy = np.zeros_like(ys)
    for (ax, ay), (ox, oy) in zip(anchors, offsets):
        w = np.exp(-((xs - ax) ** 2 + (ys - ay) ** 2) / (2 * _SHAPE_SIGMA ** 2))
        dx += ox * w
        dy += oy * w
    return dx, dy


def _displace_points(points: np.ndarray, anchors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Where canonical points land under the displacement (the warp samples p - d(p): solve p = s + d(p))."""
    p = np.asarray(points, dtype=np.float64).copy()
    for _ in range(10):
        dx, dy = _displacement(p[:, 0], p[:, 1], anchors, offsets)
        p = points + np.stack([dx, dy], -1)
    return p


# -------------------------------------------------------------------------------------------- in-face marks

def _local(center, radius, size: int = IMAGE_SIZE):
    """Slices and pixel coordinates of the square window of `radius` around `center`, clipped to the frame."""
    x0 = int(max(0, math.floor(center[0] - radius)))
    x1 = int(min(size, math.ceil(center[0] + radius) + 1))
    y0 = int(max(0, math.floor(center[1] - radius)))
    y1 = int(min(size, math.ceil(center[1] + radius) + 1))
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return (slice(y0, y1), slice(x0, x1)), xs, ys


def _tint(rgb: np.ndarray, window, alpha: np.ndarray, colour, strength: float) -> None:
    """Blend `colour` (0..1 RGB) into `rgb[window]` with weight strength * alpha (in place)."""
    a = (strength * alpha)[:, :, None]
    rgb[window] = rgb[window] * (1 - a) + np.asarray(colour, dtype=np.float32) * a


def _skin_point(rng: np.random.Generator, lm: np.ndarray, zone: str = "any") -> np.ndarray:
    """A random point on the skin, away from eyes and lips (canonical coordinates)."""
    ed = EYE_DISTANCE
    cx = CANONICAL_LANDMARKS[:2, 0].mean()
    eye_y = CANONICAL_LANDMARKS[0, 1]
    while True:
        if zone == "cheeks":
            p = np.array([cx + rng.choice([-1, 1]) * rng.uniform(0.25, 0.8) * ed, eye_y + rng.uniform(0.3, 0.9) * ed])
        else:
            p = np.array([cx + rng.uniform(-0.9, 0.9) * ed, eye_y + rng.uniform(-0.85, 1.65) * ed])
        r = math.hypot((p[0] - cx) / (0.95 * ed), (p[1] - (eye_y + 0.45 * ed)) / (1.3 * ed))
        near_eye = min(math.hypot(*(p - CANONICAL_LANDMARKS[k])) for k in (0, 1)) < 0.3 * ed
        near_mouth = abs(p[1] - lm[3:5, 1].mean()) < 0.12 * ed and abs(p[0] - cx) < 0.45 * ed
        if r < 1 and not near_eye and not near_mouth:
            return p


def _draw_structure(rgb: np.ndarray, face: np.ndarray, skin: np.ndarray, strength: float, lm: np.ndarray) -> None:
    """Blend a real face's mid-frequency shading (brow ridge, eye sockets, nose, cheek and mouth shadows) into
    the skin: the LFW crop is mapped by its eyes and mouth onto the canonical ones and band-passed, so its
    own lighting and size do not come along."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    to_crop = nonreflective_similarity(np.array([lm[0], lm[1], lm[3:5].mean(0)]), _LFW_SUBSET_POINTS)
    xs, ys = _coords()
    cx = to_crop[0, 0] * xs + to_crop[0, 1] * ys + to_crop[0, 2]
    cy = to_crop[1, 0] * xs + to_crop[1, 1] * ys + to_crop[1, 2]
    shading = map_coordinates(face, [cy, cx], order=3, mode="nearest")
    band = gaussian_filter(shading, 1.2) - gaussian_filter(shading, 9.0)
    band /= max(1e-6, float(np.std(band[skin > 0.5])))
    rgb *= (1.0 + strength * 0.25 * band * skin)[:, :, None]


def _draw_brows(rng: np.random.Generator, rgb: np.ndarray) -> None:
    """Mirror-symmetric eyebrows of a personal thickness, arch, tilt, length and darkness."""
    ed = EYE_DISTANCE
    thickness = rng.uniform(1.2, 4.5)
    arch = rng.uniform(-1.0, 5.0)
    tilt = rng.uniform(-3.5, 3.5)
    half = rng.uniform(0.28, 0.42) * ed
    lift = rng.uniform(0.34, 0.5) * ed
    darkness = rng.uniform(0.35, 0.8)
    colour = np.array([0.12, 0.08, 0.06]) * rng.uniform(0.5, 2.5)
    t = np.linspace(-1, 1, 9)
    for side in (-1, 1):
        eye = CANONICAL_LANDMARKS[0 if side < 0 else 1]
        xs_line = eye[0] + side * t * half
        # inner end at t*side = -1 (toward the nose); tilt raises the outer end
        ys_line = eye[1] - lift - arch * (1 - t ** 2) - tilt * (side * t)
        points = np.stack([xs_line, ys_line], -1)
        window, xs, ys = _local(eye - [0, lift], half + 8)
        dist = _polyline_distance(xs, ys, points)
        _tint(rgb, window, _smoothstep_disc(dist, thickness, 0.8), colour, darkness)


def _draw_moles(rng: np.random.Generator, rgb: np.ndarray, count: int, lm: np.ndarray) -> None:
    for _ in range(count):
        p = _skin_point(rng, lm)
        radius = rng.uniform(1.3, 3.2)
        window, xs, ys = _local(p, radius + 3)
        colour = np.array([0.25, 0.15, 0.1]) * rng.uniform(0.4, 1.2)
        _tint(rgb, window, _smoothstep_disc(np.hypot(xs - p[0], ys - p[1]), radius, 0.9), colour,
              rng.uniform(0.55, 0.9))


def _draw_freckles(rng: np.random.Generator, rgb: np.ndarray, lm: np.ndarray) -> None:
    colour = np.array([0.55, 0.33, 0.2])
    for _ in range(int(rng.integers(25, 60))):
        p = _skin_point(rng, lm, "cheeks")
        radius = rng.uniform(0.7, 1.4)
        window, xs, ys = _local(p, radius + 2)
        _tint(rgb, window, _smoothstep_disc(np.hypot(xs - p[0], ys - p[1]), radius, 0.6), colour,
              rng.uniform(0.25, 0.5))


def _draw_scar(rng: np.random.Generator, rgb: np.ndarray, lm: np.ndarray) -> None:
    p = _skin_point(rng, lm)
    length = rng.uniform(10, 24)
    angle = rng.uniform(0, np.pi)
    bend = rng.normal(0, 2.5)
    t = np.linspace(-0.5, 0.5, 7)
    direction = np.array([math.cos(angle), math.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    points = p + np.outer(t * length, direction) + np.outer(bend * (1 - 4 * t ** 2), normal)
    window, xs, ys = _local(p, length / 2 + 6)
    dist = _polyline_distance(xs, ys, points)
    light = rng.random() < 0.5
    colour = np.array([0.95, 0.75, 0.72]) if light else np.array([0.35, 0.15, 0.12])
    _tint(rgb, window, _smoothstep_disc(dist, rng.uniform(0.8, 1.6), 0.6), colour, rng.uniform(0.5, 0.8))


def _draw_beard(rng: np.random.Generator, rgb: np.ndarray, lm: np.ndarray) -> None:
    """Stubble, moustache, goatee or full beard: a dark, grainy texture over a personal region."""
    from scipy.ndimage import gaussian_filter

    ed = EYE_DISTANCE
    cx = CANONICAL_LANDMARKS[:2, 0].mean()
    eye_y = CANONICAL_LANDMARKS[0, 1]
    mouth_y = lm[3:5, 1].mean()
    window, xs, ys = _local((cx, eye_y + 1.2 * ed), 1.3 * ed)
    style = rng.choice(["stubble", "moustache", "goatee", "full"])
    lip_gap = _smoothstep_disc(np.hypot((xs - cx) / 1.3, (ys - mouth_y) * 1.6), 0.42 * ed, 2.0)
    moustache = (_smoothstep_disc(np.abs(xs - cx), 0.5 * ed, 2.5)
                 * _smoothstep_disc(np.abs(ys - (mouth_y - 0.2 * ed)), 0.12 * ed, 2.0))
    chin = _smoothstep_disc(np.hypot((xs - cx) / 1.2, ys - (mouth_y + 0.45 * ed)), 0.38 * ed, 3.0)
    jaw = (_smoothstep_disc(np.hypot((xs - cx) / 1.15, (ys - (eye_y + 0.9 * ed)) / 1.05), 0.98 * ed, 4.0)
           * np.clip((ys - (eye_y + 0.65 * ed)) / 6.0, 0, 1))
    region = {"stubble": jaw, "moustache": moustache, "goatee": np.maximum(chin, moustache),
              "full": np.maximum(jaw, moustache)}[style]
    if style != "moustache":
        region = region * (1 - 0.85 * lip_gap)
    grain = gaussian_filter(rng.random(xs.shape).astype(np.float32), 0.6)
    grain = np.clip((grain - grain.mean()) / (grain.std() + 1e-6) * 0.5 + 0.6, 0, 1)
    density = 0.35 if style == "stubble" else rng.uniform(0.45, 0.75)
    colour = np.array([0.1, 0.07, 0.05]) * rng.uniform(0.6, 3.0)
    _tint(rgb, window, region * grain, colour, density)


def _draw_glasses(rng: np.random.Generator, rgb: np.ndarray) -> None:
    """Frames of a personal shape (round to rectangular), size, thickness and colour, with a bridge."""
    ed = EYE_DISTANCE
    half_w = rng.uniform(0.3, 0.44) * ed
    half_h = rng.uniform(0.2, 0.32) * ed
    power = rng.uniform(2.0, 6.0)  # superellipse exponent: 2 round, large rectangular
    thickness = rng.uniform(1.0, 2.5)
    drop = rng.uniform(-0.05, 0.1) * ed
    palette = [(0.05, 0.05, 0.05), (0.25, 0.15, 0.08), (0.75, 0.6, 0.3), (0.7, 0.7, 0.72), (0.5, 0.1, 0.1)]
    colour = np.array(palette[int(rng.integers(len(palette)))])
    lens_tint = rng.uniform(0.0, 0.12)
    for k in (0, 1):
        c = CANONICAL_LANDMARKS[k] + [0, drop]
        window, xs, ys = _local(c, half_w + 5)
        # approximate distance to the superellipse outline via its normalised radius
        r = (np.abs((xs - c[0]) / half_w) ** power + np.abs((ys - c[1]) / half_h) ** power) ** (1 / power)
        dist = np.abs(r - 1) * min(half_w, half_h)
        _tint(rgb, window, _smoothstep_disc(dist, thickness / 2 + 0.3, 0.6), colour, 0.9)
        _tint(rgb, window, (r < 1).astype(np.float32), (0.3, 0.35, 0.4), lens_tint)
    left = CANONICAL_LANDMARKS[0] + [half_w, drop - 0.1 * half_h]
    right = CANONICAL_LANDMARKS[1] + [-half_w, drop - 0.1 * half_h]
    window, xs, ys = _local((left + right) / 2, (right[0] - left[0]) / 2 + 4)
    bridge = np.stack([left, (left + right) / 2 - [0, 3], right])
    _tint(rgb, window, _smoothstep_disc(_polyline_distance(xs, ys, bridge), thickness / 2 + 0.3, 0.6), colour, 0.9)


def make_identity(name: str, rng: np.random.Generator, settings: ToySettings, structure: int) -> Identity:
    """Draw one toy person and render their canonical (unposed, unlit) face with its head mask."""
    from scipy.ndimage import map_coordinates

    sources = _sources()
    source = int(rng.integers(len(sources)))
    rgb = sources[source].rgb.copy()
    lm = sources[source].landmarks
    xs, ys = _coords()
    skin = _skin_mask(xs, ys)

    if settings.structure_strength > 0 and structure >= 0:
        _draw_structure(rgb, _lfw_faces()[structure], skin, settings.structure_strength, lm)
    tone = np.exp(rng.normal(0.0, settings.skin_tone_std, 3)).astype(np.float32)
    rgb *= 1 + (tone - 1)[None, None, :] * skin[:, :, None]
    _draw_brows(rng, rgb)
    _draw_moles(rng, rgb, int(rng.integers(settings.mole_count[0], settings.mole_count[1] + 1)), lm)
    if rng.random() < settings.freckles_probability:
        _draw_freckles(rng, rgb, lm)
    if rng.random() < settings.scar_probability:
        _draw_scar(rng, rgb, lm)
    if rng.random() < settings.beard_probability:
        _draw_beard(rng, rgb, lm)
    if rng.random() < settings.glasses_probability:
        _draw_glasses(rng, rgb)

    anchors, offsets = _shape_anchors(rng, settings.shape_strength)
    dx, dy = _displacement(xs, ys, anchors, offsets)
    rgba = np.concatenate([rgb, _head_mask(xs, ys)[:, :, None]], axis=2)
    warped = np.stack([map_coordinates(rgba[:, :, c], [ys - dy, xs - dx], order=1, mode="nearest")
                       for c in range(4)], -1)
    landmarks = _displace_points(lm, anchors, offsets)
    truth = _displace_points(sources[source].truth, anchors, offsets)
    return Identity(name, source, anchors, offsets, structure, np.clip(warped, 0, 1).astype(np.float32), landmarks,
                    truth)


# --------------------------------------------------------------------------------------------- one image

def _pose_homography(rng: np.random.Generator, settings: ToySettings) -> np.ndarray:
    """Canonical -> image (3x3): roll, scale, shift and a little perspective about the face centre."""
    centre = CANONICAL_LANDMARKS.mean(0)
    angle = math.radians(rng.normal(0.0, settings.rotation_std_deg))
    scale = rng.uniform(*settings.scale_range)
    shift = rng.normal(0.0, settings.shift_std, 2)
    to_origin = np.array([[1, 0, -centre[0]], [0, 1, -centre[1]], [0, 0, 1]])
    perspective = np.array([[1, 0, 0], [0, 1, 0], [*rng.normal(0.0, settings.perspective_std, 2), 1]])
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    similarity = np.array([[c, -s, centre[0] + shift[0]], [s, c, centre[1] + shift[1]], [0, 0, 1]])
    return similarity @ perspective @ to_origin


def _apply_homography(h: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = h[2, 0] * xs + h[2, 1] * ys + h[2, 2]
    return (h[0, 0] * xs + h[0, 1] * ys + h[0, 2]) / w, (h[1, 0] * xs + h[1, 1] * ys + h[1, 2]) / w


def _homography_points(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.stack(_apply_homography(h, points[:, 0], points[:, 1]), -1)


def _background(rng: np.random.Generator) -> np.ndarray:
    """A 250x250 float RGB background: a random crop of a sample image (random scale, angle, colours and
    focus), or a studio-like smooth gradient."""
    from PIL import Image, ImageFilter

    size = IMAGE_SIZE
    if rng.random() < 0.25:
        xs, ys = _coords()
        a, b = rng.uniform(0.2, 0.9, 3), rng.uniform(0.2, 0.9, 3)
        angle = rng.uniform(0, 2 * np.pi)
        t = np.clip(((xs - size / 2) * math.cos(angle) + (ys - size / 2) * math.sin(angle)) / size + 0.5, 0, 1)
        return (a[None, None] * (1 - t[:, :, None]) + b[None, None] * t[:, :, None]).astype(np.float32)
    pool = _background_pool()
    image = pool[int(rng.integers(len(pool)))]
    h, w = image.shape[:2]
    zoom = rng.uniform(0.4, 1.5)  # source pixels per output pixel
    angle = rng.uniform(-0.5, 0.5)
    c, s = math.cos(angle) * zoom, math.sin(angle) * zoom
    centre = (rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h)
    coeffs = (c, -s, centre[0] - c * size / 2 + s * size / 2, s, c, centre[1] - s * size / 2 - c * size / 2)
    crop = Image.fromarray(image).transform((size, size), Image.Transform.AFFINE, coeffs,
                                            resample=Image.Resampling.BILINEAR, fillcolor=tuple(int(v) for v in image[h // 2, w // 2]))
    blur = rng.uniform(0.0, 2.5)
    if blur > 0.3:
        crop = crop.filter(ImageFilter.GaussianBlur(blur))
    rgb = np.asarray(crop, dtype=np.float32) / 255.0
    rgb = rgb[:, :, rng.permutation(3)]
    grey = rgb.mean(2, keepdims=True)
    saturation = rng.uniform(0.0, 1.3)
    return np.clip(grey + saturation * (rgb - grey), 0, 1) * np.float32(rng.uniform(0.5, 1.2))


def _sample(image: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Bilinear samples of `image` (H, W, C) at pixel positions (xs, ys), zero outside."""
    from scipy.ndimage import map_coordinates

    coords = np.stack([ys, xs]).astype(np.float32)
    return np.stack([map_coordinates(image[:, :, c], coords, order=1, mode="constant", cval=0.0)
                     for c in range(image.shape[2])], -1)


def render_image(identity: Identity, rng: np.random.Generator, settings: ToySettings) -> tuple[np.ndarray, np.ndarray]:
    """One photograph of `identity`: uint8 (250, 250, 3) RGB before JPEG coding, and its 5 true landmarks
    in MTCNN's (Matlab's 1-based) convention, as the detector and `align.align_face` use them."""
    pose = _pose_homography(rng, settings)
    # Expression: small per-image displacements of the mouth corners, mouth and brows.
    ed = EYE_DISTANCE
    lm = identity.landmarks
    e = settings.expression_strength * ed
    smile, open_, brow = rng.normal(0, e, 3)
    anchors = np.array([lm[3], lm[4], lm[3:5].mean(0) + [0, 0.15 * ed], lm[0] - [0, 0.42 * ed], lm[1] - [0, 0.42 * ed]])
    offsets = np.array([[-smile, -abs(smile)], [smile, -abs(smile)], [0, abs(open_)], [0, -brow], [0, -brow]])

    xs, ys = _coords()
    qx, qy = _apply_homography(np.linalg.inv(pose).astype(np.float32), xs, ys)
    dx, dy = _displacement(qx, qy, anchors.astype(np.float32), offsets.astype(np.float32))
    face = _sample(identity.rgba, qx - dx, qy - dy)
    landmarks = _homography_points(pose, _displace_points(lm, anchors, offsets))
    truth = _homography_points(pose, _displace_points(identity.truth, anchors, offsets)) + 1.0

    # Light falls on the face from one side: a gain that ramps across it.
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction) + 1e-9
    centre = landmarks.mean(0)
    ramp = ((xs - centre[0]) * direction[0] + (ys - centre[1]) * direction[1]) / (1.2 * ed)
    gain = np.clip(1 + rng.uniform(*settings.light_strength) * np.tanh(ramp), 0.15, 2.0)
    alpha = face[:, :, 3:]
    image = alpha * face[:, :, :3] * gain[:, :, None] + (1 - alpha) * _background(rng)

    # Camera and scene: contrast, brightness, gamma, colour cast, sometimes greyscale.
    mean = image.mean()
    image = (image - mean) * rng.uniform(*settings.contrast_range) + mean + rng.normal(0, settings.brightness_std)
    image = np.clip(image, 0, 1) ** rng.uniform(*settings.gamma_range)
    image = image * np.exp(rng.normal(0, settings.color_cast_std, 3)).astype(np.float32)[None, None, :]
    if rng.random() < settings.greyscale_probability:
        image = np.repeat(image.mean(2, keepdims=True), 3, axis=2)
    image = np.clip(image, 0, 1) * 255.0

    sigma = rng.uniform(*settings.blur_sigma)
    if sigma > 0.2:
        from scipy.ndimage import gaussian_filter
        image = gaussian_filter(image, (sigma, sigma, 0))
    image = image + rng.uniform(*settings.noise_sigma) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), truth


# --------------------------------------------------------------------------------------------------- pairs

def make_pairs(rng: np.random.Generator, image_counts: dict[str, int], folds: int, per_fold: int
               ) -> list[tuple[list[tuple[str, int, int]], list[tuple[str, int, str, int]]]]:
    """LFW View 2-style pairs: the people are split into `folds` disjoint groups (as LFW's folds are), and
    each fold gets `per_fold` distinct same-person pairs (name, i, j) and `per_fold` distinct different-person
    pairs (name1, i, name2, j), 1-based image numbers, each block sorted by name like LFW's file."""
    names = sorted(image_counts)
    if len(names) < 2 * folds:
        raise ValueError(f"{len(names)} test identities cannot fill {folds} folds: need at least 2 per fold")
    order = [names[k] for k in rng.permutation(len(names))]
    groups = [sorted(order[k::folds]) for k in range(folds)]
    result = []
    for k, group in enumerate(groups):
        same_pool = [(n, i, j) for n in group for i in range(1, image_counts[n] + 1)
                     for j in range(i + 1, image_counts[n] + 1)]
        if len(same_pool) < per_fold:
            raise ValueError(f"fold {k + 1}: its {len(group)} people have only {len(same_pool)} distinct same-person "
                             f"pairs, fewer than the {per_fold} asked for; add images per identity or identities")
        same = [same_pool[i] for i in rng.choice(len(same_pool), per_fold, replace=False)]
        different: set[tuple[str, int, str, int]] = set()
        capacity = sum(image_counts[a] * image_counts[b] for x, a in enumerate(group) for b in group[x + 1:])
        if capacity < per_fold:
            raise ValueError(f"fold {k + 1}: only {capacity} different-person pairs exist, {per_fold} asked for")
        while len(different) < per_fold:
            a, b = sorted(rng.choice(len(group), 2, replace=False))
            left, right = group[a], group[b]
            different.add((left, int(rng.integers(1, image_counts[left] + 1)),
                           right, int(rng.integers(1, image_counts[right] + 1))))
        result.append((sorted(same), sorted(different)))
    return result


# ------------------------------------------------------------------------------------------------ the set

MANIFEST = "toy_manifest.json"
FORMAT_VERSION = 1  # bump when the generator's output changes for the same seed and settings


@dataclass
class ToySummary:
    output: Path
    train_images: int
    lfw_images: int
    pairs: int
    seconds: float
    landmarks: dict[str, np.ndarray]  # relative path (train/... or lfw/...) -> true (5, 2) landmarks


def _prepare_output(output: Path, manifest: dict) -> None:
    """Refuse to write into a folder that holds something other than a toy set; clear an older toy set (and
    the aligned copy under `processed/`, which would be stale) before writing a new one."""
    import json
    import shutil

    existing = [output / d for d in ("train", "lfw", "pairs.txt") if (output / d).exists()]
    marker = output / MANIFEST
    if existing and not marker.is_file():
        raise FileExistsError(f"{output} already holds {', '.join(p.name for p in existing)} but no {MANIFEST}: "
                              f"not a toy set made by this generator, so it is left alone; choose another --output")
    if marker.is_file():
        old = json.loads(marker.read_text())
        same_set = old == {**json.loads(json.dumps(manifest)), "complete": True}
        targets = existing + ([] if same_set else [output / "processed"])
        for path in targets:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    # Written first, so that a run cut short can be rerun into the same folder; marked complete at the end.
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(marker, json.dumps({**manifest, "complete": False}, indent=2).encode())


def _write_identity(item) -> dict[str, np.ndarray]:
    """Render and write every image of one person; returns their true landmarks by relative path."""
    output, seed, settings, (role, k, name, count, face) = item
    role_id = 0 if role == "train" else 1
    identity = make_identity(name, np.random.default_rng([seed, role_id, k]), settings, int(face))
    folder = output / role / name
    folder.mkdir(parents=True, exist_ok=True)
    landmarks = {}
    for j in range(count):
        rng = np.random.default_rng([seed, role_id, k, j + 1])
        image, points = render_image(identity, rng, settings)
        quality = int(rng.integers(settings.jpeg_quality[0], settings.jpeg_quality[1] + 1))
        file = f"{j + 1:03d}.jpg" if role == "train" else f"{name}_{j + 1:04d}.jpg"
        write_image(folder / file, image, quality)
        landmarks[f"{role}/{name}/{file}"] = points
    return landmarks


def generate(output: str | Path, seed: int = 0, settings: ToySettings = ToySettings(), progress: bool = True,
             workers: int = 1) -> ToySummary:
    """Write the toy set under `output`: train/<0000001>/<001>.jpg, lfw/<name>/<name>_0001.jpg, pairs.txt,
    all determined by `seed` and `settings` (byte-identical on a rerun)."""
    import dataclasses
    import json
    import time

    from tqdm import tqdm

    _check(settings)
    start = time.perf_counter()
    output = Path(output)
    manifest = {"format_version": FORMAT_VERSION, "seed": int(seed), "settings": dataclasses.asdict(settings)}
    _prepare_output(output, manifest)

    n_train, n_lfw = settings.train_identities, settings.lfw_identities
    train_names = [f"{k + 1:07d}" for k in range(n_train)]
    width = max(3, len(str(n_lfw)))
    lfw_names = [f"Toy_Person_{k + 1:0{width}d}" for k in range(n_lfw)]
    lfw_counts = {name: int(np.random.default_rng([seed, 3, k]).integers(settings.lfw_images_min,
                                                                          settings.lfw_images_max + 1))
                  for k, name in enumerate(lfw_names)}
    folds = make_pairs(np.random.default_rng([seed, 2]), lfw_counts, settings.folds, settings.pairs_per_fold)

    # The real faces whose structure is blended in are split between the two sets, so that no test person
    # shares theirs with a training person.
    faces = np.random.default_rng([seed, 4]).permutation(len(_lfw_faces()))
    n_train_faces = min(len(faces) - 1, max(1, int(round(len(faces) * n_train / (n_train + n_lfw)))))
    jobs = [("train", k, name, settings.images_per_identity, faces[k % n_train_faces])
            for k, name in enumerate(train_names)]
    jobs += [("lfw", k, name, lfw_counts[name], faces[n_train_faces + k % (len(faces) - n_train_faces)])
             for k, name in enumerate(lfw_names)]

    landmarks: dict[str, np.ndarray] = {}
    total = sum(job[3] for job in jobs)
    work = [(output, seed, settings, job) for job in jobs]
    with tqdm(total=total, desc="toy faces", unit="img", disable=not progress) as bar:
        if workers > 1:
            import multiprocessing

            # Each person has its own random streams, so the files do not depend on the number of workers.
            context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
            with context.Pool(workers) as pool:
                for result in pool.imap_unordered(_write_identity, work):
                    landmarks.update(result)
                    bar.update(len(result))
        else:
            for item in work:
                result = _write_identity(item)
                landmarks.update(result)
                bar.update(len(result))
    write_pairs(output / "pairs.txt", folds)
    atomic_write_bytes(output / MANIFEST, json.dumps({**manifest, "complete": True}, indent=2).encode())
    landmarks = dict(sorted(landmarks.items()))
    return ToySummary(output, n_train * settings.images_per_identity, sum(lfw_counts.values()),
                      2 * settings.folds * settings.pairs_per_fold, time.perf_counter() - start, landmarks)


def _check(settings: ToySettings) -> None:
    if settings.train_identities < 2:
        raise ValueError(f"train_identities must be at least 2, got {settings.train_identities}")
    if settings.images_per_identity < 1:
        raise ValueError(f"images_per_identity must be at least 1, got {settings.images_per_identity}")
    if not 2 <= settings.lfw_images_min <= settings.lfw_images_max:
        raise ValueError(f"need 2 <= lfw_images_min <= lfw_images_max, got {settings.lfw_images_min}, "
                         f"{settings.lfw_images_max}")
    if settings.folds < 1 or settings.pairs_per_fold < 1:
        raise ValueError(f"folds and pairs_per_fold must be positive, got {settings.folds}, {settings.pairs_per_fold}")


# ------------------------------------------------------------------------------------------ detector check

@dataclass
class DetectionCheck:
    total: int
    found: int
    median_error: float   # pixels: mean distance of the 5 detected landmarks to the true ones, median over images
    eye_distance: float   # mean true eye distance of the sample, pixels

    @property
    def rate(self) -> float:
        return self.found / max(1, self.total)


def detection_check(summary: ToySummary, n_images: int = 60, seed: int = 0, device: str = "cpu",
                    progress: bool = False, detector=None) -> DetectionCheck:
    """Run the project's MTCNN (official SphereFace settings; or `detector`, an `align.FaceDetector`) on a
    random sample of the generated images, half training and half test: how many faces it finds, and how
    close its landmarks are to the true ones."""
    from tqdm import tqdm

    from ..align.face import FaceDetector

    rng = np.random.default_rng([seed, 5])
    chosen = []
    for role in ("train", "lfw"):
        paths = [p for p in summary.landmarks if p.startswith(role + "/")]
        take = min(len(paths), (n_images + 1) // 2 if role == "train" else n_images - len(chosen))
        chosen += [paths[i] for i in sorted(rng.choice(len(paths), take, replace=False))]
    detector = detector or FaceDetector(device)
    found, errors, eyes = 0, [], []
    batch = detector.batch_size
    for start in tqdm(range(0, len(chosen), batch), desc="MTCNN check", unit="batch", disable=not progress):
        paths = chosen[start:start + batch]
        images = [decode_rgb(summary.output / rel) for rel in paths]
        for rel, points in zip(paths, detector.detect_batch(images)):
            truth = summary.landmarks[rel]
            eyes.append(float(np.linalg.norm(truth[1] - truth[0])))
            if points is not None:
                found += 1
                errors.append(float(np.linalg.norm(points - truth, axis=1).mean()))
    return DetectionCheck(len(chosen), found, float(np.median(errors)) if errors else float("nan"),
                          float(np.mean(eyes)) if eyes else float("nan"))
