"""Box head of the second stage (docs/method.md#single-frame-baseline): RoI sampling, 2-FC head, predictor,
losses, inference.

State-dict names (under the detector's ``roi_heads.`` prefix): ``box_head.fc1``, ``box_head.fc2``
(the two FC layers), ``box_predictor.cls_score`` (K + 1 logits, background last) and
``box_predictor.bbox_pred`` (4K class-specific deltas, class k in columns 4k .. 4k + 3).

The pieces are separate so that the temporal model can reuse them: :func:`sample_rois` returns the
indices it sampled (to apply them to every frame of a tubelet), and :func:`postprocess_detections`
takes class probabilities, so the double head can pass fused ones.
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.ops import batched_nms, clip_boxes_to_image
from yacs.config import CfgNode

from sltnet.errors import SltnetError
from sltnet.modeling.matching import FOREGROUND, build_matcher, match_boxes
from sltnet.modeling.poolers import MultiLevelRoIAlign


class BoxHeadFeatures(nn.Module):
    """flatten -> fc1 -> ReLU -> fc2 -> ReLU: [R, C, S, S] -> [R, fc_dim]."""

    def __init__(self, in_channels: int, resolution: int, fc_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels * resolution * resolution, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        for layer in (self.fc1, self.fc2):
            nn.init.kaiming_uniform_(layer.weight, a=1)
            nn.init.constant_(layer.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))


class BoxPredictor(nn.Module):
    """Class logits (K + 1, background last) and class-specific box deltas (4K) from RoI features."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(in_dim, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.constant_(layer.bias, 0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """[R, D] -> class logits [R, K + 1], box deltas [R, 4K]."""
        return self.cls_score(x), self.bbox_pred(x)


class RoISamples(NamedTuple):
    """RoIs sampled from one image for training.

    Attributes:
        indices: [S] int64 rows of ``cat([proposals, gt_boxes])`` that were sampled.
        boxes: [S, 4] the sampled boxes.
        classes: [S] int64 class of the matched ground truth, K for background.
        gt_boxes: [S, 4] matched ground-truth box (meaningful for foreground rows only).
    """

    indices: Tensor
    boxes: Tensor
    classes: Tensor
    gt_boxes: Tensor


def sample_rois(
    proposals: Tensor,
    gt_boxes: Tensor,
    gt_classes: Tensor,
    matcher: Matcher,
    sampler: BalancedPositiveNegativeSampler,
    num_classes: int,
    append_gt: bool = True,
) -> RoISamples:
    """Match proposals to ground truth and sample a balanced set of RoIs.

    Args:
        proposals: [R, 4] proposal boxes.
        gt_boxes: [G, 4] ground-truth boxes; G may be 0 (every RoI is background).
        gt_classes: [G] int64 classes 0..K-1.
        matcher: IoU >= 0.5 foreground, else background.
        sampler: RoIs per image (512) and the upper bound of the foreground share (0.25).
        num_classes: K.
        append_gt: append the ground-truth boxes to the proposals before matching, so every object
            has at least one foreground RoI; indices >= R then point at ground-truth box (index - R).
    """
    boxes = torch.cat([proposals, gt_boxes]) if append_gt else proposals
    matched_index, labels = match_boxes(matcher, gt_boxes, boxes)
    positive_mask, negative_mask = sampler([labels])
    indices = torch.nonzero(positive_mask[0].bool() | negative_mask[0].bool()).squeeze(1)
    matched_index = matched_index[indices]
    if len(gt_boxes):
        foreground = labels[indices] == FOREGROUND
        classes = torch.where(foreground, gt_classes[matched_index], num_classes)
        matched_gt_boxes = gt_boxes[matched_index]
    else:
        classes = torch.full_like(indices, num_classes)
        # No foreground row reads them; the RoIs stand in for the missing ground truth.
        matched_gt_boxes = boxes[indices]
    return RoISamples(indices, boxes[indices], classes, matched_gt_boxes)


def box_head_losses(
    class_logits: Tensor,
    box_deltas: Tensor,
    rois: Tensor,
    classes: Tensor,
    gt_boxes: Tensor,
    box_coder: BoxCoder,
    smooth_l1_beta: float,
) -> dict[str, Tensor]:
    """Cross-entropy over all sampled RoIs and smooth L1 on the foreground class's deltas.

    Args:
        class_logits: [S, K + 1].
        box_deltas: [S, 4K].
        rois, classes, gt_boxes: the sampled RoIs of the batch (see :class:`RoISamples`), concatenated.
    Returns:
        ``loss_cls`` (mean over RoIs) and ``loss_box_reg`` (sum over foreground RoIs / S).
    """
    num_classes = class_logits.shape[1] - 1
    foreground = torch.nonzero(classes < num_classes).squeeze(1)
    columns = classes[foreground, None] * 4 + torch.arange(4, device=classes.device)
    predicted = box_deltas[foreground[:, None], columns]
    targets = box_coder.encode_single(gt_boxes[foreground], rois[foreground])
    loss_box_reg = F.smooth_l1_loss(predicted, targets, beta=smooth_l1_beta, reduction="sum")
    return {
        "loss_cls": F.cross_entropy(class_logits, classes),
        "loss_box_reg": loss_box_reg / max(len(classes), 1),
    }


class Detections(NamedTuple):
    """Detections of one image, by decreasing score.

    Attributes:
        boxes: [n, 4] (x1, y1, x2, y2) in input-image pixels.
        scores: [n].
        classes: [n] int64 in 0..K-1.
    """

    boxes: Tensor
    scores: Tensor
    classes: Tensor


def detection_candidates(
    class_probs: Tensor,
    box_deltas: Tensor,
    proposals: Tensor,
    image_size: tuple[int, int],
    *,
    box_coder: BoxCoder,
    score_thresh: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Every (RoI, class) pair as a candidate detection, before NMS.

    Args:
        class_probs: [R, K + 1] class probabilities, background last (dropped).
        box_deltas: [R, 4K] class-specific deltas.
        proposals: [R, 4] the RoIs.
        image_size: (height, width) for clipping.
    Returns:
        boxes: [R, K, 4] the class's deltas applied to the RoI, clipped to the image.
        scores: [R, K].
        candidates: [R, K] bool, False for a non-finite box or score or a score <= ``score_thresh``.
    """
    num_rois, num_classes = class_probs.shape[0], class_probs.shape[1] - 1
    boxes = box_coder.decode_single(box_deltas, proposals).view(num_rois, num_classes, 4)
    scores = class_probs[:, :-1]
    # Test finiteness before clipping, which would turn infinite coordinates into borders.
    candidates = (scores > score_thresh) & torch.isfinite(boxes).all(dim=2) & torch.isfinite(scores)
    return clip_boxes_to_image(boxes, image_size), scores, candidates


