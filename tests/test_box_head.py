"""Box head: RoI sampling, layers, losses and inference (docs/method.md#single-frame-baseline)."""

import math

import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder

from sltnet.config.defaults import _C
from sltnet.errors import SltnetError
from sltnet.modeling.box_head import (
    BoxHeadFeatures,
    BoxPredictor,
    box_head_losses,
    build_roi_heads,
    postprocess_detections,
    sample_rois,
)
from sltnet.modeling.matching import build_matcher

STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
BOX_CODER = BoxCoder((10.0, 10.0, 5.0, 5.0))


def random_boxes(count, size=200.0, min_side=4.0):
    corner = torch.rand(count, 2) * size
    sides = torch.rand(count, 2) * size / 2 + min_side
    return torch.cat([corner, corner + sides], dim=1)


def test_layers_shapes_and_names():
    head = BoxHeadFeatures(8, 7, 16)
    predictor = BoxPredictor(16, 3)
    features = head(torch.randn(5, 8, 7, 7))
    assert features.shape == (5, 16) and (features >= 0).all()
    logits, deltas = predictor(features)
    assert logits.shape == (5, 4) and deltas.shape == (5, 12)
    assert set(head.state_dict()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert set(predictor.state_dict()) == {"cls_score.weight", "cls_score.bias", "bbox_pred.weight", "bbox_pred.bias"}


def test_sample_rois_appends_gt_and_balances():
    torch.manual_seed(0)
    matcher = build_matcher([0.5], [0, 1], False, "MODEL.ROI_HEADS")
    sampler = BalancedPositiveNegativeSampler(512, 0.25)
    gt_boxes = torch.tensor([[10.0, 10.0, 60.0, 60.0], [100.0, 80.0, 180.0, 120.0]])
    gt_classes = torch.tensor([2, 0])
    # 200 near-copies of the GT boxes (foreground) and 1000 random boxes (mostly background).
    near = gt_boxes.repeat(100, 1) + torch.randn(200, 4)
    proposals = torch.cat([near, random_boxes(1000)])
    samples = sample_rois(proposals, gt_boxes, gt_classes, matcher, sampler, num_classes=3)
    assert len(samples.indices) == 512
    foreground = samples.classes < 3
    assert foreground.sum() == 128
    assert set(samples.classes[foreground].tolist()) <= {0, 2}
    torch.testing.assert_close(samples.boxes, torch.cat([proposals, gt_boxes])[samples.indices])
    fg_gt = samples.gt_boxes[foreground]
    assert ((fg_gt == gt_boxes[0]).all(1) | (fg_gt == gt_boxes[1]).all(1)).all()


def test_sample_rois_gt_rows_are_indexed_after_the_proposals():
    matcher = build_matcher([0.5], [0, 1], False, "MODEL.ROI_HEADS")
    sampler = BalancedPositiveNegativeSampler(512, 0.25)
    proposals = torch.tensor([[150.0, 150.0, 170.0, 170.0], [0.0, 100.0, 30.0, 130.0]])
    gt_boxes = torch.tensor([[10.0, 10.0, 60.0, 60.0]])
    samples = sample_rois(proposals, gt_boxes, torch.tensor([1]), matcher, sampler, num_classes=2)
    assert samples.indices.tolist() == [0, 1, 2]
    assert samples.classes.tolist() == [2, 2, 1]
    torch.testing.assert_close(samples.boxes[2], gt_boxes[0])
    without_gt = sample_rois(proposals, gt_boxes, torch.tensor([1]), matcher, sampler, 2, append_gt=False)
    assert without_gt.indices.tolist() == [0, 1] and without_gt.classes.tolist() == [2, 2]
    empty = sample_rois(proposals, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), matcher, sampler, 2)
    assert empty.classes.tolist() == [2, 2]


def test_losses():
    rois = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 30.0], [5.0, 5.0, 9.0, 9.0]])
    gt_boxes = torch.tensor([[1.0, 0.0, 11.0, 12.0], [20.0, 20.0, 40.0, 30.0], [0.0, 0.0, 1.0, 1.0]])
    classes = torch.tensor([1, 0, 2])  # K = 2: the last RoI is background
    deltas = torch.zeros(3, 8)
    deltas[0, 4:] = BOX_CODER.encode_single(gt_boxes[:1], rois[:1])[0]
    logits = torch.zeros(3, 3)
    losses = box_head_losses(logits, deltas, rois, classes, gt_boxes, BOX_CODER, 0.0)
    assert losses["loss_cls"].item() == pytest.approx(math.log(3))
    assert losses["loss_box_reg"].item() == pytest.approx(0.0, abs=1e-6)
    deltas[0, :4] = 1.0  # the deltas of a class other than the RoI's do not count
    deltas[2] = 1.0  # nor do those of a background RoI
    assert box_head_losses(logits, deltas, rois, classes, gt_boxes, BOX_CODER, 0.0)[
        "loss_box_reg"
    ].item() == pytest.approx(0.0, abs=1e-6)
    deltas[1, :4] = torch.tensor([0.3, 0.0, 0.0, -0.3])
    assert box_head_losses(logits, deltas, rois, classes, gt_boxes, BOX_CODER, 0.0)[
        "loss_box_reg"
    ].item() == pytest.approx(0.6 / 3)


