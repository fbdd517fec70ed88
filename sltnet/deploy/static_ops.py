"""Static-shape versions of the data-dependent inference steps, for the exported temporal engine.

The PyTorch model drops candidates by boolean indexing and returns as many tubelets and detections
as survive. An engine needs shapes fixed at build time (docs/deployment.md#the-deployment-split), so here the
same steps keep a fixed number of slots plus a validity mask:

- NMS is one ONNX ``NonMaxSuppression`` node with constant parameters; its variable-length result
  never leaves the graph: it is scattered into a fixed-size "kept" mask, and a ``TopK`` with a
  constant K orders the kept candidates by score (padding slots last).
- Per-group NMS (per FPN level, per class) offsets each group's boxes as torchvision's
  ``batched_nms`` does for up to 1000 boxes on the CPU (25000 on CUDA), so NMS sees the same
  coordinates as PyTorch; above that torchvision runs NMS per group on unshifted boxes, which can
  round an IoU right at the threshold the other way.
- Multi-level RoIAlign is one RoIAlign over a mosaic of the frame's FPN levels (the frame engine
  outputs it), each box moved into its own level's block: every box is pooled once, from its level,
  without gathering boxes per level (no data-dependent indexing).

Everything else is the model's own code (:func:`~sltnet.modeling.rpn.top_anchors_per_level`,
:func:`~sltnet.modeling.tubelets.clip_window_boxes`,
:func:`~sltnet.modeling.box_head.detection_candidates`, ...).

TensorRT limits these steps respect: TopK needs a constant K < 3840; NMS looks at no more than the
best 5000 boxes. Where (RoIs x classes) exceeds 5000, the best 3839 candidates are taken before the
final NMS; this is the only place the engines may differ from PyTorch, and only when more than
3839 (RoI, class) pairs pass the score threshold.
"""

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import nms, roi_align

from sltnet.modeling.box_head import detection_candidates
from sltnet.modeling.poolers import MultiLevelRoIAlign, assign_boxes_to_levels
from sltnet.modeling.rpn import top_anchors_per_level
from sltnet.modeling.tubelets import clip_window_boxes

#: TensorRT 10's TopK needs a constant K below 3840.
MAX_TOPK = 3839
#: TensorRT's NMS layer considers at most this many boxes per batch item.
MAX_NMS_BOXES = 5000