def postprocess_detections(
    class_probs: Tensor,
    box_deltas: Tensor,
    proposals: Tensor,
    image_size: tuple[int, int],
    *,
    box_coder: BoxCoder,
    score_thresh: float,
    nms_thresh: float,
    topk: int,
) -> Detections:
    """Final detections of one image (docs/method.md#single-frame-baseline).

    The candidates of :func:`detection_candidates` are kept; NMS runs per class; the best ``topk``
    remain.

    Args:
        class_probs: [R, K + 1] class probabilities, background last (dropped).
        box_deltas: [R, 4K] class-specific deltas.
        proposals: [R, 4] the RoIs.
        image_size: (height, width) for clipping.
    """
    boxes, scores, candidates = detection_candidates(
        class_probs, box_deltas, proposals, image_size, box_coder=box_coder, score_thresh=score_thresh
    )
    rows, classes = torch.nonzero(candidates, as_tuple=True)
    boxes, scores = boxes[rows, classes], scores[rows, classes]
    keep = batched_nms(boxes, scores, classes, nms_thresh)[:topk]
    return Detections(boxes[keep], scores[keep], classes[keep])


class RoIHeads(nn.Module):
    """Pooler, box head and predictor with their training and inference steps.

    Args:
        box_pooler: multi-level RoIAlign over the box head's FPN levels.
        box_head: the 2-FC head.
        box_predictor: class logits and deltas.
        box_coder: delta coding, weights (10, 10, 5, 5).
        matcher: proposal-to-ground-truth matcher (IoU 0.5).
        batch_size_per_image, positive_fraction: RoI sampling (512, 0.25).
        append_gt: append ground-truth boxes to the proposals in training.
        smooth_l1_beta: of the box loss; 0 gives L1.
        score_thresh, nms_thresh, detections_per_image: inference settings.
    """

    def __init__(
        self,
        box_pooler: MultiLevelRoIAlign,
        box_head: BoxHeadFeatures,
        box_predictor: BoxPredictor,
        box_coder: BoxCoder,
        matcher: Matcher,
        batch_size_per_image: int,
        positive_fraction: float,
        append_gt: bool,
        smooth_l1_beta: float,
        score_thresh: float,
        nms_thresh: float,
        detections_per_image: int,
    ) -> None:
        super().__init__()
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.box_coder = box_coder
        self.matcher = matcher
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.append_gt = append_gt
        self.smooth_l1_beta = smooth_l1_beta
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image

    @property
    def num_classes(self) -> int:
        return self.box_predictor.cls_score.out_features - 1

    def forward(self, features: list[Tensor], rois: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Class logits [sum R_i, K + 1] and box deltas [sum R_i, 4K] of B images' RoIs.

        Args:
            features: one [B, C, H_l, W_l] tensor per pooler level, finest first.
            rois: B tensors [R_i, 4].
        """
        return self.box_predictor(self.box_head(self.box_pooler(features, rois)))

    def losses(
        self, features: list[Tensor], proposals: list[Tensor], gt_boxes: list[Tensor], gt_classes: list[Tensor]
    ) -> dict[str, Tensor]:
        """Sample RoIs per image (:func:`sample_rois`) and return :func:`box_head_losses`."""
        samples = [
            sample_rois(p, b, c, self.matcher, self.sampler, self.num_classes, self.append_gt)
            for p, b, c in zip(proposals, gt_boxes, gt_classes)
        ]
        class_logits, box_deltas = self(features, [s.boxes for s in samples])
        return box_head_losses(
            class_logits,
            box_deltas,
            torch.cat([s.boxes for s in samples]),
            torch.cat([s.classes for s in samples]),
            torch.cat([s.gt_boxes for s in samples]),
            self.box_coder,
            self.smooth_l1_beta,
        )

    def inference(
        self, features: list[Tensor], proposals: list[Tensor], image_sizes: Sequence[tuple[int, int]]
    ) -> list[Detections]:
        """Detections of each image from its proposals (:func:`postprocess_detections`)."""
        class_logits, box_deltas = self(features, proposals)
        rois_per_image = [len(p) for p in proposals]
        return [
            postprocess_detections(
                logits.softmax(dim=1),
                deltas,
                image_proposals,
                image_size,
                box_coder=self.box_coder,
                score_thresh=self.score_thresh,
                nms_thresh=self.nms_thresh,
                topk=self.detections_per_image,
            )
            for logits, deltas, image_proposals, image_size in zip(
                class_logits.split(rois_per_image), box_deltas.split(rois_per_image), proposals, image_sizes
            )
        ]


def build_roi_heads(cfg: CfgNode, in_channels: int, strides: dict[str, int]) -> RoIHeads:
    """Box head from ``MODEL.ROI_HEADS``, ``MODEL.ROI_BOX_HEAD`` and ``TEST.DETECTIONS_PER_IMAGE``.

    Args:
        in_channels: channels of the backbone levels.
        strides: stride of each backbone level by name; ``MODEL.ROI_HEADS.IN_FEATURES`` picks the levels.
    Raises:
        SltnetError: unsupported option values.
    """
    heads, box_head = cfg.MODEL.ROI_HEADS, cfg.MODEL.ROI_BOX_HEAD
    if box_head.NUM_FC != 2:
        raise SltnetError(f"MODEL.ROI_BOX_HEAD.NUM_FC: only 2 is supported, got {box_head.NUM_FC}")
    if box_head.POOLER_TYPE != "ROIAlignV2":
        raise SltnetError(
            f"MODEL.ROI_BOX_HEAD.POOLER_TYPE: only 'ROIAlignV2' is supported, got {box_head.POOLER_TYPE!r}"
        )
    if box_head.CLS_AGNOSTIC_BBOX_REG:
        raise SltnetError("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG: only class-specific regression is supported")
    resolution = box_head.POOLER_RESOLUTION
    return RoIHeads(
        box_pooler=MultiLevelRoIAlign(
            resolution, [1.0 / strides[name] for name in heads.IN_FEATURES], box_head.POOLER_SAMPLING_RATIO
        ),
        box_head=BoxHeadFeatures(in_channels, resolution, box_head.FC_DIM),
        box_predictor=BoxPredictor(box_head.FC_DIM, heads.NUM_CLASSES),
        box_coder=BoxCoder(tuple(box_head.BBOX_REG_WEIGHTS)),
        matcher=build_matcher(heads.IOU_THRESHOLDS, heads.IOU_LABELS, False, "MODEL.ROI_HEADS"),
        batch_size_per_image=heads.BATCH_SIZE_PER_IMAGE,
        positive_fraction=heads.POSITIVE_FRACTION,
        append_gt=heads.PROPOSAL_APPEND_GT,
        smooth_l1_beta=box_head.SMOOTH_L1_BETA,
        score_thresh=heads.SCORE_THRESH_TEST,
        nms_thresh=heads.NMS_THRESH_TEST,
        detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
    )
