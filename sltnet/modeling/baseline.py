"""The single-frame Faster R-CNN + FPN detector (docs/method.md#single-frame-baseline), stage 1 of SLTnet training.

Module tree and state-dict prefixes:

- ``backbone``: :class:`~sltnet.modeling.backbone.FPNBackbone` (``backbone.bottom_up.*``,
  ``backbone.fpn.*``), levels p2..p6;
- ``rpn``: :class:`~sltnet.modeling.rpn.RegionProposalNetwork` (``rpn.head.*``) on ``MODEL.RPN.IN_FEATURES``;
- ``roi_heads``: :class:`~sltnet.modeling.box_head.RoIHeads` (``roi_heads.box_head.fc1/fc2``,
  ``roi_heads.box_predictor.cls_score/bbox_pred``) on ``MODEL.ROI_HEADS.IN_FEATURES``.

Input is already preprocessed: a float batch [B, 3, H, W], normalised, in the configured channel
order, zero-padded at the bottom/right to a multiple of 32, plus each image's (height, width) before
padding. Boxes in and out are (x1, y1, x2, y2) in the pixels of that input.
"""

from collections.abc import Sequence

from torch import Tensor, nn
from yacs.config import CfgNode

from sltnet.data.batching import TrainingGroup
from sltnet.errors import SltnetError
from sltnet.modeling.backbone import FPNBackbone, build_backbone
from sltnet.modeling.box_head import RoIHeads, build_roi_heads
from sltnet.modeling.rpn import RegionProposalNetwork, RPNOutputs, build_rpn


class FasterRCNN(nn.Module):
    """Backbone + RPN + box head.

    Args:
        backbone: returns a dict of FPN levels by name.
        rpn: proposals from the levels ``rpn_in_features``.
        roi_heads: detections from the levels ``roi_in_features``.
    """

    def __init__(
        self,
        backbone: FPNBackbone,
        rpn: RegionProposalNetwork,
        roi_heads: RoIHeads,
        rpn_in_features: Sequence[str],
        roi_in_features: Sequence[str],
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.rpn_in_features = list(rpn_in_features)
        self.roi_in_features = list(roi_in_features)

    is_temporal = False

    def level_outputs(self, images: Tensor) -> tuple[list[Tensor], RPNOutputs]:
        """Backbone + RPN of a batch.

        Args:
            images: [B, 3, H, W] preprocessed, padded batch.
        Returns:
            the box head's levels (one [B, C, H_l, W_l] per ``roi_in_features``) and the RPN's outputs.
        """
        features = self.backbone(images)
        rpn_outputs = self.rpn([features[name] for name in self.rpn_in_features])
        return [features[name] for name in self.roi_in_features], rpn_outputs

    def training_losses(self, groups: Sequence[TrainingGroup]) -> dict[str, Tensor]:
        """Stage-1 losses of a batch of one-frame groups (the reference frame of each is used).

        The images are zero-padded to the largest one so they form one batch.
        """
        images = [group.images[group.reference] for group in groups]
        height = max(image.shape[-2] for image in images)
        width = max(image.shape[-1] for image in images)
        batch = images[0].new_zeros((len(images), 3, height, width))
        for index, image in enumerate(images):
            batch[index, :, : image.shape[-2], : image.shape[-1]] = image
        targets = [{"boxes": group.boxes[group.reference], "classes": group.classes} for group in groups]
        return self(batch, [group.image_size for group in groups], targets)

    def forward(
        self,
        images: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[dict[str, Tensor]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training mode, detections otherwise.

        Args:
            images: [B, 3, H, W] preprocessed, padded batch.
            image_sizes: B (height, width) of the images before padding.
            targets: training only; per image ``boxes`` [G, 4] float and ``classes`` [G] int64 (0..K-1).
        Returns:
            training: ``loss_rpn_cls``, ``loss_rpn_loc``, ``loss_cls``, ``loss_box_reg``;
            inference: per image ``boxes`` [n, 4], ``scores`` [n], ``classes`` [n] int64.
        """
        roi_features, rpn_outputs = self.level_outputs(images)
        proposals = [p.boxes for p in self.rpn.proposals(rpn_outputs, image_sizes)]
        if not self.training:
            detections = self.roi_heads.inference(roi_features, proposals, image_sizes)
            return [d._asdict() for d in detections]
        if targets is None:
            raise ValueError("training needs targets")
        gt_boxes = [t["boxes"] for t in targets]
        losses = self.rpn.losses(rpn_outputs, gt_boxes)
        losses.update(self.roi_heads.losses(roi_features, proposals, gt_boxes, [t["classes"] for t in targets]))
        return losses


def build_faster_rcnn(cfg: CfgNode) -> FasterRCNN:
    """The single-frame detector from the ``MODEL`` and ``TEST`` config keys.

    Raises:
        SltnetError: unsupported option values or a bad ``MODEL.BACKBONE.PRETRAINED`` file.
    """
    backbone = build_backbone(cfg)
    for option, names in (
        ("MODEL.RPN.IN_FEATURES", cfg.MODEL.RPN.IN_FEATURES),
        ("MODEL.ROI_HEADS.IN_FEATURES", cfg.MODEL.ROI_HEADS.IN_FEATURES),
    ):
        unknown = [name for name in names if name not in backbone.out_strides]
        if unknown:
            raise SltnetError(f"{option}: {unknown} are not backbone levels {backbone.out_features}")
    return FasterRCNN(
        backbone,
        build_rpn(cfg, backbone.out_channels, backbone.out_strides),
        build_roi_heads(cfg, backbone.out_channels, backbone.out_strides),
        cfg.MODEL.RPN.IN_FEATURES,
        cfg.MODEL.ROI_HEADS.IN_FEATURES,
    )