class _NonMaxSuppression(torch.autograd.Function):
    """torchvision's ``nms`` keeping the best ``max_kept`` survivors, exported as ONNX
    ``NonMaxSuppression`` with every parameter constant: 3-D boxes [1, n, 4] and scores [1, 1, n],
    ``max_output_boxes_per_class`` = ``max_kept`` (at most n, never int64's maximum, which
    TensorRT's int32 parameter cannot hold) and the IoU threshold. Greedy NMS picks survivors in
    score order, so its first ``max_kept`` picks are exactly the best ``max_kept`` survivors, and
    it stops there."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, iou_threshold: float, max_kept: int) -> Tensor:
        return nms(boxes, scores, iou_threshold)[:max_kept]

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold: float, max_kept: int):
        num_boxes = boxes.type().sizes()[0]
        boxes_3d = g.op("Reshape", boxes, g.op("Constant", value_t=torch.tensor([1, num_boxes, 4])))
        scores_3d = g.op("Reshape", scores, g.op("Constant", value_t=torch.tensor([1, 1, num_boxes])))
        selected = g.op(
            "NonMaxSuppression",
            boxes_3d,
            scores_3d,
            g.op("Constant", value_t=torch.tensor([min(max_kept, num_boxes)], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32)),
        )  # [n_kept, 3] rows of (batch, class, box index)
        return g.op("Gather", selected, g.op("Constant", value_t=torch.tensor(2)), axis_i=1)


def masked_nms(
    boxes: Tensor, scores: Tensor, groups: Tensor, valid: Tensor, iou_threshold: float, k: int
) -> tuple[Tensor, Tensor]:
    """NMS within groups over the valid boxes; the best ``k`` survivors, padded to exactly ``k``.

    Args:
        boxes: [n, 4] (x1, y1, x2, y2); rows that are not valid may hold anything.
        scores: [n].
        groups: [n] int64; boxes of different groups never suppress each other.
        valid: [n] bool, the candidates (an invalid box is never kept and suppresses nothing).
        k: output size, at most n.
    Returns:
        indices: [k] int64 rows of the survivors by decreasing score, then padding rows.
        kept: [k] bool, False for the padding rows.
    """
    boxes = torch.where(valid[:, None], boxes, torch.zeros_like(boxes))
    # Invalid boxes come last in NMS order (no lower-scored box suppresses a higher one).
    scores = torch.where(valid, scores, torch.full_like(scores, -math.inf))
    # torchvision's batched_nms offset: with invalid boxes at 0 the maximum is the valid boxes' one.
    offsets = groups.to(boxes.dtype) * (boxes.max() + 1)
    # Only the best k survivors are needed: NMS stops once it has them.
    survivors = _NonMaxSuppression.apply(boxes + offsets[:, None], scores, iou_threshold, k)
    kept = torch.zeros_like(scores).scatter(0, survivors, torch.ones_like(survivors, dtype=scores.dtype)) > 0
    kept = kept & valid
    ranked = torch.where(kept, scores, torch.full_like(scores, -math.inf)).topk(k).indices
    return ranked, kept[ranked]


class FixedTubelets(NamedTuple):
    """Tubelet proposals of one window in R fixed slots (docs/method.md#short-term-anchor-linking).

    Attributes:
        boxes: [N, R, 4] per frame, clipped; padding slots are zeros.
        valid: [R] bool, True for the real tubelets, which come first, by decreasing objectness.
    """

    boxes: Tensor
    valid: Tensor


def link_tubelets_fixed(
    frame_boxes: Sequence[Tensor],
    reference_logits: Tensor,
    num_anchors_per_level: Sequence[int],
    reference_index: int,
    image_size: tuple[int, int],
    pre_nms_topk: int,
    post_nms_topk: int,
    nms_thresh: float,
    min_size: float,
) -> FixedTubelets:
    """:func:`sltnet.modeling.tubelets.link_tubelets` with R = min(``post_nms_topk``, candidates) slots.

    Args:
        frame_boxes: the N window frames' per-anchor boxes [A, 4] (the frame engine's outputs).
        reference_logits: [A] objectness logits of the reference frame (the only ones linking uses).
        Other arguments as :func:`~sltnet.modeling.tubelets.link_tubelets`.
    """
    indices, levels = top_anchors_per_level(reference_logits[None], num_anchors_per_level, pre_nms_topk)
    indices = indices[0]
    scores = reference_logits[indices]
    # Clipping only the candidates' boxes: the same values as clipping all A anchors, far less work.
    clipped, valid_in_window = clip_window_boxes(torch.stack([b[indices] for b in frame_boxes]), image_size, min_size)
    candidates = valid_in_window & torch.isfinite(scores)
    num_slots = min(post_nms_topk, len(indices))
    order, valid = masked_nms(clipped[reference_index], scores, levels, candidates, nms_thresh, num_slots)
    tubelet_boxes = clipped[:, order]
    return FixedTubelets(torch.where(valid[None, :, None], tubelet_boxes, torch.zeros_like(tubelet_boxes)), valid)


class LevelMosaic(NamedTuple):
    """Where the pooled FPN levels of one frame sit side by side in one feature tensor.

    Level l occupies columns ``offsets[l]`` .. ``offsets[l] + W_l + 1`` and rows 0 .. H_l + 1 of the
    mosaic [1, C, H_0 + 2, sum(W_l + 2)]: its features with their border rows and columns repeated
    once around them (rows below a coarse level are zeros). The repeated border gives bilinear
    sampling at a level's edge exactly what RoIAlign's clamping gives on the level alone, so one
    RoIAlign over the mosaic pools every box from its own level, once.

    Attributes:
        shapes: (H_l, W_l) of each level, finest first.
    """

    shapes: tuple[tuple[int, int], ...]

    @property
    def offsets(self) -> list[int]:
        """Left column of each level's block (the repeated border's column)."""
        widths = [width + 2 for _, width in self.shapes]
        return [sum(widths[:level]) for level in range(len(widths))]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the mosaic."""
        return self.shapes[0][0] + 2, sum(width + 2 for _, width in self.shapes)


def _repeat_border(level: Tensor) -> Tensor:
    """[1, C, H, W] -> [1, C, H + 2, W + 2] with the outer rows and columns repeated (Slice + Concat,
    which every target runs)."""
    level = torch.cat([level[:, :, :1], level, level[:, :, -1:]], dim=2)
    return torch.cat([level[..., :1], level, level[..., -1:]], dim=3)


