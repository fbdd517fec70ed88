"""Multi-level RoIAlign (docs/method.md#single-frame-baseline): each box is pooled from the FPN level that
matches its size."""

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

# detectron2's canonical box size and level: a 224x224 box maps to P4.
CANONICAL_BOX_SIZE = 224
CANONICAL_LEVEL = 4


def assign_boxes_to_levels(boxes: Tensor, min_level: int, max_level: int) -> Tensor:
    """Level index (0-based from ``min_level``) of each box.

    Args:
        boxes: [R, 4] boxes (x1, y1, x2, y2) in input-image pixels.
    Returns:
        [R] int64 in ``0 .. max_level - min_level``: floor(4 + log2(sqrt(area) / 224)) clamped.
    """
    box_sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    # The epsilon keeps exact powers of two from landing one level low through rounding.
    levels = torch.floor(CANONICAL_LEVEL + torch.log2(box_sizes / CANONICAL_BOX_SIZE + 1e-8))
    return (torch.clamp(levels, min=min_level, max=max_level) - min_level).to(torch.int64)


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign with ``aligned=True`` over FPN levels, box-to-level assignment as docs/method.md#single-frame-baseline.

    Args:
        output_size: side of the pooled square (7).
        scales: spatial scale of each level, finest first (1/4, 1/8, 1/16, 1/32 for P2..P5).
        sampling_ratio: RoIAlign sampling points per bin side; 0 = adaptive.
    """

    def __init__(self, output_size: int, scales: Sequence[float], sampling_ratio: int) -> None:
        super().__init__()
        self.output_size = output_size
        self.scales = tuple(float(s) for s in scales)
        self.sampling_ratio = sampling_ratio
        self.min_level = int(round(-math.log2(self.scales[0])))
        self.max_level = int(round(-math.log2(self.scales[-1])))
        if self.max_level - self.min_level + 1 != len(self.scales):
            raise ValueError(f"scales must be consecutive powers of 1/2, got {scales}")

    def forward(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """Pool boxes from their level.

        Args:
            features: one [B, C, H_l, W_l] tensor per level, finest first.
            boxes: B tensors [R_i, 4] (x1, y1, x2, y2), one per image of the batch.
        Returns:
            [sum R_i, C, output_size, output_size], rows in the order of ``boxes``.
        """
        all_boxes = torch.cat(boxes, dim=0)
        batch_index = torch.cat(
            [torch.full((len(b), 1), i, dtype=all_boxes.dtype, device=all_boxes.device) for i, b in enumerate(boxes)]
        )
        rois = torch.cat([batch_index, all_boxes], dim=1)
        if len(features) == 1:
            return roi_align(features[0], rois, self.output_size, self.scales[0], self.sampling_ratio, aligned=True)
        levels = assign_boxes_to_levels(all_boxes, self.min_level, self.max_level)
        channels = features[0].shape[1]
        pooled = all_boxes.new_zeros((len(all_boxes), channels, self.output_size, self.output_size))
        pooled = pooled.to(features[0].dtype)
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            index = torch.nonzero(levels == level).squeeze(1)
            pooled[index] = roi_align(
                feature, rois[index], self.output_size, scale, self.sampling_ratio, aligned=True
            ).to(pooled.dtype)
        return pooled
