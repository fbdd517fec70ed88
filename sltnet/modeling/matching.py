"""Matching boxes to ground truth for training the RPN and the box head (docs/method.md#single-frame-baseline).

torchvision's ``Matcher`` implements detectron2's rule exactly: IoU >= high is a match, IoU < low is
background, in between is ignored; with ``allow_low_quality_matches`` every prediction whose IoU with
some ground-truth box equals that box's best IoU (ties included) is matched too, to its own best
ground-truth box. Box coding (torchvision ``BoxCoder``, dw/dh clamped at log(1000/16)) and balanced
sampling (torchvision ``BalancedPositiveNegativeSampler``) are used as they are.
"""

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou

from sltnet.errors import SltnetError

# Sampler labels.
FOREGROUND = 1
BACKGROUND = 0
IGNORED = -1


def build_matcher(
    thresholds: Sequence[float], labels: Sequence[int], allow_low_quality_matches: bool, option: str
) -> Matcher:
    """A matcher from detectron2-style ``IOU_THRESHOLDS`` / ``IOU_LABELS``.

    Supported: ``[low, high]`` with labels ``[0, -1, 1]`` (background, ignored, foreground) and
    ``[t]`` with labels ``[0, 1]``.

    Args:
        option: the config node the values come from (e.g. ``MODEL.RPN``), for the error message.
    Raises:
        SltnetError: any other combination.
    """
    thresholds, labels = list(thresholds), list(labels)
    if len(thresholds) == 2 and labels == [0, -1, 1] and thresholds[0] <= thresholds[1]:
        return Matcher(thresholds[1], thresholds[0], allow_low_quality_matches)
    if len(thresholds) == 1 and labels == [0, 1]:
        return Matcher(thresholds[0], thresholds[0], allow_low_quality_matches)
    raise SltnetError(
        f"{option}.IOU_THRESHOLDS/IOU_LABELS: need [low, high] with [0, -1, 1] or [t] with [0, 1], "
        f"got {thresholds} with {labels}"
    )


def match_boxes(matcher: Matcher, gt_boxes: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Match boxes to ground truth.

    Args:
        gt_boxes: [G, 4] ground-truth boxes (x1, y1, x2, y2); G may be 0.
        boxes: [N, 4] anchors or proposals.
    Returns:
        matched_index: [N] int64 index of each box's ground-truth box (0 where it has none).
        labels: [N] int64 ``FOREGROUND``, ``BACKGROUND`` or ``IGNORED``.
    """
    if len(gt_boxes) == 0:
        zeros = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
        return zeros, torch.full_like(zeros, BACKGROUND)
    matches = matcher(box_iou(gt_boxes, boxes))
    labels = torch.full_like(matches, FOREGROUND)
    labels[matches == Matcher.BELOW_LOW_THRESHOLD] = BACKGROUND
    labels[matches == Matcher.BETWEEN_THRESHOLDS] = IGNORED
    return matches.clamp(min=0), labels
