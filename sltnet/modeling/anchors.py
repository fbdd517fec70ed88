"""Anchors of the RPN (docs/method.md#single-frame-baseline).

Within a level, anchors are ordered (y, x, anchor) row-major: all anchors of location (0, 0), then
(0, 1), ...; at each location the cell anchors in (size, aspect ratio) order, i.e. aspect ratios
0.5, 1, 2 with one size per level. Levels are concatenated finest first, giving the one anchor list
of length A that every per-anchor RPN output follows.

torchvision's ``AnchorGenerator`` rounds cell anchors to whole pixels; these are not rounded, as in
detectron2, whose trained weights expect the exact shapes.
"""

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """Anchors centred on (0, 0): for each size, for each aspect ratio (height / width), a box of area size².

    Returns:
        [len(sizes) * len(aspect_ratios), 4] boxes (x1, y1, x2, y2).
    """
    anchors = []
    for size in sizes:
        for ratio in aspect_ratios:
            width = math.sqrt(size * size / ratio)
            height = ratio * width
            anchors.append([-width / 2, -height / 2, width / 2, height / 2])
    return torch.tensor(anchors, dtype=torch.float32)


class AnchorGenerator(nn.Module):
    """Anchors of every level for given feature-map sizes.

    Args:
        sizes: per level, the anchor sizes (side of a square of the same area) in pixels; one entry is
            used for all levels.
        aspect_ratios: per level, the aspect ratios (height / width); one entry is used for all levels.
        strides: stride of each level in input pixels; the anchor of location (y, x) is centred on
            (x * stride, y * stride).
    """

    cell_anchors: Tensor

    def __init__(
        self, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]], strides: Sequence[int]
    ) -> None:
        super().__init__()
        num_levels = len(strides)
        sizes = list(sizes) * num_levels if len(sizes) == 1 else list(sizes)
        aspect_ratios = list(aspect_ratios) * num_levels if len(aspect_ratios) == 1 else list(aspect_ratios)
        if len(sizes) != num_levels or len(aspect_ratios) != num_levels:
            raise ValueError(f"need sizes and aspect ratios for {num_levels} levels, got {sizes}, {aspect_ratios}")
        counts = {len(s) * len(r) for s, r in zip(sizes, aspect_ratios)}
        if len(counts) != 1:
            raise ValueError(f"every level needs the same number of anchors per location, got {sizes}, {aspect_ratios}")
        self.strides = list(strides)
        # [L, a, 4]; derived from the configuration, so not part of the state dict.
        self.register_buffer(
            "cell_anchors", torch.stack([cell_anchors(s, r) for s, r in zip(sizes, aspect_ratios)]), persistent=False
        )

    @property
    def num_anchors_per_location(self) -> int:
        return self.cell_anchors.shape[1]

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """Anchors of each level.

        Args:
            features: one [B, C, H_l, W_l] tensor per level (only the sizes are used).
        Returns:
            one [H_l * W_l * a, 4] tensor per level, (y, x, anchor) row-major.
        """
        anchors = []
        for feature, stride, cell in zip(features, self.strides, self.cell_anchors):
            height, width = feature.shape[-2:]
            shift_x = torch.arange(width, dtype=torch.float32, device=cell.device) * stride
            shift_y = torch.arange(height, dtype=torch.float32, device=cell.device) * stride
            shift_y, shift_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)
            anchors.append((shifts + cell).reshape(-1, 4))
        return anchors