def test_postprocess_threshold_nms_topk_and_background():
    proposals = torch.tensor(
        [[0.0, 0.0, 20.0, 20.0], [1.0, 0.0, 21.0, 20.0], [50.0, 50.0, 90.0, 90.0], [60.0, 0.0, 80.0, 20.0]]
    )
    class_probs = torch.tensor(
        [
            [0.7, 0.2, 0.1],  # class 0 kept; class 1 (0.2) kept: NMS is per class
            [0.6, 0.3, 0.1],  # class 0 suppressed by row 0 (IoU 0.9); class 1 (0.3) suppresses row 0's class 1
            [0.04, 0.05, 0.91],  # mostly background: nothing above 0.05
            [0.0, 0.5, 0.5],  # class 1
        ]
    )
    deltas = torch.zeros(4, 8)
    deltas[3, 4:] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # class 1 moves right by 0.1 x width
    detections = postprocess_detections(
        class_probs, deltas, proposals, (100, 100), box_coder=BOX_CODER, score_thresh=0.05, nms_thresh=0.5, topk=10
    )
    torch.testing.assert_close(detections.scores, torch.tensor([0.7, 0.5, 0.3]))
    assert detections.classes.tolist() == [0, 1, 1]
    torch.testing.assert_close(
        detections.boxes, torch.tensor([[0.0, 0.0, 20.0, 20.0], [62.0, 0.0, 82.0, 20.0], [1.0, 0.0, 21.0, 20.0]])
    )
    top_one = postprocess_detections(
        class_probs, deltas, proposals, (100, 100), box_coder=BOX_CODER, score_thresh=0.05, nms_thresh=0.5, topk=1
    )
    assert top_one.scores.tolist() == [pytest.approx(0.7)]


def test_postprocess_clips_and_drops_non_finite():
    proposals = torch.tensor([[80.0, 80.0, 120.0, 110.0], [0.0, 0.0, 10.0, 10.0]])
    class_probs = torch.tensor([[0.9, 0.1], [0.8, 0.2]])
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.nan, 0.0, 0.0, 0.0]])
    detections = postprocess_detections(
        class_probs, deltas, proposals, (100, 90), box_coder=BOX_CODER, score_thresh=0.05, nms_thresh=0.5, topk=10
    )
    torch.testing.assert_close(detections.boxes, torch.tensor([[80.0, 80.0, 90.0, 100.0]]))


def tiny_heads_cfg():
    cfg = _C.clone()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 16
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    return cfg


def test_roi_heads_losses_and_inference():
    torch.manual_seed(0)
    heads = build_roi_heads(tiny_heads_cfg(), 8, STRIDES)
    features = [torch.randn(2, 8, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    proposals = [random_boxes(30, 60.0), random_boxes(20, 60.0)]
    gt_boxes = [torch.tensor([[5.0, 5.0, 40.0, 30.0]]), torch.zeros(0, 4)]
    gt_classes = [torch.tensor([1]), torch.zeros(0, dtype=torch.int64)]
    losses = heads.losses(features, proposals, gt_boxes, gt_classes)
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    sum(losses.values()).backward()
    assert heads.box_head.fc1.weight.grad is not None
    heads.score_thresh = 0.0
    detections = heads.inference(features, proposals, [(64, 64), (64, 48)])
    assert len(detections) == 2
    assert 0 < len(detections[1].boxes) <= 100
    assert detections[1].boxes[:, 2].max() <= 48
    assert set(detections[0].classes.tolist()) <= {0, 1, 2}


@pytest.mark.parametrize(
    "node, key, value, message",
    [
        ("ROI_BOX_HEAD", "NUM_FC", 3, "MODEL.ROI_BOX_HEAD.NUM_FC: only 2 is supported, got 3"),
        (
            "ROI_BOX_HEAD",
            "POOLER_TYPE",
            "ROIPool",
            "MODEL.ROI_BOX_HEAD.POOLER_TYPE: only 'ROIAlignV2' is supported, got 'ROIPool'",
        ),
        (
            "ROI_BOX_HEAD",
            "CLS_AGNOSTIC_BBOX_REG",
            True,
            "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG: only class-specific regression is supported",
        ),
        (
            "ROI_HEADS",
            "IOU_LABELS",
            [0, -1, 1],
            "MODEL.ROI_HEADS.IOU_THRESHOLDS/IOU_LABELS: need [low, high] with [0, -1, 1] or [t] with [0, 1], "
            "got [0.5] with [0, -1, 1]",
        ),
    ],
)
def test_config_errors(node, key, value, message):
    cfg = tiny_heads_cfg()
    cfg.MODEL[node][key] = value
    with pytest.raises(SltnetError) as info:
        build_roi_heads(cfg, 8, STRIDES)
    assert str(info.value) == message
