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


def annotate(
    image: np.ndarray, result: FrameResult, class_names: Sequence[str], fps: float | None = None
) -> np.ndarray:
    """Draw ``result``'s detections (and ``fps``, top left) on a copy of ``image``.

    Args:
        image: uint8 [H, W, 3] RGB.
    Returns:
        uint8 [H, W, 3] RGB.
    """
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for box, score, label in zip(result.boxes.tolist(), result.scores.tolist(), result.classes.tolist()):
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
