"""Sampling: what a benchmark video is (class evidence, difficulty options, tracks with hidden runs)
and drawing one from a seed.

Determinism: video ``i`` of a split is drawn from ``SeedSequence([seed, crc32(split)])`` child ``i``,
so a video does not depend on the number of videos, the worker count or the other videos, and
train/val splits made with the same seed differ.
"""

import math
import zlib
from dataclasses import dataclass

import numpy as np

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

# An object is annotated on a frame only when enough of it is inside the image.
MIN_VISIBLE_FRACTION = 0.25
MIN_VISIBLE_SIDE = 4.0
# Tries to draw a trajectory that keeps the object annotated on at least half of the frames.
TRAJECTORY_TRIES = 20
# Motion: speed = max_speed * u ** SPEED_EXPONENT (u uniform), a small random acceleration and a
# slow scale change. With the default knobs about a third of the boxes fall in each bucket of the
# motion-speed breakdown (docs/metrics.md#the-metrics: slow, medium, fast); faster scale change or acceleration
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
            slow motion so the slow, medium and fast buckets of docs/metrics.md#the-metrics are all populated.
        noise: standard deviation of the sensor noise added to every pixel (intensities in [0, 1]).
    """

    num_classes: int = 4
    max_objects: int = 3
    hide_prob: float = 0.3
    max_hidden_run: int = 6
    hide_types: tuple[str, ...] = HIDE_TYPES
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
    hides: tuple[Hide | None, ...]


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
    tracks: tuple[Track, ...]
    noise_seed: int
    noise: float


def split_seed(seed: int, split: str) -> np.random.SeedSequence:
    """The root seed of a split; its child ``i`` (``spawn``) draws video ``i``."""
    return np.random.SeedSequence([seed, zlib.crc32(split.encode("utf-8"))])


def video_name(index: int) -> str:
    return f"video_{index:05d}"


def visible_boxes(centres: np.ndarray, sizes: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray]:
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
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        return Hide(
            kind, strength=rng.uniform(0.4, 0.6), angle=float(rng.integers(2)) * np.pi / 2, grey=rng.uniform(0.15, 0.85)
        )
    if kind == "low_light":
        return Hide(kind, strength=rng.uniform(0.2, 0.4))
    if kind == "noise":
        return Hide(kind, strength=rng.uniform(0.2, 0.35))
    return Hide(kind)


def sample_hidden_runs(
    rng: np.random.Generator, annotated_frames: np.ndarray, num_frames: int, options: SynthOptions
) -> tuple[Hide | None, ...]:
    """Choose a track's hidden frames: contiguous runs among its annotated frames.

    About ``hide_prob`` of the L annotated frames are hidden, at least one and at most L - 1 when
    L >= 2 and ``hide_prob > 0``. Runs are at most ``max_hidden_run`` long (unless the track is
    too short for enough runs), at least one shown frame precedes every run, so the first
    annotated frame is always shown. Each run has its own degradation.

    Returns:
        per frame of the video, the run's :class:`Hide` or None.
    """
    hides: list[Hide | None] = [None] * num_frames
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
