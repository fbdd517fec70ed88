"""Frames of any size into the engines' fixed input size, and detections back into the frame's pixels
(docs/deployment.md#frames-of-any-size).

A frame of (h, w) is scaled by ``min(H_in / h, W_in / w)``, so it fits inside the export's input
(H_in, W_in) with its aspect ratio kept, resized with antialiased bilinear interpolation
(:func:`torch.nn.functional.interpolate`, on whatever device the frame is on), placed top-left and
padded on the right and bottom with a constant colour. Placing it top-left keeps the mapping back a
pure scale: a box on the engines' input divided by the per-axis scale is the box on the frame.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class Fit(NamedTuple):
    """Where a frame went in the engines' input.

    Attributes:
        frame_size: (height, width) of the frame as given.
        fitted_size: (height, width) it was resized to, at the top-left of the input.
    """

    frame_size: tuple[int, int]
    fitted_size: tuple[int, int]


def fit(frame_size: tuple[int, int], input_size: tuple[int, int]) -> Fit:
    """The largest size of the frame's aspect ratio inside ``input_size`` (sides rounded, at least 1)."""
    (height, width), (max_height, max_width) = frame_size, input_size
    scale = min(max_height / height, max_width / width)
    fitted = (min(max_height, max(1, int(height * scale + 0.5))), min(max_width, max(1, int(width * scale + 0.5))))
    return Fit((height, width), fitted)


def letterbox_into(frame: Tensor, out: Tensor, pad_value: Tensor) -> Fit:
    """Resize ``frame`` to fit ``out`` and write it there, padded.

    Args:
        frame: uint8 [3, h, w], on ``out``'s device.
        out: uint8 [3, H, W], overwritten entirely.
        pad_value: uint8 [3], the colour of the padding.
    Returns:
        where the frame went.
    """
    placed = fit((frame.shape[1], frame.shape[2]), (out.shape[1], out.shape[2]))
    height, width = placed.fitted_size
    if placed.fitted_size == placed.frame_size:
        out[:, :height, :width].copy_(frame)
    else:
        resized = F.interpolate(
            frame[None].float(), size=placed.fitted_size, mode="bilinear", align_corners=False, antialias=True
        )
        # Antialiased bilinear weights are non-negative and sum to one, so the result stays in 0..255.
        out[:, :height, :width].copy_(resized[0].round_())
    out[:, height:, :] = pad_value[:, None, None]
    out[:, :height, width:] = pad_value[:, None, None]
    return placed


def pad_colour(pixel_mean: list[float], channel_order: str) -> Tensor:
    """The padding colour: the model's pixel mean as uint8 RGB [3] (the mean is in ``channel_order``)."""
    mean = list(reversed(pixel_mean)) if channel_order == "BGR" else list(pixel_mean)
    return torch.tensor([min(255, max(0, int(value + 0.5))) for value in mean], dtype=torch.uint8)
