"""The synthetic video benchmark (DESIGN C.4): short videos where temporal information is necessary.

Every video shows 1..M objects moving over a smooth background. An object's *class evidence* is a
texture of a class-specific pattern drawn in a class-specific ink colour; everything else about it
(silhouette, fill colour, outline, size, speed) is drawn independently of its class. On *hidden*
frames, contiguous runs of each track's frames, the evidence is removed from the pixels (the object
is drawn in its plain, class-neutral fill) and the frame shows one of these degradations:

- ``motion_blur``: the object smeared along its motion;
- ``occlusion``: a plain grey bar across the object's middle;
- ``defocus``: the object Gaussian-blurred;
- ``low_light``: the object's surroundings darkened, with extra noise;
- ``noise``: heavy noise over the object;
- ``neutral``: nothing else; the plain appearance alone.

A single hidden frame is therefore ambiguous between all classes while the object stays
localisable; the other frames of the same track show its class. The first annotated frame of a
track is always shown, so causal (sequential) models have seen the evidence before any hidden run.

Determinism: video ``i`` of a split is drawn from ``SeedSequence([seed, crc32(split)])`` child ``i``,
so a video does not depend on the number of videos, the worker count or the other videos, and
train/val splits made with the same seed differ. Frames are JPEG (Pillow, fixed quality); the
annotation JSON has sorted keys and is written last, atomically.
"""

import dataclasses
import json
import math
import os
import shutil
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import av
import numpy as np
from PIL import Image
from tqdm import tqdm

from sltnet import __version__
from sltnet.errors import SltnetError

# Class evidence: pattern (its name is the category name) and ink colour (RGB in [0, 1]). Every
# pattern maps onto itself under a horizontal flip, so flip augmentation keeps labels right.
CLASS_PATTERNS = ("hstripes", "vstripes", "checker", "dots", "rings", "grid", "crosshatch", "zigzag")
CLASS_INKS = np.array(
    [
        [0.86, 0.12, 0.10],  # red
        [0.10, 0.70, 0.20],  # green
        [0.15, 0.30, 0.92],  # blue
        [0.96, 0.86, 0.10],  # yellow
        [0.82, 0.20, 0.82],  # magenta
        [0.10, 0.80, 0.86],  # cyan
        [0.96, 0.50, 0.05],  # orange
        [0.98, 0.98, 0.98],  # white
    ],
    dtype=np.float32,
)
MAX_CLASSES = len(CLASS_PATTERNS)

SILHOUETTES = ("ellipse", "rounded_box", "diamond", "triangle")
HIDE_TYPES = ("motion_blur", "occlusion", "defocus", "low_light", "noise", "neutral")

MIN_IMAGE_SIZE = 32
JPEG_QUALITY = 90
# An object is annotated on a frame only when enough of it is inside the image.
MIN_VISIBLE_FRACTION = 0.25
MIN_VISIBLE_SIDE = 4.0
# Tries to draw a trajectory that keeps the object annotated on at least half of the frames.
TRAJECTORY_TRIES = 20
# Motion: speed = max_speed * u ** SPEED_EXPONENT (u uniform), a small random acceleration and a
# slow scale change. With the default knobs about a third of the boxes fall in each bucket of the
# motion-speed breakdown (DESIGN C.3: slow, medium, fast); faster scale change or acceleration
# would empty the slow bucket.
SPEED_EXPONENT = 3.0
ACCELERATION_STD = 0.005  # per frame, as a fraction of max_speed
MAX_SCALE_RATE = 0.008  # |d log(side) / d frame|
BACKGROUND_WAVES = 5


