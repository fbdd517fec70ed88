"""Region proposal network (docs/method.md#single-frame-baseline).

State-dict names (under the detector's ``rpn.`` prefix): ``head.conv`` (3x3, shared over levels),
``head.objectness_logits`` (1x1 to a logits) and ``head.anchor_deltas`` (1x1 to 4a deltas), where a
is the number of anchors per location (3).

The network's per-anchor outputs cover every anchor of every level in the order of
:mod:`sltnet.modeling.anchors` (levels finest first; within a level (y, x, anchor) row-major). The
temporal model keeps these outputs per frame and links anchors across frames, so proposal selection
is the separate function :func:`select_proposals`, which also returns the chosen anchor indices.
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
from sltnet.modeling.anchors import AnchorGenerator
from sltnet.modeling.matching import FOREGROUND, IGNORED, build_matcher, match_boxes


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 convs to objectness logits and anchor deltas; shared over levels.

    Args:
        channels: input (and hidden) channels.
        num_anchors: anchors per location (a).
    """

    def __init__(self, channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.objectness_logits = nn.Conv2d(channels, num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(channels, num_anchors * 4, kernel_size=1)
        for layer in (self.conv, self.objectness_logits, self.anchor_deltas):
            nn.init.normal_(layer.weight, std=0.01)
            assert layer.bias is not None
            nn.init.constant_(layer.bias, 0)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Per-anchor outputs of all levels.

        Args:
            features: one [B, C, H_l, W_l] tensor per level.
        Returns:
            logits: [B, A] with A = sum of H_l * W_l * a, in anchor order.
            deltas: [B, A, 4] (dx, dy, dw, dh).
        """
        logits, deltas = [], []
        for feature in features:
            hidden = F.relu(self.conv(feature))
            batch, _, height, width = hidden.shape
            # [B, a, H, W] -> [B, H, W, a] and [B, a * 4, H, W] -> [B, H, W, a, 4]: (y, x, anchor) order.
            logits.append(self.objectness_logits(hidden).permute(0, 2, 3, 1).reshape(batch, -1))
            level_deltas = self.anchor_deltas(hidden).view(batch, -1, 4, height, width)
            deltas.append(level_deltas.permute(0, 3, 4, 1, 2).reshape(batch, -1, 4))
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)


class RPNOutputs(NamedTuple):
    """Per-anchor RPN outputs of a batch.

    Attributes:
        anchors: [A, 4] anchors (x1, y1, x2, y2), shared by the batch.
        objectness_logits: [B, A].
        anchor_deltas: [B, A, 4] predicted (dx, dy, dw, dh).
        boxes: [B, A, 4] the deltas applied to the anchors; not clipped, no gradient.
        num_anchors_per_level: A split by level, finest first.
    """

    anchors: Tensor
    objectness_logits: Tensor
    anchor_deltas: Tensor
    boxes: Tensor
    num_anchors_per_level: list[int]


class Proposals(NamedTuple):
    """Proposals of one image, by decreasing objectness.

    Attributes:
        boxes: [R, 4] clipped to the image.
        objectness_logits: [R].
        anchor_indices: [R] int64 index of each proposal's anchor in the A anchors.
    """

    boxes: Tensor
    objectness_logits: Tensor
    anchor_indices: Tensor


def top_anchors_per_level(
    logits: Tensor, num_anchors_per_level: Sequence[int], pre_nms_topk: int
) -> tuple[Tensor, Tensor]:
    """The ``pre_nms_topk`` anchors with the highest logit in each level (all of a smaller level).

    Args:
        logits: [B, A] objectness logits, levels concatenated.
        num_anchors_per_level: A split by level, in anchor order.
    Returns:
        indices: [B, C] int64 anchor indices, level by level, each level by decreasing logit.
        levels: [C] int64 level of each column.
    """
    indices, levels = [], []
    level_start = 0
    for level, num_anchors in enumerate(num_anchors_per_level):
        k = min(pre_nms_topk, num_anchors)
        indices.append(logits[:, level_start : level_start + num_anchors].topk(k, dim=1).indices + level_start)
        levels.append(torch.full((k,), level, dtype=torch.int64, device=logits.device))
        level_start += num_anchors
    return torch.cat(indices, dim=1), torch.cat(levels)


def select_proposals(
    boxes: Tensor,
    logits: Tensor,
    num_anchors_per_level: Sequence[int],
    image_sizes: Sequence[tuple[int, int]],
    pre_nms_topk: int,
    post_nms_topk: int,
    nms_thresh: float,
    min_size: float,
    candidate_mask: Tensor | None = None,
) -> list[Proposals]:
    """Proposals from per-anchor outputs (docs/method.md#single-frame-baseline).

    Per level, the ``pre_nms_topk`` anchors with the highest logit are candidates; candidates with a
    non-finite box or logit are dropped; boxes are clipped to the image; boxes with a side
    <= ``min_size`` are dropped; NMS runs within each level; the best ``post_nms_topk`` of all levels
    remain, by decreasing logit.

    Args:
        boxes: [B, A, 4] decoded, unclipped boxes of all anchors.
        logits: [B, A] objectness logits.
        num_anchors_per_level: A split by level, in anchor order.
        image_sizes: (height, width) of each image, for clipping.
        candidate_mask: optional [B, A] bool; candidates where it is False are dropped after the
            per-level top-k (tubelet linking passes "valid in every frame of the window").
    Returns:
        one :class:`Proposals` per image; ``boxes`` equals the clipped ``boxes[b, anchor_indices]``.
    """
    candidate_indices, candidate_levels = top_anchors_per_level(logits, num_anchors_per_level, pre_nms_topk)
    proposals = []
    for image, image_size in enumerate(image_sizes):
        indices, levels = candidate_indices[image], candidate_levels
        image_boxes, scores = boxes[image, indices], logits[image, indices]
        # Finiteness first: clipping would turn an infinite coordinate into a border.
        keep = torch.isfinite(image_boxes).all(dim=1) & torch.isfinite(scores)
        if candidate_mask is not None:
            keep = keep & candidate_mask[image, indices]  # out of place: the ONNX exporter rejects &=
        image_boxes = clip_boxes_to_image(image_boxes[keep], image_size)
        indices, levels, scores = indices[keep], levels[keep], scores[keep]
        widths = image_boxes[:, 2] - image_boxes[:, 0]
        heights = image_boxes[:, 3] - image_boxes[:, 1]
        keep = (widths > min_size) & (heights > min_size)
        image_boxes, indices, levels, scores = image_boxes[keep], indices[keep], levels[keep], scores[keep]
        # batched_nms keeps boxes of different levels apart and returns indices by decreasing score.
        keep = batched_nms(image_boxes, scores, levels, nms_thresh)[:post_nms_topk]
        proposals.append(Proposals(image_boxes[keep], scores[keep], indices[keep]))
    return proposals


class RegionProposalNetwork(nn.Module):
    """RPN head over the FPN levels with its anchors, training targets and losses.

    Args:
        head: the shared :class:`RPNHead`.
        anchor_generator: anchors of the same levels.
        box_coder: delta coding, weights (1, 1, 1, 1).
        matcher: anchor-to-ground-truth matcher (0.3 / 0.7, best anchor per GT also positive).
        batch_size_per_image: anchors sampled per image for the losses (256).
        positive_fraction: upper bound of the positive share of the sample (0.5).
        smooth_l1_beta: of the box loss; 0 gives L1.
        loss_weight: multiplies both losses.
        pre_nms_topk, post_nms_topk: (training, inference) proposal counts, see
            :func:`select_proposals`.
        nms_thresh, min_size: proposal NMS threshold and minimum box side.
    """

    def __init__(
        self,
        head: RPNHead,
        anchor_generator: AnchorGenerator,
        box_coder: BoxCoder,
        matcher: Matcher,
        batch_size_per_image: int,
        positive_fraction: float,
        smooth_l1_beta: float,
        loss_weight: float,
        pre_nms_topk: tuple[int, int],
        post_nms_topk: tuple[int, int],
        nms_thresh: float,
        min_size: float,
    ) -> None:
        super().__init__()
        self.head = head
        self.anchor_generator = anchor_generator
        self.box_coder = box_coder
        self.matcher = matcher
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.smooth_l1_beta = smooth_l1_beta
        self.loss_weight = loss_weight
        self._pre_nms_topk = pre_nms_topk
        self._post_nms_topk = post_nms_topk
        self.nms_thresh = nms_thresh
        self.min_size = min_size

    @property
    def pre_nms_topk(self) -> int:
        """Candidates per level: the training value in training mode, else the inference value."""
        return self._pre_nms_topk[0] if self.training else self._pre_nms_topk[1]

    @property
    def post_nms_topk(self) -> int:
        """Proposals per image: the training value in training mode, else the inference value."""
        return self._post_nms_topk[0] if self.training else self._post_nms_topk[1]

    def set_inference_topk(self, pre_nms_topk: int, post_nms_topk: int) -> None:
        """Replace the inference values of :attr:`pre_nms_topk` and :attr:`post_nms_topk`."""
        self._pre_nms_topk = (self._pre_nms_topk[0], pre_nms_topk)
        self._post_nms_topk = (self._post_nms_topk[0], post_nms_topk)

    def forward(self, features: list[Tensor]) -> RPNOutputs:
        """Per-anchor outputs for all anchors.

        Args:
            features: one [B, C, H_l, W_l] tensor per RPN level, finest first.
        """
        anchors_per_level = self.anchor_generator(features)
        anchors = torch.cat(anchors_per_level)
        logits, deltas = self.head(features)
        batch = logits.shape[0]
        # Proposals are fixed inputs of the second stage: no gradient flows through the boxes.
        boxes = self.box_coder.decode_single(deltas.detach().reshape(-1, 4), anchors.repeat(batch, 1))
        return RPNOutputs(
            anchors=anchors,
            objectness_logits=logits,
            anchor_deltas=deltas,
            boxes=boxes.view(batch, -1, 4),
            num_anchors_per_level=[len(a) for a in anchors_per_level],
        )

    def proposals(self, outputs: RPNOutputs, image_sizes: Sequence[tuple[int, int]]) -> list[Proposals]:
        """:func:`select_proposals` with this network's settings for the current mode."""
        return select_proposals(
            outputs.boxes,
            outputs.objectness_logits.detach(),
            outputs.num_anchors_per_level,
            image_sizes,
            self.pre_nms_topk,
            self.post_nms_topk,
            self.nms_thresh,
            self.min_size,
        )

    def losses(self, outputs: RPNOutputs, gt_boxes: list[Tensor]) -> dict[str, Tensor]:
        """Objectness (binary cross-entropy) and box (smooth L1) losses on sampled anchors.

        Both are summed over the sample and divided by ``batch_size_per_image`` x B.

        Args:
            gt_boxes: B tensors [G_i, 4] of ground-truth boxes in input-image pixels.
        Returns:
            ``loss_rpn_cls`` and ``loss_rpn_loc``.
        """
        per_image_labels, per_image_target_deltas = [], []
        for image_gt_boxes in gt_boxes:
            matched_index, image_labels = match_boxes(self.matcher, image_gt_boxes, outputs.anchors)
            positive_mask, negative_mask = self.sampler([image_labels])
            sampled = positive_mask[0].bool() | negative_mask[0].bool()
            per_image_labels.append(torch.where(sampled, image_labels, torch.full_like(image_labels, IGNORED)))
            # Without ground truth no anchor is positive; the anchors stand in as (unused) targets.
            matched_gt = image_gt_boxes[matched_index] if len(image_gt_boxes) else outputs.anchors
            per_image_target_deltas.append(self.box_coder.encode_single(matched_gt, outputs.anchors))
        labels = torch.stack(per_image_labels)
        target_deltas = torch.stack(per_image_target_deltas)

        sampled = labels != IGNORED
        positive = labels == FOREGROUND
        normalizer = self.sampler.batch_size_per_image * len(gt_boxes)
        loss_cls = F.binary_cross_entropy_with_logits(
            outputs.objectness_logits[sampled], labels[sampled].to(outputs.objectness_logits.dtype), reduction="sum"
        )
        loss_loc = F.smooth_l1_loss(
            outputs.anchor_deltas[positive], target_deltas[positive], beta=self.smooth_l1_beta, reduction="sum"
        )
        return {
            "loss_rpn_cls": loss_cls * self.loss_weight / normalizer,
            "loss_rpn_loc": loss_loc * self.loss_weight / normalizer,
        }


def build_rpn(cfg: CfgNode, in_channels: int, strides: dict[str, int]) -> RegionProposalNetwork:
    """RPN from ``MODEL.RPN``, ``MODEL.ANCHOR_GENERATOR`` and ``MODEL.PROPOSAL_GENERATOR``.

    Args:
        in_channels: channels of the backbone levels.
        strides: stride of each backbone level by name; ``MODEL.RPN.IN_FEATURES`` picks the levels.
    Raises:
        SltnetError: unsupported option values.
    """
    rpn = cfg.MODEL.RPN
    anchor_cfg = cfg.MODEL.ANCHOR_GENERATOR
    try:
        anchor_generator = AnchorGenerator(
            anchor_cfg.SIZES, anchor_cfg.ASPECT_RATIOS, [strides[name] for name in rpn.IN_FEATURES]
        )
    except ValueError as exc:
        raise SltnetError(f"MODEL.ANCHOR_GENERATOR: {exc}") from exc
    return RegionProposalNetwork(
        head=RPNHead(in_channels, anchor_generator.num_anchors_per_location),
        anchor_generator=anchor_generator,
        box_coder=BoxCoder(tuple(rpn.BBOX_REG_WEIGHTS)),
        matcher=build_matcher(rpn.IOU_THRESHOLDS, rpn.IOU_LABELS, True, "MODEL.RPN"),
        batch_size_per_image=rpn.BATCH_SIZE_PER_IMAGE,
        positive_fraction=rpn.POSITIVE_FRACTION,
        smooth_l1_beta=rpn.SMOOTH_L1_BETA,
        loss_weight=rpn.LOSS_WEIGHT,
        pre_nms_topk=(rpn.PRE_NMS_TOPK_TRAIN, rpn.PRE_NMS_TOPK_TEST),
        post_nms_topk=(rpn.POST_NMS_TOPK_TRAIN, rpn.POST_NMS_TOPK_TEST),
        nms_thresh=rpn.NMS_THRESH,
        min_size=cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE,
    )
