"""SLTnet (docs/method.md): the single-frame detector made temporal by short-term anchor linking,
long-term self-guided attention and the spatio-temporal double head.

The model is split the way it is deployed: :meth:`SLTnet.frame_outputs` runs once per frame
(backbone + RPN, the frame engine) and :meth:`SLTnet.detect_window` once per reference frame (tubelet
linking, RoIAlign, aggregation, attention, double head, the temporal engine). Streaming state (the
window of frame outputs and the keyframe memory) lives outside the model, in
:class:`sltnet.modeling.streaming.StreamingDetector`.

Module tree: ``backbone``, ``rpn`` and ``roi_heads`` exactly as in
:class:`~sltnet.modeling.baseline.FasterRCNN` (so a stage-1 checkpoint loads unchanged), plus
``st_box_head`` (``fcs``/``Wgs``/``Wqs``/``Wks``/``Wvs``) and ``st_cls_predictor.cls_score``.
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sltnet.contract import Window
from sltnet.data.batching import FrameGroup, TrainingGroup
from sltnet.modeling.aggregation import TubeletAggregation, pool_tubelets
from sltnet.modeling.backbone import FPNBackbone
from sltnet.modeling.baseline import FasterRCNN
from sltnet.modeling.box_head import Detections, RoIHeads, box_head_losses, postprocess_detections, sample_rois
from sltnet.modeling.rpn import RegionProposalNetwork, RPNOutputs
from sltnet.modeling.st_head import STAttentionBoxHead, STClassifier, fuse_double_head_probs
from sltnet.modeling.tubelets import Tubelets, link_tubelets


class FrameOutputs(NamedTuple):
    """What one frame contributes to every window it is part of (the frame engine's outputs).

    Attributes:
        features: one [1, C, H_l, W_l] tensor per box-head level (``MODEL.ROI_HEADS.IN_FEATURES``).
        objectness_logits: [A] of all anchors, levels concatenated.
        boxes: [A, 4] decoded, unclipped boxes of all anchors.
        num_anchors_per_level: A split by RPN level (depends on the input size only).
    """

    features: list[Tensor]
    objectness_logits: Tensor
    boxes: Tensor
    num_anchors_per_level: list[int]


class MemoryEntry(NamedTuple):
    """The keyframe memory entry of a reference frame: its first P tubelets.

    Attributes:
        features: [min(R, P), d] ReLU(fc_0) features.
        boxes: [min(R, P), 4] reference-frame boxes.
    """

    features: Tensor
    boxes: Tensor


class SLTnet(FasterRCNN):
    """The SLTnet video detector: the single-frame detector (its ``backbone``, ``rpn`` and spatial
    head ``roi_heads``) plus the spatio-temporal head.

    Args:
        backbone, rpn, roi_heads, rpn_in_features, roi_in_features: as :class:`FasterRCNN`.
        st_box_head: :class:`STAttentionBoxHead` (long-term attention) or the plain 2-FC ST head.
        st_cls_predictor: class logits of the ST head.
        aggregation: max or adaptive aggregation of tubelet RoI features over the window.
        window: N and the mode (``NUM_FRAMES``, ``FORWARD_AGGREGATION``).
        double_head: fuse spatial and ST probabilities (docs/method.md#double-head-and-inference);
            else the ST head alone scores.
        num_ref_rois: P, tubelets per support group and per memory entry.
        train_current_references: in training, append the sample's own first P rows to the
            support groups' references (``TRAIN_REFERENCES`` "support_and_current"); else the
            support groups alone are the references, as in the original.
        spatial_cls_loss: in training, add the spatial head's cross-entropy when that head trains.
    """

    is_temporal = True

    def __init__(
        self,
        backbone: FPNBackbone,
        rpn: RegionProposalNetwork,
        roi_heads: RoIHeads,
        rpn_in_features: Sequence[str],
        roi_in_features: Sequence[str],
        st_box_head: nn.Module,
        st_cls_predictor: STClassifier,
        aggregation: TubeletAggregation,
        window: Window,
        double_head: bool,
        num_ref_rois: int,
        train_current_references: bool = False,
        spatial_cls_loss: bool = False,
    ) -> None:
        super().__init__(backbone, rpn, roi_heads, rpn_in_features, roi_in_features)
        self.st_box_head = st_box_head
        self.st_cls_predictor = st_cls_predictor
        self.aggregation = aggregation
        self.window = window
        self.double_head = double_head
        self.num_ref_rois = num_ref_rois
        self.train_current_references = train_current_references
        self.spatial_cls_loss = spatial_cls_loss

    @property
    def long_term(self) -> bool:
        return isinstance(self.st_box_head, STAttentionBoxHead)

    # ------------------------------------------------------------------------------------------
    # Per frame (frame engine)
    # ------------------------------------------------------------------------------------------
    def frame_outputs(self, image: Tensor) -> FrameOutputs:
        """Run backbone + RPN once on one frame.

        Args:
            image: [1, 3, H, W] preprocessed, padded frame.
        """
        features, rpn_outputs = self.level_outputs(image)
        return FrameOutputs(
            features, rpn_outputs.objectness_logits[0], rpn_outputs.boxes[0], rpn_outputs.num_anchors_per_level
        )

    # ------------------------------------------------------------------------------------------
    # Per reference frame (temporal engine)
    # ------------------------------------------------------------------------------------------
    def link(
        self,
        boxes: Tensor,
        logits: Tensor,
        num_anchors_per_level: Sequence[int],
        reference: int,
        image_size: tuple[int, int],
    ) -> Tubelets:
        """Tubelet proposals of a window (docs/method.md#short-term-anchor-linking) with the RPN's settings
        for the current mode."""
        return link_tubelets(
            boxes,
            logits,
            num_anchors_per_level,
            reference,
            image_size,
            self.rpn.pre_nms_topk,
            self.rpn.post_nms_topk,
            self.rpn.nms_thresh,
            self.rpn.min_size,
        )

    def _tubelet_features(self, features: list[Tensor], tubelet_boxes: Tensor, reference: int) -> tuple[Tensor, Tensor]:
        """Pooled reference-frame RoI features [R, C, S, S] and aggregated tubelet features [R, C, S, S]."""
        pooled = pool_tubelets(self.roi_heads.box_pooler, features, tubelet_boxes)
        return pooled[reference], self.aggregation(pooled, reference)

    def _st_features(
        self,
        aggregated: Tensor,
        boxes: Tensor,
        ref_features: Tensor,
        ref_boxes: Tensor,
        ref_valid: Tensor | None = None,
        valid: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """ST head features [R, d] and the rows that become a memory entry ([min(R, P), d]; empty
        without long-term attention)."""
        if self.long_term:
            return self.st_box_head(aggregated, boxes, ref_features, ref_boxes, ref_valid, valid)
        return self.st_box_head(aggregated), aggregated.new_zeros((0, 0))

    def score_tubelets(
        self,
        reference_rois: Tensor,
        aggregated: Tensor,
        reference_boxes: Tensor,
        memory_features: Tensor,
        memory_boxes: Tensor,
        memory_valid: Tensor | None = None,
        valid: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The double head on a window's tubelets (docs/method.md#long-term-self-guided-attention,
        # double-head-and-inference).

        Args:
            reference_rois: [R, C, S, S] RoI features of the tubelets' reference-frame boxes.
            aggregated: [R, C, S, S] aggregated tubelet features.
            reference_boxes: [R, 4] the tubelets' reference-frame boxes.
            memory_features, memory_boxes: [M', d] and [M', 4] long-term references.
            memory_valid, valid: optional [M'] and [R] bool masks of fixed-size inputs (the exported
                temporal engine), False for padding rows.
        Returns:
            class probabilities [R, K + 1], class-specific box deltas [R, 4K] (spatial head) and the
            memory-entry features [min(R, P), d] (empty without long-term attention).
        """
        spatial_logits, box_deltas = self.roi_heads.box_predictor(self.roi_heads.box_head(reference_rois))
        st_features, entry_features = self._st_features(
            aggregated, reference_boxes, memory_features, memory_boxes, memory_valid, valid
        )
        probs = self.st_cls_predictor(st_features).softmax(dim=1)
        if self.double_head:
            probs = fuse_double_head_probs(spatial_logits.softmax(dim=1), probs)
        return probs, box_deltas, entry_features

    def detect_window(
        self,
        window: Sequence[FrameOutputs],
        reference: int,
        image_size: tuple[int, int],
        memory_features: Tensor,
        memory_boxes: Tensor,
        score_thresh: float | None = None,
    ) -> tuple[Detections, MemoryEntry]:
        """Detections in the reference frame of a window (docs/method.md).

        Args:
            window: the window's frame outputs in time order; padding repeats a frame's outputs.
            reference: index of the reference frame in ``window``.
            image_size: (height, width) of the frames before padding.
            memory_features: [M', d] long-term references (``LongTermMemory.references()``).
            memory_boxes: [M', 4] their boxes.
            score_thresh: overrides ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``.
        Returns:
            the reference frame's detections (input-image pixels) and its memory entry.
        """
        boxes = torch.stack([frame.boxes for frame in window])
        logits = torch.stack([frame.objectness_logits for frame in window])
        features = [torch.cat(level) for level in zip(*(frame.features for frame in window))]
        tubelets = self.link(boxes, logits, window[reference].num_anchors_per_level, reference, image_size)
        reference_boxes = tubelets.boxes[reference]

        reference_rois, aggregated = self._tubelet_features(features, tubelets.boxes, reference)
        probs, box_deltas, entry_features = self.score_tubelets(
            reference_rois, aggregated, reference_boxes, memory_features, memory_boxes
        )
        detections = postprocess_detections(
            probs,
            box_deltas,
            reference_boxes,
            image_size,
            box_coder=self.roi_heads.box_coder,
            score_thresh=self.roi_heads.score_thresh if score_thresh is None else score_thresh,
            nms_thresh=self.roi_heads.nms_thresh,
            topk=self.roi_heads.detections_per_image,
        )
        entry = MemoryEntry(entry_features, reference_boxes[: len(entry_features)])
        return detections, entry

    # ------------------------------------------------------------------------------------------
    # Training (stage 2, docs/method.md#two-stage-training)
    # ------------------------------------------------------------------------------------------
    def _window_tubelets(self, group: FrameGroup) -> tuple[list[Tensor], RPNOutputs, Tubelets]:
        """Backbone + RPN of a group and its tubelet proposals (fixed inputs of the heads: no gradient
        flows through the boxes or the ranking)."""
        features, rpn_outputs = self.level_outputs(group.images)
        tubelets = self.link(
            rpn_outputs.boxes,
            rpn_outputs.objectness_logits.detach(),
            rpn_outputs.num_anchors_per_level,
            group.reference,
            group.image_size,
        )
        return features, rpn_outputs, tubelets

    def _support_references(self, support: Sequence[FrameGroup], like: Tensor) -> tuple[Tensor, Tensor]:
        """Long-term references from support groups: per group, the reference frame's first
        (P - #GT) tubelets plus its ground-truth tubelets, aggregated, through ReLU(fc_0). Only fc_0
        learns from them: backbone, RPN and pooling run without gradients, as in the original.
        ``like`` gives the device and dtype of the empty result when there is no support group."""
        assert isinstance(self.st_box_head, STAttentionBoxHead), "support references need long-term attention"
        ref_features, ref_boxes = [], []
        for group in support:
            with torch.no_grad():
                features, _, tubelets = self._window_tubelets(group)
                num_proposals = max(self.num_ref_rois - group.boxes.shape[1], 0)
                tubes = torch.cat([tubelets.boxes[:, :num_proposals], group.boxes], dim=1)
                _, aggregated = self._tubelet_features(features, tubes, group.reference)
            ref_features.append(self.st_box_head.embed(aggregated))
            ref_boxes.append(tubes[group.reference])
        if not ref_features:
            return like.new_zeros((0, self.st_cls_predictor.cls_score.in_features)), like.new_zeros((0, 4))
        return torch.cat(ref_features), torch.cat(ref_boxes)

    def _trains(self, *modules: nn.Module) -> bool:
        """Whether any parameter of ``modules`` is trainable (not frozen by ``FREEZE_*``)."""
        return any(param.requires_grad for module in modules for param in module.parameters())

    def training_losses(self, groups: Sequence[TrainingGroup]) -> dict[str, Tensor]:
        """Stage-2 losses (docs/method.md#two-stage-training), each the mean over groups.

        RoIs are sampled on the reference frame and the same indices applied to every frame, so
        sampled RoIs stay tubelets. Always ``loss_st_cls``, the cross-entropy of the ST classifier.
        A loss that can reach an unfrozen part is added next to it: ``loss_rpn_cls`` and
        ``loss_rpn_loc`` (over every frame of the group) when the RPN or the backbone trains,
        ``loss_box_reg`` on the spatial head's deltas (and with ``spatial_cls_loss`` ``loss_cls`` on
        its logits) when the spatial head or the backbone trains. A frozen part gets no gradient.
        """
        per_group = [self._group_losses(group) for group in groups]
        return {name: torch.stack([losses[name] for losses in per_group]).mean() for name in per_group[0]}

    def _group_losses(self, group: TrainingGroup) -> dict[str, Tensor]:
        frame_parts_train = self._trains(self.backbone, self.rpn)
        with torch.set_grad_enabled(frame_parts_train):
            features, rpn_outputs, tubelets = self._window_tubelets(group)
        losses = {}
        if frame_parts_train:
            losses.update(self.rpn.losses(rpn_outputs, list(group.boxes)))
        reference = group.reference
        samples = sample_rois(
            tubelets.boxes[reference],
            group.boxes[reference],
            group.classes,
            self.roi_heads.matcher,
            self.roi_heads.sampler,
            self.roi_heads.num_classes,
            append_gt=True,
        )
        # Ground-truth tubelets are appended after the proposals, matching sample_rois' indices.
        tubes = torch.cat([tubelets.boxes, group.boxes], dim=1)[:, samples.indices]
        reference_rois, aggregated = self._tubelet_features(features, tubes, reference)
        if self.long_term:
            ref_features, ref_boxes = self._support_references(group.support, aggregated)
            st_features, _ = self.st_box_head(
                aggregated, tubes[reference], ref_features, ref_boxes, append_current=self.train_current_references
            )
        else:
            st_features = self.st_box_head(aggregated)
        losses["loss_st_cls"] = F.cross_entropy(self.st_cls_predictor(st_features), samples.classes)
        if self._trains(self.roi_heads, self.backbone):
            spatial_logits, box_deltas = self.roi_heads.box_predictor(self.roi_heads.box_head(reference_rois))
            spatial = box_head_losses(
                spatial_logits,
                box_deltas,
                samples.boxes,
                samples.classes,
                samples.gt_boxes,
                self.roi_heads.box_coder,
                self.roi_heads.smooth_l1_beta,
            )
            losses["loss_box_reg"] = spatial["loss_box_reg"]
            if self.spatial_cls_loss:
                losses["loss_cls"] = spatial["loss_cls"]
        return losses
