"""Anchors, box coding, matching, sampling, RPN outputs, losses and proposal selection
(docs/method.md#single-frame-baseline)."""

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import box_iou

from sltnet.config.defaults import _C
from sltnet.errors import SltnetError
from sltnet.modeling.anchors import AnchorGenerator, cell_anchors
from sltnet.modeling.matching import BACKGROUND, FOREGROUND, IGNORED, build_matcher, match_boxes
from sltnet.modeling.rpn import build_rpn, select_proposals

STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}


def rpn_cfg():
    cfg = _C.clone()
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
    return cfg


def level_features(batch=1, channels=8, size=128):
    return [torch.randn(batch, channels, size // s, size // s) for s in STRIDES.values()]


def test_cell_anchors_are_exact_and_centred():
    anchors = cell_anchors([32], [0.5, 1.0, 2.0])
    widths, heights = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    torch.testing.assert_close(widths * heights, torch.full((3,), 1024.0))
    torch.testing.assert_close(heights / widths, torch.tensor([0.5, 1.0, 2.0]))
    torch.testing.assert_close(anchors[:, :2], -anchors[:, 2:])
    assert widths[0].item() == pytest.approx(32 * math.sqrt(2))  # not rounded to whole pixels


def test_anchor_count_and_row_major_order():
    generator = AnchorGenerator([[8], [16]], [[0.5, 1.0, 2.0]], [4, 8])
    features = [torch.zeros(1, 1, 3, 5), torch.zeros(1, 1, 2, 2)]
    per_level = generator(features)
    assert [len(a) for a in per_level] == [3 * 5 * 3, 2 * 2 * 3]
    for anchors, cell, stride, (height, width) in zip(per_level, generator.cell_anchors, [4, 8], [(3, 5), (2, 2)]):
        for y in range(height):
            for x in range(width):
                for a in range(3):
                    shift = torch.tensor([x, y, x, y], dtype=torch.float32) * stride
                    torch.testing.assert_close(anchors[(y * width + x) * 3 + a], cell[a] + shift)


def test_anchor_generator_rejects_unequal_levels():
    with pytest.raises(ValueError, match="same number of anchors"):
        AnchorGenerator([[8], [16, 32]], [[1.0]], [4, 8])


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coder_round_trip(weights):
    coder = BoxCoder(weights)
    torch.manual_seed(0)
    anchors = torch.tensor([[10.0, 20.0, 50.0, 40.0], [0.0, 0.0, 8.0, 16.0]])
    targets = anchors + torch.randn(2, 4) * 3
    deltas = coder.encode_single(targets, anchors)
    torch.testing.assert_close(coder.decode_single(deltas, anchors), targets)
    # (dx, dy, dw, dh) = weights * (centre offset / size, log size ratio)
    shifted = anchors[:1] + torch.tensor([[4.0, 2.0, 4.0, 2.0]])
    torch.testing.assert_close(
        coder.encode_single(shifted, anchors[:1]), torch.tensor([[weights[0] * 0.1, weights[1] * 0.1, 0.0, 0.0]])
    )


def test_box_coder_clamps_size_deltas():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    boxes = coder.decode_single(torch.tensor([[0.0, 0.0, 1000.0, 1000.0]]), anchor)
    width, height = boxes[0, 2] - boxes[0, 0], boxes[0, 3] - boxes[0, 1]
    assert width.item() == pytest.approx(10 * 1000 / 16, rel=1e-5)
    assert height.item() == pytest.approx(20 * 1000 / 16, rel=1e-5)


def test_matcher_thresholds_and_best_anchor_per_gt():
    matcher = build_matcher([0.3, 0.7], [0, -1, 1], True, "MODEL.RPN")
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 11.0],  # IoU 0.91 with GT 0: positive
            [0.0, 0.0, 10.0, 20.0],  # IoU 0.5: ignored
            [50.0, 50.0, 60.0, 60.0],  # no overlap: negative
            [100.0, 100.0, 110.0, 125.0],  # IoU 0.4, the best for GT 1: positive
            [100.0, 95.0, 110.0, 120.0],  # IoU 0.4 too (a tie): positive
        ]
    )
    matched, labels = match_boxes(matcher, gt, boxes)
    assert labels.tolist() == [FOREGROUND, IGNORED, BACKGROUND, FOREGROUND, FOREGROUND]
    assert matched[[0, 3, 4]].tolist() == [0, 1, 1]


def test_matcher_without_ground_truth_gives_background():
    matcher = build_matcher([0.3, 0.7], [0, -1, 1], True, "MODEL.RPN")
    matched, labels = match_boxes(matcher, torch.zeros(0, 4), torch.rand(6, 4))
    assert labels.tolist() == [BACKGROUND] * 6 and matched.tolist() == [0] * 6


