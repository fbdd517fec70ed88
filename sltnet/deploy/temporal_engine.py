"""The temporal engine (docs/deployment.md#temporal-engine): runs once per reference frame.

Inputs, every one a separate tensor so the runtime rotates the window by re-binding buffers:

- per window slot i (N slots sequential, 2N + 1 symmetric, 1 for the single-frame baseline; slot
  order = time order, the reference at ``reference_position``): ``frame{i}_<name>`` for the
  frame-engine outputs ``<name>`` it uses: ``frame{i}_features`` [1, C, H_m, W_m] (the levels'
  mosaic) and ``frame{i}_boxes`` [A, 4] of every slot, ``frame{i}_objectness_logits`` [A] of the
  reference slot only;
- with long-term attention, per memory slot k of K (``NUM_KEYFRAMES``): ``memory{k}_features``
  [P, d], ``memory{k}_boxes`` [P, 4] and ``memory{k}_valid`` [P] bool, one keyframe's entry each
  (slot and row order do not matter; invalid rows are ignored).

Outputs: ``det_boxes`` [D, 4] (resized-frame pixels), ``det_scores`` [D], ``det_classes`` [D]
int64 and ``det_count`` [1] int64 — D = min(``TEST.DETECTIONS_PER_IMAGE``, RoIs x classes) slots,
the first ``det_count`` are the detections by decreasing score, the rest padding (zeros, class -1);
with long-term attention also the frame's memory entry ``entry_features`` [P, d], ``entry_boxes``
[P, 4], ``entry_valid`` [P] bool (invalid rows are zeros). The runtime binds them to a spare memory
slot, which becomes one of the K inputs when the reference frame is a keyframe: the engine writes the
memory directly, and no output is ever bound to a buffer the same call reads.

The steps are the model's (:meth:`SLTnet.score_tubelets`, its aggregation and heads) around the
static-shape tubelet linking, pooling and post-processing of :mod:`sltnet.deploy.static_ops`; R =
min(``RPN.POST_NMS_TOPK_TEST``, candidates) tubelet slots, P = min(``REF_POST_NMS_TOP_N``, R).
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sltnet.contract import (
    ANCHOR_BOXES,
    DETECTION_OUTPUTS,
    ENTRY_OUTPUTS,
    FEATURES,
    MEMORY_PARTS,
    OBJECTNESS_LOGITS,
    Window,
    memory_input_name,
    slot_input_name,
)
from sltnet.deploy.static_ops import LevelMosaic, link_tubelets_fixed, pool_mosaic, postprocess_fixed
from sltnet.modeling.baseline import FasterRCNN
from sltnet.modeling.sltnet import SLTnet


class TemporalEngine(nn.Module):
    """A window's frame outputs (+ the long-term memory) → fixed-size detections (+ a memory entry).

    Args:
        model: :class:`SLTnet` (any mode) or the single-frame :class:`FasterRCNN`, which becomes a
            window of one frame scored by the spatial head alone.
        num_anchors_per_level: A split by RPN level at the export's input size.
        mosaic: the layout of the frame engine's ``features`` at that size.
        image_size: (height, width) of the resized frame before padding.
        num_keyframes: K, memory slots (``MODEL.SPATIOTEMPORAL.NUM_KEYFRAMES``).
    """

    def __init__(
        self,
        model: SLTnet | FasterRCNN,
        num_anchors_per_level: Sequence[int],
        mosaic: LevelMosaic,
        image_size: tuple[int, int],
        num_keyframes: int,
    ) -> None:
        super().__init__()
        self.model = model
        self.num_anchors_per_level = list(num_anchors_per_level)
        self.mosaic = mosaic
        self.image_size = (image_size[0], image_size[1])
        self.temporal = isinstance(model, SLTnet)
        self.long_term = isinstance(model, SLTnet) and model.long_term
        self.window = model.window if isinstance(model, SLTnet) else Window(1)
        self.eval()  # inference mode for good: the RPN's top-k values below are the test-time ones
        rpn = model.rpn
        num_candidates = sum(min(rpn.pre_nms_topk, count) for count in self.num_anchors_per_level)
        self.num_tubelets = min(rpn.post_nms_topk, num_candidates)
        self.entry_rows = (
            min(model.num_ref_rois, self.num_tubelets) if isinstance(model, SLTnet) and model.long_term else 0
        )
        self.num_keyframes = num_keyframes if self.long_term else 0

    @property
    def feature_dim(self) -> int:
        """d, the width of memory features (SLTnet only)."""
        assert isinstance(self.model, SLTnet), "only SLTnet has memory features"
        return self.model.st_cls_predictor.cls_score.in_features

    def slot_outputs(self, slot: int) -> list[str]:
        """The frame-engine outputs window slot ``slot`` binds: features and boxes of every frame; the
        objectness logits only of the reference frame, the one tubelet linking ranks anchors by."""
        logits = [OBJECTNESS_LOGITS] if slot == self.window.reference_position else []
        return [FEATURES, *logits, ANCHOR_BOXES]

    @property
    def input_names(self) -> list[str]:
        names = [
            slot_input_name(slot, output) for slot in range(self.window.size) for output in self.slot_outputs(slot)
        ]
        return names + [memory_input_name(slot, part) for slot in range(self.num_keyframes) for part in MEMORY_PARTS]

    @property
    def output_names(self) -> list[str]:
        return list(DETECTION_OUTPUTS) + (list(ENTRY_OUTPUTS) if self.long_term else [])

    def empty_entry(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """An all-invalid memory slot: features [P, d], boxes [P, 4], valid [P] bool."""
        return (
            like.new_zeros((self.entry_rows, self.feature_dim)),
            like.new_zeros((self.entry_rows, 4)),
            torch.zeros(self.entry_rows, dtype=torch.bool, device=like.device),
        )

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        """Inputs and outputs in the order of :attr:`input_names` and :attr:`output_names`."""
        model, rpn, roi_heads = self.model, self.model.rpn, self.model.roi_heads
        named = dict(zip(self.input_names, inputs))
        features = [named[slot_input_name(slot, FEATURES)] for slot in range(self.window.size)]
        tubelets = link_tubelets_fixed(
            [named[slot_input_name(slot, ANCHOR_BOXES)] for slot in range(self.window.size)],
            named[slot_input_name(self.window.reference_position, OBJECTNESS_LOGITS)],
            self.num_anchors_per_level,
            self.window.reference_position,
            self.image_size,
            rpn.pre_nms_topk,
            rpn.post_nms_topk,
            rpn.nms_thresh,
            rpn.min_size,
        )
        pooled = [
            pool_mosaic(roi_heads.box_pooler, frame_features, self.mosaic, frame_boxes)
            for frame_features, frame_boxes in zip(features, tubelets.boxes)
        ]
        reference_rois = pooled[self.window.reference_position]
        reference_boxes = tubelets.boxes[self.window.reference_position]
        if isinstance(model, SLTnet):
            if self.long_term:  # the K slots' rows side by side: [K·P, d], [K·P, 4], [K·P]
                memory_features, memory_boxes, memory_valid = (
                    torch.cat([named[memory_input_name(slot, part)] for slot in range(self.num_keyframes)])
                    for part in MEMORY_PARTS
                )
            else:
                memory_features, memory_boxes, memory_valid = self.empty_entry(reference_boxes)
            aggregated = model.aggregation(pooled, self.window.reference_position)
            probs, box_deltas, entry_features = model.score_tubelets(
                reference_rois,
                aggregated,
                reference_boxes,
                memory_features,
                memory_boxes,
                memory_valid,
                valid=tubelets.valid,
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