def build_mosaic(levels: Sequence[Tensor]) -> Tensor:
    """The :class:`LevelMosaic` of ``levels`` (one [1, C, H_l, W_l] tensor per level, finest first)."""
    height = levels[0].shape[2] + 2
    blocks = [_repeat_border(level) for level in levels]
    blocks = [F.pad(block, (0, 0, 0, height - block.shape[2])) for block in blocks]
    return torch.cat(blocks, dim=3)


def pool_mosaic(pooler: MultiLevelRoIAlign, mosaic: Tensor, layout: LevelMosaic, boxes: Tensor) -> Tensor:
    """The pooler's multi-level RoIAlign of one image's boxes, as one RoIAlign over the mosaic.

    Args:
        pooler: the box head's pooler (its levels, scales, output size and sampling ratio are used).
        mosaic: [1, C, H, W] the frame's :func:`build_mosaic` of the pooler's levels.
        layout: the mosaic's layout.
        boxes: [R, 4] (x1, y1, x2, y2) within the image.
    Returns:
        [R, C, S, S], equal to ``pooler(levels, [boxes])`` up to float rounding of the moved boxes.
    """
    levels = assign_boxes_to_levels(boxes, pooler.min_level, pooler.max_level)
    scales = torch.tensor(pooler.scales, dtype=boxes.dtype, device=boxes.device)[levels]
    # Each box moves into its level's block: scaled to the level, shifted past the repeated border.
    shift_x = torch.tensor(layout.offsets, dtype=boxes.dtype, device=boxes.device)[levels] + 1
    shift = torch.stack([shift_x, torch.ones_like(shift_x), shift_x, torch.ones_like(shift_x)], dim=1)
    rois = torch.cat([boxes.new_zeros((len(boxes), 1)), boxes * scales[:, None] + shift], dim=1)
    return roi_align(mosaic, rois, pooler.output_size, 1.0, pooler.sampling_ratio, aligned=True)


class FixedDetections(NamedTuple):
    """Detections in D fixed slots, by decreasing score; slots from ``count`` on are padding.

    Attributes:
        boxes: [D, 4] in input-image pixels (zeros in padding slots).
        scores: [D] (zeros in padding slots).
        classes: [D] int64 in 0..K-1 (-1 in padding slots).
        count: [1] int64, the number of detections.
    """

    boxes: Tensor
    scores: Tensor
    classes: Tensor
    count: Tensor  # type: ignore[assignment]  # the field shadows tuple.count; callers read .count


def postprocess_fixed(
    class_probs: Tensor,
    box_deltas: Tensor,
    proposals: Tensor,
    valid: Tensor,
    image_size: tuple[int, int],
    *,
    box_coder: BoxCoder,
    score_thresh: float,
    nms_thresh: float,
    topk: int,
) -> FixedDetections:
    """:func:`sltnet.modeling.box_head.postprocess_detections` with D = min(``topk``, candidates) slots.

    Args:
        valid: [R] bool, False for padding RoIs (their pairs are no candidates).
        Other arguments as :func:`~sltnet.modeling.box_head.postprocess_detections`.
    """
    boxes, scores, candidates = detection_candidates(
        class_probs, box_deltas, proposals, image_size, box_coder=box_coder, score_thresh=score_thresh
    )
    num_rois, num_classes = scores.shape
    boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
    candidates = (candidates & valid[:, None]).reshape(-1)
    classes = torch.arange(num_classes, device=scores.device).repeat(num_rois)
    if len(scores) > MAX_NMS_BOXES:
        best = torch.where(candidates, scores, torch.full_like(scores, -math.inf)).topk(MAX_TOPK).indices
        boxes, scores, candidates, classes = boxes[best], scores[best], candidates[best], classes[best]
    order, kept = masked_nms(boxes, scores, classes, candidates, nms_thresh, min(topk, len(scores)))
    return FixedDetections(
        boxes=torch.where(kept[:, None], boxes[order], torch.zeros_like(boxes[order])),
        scores=torch.where(kept, scores[order], torch.zeros_like(scores[order])),
        classes=torch.where(kept, classes[order], torch.full_like(classes[order], -1)),
        count=kept.to(torch.int64).sum().reshape(1),
    )