@pytest.mark.parametrize("thresholds, labels", [([0.3, 0.7], [0, 1]), ([0.5], [0, -1, 1]), ([0.7, 0.3], [0, -1, 1])])
def test_matcher_config_errors(thresholds, labels):
    with pytest.raises(SltnetError) as info:
        build_matcher(thresholds, labels, True, "MODEL.RPN")
    assert str(info.value) == (
        "MODEL.RPN.IOU_THRESHOLDS/IOU_LABELS: need [low, high] with [0, -1, 1] or [t] with [0, 1], "
        f"got {thresholds} with {labels}"
    )


def test_sampler_fraction():
    sampler = build_rpn(rpn_cfg(), 8, STRIDES).sampler
    many = torch.tensor([FOREGROUND] * 1000 + [BACKGROUND] * 1000 + [IGNORED] * 10)
    positive, negative = sampler([many])
    assert positive[0].sum() == 128 and negative[0].sum() == 128
    assert (many[positive[0].bool()] == FOREGROUND).all() and (many[negative[0].bool()] == BACKGROUND).all()
    few = torch.tensor([FOREGROUND] * 10 + [BACKGROUND] * 1000)
    positive, negative = sampler([few])
    assert positive[0].sum() == 10 and negative[0].sum() == 246


def test_head_outputs_follow_anchor_order():
    torch.manual_seed(0)
    rpn = build_rpn(rpn_cfg(), 8, STRIDES)
    features = level_features(batch=2)
    outputs = rpn(features)
    sizes = [32 * 32 * 3, 16 * 16 * 3, 8 * 8 * 3, 4 * 4 * 3, 2 * 2 * 3]
    assert outputs.num_anchors_per_level == sizes
    assert outputs.anchors.shape == (sum(sizes), 4)
    assert outputs.objectness_logits.shape == (2, sum(sizes))
    assert outputs.boxes.shape == outputs.anchor_deltas.shape == (2, sum(sizes), 4)
    # Anchor (y, x, a) of p3 is row offset + (y * W + x) * 3 + a.
    hidden = torch.relu(rpn.head.conv(features[1]))
    logits, deltas = rpn.head.objectness_logits(hidden), rpn.head.anchor_deltas(hidden)
    b, y, x, a = 1, 5, 9, 2
    row = sizes[0] + (y * 16 + x) * 3 + a
    torch.testing.assert_close(outputs.objectness_logits[b, row], logits[b, a, y, x])
    torch.testing.assert_close(outputs.anchor_deltas[b, row], deltas[b, 4 * a : 4 * a + 4, y, x])
    expected_box = rpn.box_coder.decode_single(outputs.anchor_deltas[b, row][None], outputs.anchors[row][None])[0]
    torch.testing.assert_close(outputs.boxes[b, row], expected_box)
    assert not outputs.boxes.requires_grad


def test_rpn_losses_normalisation():
    torch.manual_seed(0)
    rpn = build_rpn(rpn_cfg(), 8, STRIDES)
    for layer in (rpn.head.objectness_logits, rpn.head.anchor_deltas):
        torch.nn.init.zeros_(layer.weight)
    outputs = rpn(level_features(batch=2))
    # GT boxes that equal anchors: zero deltas regress them exactly.
    gt_boxes = [outputs.anchors[[700, 3000]], torch.zeros(0, 4)]
    losses = rpn.losses(outputs, gt_boxes)
    # 256 sampled anchors per image, all with logit 0: BCE log 2 each, normalised by 256 x 2.
    assert losses["loss_rpn_cls"].item() == pytest.approx(math.log(2), rel=1e-5)
    assert losses["loss_rpn_loc"].item() == pytest.approx(0.0, abs=1e-6)
    losses["loss_rpn_cls"].backward()


