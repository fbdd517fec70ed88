"""Annotated frames: boxes, class names and scores, and a frames-per-second overlay (Pillow)."""

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from sltnet.contract import FrameResult

# Distinct colours, one per class (cycled beyond eight classes).
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
)


DEFAULT_DRAW_THRESH = 0.4  # below it, boxes are mostly noise to a viewer (the JSON keeps them)


def detections_to_draw(result: FrameResult, score_thresh: float) -> list[tuple[list[float], float, int]]:
    """(box [x1, y1, x2, y2] in frame pixels, score, class index) of the detections scoring at least
    ``score_thresh``, in ``result``'s order."""
    return [
        (box, score, label)
        for box, score, label in zip(result.boxes.tolist(), result.scores.tolist(), result.classes.tolist())
        if score >= score_thresh
    ]


def annotate(
    image: np.ndarray,
    result: FrameResult,
    class_names: Sequence[str],
    fps: float | None = None,
    score_thresh: float = DEFAULT_DRAW_THRESH,
) -> np.ndarray:
    """Draw ``result``'s detections scoring at least ``score_thresh`` (and ``fps``, top left) on a
    copy of ``image``.

    Args:
        image: uint8 [H, W, 3] RGB, the frame the boxes are in.
    Returns:
        uint8 [H, W, 3] RGB.
    """
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for box, score, label in detections_to_draw(result, score_thresh):
        colour = PALETTE[label % len(PALETTE)]
        draw.rectangle(box, outline=colour, width=2)
        text = f"{class_names[label]} {score:.2f}"
        left, top = box[0], max(box[1] - 11, 0)
        draw.rectangle(draw.textbbox((left, top), text), fill=colour)
        draw.text((left, top), text, fill=(0, 0, 0))
    if fps is not None:
        text = f"{fps:.1f} fps"
        draw.rectangle(draw.textbbox((4, 4), text), fill=(0, 0, 0))
        draw.text((4, 4), text, fill=(255, 255, 255))
    return np.asarray(canvas)