@dataclass(frozen=True)
class SynthOptions:
    """Difficulty knobs. Sizes and speeds are fractions of the image side.

    Attributes:
        num_classes: K, the number of classes (1..8).
        max_objects: each video has 1..max_objects tracks, uniformly.
        hide_prob: fraction of each track's annotated frames whose class evidence is hidden.
        max_hidden_run: longest run of consecutive hidden frames (longer only when the track is
            too short to fit more runs).
        hide_types: the degradations hidden runs draw from, uniformly.
        min_object_size, max_object_size: range of an object's mean side sqrt(w * h) when first
            drawn (it then grows or shrinks slowly).
        max_speed: fastest motion, in image sides per frame; speeds are drawn with a bias towards
            slow motion so the slow, medium and fast buckets of DESIGN C.3 are all populated.
        noise: standard deviation of the sensor noise added to every pixel (intensities in [0, 1]).
    """

    num_classes: int = 4
    max_objects: int = 3
    hide_prob: float = 0.3
    max_hidden_run: int = 6
    hide_types: Tuple[str, ...] = HIDE_TYPES
    min_object_size: float = 0.15
    max_object_size: float = 0.4
    max_speed: float = 0.03
    noise: float = 0.02

    def check(self) -> None:
        """Raise :class:`SltnetError` naming the command-line option of the first bad knob."""
        if not 1 <= self.num_classes <= MAX_CLASSES:
            raise SltnetError(f"--classes: must be between 1 and {MAX_CLASSES}, got {self.num_classes}")
        if self.max_objects < 1:
            raise SltnetError(f"--max-objects: must be at least 1, got {self.max_objects}")
        if not 0.0 <= self.hide_prob < 1.0:
            raise SltnetError(f"--hide-prob: must be in [0, 1), got {self.hide_prob:g}")
        if self.max_hidden_run < 1:
            raise SltnetError(f"--max-hidden-run: must be at least 1, got {self.max_hidden_run}")
        unknown = [name for name in self.hide_types if name not in HIDE_TYPES]
        if unknown or not self.hide_types:
            got = ",".join(unknown) if unknown else "nothing"
            raise SltnetError(f"--hide-types: expected a comma-separated subset of {','.join(HIDE_TYPES)}, got {got}")
        if not 0.0 < self.min_object_size <= self.max_object_size <= 1.0:
            raise SltnetError(
                "--min-object-size/--max-object-size: need 0 < min <= max <= 1, got "
                f"{self.min_object_size:g} and {self.max_object_size:g}"
            )
        if not 0.0 <= self.max_speed <= 1.0:
            raise SltnetError(f"--max-speed: must be in [0, 1], got {self.max_speed:g}")
        if not 0.0 <= self.noise <= 1.0:
            raise SltnetError(f"--noise: must be in [0, 1], got {self.noise:g}")


@dataclass(frozen=True)
class Hide:
    """How one hidden run degrades a track.

    Attributes:
        kind: one of :data:`HIDE_TYPES`.
        strength: motion_blur: smear length / object side; defocus: Gaussian sigma / object side;
            occlusion: bar thickness / object extent across the bar; low_light: remaining light
            factor; noise: noise standard deviation; neutral: unused.
        angle: motion_blur: smear direction (radians) when the object barely moves;
            occlusion: 0 for a horizontal bar, pi/2 for a vertical one.
        grey: occlusion: the bar's grey level.
    """

    kind: str
    strength: float = 0.0
    angle: float = 0.0
    grey: float = 0.0


@dataclass(frozen=True)
class Track:
    """One object over the whole video (it may be outside the image on some frames).

    Attributes:
        track_id: id within the video (``id_track`` in the annotations).
        class_index: contiguous class 0..K-1.
        silhouette: index into :data:`SILHOUETTES`; every silhouette touches all four sides of the
            object's box, so the box is exact.
        fill: [3] class-neutral fill colour.
        ink: [3] class evidence colour.
        periods: pattern periods across the object's mean side (scale-invariant evidence).
        centres: [F, 2] (x, y) centre per frame, pixels.
        sizes: [F, 2] (w, h) per frame, pixels.
        velocities: [F, 2] pixels per frame.
        hides: per frame, the degradation of a hidden frame or None for a shown one.
    """

    track_id: int
    class_index: int
    silhouette: int
    fill: np.ndarray
    ink: np.ndarray
    periods: float
    centres: np.ndarray
    sizes: np.ndarray
    velocities: np.ndarray
    hides: Tuple[Optional[Hide], ...]


@dataclass(frozen=True)
class VideoSpec:
    """Everything needed to render a video's frames and write its annotations.

    Attributes:
        name: the ``video`` field and frame folder name.
        image_size: S; frames are S x S.
        num_frames: F.
        background: [S, S, 3] float32 in [0, 1].
        tracks: drawn back to front.
        noise_seed: frame t's random noise comes from ``default_rng([noise_seed, t])``.
        noise: sensor noise standard deviation.
    """

    name: str
    image_size: int
    num_frames: int
    background: np.ndarray
    tracks: Tuple[Track, ...]
    noise_seed: int
    noise: float


# --------------------------------------------------------------------------------------------
# Sampling


def split_seed(seed: int, split: str) -> np.random.SeedSequence:
    """The root seed of a split; its child ``i`` (``spawn``) draws video ``i``."""
    return np.random.SeedSequence([seed, zlib.crc32(split.encode("utf-8"))])


def video_name(index: int) -> str:
    return f"video_{index:05d}"