def test_select_proposals_per_level_topk_nms_and_global_order():
    square = torch.tensor([0.0, 0.0, 20.0, 20.0])
    far = torch.tensor([50.0, 50.0, 70.0, 70.0])
    boxes = torch.stack(
        [
            square,  # 0 level 0, logit 5
            square + 1,  # 1 level 0, logit 4: suppressed by 0 (same level)
            far,  # 2 level 0, logit 3: not in level 0's top 2, although better than 4
            far,  # 3 level 0, logit 0.5
            square,  # 4 level 1, logit 2: same box as 0 but another level, kept
            far + 2,  # 5 level 1, logit 1: not in level 1's top 2
            torch.tensor([90.0, 90.0, 200.0, 200.0]),  # 6 level 1, logit 6: clipped to 100 x 100
        ]
    )[None]
    logits = torch.tensor([[5.0, 4.0, 3.0, 0.5, 2.0, 1.0, 6.0]])
    proposals = select_proposals(boxes, logits, [4, 3], [(100, 100)], 2, 10, 0.7, 0.0)[0]
    assert proposals.anchor_indices.tolist() == [6, 0, 4]
    torch.testing.assert_close(proposals.objectness_logits, torch.tensor([6.0, 5.0, 2.0]))
    torch.testing.assert_close(proposals.boxes[0], torch.tensor([90.0, 90.0, 100.0, 100.0]))
    torch.testing.assert_close(proposals.boxes[1:], boxes[0, [0, 4]])
    top_two = select_proposals(boxes, logits, [4, 3], [(100, 100)], 2, 2, 0.7, 0.0)[0]
    assert top_two.anchor_indices.tolist() == [6, 0]


def test_select_proposals_filters_small_and_non_finite():
    boxes = torch.tensor(
        [[[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 24.0, 40.0], [0.0, 0.0, math.inf, 5.0], [30.0, 0.0, 60.0, 30.0]]]
    )
    logits = torch.tensor([[1.0, 2.0, 3.0, math.nan]])
    proposals = select_proposals(boxes, logits, [4], [(100, 100)], 10, 10, 0.7, 4.0)[0]
    assert proposals.anchor_indices.tolist() == [0]  # 1 is 4 px wide (not > 4), 2 and 3 not finite
    mask = torch.tensor([[False, True, True, True]])
    assert select_proposals(boxes, logits, [4], [(100, 100)], 10, 10, 0.7, 0.0, mask)[0].anchor_indices.tolist() == [1]
    # The mask applies after the top-k: masking the best candidate does not promote the next one.
    finite_logits = torch.tensor([[1.0, 2.0, 0.0, 0.5]])
    masked_best = torch.tensor([[True, False, True, True]])
    assert len(select_proposals(boxes, finite_logits, [4], [(100, 100)], 1, 10, 0.7, 0.0, masked_best)[0].boxes) == 0


def test_select_proposals_indices_select_boxes_from_all_anchors():
    torch.manual_seed(0)
    rpn = build_rpn(rpn_cfg(), 8, STRIDES).eval()
    outputs = rpn(level_features(batch=2))
    image_sizes = [(128, 128), (96, 112)]
    proposals = rpn.proposals(outputs, image_sizes)
    for image, (image_proposals, size) in enumerate(zip(proposals, image_sizes)):
        assert 0 < len(image_proposals.boxes) <= rpn.post_nms_topk
        selected = outputs.boxes[image, image_proposals.anchor_indices]
        torch.testing.assert_close(image_proposals.boxes[:, 0::2], selected[:, 0::2].clamp(0, size[1]))
        torch.testing.assert_close(image_proposals.boxes[:, 1::2], selected[:, 1::2].clamp(0, size[0]))
        torch.testing.assert_close(
            image_proposals.objectness_logits, outputs.objectness_logits[image, image_proposals.anchor_indices].detach()
        )
        assert (image_proposals.objectness_logits[:-1] >= image_proposals.objectness_logits[1:]).all()
        # No two kept boxes of one level overlap above the NMS threshold.
        levels = torch.bucketize(
            image_proposals.anchor_indices, torch.tensor(outputs.num_anchors_per_level).cumsum(0), right=True
        )
        iou = box_iou(image_proposals.boxes, image_proposals.boxes)
        same_level = levels[:, None] == levels[None, :]
        assert (iou[same_level & ~torch.eye(len(iou), dtype=torch.bool)] <= rpn.nms_thresh).all()


def test_train_and_test_topk():
    cfg = rpn_cfg()
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN, cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 20, 10
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN, cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 30, 5
    rpn = build_rpn(cfg, 8, STRIDES)
    assert (rpn.train().pre_nms_topk, rpn.post_nms_topk) == (20, 30)
    assert (rpn.eval().pre_nms_topk, rpn.post_nms_topk) == (10, 5)


def test_anchor_config_error():
    cfg = rpn_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32]]
    with pytest.raises(SltnetError) as info:
        build_rpn(cfg, 8, STRIDES)
    assert str(info.value) == (
        "MODEL.ANCHOR_GENERATOR: need sizes and aspect ratios for 5 levels, got [[8], [16], [32]], "
        "[[0.5, 1.0, 2.0], [0.5, 1.0, 2.0], [0.5, 1.0, 2.0], [0.5, 1.0, 2.0], [0.5, 1.0, 2.0]]"
    )
