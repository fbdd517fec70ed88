"""Short-term anchor linking (docs/method.md#short-term-anchor-linking): tubelet proposals from the per-anchor
RPN outputs of a window.

An anchor regresses one box in every frame of the window. A proposal chosen in the reference frame is
linked to the boxes that the *same anchor* regressed in the other frames, so a tubelet needs no
tracking: its identity is the anchor index.
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.ops import clip_boxes_to_image

from sltnet.modeling.rpn import select_proposals


class Tubelets(NamedTuple):
    """Tubelet proposals of one window.

    Attributes:
        boxes: [N, R, 4] (x1, y1, x2, y2) in input-image pixels, one box per frame of the window.
        scores: [R] the reference frame's objectness logits, in decreasing order.
        anchor_indices: [R] int64 index of each tubelet's anchor in the concatenated anchor list.
    """

    boxes: Tensor
    scores: Tensor
    anchor_indices: Tensor


def clip_window_boxes(boxes: Tensor, image_size: tuple[int, int], min_size: float) -> tuple[Tensor, Tensor]:
    """Clip every frame's anchor boxes and tell which anchors can form a tubelet.

    A tubelet is only as good as its worst frame: its box must be finite and non-empty after clipping
    in every frame. Finiteness is tested before clipping, which would turn +-inf into borders.

    Args:
        boxes: [N, A, 4] decoded, unclipped boxes of all A anchors in each of the N frames.
        image_size: (height, width) of the input image.
        min_size: both sides of a clipped box must exceed this.
    Returns:
        clipped: [N, A, 4].
        valid_in_window: [A] bool.
    """
    clipped = clip_boxes_to_image(boxes, image_size)
    widths = clipped[..., 2] - clipped[..., 0]
    heights = clipped[..., 3] - clipped[..., 1]
    valid = torch.isfinite(boxes).all(dim=2) & (widths > min_size) & (heights > min_size)
    return clipped, valid.all(dim=0)


def link_tubelets(
    boxes: Tensor,
    logits: Tensor,
    num_anchors_per_level: Sequence[int],
    reference_index: int,
    image_size: tuple[int, int],
    pre_nms_topk: int,
    post_nms_topk: int,
    nms_thresh: float,
    min_size: float,
) -> Tubelets:
    """Select tubelet proposals for the reference frame of a window (docs/method.md#short-term-anchor-linking).

    Args:
        boxes: [N, A, 4] decoded, unclipped boxes of all A anchors in each of the N frames.
        logits: [N, A] objectness logits of all anchors in each frame.
        num_anchors_per_level: anchors of each FPN level, in the order the levels are concatenated.
        reference_index: position of the reference frame in the window.
        image_size: (height, width) of the input image, for clipping.
        pre_nms_topk: anchors kept per level, ranked by the reference frame's logit.
        post_nms_topk: tubelets kept in total after NMS.
        nms_thresh: IoU threshold of the per-level NMS on the reference boxes.
        min_size: a tubelet is kept only if both sides of its clipped box exceed this in every frame.
    Returns:
        ``Tubelets`` with R <= ``post_nms_topk`` rows, sorted by the reference frame's logit.
    """
    clipped, valid_in_window = clip_window_boxes(boxes, image_size, min_size)
    # The reference frame's proposal selection (per-level top-k, NMS per level, global top-k), with the
    # window validity applied after the per-level top-k as docs/method.md#short-term-anchor-linking orders it.
    reference = select_proposals(
        boxes[reference_index : reference_index + 1],
        logits[reference_index : reference_index + 1],
        num_anchors_per_level,
        [image_size],
        pre_nms_topk,
        post_nms_topk,
        nms_thresh,
        min_size,
        candidate_mask=valid_in_window[None],
    )[0]
    return Tubelets(
        boxes=clipped[:, reference.anchor_indices],
        scores=reference.objectness_logits,
        anchor_indices=reference.anchor_indices,
    )