def visible_boxes(centres: np.ndarray, sizes: np.ndarray, image_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Clip a track's boxes to the image and decide on which frames it is annotated.

    Args:
        centres: [F, 2] (x, y).
        sizes: [F, 2] (w, h).
        image_size: S.

    Returns:
        boxes: [F, 4] (x1, y1, x2, y2) clipped to [0, S].
        annotated: [F] bool, True where at least :data:`MIN_VISIBLE_FRACTION` of the box is inside
        the image and both clipped sides are at least :data:`MIN_VISIBLE_SIDE` pixels.
    """
    full = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    boxes = np.clip(full, 0.0, float(image_size))
    clipped_sides = boxes[:, 2:] - boxes[:, :2]
    fraction = np.prod(clipped_sides, axis=1) / np.prod(sizes, axis=1)
    annotated = (fraction >= MIN_VISIBLE_FRACTION) & np.all(clipped_sides >= MIN_VISIBLE_SIDE, axis=1)
    return boxes, annotated


def _sample_background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """A smooth random texture: a base colour plus a few low-frequency colour waves. [S, S, 3]."""
    coords = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size
    background = np.empty((image_size, image_size, 3), np.float32)
    background[:] = rng.uniform(0.25, 0.75, 3).astype(np.float32)
    for _ in range(BACKGROUND_WAVES):
        freq_x, freq_y = rng.uniform(-3.0, 3.0, 2)  # cycles per image
        phase = rng.uniform(0.0, 2 * np.pi)
        amplitude = rng.uniform(0.02, 0.08, 3).astype(np.float32)
        wave = np.sin(2 * np.pi * (freq_x * coords[None, :] + freq_y * coords[:, None]) + phase)
        background += wave[:, :, None] * amplitude
    return np.clip(background, 0.0, 1.0)


def _sample_trajectory(
    rng: np.random.Generator, num_frames: int, image_size: int, options: SynthOptions
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth motion with slowly changing scale: (centres [F, 2], sizes [F, 2], velocities [F, 2])."""
    side = image_size * rng.uniform(options.min_object_size, options.max_object_size)
    aspect = math.exp(rng.uniform(math.log(0.6), math.log(1.6)))  # w / h
    scale_rate = rng.uniform(-MAX_SCALE_RATE, MAX_SCALE_RATE)
    speed = image_size * options.max_speed * rng.uniform() ** SPEED_EXPONENT
    direction = rng.uniform(0.0, 2 * np.pi)
    velocity = speed * np.array([math.cos(direction), math.sin(direction)])
    acceleration = rng.normal(0.0, ACCELERATION_STD * image_size * options.max_speed, 2)
    # The object is inside the image at a random reference time and moves from there.
    ref_time = rng.uniform(0.0, num_frames - 1)
    ref_centre = rng.uniform(0.15 * image_size, 0.85 * image_size, 2)

    dt = (np.arange(num_frames) - ref_time)[:, None]
    centres = ref_centre + velocity * dt + 0.5 * acceleration * dt**2
    velocities = velocity + acceleration * dt
    sides = np.clip(side * np.exp(scale_rate * dt), MIN_VISIBLE_SIDE, float(image_size))
    sizes = sides * np.array([math.sqrt(aspect), 1.0 / math.sqrt(aspect)])
    return centres, sizes, velocities


def _sample_hide(rng: np.random.Generator, options: SynthOptions) -> Hide:
    kind = options.hide_types[rng.integers(len(options.hide_types))]
    if kind == "motion_blur":
        return Hide(kind, strength=rng.uniform(0.3, 0.6), angle=rng.uniform(0.0, np.pi))
    if kind == "defocus":
        return Hide(kind, strength=rng.uniform(0.05, 0.1))
    if kind == "occlusion":
        return Hide(kind, strength=rng.uniform(0.4, 0.6), angle=float(rng.integers(2)) * np.pi / 2,
                    grey=rng.uniform(0.15, 0.85))
    if kind == "low_light":
        return Hide(kind, strength=rng.uniform(0.2, 0.4))
    if kind == "noise":
        return Hide(kind, strength=rng.uniform(0.2, 0.35))
    return Hide(kind)


def sample_hidden_runs(
    rng: np.random.Generator, annotated_frames: np.ndarray, num_frames: int, options: SynthOptions
) -> Tuple[Optional[Hide], ...]:
    """Choose a track's hidden frames: contiguous runs among its annotated frames.

    About ``hide_prob`` of the L annotated frames are hidden, at least one and at most L - 1 when
    L >= 2 and ``hide_prob > 0``. Runs are at most ``max_hidden_run`` long (unless the track is
    too short for enough runs), at least one shown frame precedes every run, so the first
    annotated frame is always shown. Each run has its own degradation.

    Returns:
        per frame of the video, the run's :class:`Hide` or None.
    """
    hides: List[Optional[Hide]] = [None] * num_frames
    length = len(annotated_frames)
    if options.hide_prob == 0.0 or length < 2:
        return tuple(hides)
    hidden = min(max(round(options.hide_prob * length), 1), length - 1)
    shown = length - hidden
    runs = max(1, min(math.ceil(hidden / options.max_hidden_run), shown))
    # Split the hidden frames into `runs` positive parts of at most `longest` frames, and the shown
    # frames into runs + 1 gaps, of which the first `runs` (each before a run) are positive.
    longest = max(options.max_hidden_run, math.ceil(hidden / runs))
    run_lengths = np.ones(runs, dtype=np.int64)
    for _ in range(hidden - runs):
        open_runs = np.flatnonzero(run_lengths < longest)
        run_lengths[open_runs[rng.integers(len(open_runs))]] += 1
    gaps = rng.multinomial(shown - runs, np.full(runs + 1, 1.0 / (runs + 1)))
    gaps[:runs] += 1
    position = 0
    for gap, run_length in zip(gaps[:runs], run_lengths):
        position += gap
        hide = _sample_hide(rng, options)
        for frame in annotated_frames[position : position + run_length]:
            hides[frame] = hide
        position += run_length
    return tuple(hides)


def _sample_track(
    rng: np.random.Generator, track_id: int, num_frames: int, image_size: int, options: SynthOptions
) -> Track:
    class_index = int(rng.integers(options.num_classes))
    silhouette = int(rng.integers(len(SILHOUETTES)))
    # A muted fill, so the class inks stand out against it.
    fill = np.clip(rng.uniform(0.3, 0.7) + rng.normal(0.0, 0.05, 3), 0.0, 1.0).astype(np.float32)
    ink = np.clip(CLASS_INKS[class_index] + rng.normal(0.0, 0.03, 3), 0.0, 1.0).astype(np.float32)
    periods = rng.uniform(3.5, 5.5)
    for _ in range(TRAJECTORY_TRIES):
        centres, sizes, velocities = _sample_trajectory(rng, num_frames, image_size, options)
        _, annotated = visible_boxes(centres, sizes, image_size)
        if 2 * annotated.sum() >= num_frames:
            break
    hides = sample_hidden_runs(rng, np.flatnonzero(annotated), num_frames, options)
    return Track(track_id, class_index, silhouette, fill, ink, periods, centres, sizes, velocities, hides)


def sample_video(
    name: str, seed: np.random.SeedSequence, num_frames: int, image_size: int, options: SynthOptions
) -> VideoSpec:
    """Draw one video: background, 1..max_objects tracks and the noise seed."""
    rng = np.random.default_rng(seed)
    background = _sample_background(rng, image_size)
    num_tracks = int(rng.integers(1, options.max_objects + 1))
    tracks = tuple(_sample_track(rng, i, num_frames, image_size, options) for i in range(num_tracks))
    noise_seed = int(rng.integers(2**63))
    return VideoSpec(name, image_size, num_frames, background, tracks, noise_seed, options.noise)


# --------------------------------------------------------------------------------------------
# Rendering (float32 RGB in [0, 1]; pixel (i, j) covers [j, j + 1] x [i, i + 1])

Window = Tuple[int, int, int, int]  # (x0, y0, x1, y1) integer pixel bounds, x1 and y1 exclusive
Layer = Tuple[Window, np.ndarray, np.ndarray]  # window, premultiplied colour [h, w, 3], coverage [h, w]


def _silhouette_level(silhouette: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Implicit shape function on box-normalised coordinates (u, v in [-1, 1] on the box): <= 1 inside."""
    name = SILHOUETTES[silhouette]
    if name == "ellipse":
        return np.sqrt(u * u + v * v)
    if name == "rounded_box":
        return np.sqrt(np.sqrt(u**4 + v**4))
    if name == "diamond":
        return np.abs(u) + np.abs(v)
    return np.maximum(v, 2 * np.abs(u) - v)  # triangle, apex up


def _distance_to_integer(x: np.ndarray) -> np.ndarray:
    return np.abs(x - np.round(x))


def _pattern_depth(class_index: int, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Signed depth inside the class pattern's ink, in pattern periods (> 0 on ink).

    dx, dy: coordinates relative to the object's centre in periods, broadcastable.
    """
    name = CLASS_PATTERNS[class_index]
    if name == "hstripes":
        return 0.25 - _distance_to_integer(dy)
    if name == "vstripes":
        return 0.25 - _distance_to_integer(dx)
    if name == "checker":
        parity = (np.floor(dx) + np.floor(dy)) % 2 == 0
        edge = np.minimum(0.5 - _distance_to_integer(dx - 0.5), 0.5 - _distance_to_integer(dy - 0.5))
        return np.where(parity, edge, -edge)
    if name == "dots":
        return 0.3 - np.hypot(_distance_to_integer(dx), _distance_to_integer(dy))
    if name == "rings":
        return 0.25 - _distance_to_integer(np.hypot(dx, dy))
    if name == "grid":
        return 0.12 - np.minimum(_distance_to_integer(dx), _distance_to_integer(dy))
    if name == "crosshatch":
        diagonal, anti_diagonal = (dx + dy) / math.sqrt(2), (dx - dy) / math.sqrt(2)
        return 0.12 - np.minimum(_distance_to_integer(diagonal), _distance_to_integer(anti_diagonal))
    # zigzag: horizontal stripes displaced by a symmetric triangle wave along x
    return 0.25 - _distance_to_integer(dy + _distance_to_integer(dx))


def _object_layer(
    track: Track, frame: int, window: Window, shift: Tuple[float, float], textured: bool
) -> Tuple[np.ndarray, np.ndarray]:
    """Render one object into a window of the image.

    Args:
        window: (x0, y0, x1, y1) integer pixel bounds.
        shift: (x, y) offset of the object from its position on ``frame`` (motion blur samples).
        textured: draw the class evidence; False draws the class-neutral appearance.

    Returns:
        premultiplied colour [h, w, 3] and coverage [h, w] (anti-aliased).
    """
    x0, y0, x1, y1 = window
    cx, cy = (track.centres[frame] + np.asarray(shift)).tolist()
    w, h = track.sizes[frame].tolist()
    xs = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    ys = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    v = ys / (h / 2)
    level = _silhouette_level(track.silhouette, xs / (w / 2), v)
    depth = (1.0 - level) * (min(w, h) / 2)  # approximate distance inside the border, pixels
    alpha = np.clip(depth + 0.5, 0.0, 1.0)

    shade = 1.0 - 0.15 * np.clip(v, -1.0, 1.0)  # lit from above
    colour = track.fill * shade[:, :, None]
    if textured:
        period = math.sqrt(w * h) / track.periods
        ink_depth = _pattern_depth(track.class_index, xs / period, ys / period)
        ink = np.clip(ink_depth * period + 0.5, 0.0, 1.0)[:, :, None]
        colour = colour * (1.0 - ink) + track.ink * shade[:, :, None] * ink
    outline_width = max(1.0, 0.04 * min(w, h))
    outline = np.clip(outline_width - depth + 0.5, 0.0, 1.0)[:, :, None]
    colour = colour * (1.0 - 0.6 * outline)
    return (colour * alpha[:, :, None]).astype(np.float32), alpha.astype(np.float32)


def _window(track: Track, frame: int, margin: float, image_size: int) -> Optional[Window]:
    """Integer pixel bounds of the object's box grown by ``margin``, clipped; None when empty."""
    (cx, cy), (w, h) = track.centres[frame], track.sizes[frame]
    x0 = max(int(math.floor(cx - w / 2 - margin)), 0)
    y0 = max(int(math.floor(cy - h / 2 - margin)), 0)
    x1 = min(int(math.ceil(cx + w / 2 + margin)), image_size)
    y1 = min(int(math.ceil(cy + h / 2 + margin)), image_size)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def _gaussian_matrix(size: int, sigma: float) -> np.ndarray:
    """[size, size] matrix that blurs a 1-D signal with a Gaussian (zero outside)."""
    offsets = np.subtract.outer(np.arange(size), np.arange(size)).astype(np.float32)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / np.exp(-0.5 * (np.arange(1 - size, size) / sigma) ** 2).sum()


def _blurred_layer(track: Track, frame: int, hide: Hide, image_size: int) -> Optional[Layer]:
    """The class-neutral object layer with motion blur or defocus; (window, colour, alpha) or None."""
    side = float(np.sqrt(np.prod(track.sizes[frame])))
    if hide.kind == "motion_blur":
        length = hide.strength * side
        velocity = track.velocities[frame]
        speed = float(np.hypot(*velocity))
        direction = velocity / speed if speed > 0.5 else np.array([math.cos(hide.angle), math.sin(hide.angle)])
        window = _window(track, frame, length / 2 + 2, image_size)
        if window is None:
            return None
        samples = int(np.clip(math.ceil(length) + 1, 3, 32))  # about one sample per pixel of smear
        colour, alpha = 0.0, 0.0
        for step in np.linspace(-length / 2, length / 2, samples):
            sample_colour, sample_alpha = _object_layer(track, frame, window, tuple(step * direction), False)
            colour, alpha = colour + sample_colour, alpha + sample_alpha
        return window, colour / samples, alpha / samples
    sigma = hide.strength * side  # defocus
    window = _window(track, frame, 3 * sigma + 2, image_size)
    if window is None:
        return None
    colour, alpha = _object_layer(track, frame, window, (0.0, 0.0), False)
    blur_y = _gaussian_matrix(colour.shape[0], sigma)
    blur_x = _gaussian_matrix(colour.shape[1], sigma)
    colour = np.einsum("ij,jkc,lk->ilc", blur_y, colour, blur_x, optimize=True)
    alpha = blur_y @ alpha @ blur_x.T
    return window, colour, np.clip(alpha, 0.0, 1.0)


def _composite(image: np.ndarray, window: Window, colour: np.ndarray, alpha: np.ndarray) -> None:
    """Draw a premultiplied layer over ``image`` [S, S, 3] inside ``window``."""
    x0, y0, x1, y1 = window
    region = image[y0:y1, x0:x1]
    region *= 1.0 - alpha[:, :, None]
    region += colour


def _draw_occluder(image: np.ndarray, track: Track, frame: int, hide: Hide) -> None:
    """A plain grey bar across the middle of the object, a bit longer than the object."""
    (cx, cy), (w, h) = track.centres[frame], track.sizes[frame]
    if hide.angle == 0.0:  # horizontal
        half_x, half_y = 0.65 * w, hide.strength * h / 2
    else:
        half_x, half_y = hide.strength * w / 2, 0.65 * h
    size = image.shape[0]
    x0, x1 = max(int(cx - half_x), 0), min(int(math.ceil(cx + half_x)) + 1, size)
    y0, y1 = max(int(cy - half_y), 0), min(int(math.ceil(cy + half_y)) + 1, size)
    if x1 <= x0 or y1 <= y0:
        return
    # Exact pixel coverage of the bar, separable in x and y.
    xs, ys = np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32)
    cover_x = np.clip(np.minimum(xs + 1, cx + half_x) - np.maximum(xs, cx - half_x), 0.0, 1.0)
    cover_y = np.clip(np.minimum(ys + 1, cy + half_y) - np.maximum(ys, cy - half_y), 0.0, 1.0)
    alpha = cover_y[:, None] * cover_x[None, :]
    _composite(image, (x0, y0, x1, y1), np.float32(hide.grey) * alpha[:, :, None], alpha)


def _surroundings(track: Track, frame: int, image_size: int) -> Optional[Tuple[Window, np.ndarray]]:
    """Window around the object (1.5x its box) and a soft elliptical weight [h, w] that covers it."""
    w, h = track.sizes[frame]
    window = _window(track, frame, 0.25 * max(w, h), image_size)
    if window is None:
        return None
    x0, y0, x1, y1 = window
    cx, cy = track.centres[frame]
    xs = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :] / (0.75 * w)
    ys = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None] / (0.75 * h)
    weight = np.clip(4.0 * (1.0 - np.sqrt(xs * xs + ys * ys)), 0.0, 1.0)
    return window, weight[:, :, None]


