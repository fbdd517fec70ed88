"""Rendering: a sampled video's frames and each frame's annotations.

Images are float32 RGB in [0, 1] while drawing; pixel (i, j) covers [j, j + 1] x [i, i + 1].
"""

import math
from typing import Any

import numpy as np

from sltnet.data.synthetic.sampling import CLASS_PATTERNS, SILHOUETTES, Hide, Track, VideoSpec, visible_boxes

Window = tuple[int, int, int, int]  # (x0, y0, x1, y1) integer pixel bounds, x1 and y1 exclusive
Layer = tuple[Window, np.ndarray, np.ndarray]  # window, premultiplied colour [h, w, 3], coverage [h, w]


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
    track: Track, frame: int, window: Window, shift: tuple[float, float], textured: bool
) -> tuple[np.ndarray, np.ndarray]:
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


def _window(track: Track, frame: int, margin: float, image_size: int) -> Window | None:
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


def _blurred_layer(track: Track, frame: int, hide: Hide, image_size: int) -> Layer | None:
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
        x0, y0, x1, y1 = window
        colour = np.zeros((y1 - y0, x1 - x0, 3), dtype=np.float32)
        alpha = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
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


def _surroundings(track: Track, frame: int, image_size: int) -> tuple[Window, np.ndarray] | None:
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


def frame_annotations(spec: VideoSpec, frame: int) -> list[dict[str, Any]]:
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
