"""The temporal engine (DESIGN B.2): runs once per reference frame.

Inputs, every one a separate tensor so the runtime rotates the window by re-binding buffers:

- per window slot i (N slots sequential, 2N + 1 symmetric, 1 for the single-frame baseline; slot
  order = time order, the reference at ``reference_position``): ``frame{i}_<name>`` for each
  frame-engine output ``<name>``: ``frame{i}_p2`` .. ``frame{i}_p5`` [1, C, H_l, W_l],
  ``frame{i}_objectness_logits`` [A], ``frame{i}_boxes`` [A, 4];
- with long-term attention: ``memory_features`` [K·P, d], ``memory_boxes`` [K·P, 4] and
  ``memory_valid`` [K·P] bool (K = ``NUM_KEYFRAMES`` slots of P rows; row order does not matter).

Outputs: ``det_boxes`` [D, 4] (resized-frame pixels), ``det_scores`` [D], ``det_classes`` [D]
int64 and ``det_count`` [1] int64 — D = min(``TEST.DETECTIONS_PER_IMAGE``, RoIs x classes) slots,
the first ``det_count`` are the detections by decreasing score, the rest padding (zeros, class -1);
with long-term attention also the frame's memory entry ``entry_features`` [P, d], ``entry_boxes``
[P, 4], ``entry_valid`` [P] bool (invalid rows are zeros), which the runtime writes into a memory slot
when the reference frame is a keyframe.

The steps are the model's (:meth:`SLTnet.score_tubelets`, its aggregation and heads) around the
static-shape tubelet linking, pooling and post-processing of :mod:`export.static_ops`; R =
min(``RPN.POST_NMS_TOPK_TEST``, candidates) tubelet slots, P = min(``REF_POST_NMS_TOP_N``, R).
"""

from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from export.frame_engine import ANCHOR_BOXES, OBJECTNESS_LOGITS
from export.static_ops import link_tubelets_fixed, pool_fixed, postprocess_fixed
from sltnet.modeling.baseline import FasterRCNN
from sltnet.modeling.sltnet import SLTnet

MEMORY_INPUTS = ("memory_features", "memory_boxes", "memory_valid")
DETECTION_OUTPUTS = ("det_boxes", "det_scores", "det_classes", "det_count")
ENTRY_OUTPUTS = ("entry_features", "entry_boxes", "entry_valid")


def slot_input_name(slot: Union[int, str], frame_output: str) -> str:
    """The temporal engine's input that window slot ``slot`` binds to frame-engine output ``frame_output``
    (with ``slot`` = "{slot}": the name template the manifest records)."""
    return f"frame{slot}_{frame_output}"


class TemporalEngine(nn.Module):
    """A window's frame outputs (+ the long-term memory) → fixed-size detections (+ a memory entry).

    Args:
        model: :class:`SLTnet` (any mode) or the single-frame :class:`FasterRCNN`, which becomes a
            window of one frame scored by the spatial head alone.
        num_anchors_per_level: A split by RPN level at the export's input size.
        image_size: (height, width) of the resized frame before padding.
        num_keyframes: K, memory slots (``MODEL.SPATIOTEMPORAL.NUM_KEYFRAMES``).
    """

    def __init__(
        self,
        model: Union[SLTnet, FasterRCNN],
        num_anchors_per_level: Sequence[int],
        image_size: Tuple[int, int],
        num_keyframes: int,
    ) -> None:
        super().__init__()
        self.model = model
        self.num_anchors_per_level = list(num_anchors_per_level)
        self.image_size = tuple(image_size)
        self.temporal = isinstance(model, SLTnet)
        self.long_term = self.temporal and model.long_term
        self.window_size = model.window_size if self.temporal else 1
        self.reference_position = model.reference_position if self.temporal else 0
        self.eval()  # inference mode for good: the RPN's top-k values below are the test-time ones
        rpn = model.rpn
        num_candidates = sum(min(rpn.pre_nms_topk, count) for count in self.num_anchors_per_level)
        self.num_tubelets = min(rpn.post_nms_topk, num_candidates)
        self.entry_rows = min(model.num_ref_rois, self.num_tubelets) if self.long_term else 0
        self.memory_rows = num_keyframes * self.entry_rows

    @property
    def levels(self) -> List[str]:
        return list(self.model.roi_in_features)

    @property
    def feature_dim(self) -> int:
        """d, the width of memory features (SLTnet only)."""
        return self.model.st_cls_predictor.cls_score.in_features

    @property
    def input_names(self) -> List[str]:
        frame_outputs = [*self.levels, OBJECTNESS_LOGITS, ANCHOR_BOXES]
        names = [slot_input_name(slot, output) for slot in range(self.window_size) for output in frame_outputs]
        return names + (list(MEMORY_INPUTS) if self.long_term else [])

    @property
    def output_names(self) -> List[str]:
        return list(DETECTION_OUTPUTS) + (list(ENTRY_OUTPUTS) if self.long_term else [])

    def empty_memory(self, like: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """An all-invalid memory: features [K·P, d], boxes [K·P, 4], valid [K·P] bool."""
        return (
            like.new_zeros((self.memory_rows, self.feature_dim)),
            like.new_zeros((self.memory_rows, 4)),
            torch.zeros(self.memory_rows, dtype=torch.bool, device=like.device),
        )

    def forward(self, *inputs: Tensor) -> Tuple[Tensor, ...]:
        """Inputs and outputs in the order of :attr:`input_names` and :attr:`output_names`."""
        model, rpn, roi_heads = self.model, self.model.rpn, self.model.roi_heads
        per_slot = len(self.levels) + 2
        slots = [inputs[i * per_slot : (i + 1) * per_slot] for i in range(self.window_size)]
        tubelets = link_tubelets_fixed(
            torch.stack([slot[-1] for slot in slots]),
            torch.stack([slot[-2] for slot in slots]),
            self.num_anchors_per_level,
            self.reference_position,
            self.image_size,
            rpn.pre_nms_topk,
            rpn.post_nms_topk,
            rpn.nms_thresh,
            rpn.min_size,
        )
        pooled = [
            pool_fixed(roi_heads.box_pooler, list(slot[:-2]), frame_boxes)
            for slot, frame_boxes in zip(slots, tubelets.boxes)
        ]
        reference_rois = pooled[self.reference_position]
        reference_boxes = tubelets.boxes[self.reference_position]
        if self.temporal:
            memory = inputs[self.window_size * per_slot :] if self.long_term else self.empty_memory(reference_boxes)
            aggregated = model.aggregation(torch.stack(pooled), self.reference_position)
            probs, box_deltas, entry_features = model.score_tubelets(
                reference_rois, aggregated, reference_boxes, *memory, valid=tubelets.valid
            )
        else:
            class_logits, box_deltas = roi_heads.box_predictor(roi_heads.box_head(reference_rois))
            probs = class_logits.softmax(dim=1)
        detections = postprocess_fixed(
            probs,
            box_deltas,
            reference_boxes,
            tubelets.valid,
            self.image_size,
            box_coder=roi_heads.box_coder,
            score_thresh=roi_heads.score_thresh,
            nms_thresh=roi_heads.nms_thresh,
            topk=roi_heads.detections_per_image,
        )
        if not self.long_term:
            return tuple(detections)
        entry_valid = tubelets.valid[: self.entry_rows]
        entry_features = torch.where(entry_valid[:, None], entry_features, torch.zeros_like(entry_features))
        return (*detections, entry_features, reference_boxes[: self.entry_rows], entry_valid)