def _render_object(image: np.ndarray, track: Track, frame: int, rng: np.random.Generator) -> None:
    """Draw a track's object on one frame, with its hidden-run degradation if any."""
    size = image.shape[0]
    hide = track.hides[frame]
    if hide is not None and hide.kind in ("motion_blur", "defocus"):
        layer = _blurred_layer(track, frame, hide, size)
    else:
        window = _window(track, frame, 2.0, size)
        if window is None:
            return
        layer = (window, *_object_layer(track, frame, window, (0.0, 0.0), textured=hide is None))
    if layer is None:
        return
    _composite(image, *layer)
    if hide is None or hide.kind in ("motion_blur", "defocus", "neutral"):
        return
    if hide.kind == "occlusion":
        _draw_occluder(image, track, frame, hide)
        return
    surroundings = _surroundings(track, frame, size)
    if surroundings is None:
        return
    (x0, y0, x1, y1), weight = surroundings
    region = image[y0:y1, x0:x1]
    if hide.kind == "low_light":
        region *= 1.0 - weight * (1.0 - hide.strength)
        region += weight * rng.normal(0.0, 0.04, region.shape).astype(np.float32)
    else:  # noise
        region += weight * rng.normal(0.0, hide.strength, region.shape).astype(np.float32)


def render_frame(spec: VideoSpec, frame: int) -> np.ndarray:
    """Render frame ``frame`` of a video: [S, S, 3] uint8 RGB."""
    rng = np.random.default_rng([spec.noise_seed, frame])
    image = spec.background.copy()
    for track in spec.tracks:
        _render_object(image, track, frame, rng)
    if spec.noise > 0:
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(spec.noise)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def frame_annotations(spec: VideoSpec, frame: int) -> List[Dict[str, Any]]:
    """The annotated objects of one frame, back to front.

    Each entry has ``bbox`` [x, y, w, h] (clipped to the image, 2 decimals), ``area``,
    ``class_index``, ``id_track``, ``hidden`` and ``hide_type`` (None on shown frames).
    """
    annotations = []
    for track in spec.tracks:
        at_frame = slice(frame, frame + 1)
        boxes, annotated = visible_boxes(track.centres[at_frame], track.sizes[at_frame], spec.image_size)
        if not annotated[0]:
            continue
        x1, y1, x2, y2 = (round(float(v), 2) for v in boxes[0])
        width, height = round(x2 - x1, 2), round(y2 - y1, 2)
        hide = track.hides[frame]
        annotations.append(
            {
                "bbox": [x1, y1, width, height],
                "area": round(width * height, 2),
                "class_index": track.class_index,
                "id_track": track.track_id,
                "hidden": hide is not None,
                "hide_type": None if hide is None else hide.kind,
            }
        )
    return annotations


# --------------------------------------------------------------------------------------------
# Writing


def frame_file_name(video: str, frame: int) -> str:
    """``file_name`` of a frame, relative to the split's image folder."""
    return f"{video}/{frame:06d}.jpg"


def write_mp4(frames: Iterable[np.ndarray], path: str, fps: int) -> None:
    """Encode [S, S, 3] uint8 RGB frames to an MPEG-4 part 2 mp4.

    MPEG-4 part 2 rather than H.264: libx264's bytes were seen to differ between runs on one machine
    when several videos were encoded at once, and the benchmark promises the same bytes for the same
    arguments. Bit-exact flags keep version strings and timestamps out.
    """
    codec_options = {"flags": "+bitexact", "threads": "1", "qscale": "3"}
    with av.open(path, "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = None
        for image in frames:
            if stream is None:
                stream = container.add_stream("mpeg4", rate=fps, options=codec_options)
                stream.height, stream.width = image.shape[:2]
                stream.pix_fmt = "yuv420p"
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        if stream is not None:
            container.mux(stream.encode())


@dataclass(frozen=True)
class _VideoTask:
    """One unit of parallel work: sample, render and write one video."""

    name: str
    seed: np.random.SeedSequence
    num_frames: int
    image_size: int
    options: SynthOptions
    image_dir: str
    mp4_path: Optional[str]
    fps: int


def _write_video(task: _VideoTask) -> List[List[Dict[str, Any]]]:
    """Write a video's JPEG frames (and mp4); return each frame's annotations."""
    spec = sample_video(task.name, task.seed, task.num_frames, task.image_size, task.options)
    os.makedirs(os.path.join(task.image_dir, spec.name))
    images = []
    for frame in range(spec.num_frames):
        image = render_frame(spec, frame)
        path = os.path.join(task.image_dir, frame_file_name(spec.name, frame))
        Image.fromarray(image).save(path, format="JPEG", quality=JPEG_QUALITY)
        if task.mp4_path is not None:
            images.append(image)
    if task.mp4_path is not None:
        write_mp4(images, task.mp4_path, task.fps)
    return [frame_annotations(spec, frame) for frame in range(spec.num_frames)]


def build_stcoco(
    video_annotations: Sequence[List[List[Dict[str, Any]]]], image_size: int, num_classes: int, info: Dict[str, Any]
) -> Dict[str, Any]:
    """Assemble the ST-COCO dict: images by video then frame, ids counting from 1, categories 1..K.

    Args:
        video_annotations: per video (named by :func:`video_name` of its index), per frame, the
            objects from :func:`frame_annotations`.
    """
    images, annotations = [], []
    for video_index, frames in enumerate(video_annotations):
        video = video_name(video_index)
        for frame, objects in enumerate(frames):
            image_id = len(images) + 1
            images.append(
                {
                    "id": image_id,
                    "file_name": frame_file_name(video, frame),
                    "width": image_size,
                    "height": image_size,
                    "video": video,
                    "frame_number": frame,
                }
            )
            for obj in objects:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": obj["class_index"] + 1,
                        "bbox": obj["bbox"],
                        "area": obj["area"],
                        "iscrowd": 0,
                        "id_track": obj["id_track"],
                        "hidden": obj["hidden"],
                        "hide_type": obj["hide_type"],
                    }
                )
    categories = [
        {"id": k + 1, "name": CLASS_PATTERNS[k], "supercategory": "synthetic"} for k in range(num_classes)
    ]
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


@dataclass(frozen=True)
class SplitSummary:
    """What :func:`generate_split` wrote."""

    json_path: str
    image_dir: str
    mp4_dir: Optional[str]
    videos: int
    frames: int
    boxes: int
    hidden_boxes: int


def check_split_arguments(split: str, num_videos: int, num_frames: int, image_size: int, seed: int,
                          workers: int, fps: int, mp4: bool) -> None:
    """Raise :class:`SltnetError` naming the command-line option of the first bad argument."""
    if not split or split.startswith(".") or not all(c.isalnum() or c in "_-." for c in split):
        raise SltnetError(f"--split: must be a folder name of letters, digits, '_', '-' or '.', got {split!r}")
    if num_videos < 1:
        raise SltnetError(f"--videos: must be at least 1, got {num_videos}")
    if num_frames < 1:
        raise SltnetError(f"--frames: must be at least 1, got {num_frames}")
    if image_size < MIN_IMAGE_SIZE:
        raise SltnetError(f"--size: must be at least {MIN_IMAGE_SIZE} pixels, got {image_size}")
    if mp4 and image_size % 2:
        raise SltnetError(f"--size: must be even with --mp4 (yuv420p video), got {image_size}")
    if seed < 0:
        raise SltnetError(f"--seed: must be a non-negative integer, got {seed}")
    if workers < 1:
        raise SltnetError(f"--workers: must be at least 1, got {workers}")
    if fps < 1:
        raise SltnetError(f"--fps: must be at least 1, got {fps}")


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _run_tasks(tasks: List[_VideoTask], workers: int, progress: bool) -> List[List[List[Dict[str, Any]]]]:
    """Write every video, in parallel processes when ``workers > 1``; results in task order."""
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks))) if workers > 1 else None
    try:
        results = pool.map(_write_video, tasks) if pool is not None else map(_write_video, tasks)
        return list(tqdm(results, total=len(tasks), desc="videos", unit="video", disable=None if progress else True))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def generate_split(
    out_dir: str,
    split: str,
    num_videos: int,
    num_frames: int,
    image_size: int,
    seed: int,
    options: SynthOptions = SynthOptions(),
    workers: int = 1,
    mp4: bool = False,
    fps: int = 10,
    progress: bool = True,
) -> SplitSummary:
    """Generate one split of the benchmark.

    Writes ``out_dir/<split>/<video>/<frame:06d>.jpg``, ``out_dir/annotations/<split>.json`` and,
    with ``mp4``, ``out_dir/<split>_mp4/<video>.mp4``. An existing split of that name is replaced
    (its ``_mp4`` folder removed when ``mp4`` is off). Everything is written under temporary names
    first and the JSON is put in place last, so an interrupted run never leaves a JSON that points
    at missing or foreign frames.

    Raises:
        SltnetError: bad arguments or an output folder that cannot be written.
    """
    options.check()
    check_split_arguments(split, num_videos, num_frames, image_size, seed, workers, fps, mp4)
    annotation_dir = os.path.join(out_dir, "annotations")
    image_dir = os.path.join(out_dir, split)
    mp4_dir = os.path.join(out_dir, f"{split}_mp4")
    json_path = os.path.join(annotation_dir, f"{split}.json")
    staged_images = os.path.join(out_dir, f".{split}.partial")
    staged_mp4 = os.path.join(out_dir, f".{split}_mp4.partial")
    staged_json = os.path.join(annotation_dir, f".{split}.json.partial")
    retired = os.path.join(out_dir, f".{split}.old")
    try:
        os.makedirs(annotation_dir, exist_ok=True)
        for path in (staged_images, staged_mp4, staged_json, retired):
            _remove(path)
        os.makedirs(staged_images)
        if mp4:
            os.makedirs(staged_mp4)
        seeds = split_seed(seed, split).spawn(num_videos)
        tasks = [
            _VideoTask(video_name(i), seeds[i], num_frames, image_size, options, staged_images,
                       os.path.join(staged_mp4, f"{video_name(i)}.mp4") if mp4 else None, fps)
            for i in range(num_videos)
        ]
        video_annotations = _run_tasks(tasks, workers, progress)
        info = {
            "description": "sltnet synthetic video benchmark",
            "version": __version__,
            "split": split,
            "seed": seed,
            "videos": num_videos,
            "frames": num_frames,
            "size": image_size,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(options).items()},
        }
        data = build_stcoco(video_annotations, image_size, options.num_classes, info)
        with open(staged_json, "w", encoding="utf-8") as f:
            json.dump(data, f, sort_keys=True, separators=(",", ":"))
            f.write("\n")
        # Swap in: no JSON while the folders change, then the new JSON.
        _remove(json_path)
        os.makedirs(retired)
        for current, staged, kept in ((image_dir, staged_images, "images"), (mp4_dir, staged_mp4, "mp4")):
            if os.path.lexists(current):
                os.replace(current, os.path.join(retired, kept))
            if os.path.isdir(staged):
                os.replace(staged, current)
        os.replace(staged_json, json_path)
        _remove(retired)
    except OSError as err:
        where = err.filename or out_dir
        raise SltnetError(f"{where}: cannot write the synthetic split ({err.strerror or err})") from None
    finally:
        for path in (staged_images, staged_mp4, staged_json):
            if os.path.lexists(path):
                _remove(path)
    return SplitSummary(
        json_path=json_path,
        image_dir=image_dir,
        mp4_dir=mp4_dir if mp4 else None,
        videos=num_videos,
        frames=len(data["images"]),
        boxes=len(data["annotations"]),
        hidden_boxes=sum(1 for ann in data["annotations"] if ann["hidden"]),
    )
