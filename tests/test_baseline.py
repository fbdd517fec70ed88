"""The single-frame Faster R-CNN + FPN detector end to end (docs/method.md#single-frame-baseline)."""

import pytest
import torch
from torchvision.ops import box_iou

from sltnet.config.defaults import _C
from sltnet.errors import SltnetError
from sltnet.modeling.baseline import build_faster_rcnn


def tiny_cfg():
    cfg = _C.clone()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.BACKBONE.FREEZE_AT = 0  # random weights: train everything
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    return cfg


def rectangle_images():
    """Two 128 x 128 images, each with one filled rectangle whose colour channel is its class."""
    gt_boxes = [torch.tensor([[20.0, 30.0, 70.0, 90.0]]), torch.tensor([[60.0, 12.0, 120.0, 52.0]])]
    images = 0.1 * torch.randn(2, 3, 128, 128)
    for index, boxes in enumerate(gt_boxes):
        x1, y1, x2, y2 = boxes[0].int().tolist()
        images[index, index, y1:y2, x1:x2] += 1.0
    targets = [{"boxes": boxes, "classes": torch.tensor([index])} for index, boxes in enumerate(gt_boxes)]
    return images, [(128, 128), (128, 128)], targets


def test_overfits_two_images_and_detects_the_objects():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    # After NMS only a handful of proposals cover each of the two objects: a smaller RoI sample keeps
    # them from being drowned out by background.
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    model = build_faster_rcnn(cfg)
    images, image_sizes, targets = rectangle_images()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    totals = []
    # 150 steps: long enough that the boxes have converged (IoU of the best box 0.8-0.9 for the seeds
    # tried, 1 and 2 threads), so the assertions below do not depend on the CPU's rounding; after 80
    # steps the IoU still ranged 0.36-0.9 between machines.
    for _ in range(150):
        losses = model(images, image_sizes, targets)
        assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert sum(totals[-5:]) / 5 < 0.5 * totals[0]

    model.eval()
    with torch.no_grad():
        detections = model(images, image_sizes)
    for image_detections, target in zip(detections, targets):
        assert set(image_detections) == {"boxes", "scores", "classes"}
        best = image_detections["scores"].argmax()
        assert image_detections["classes"][best] == target["classes"][0]
        assert box_iou(image_detections["boxes"][best, None], target["boxes"]).item() > 0.5


def test_inference_output_and_training_input_checks():
    torch.manual_seed(0)
    model = build_faster_rcnn(tiny_cfg()).eval()
    cfg = tiny_cfg()
    images = torch.randn(2, 3, 64, 96)
    model.roi_heads.score_thresh = 0.0
    with torch.no_grad():
        detections = model(images, [(64, 96), (50, 60)])
    assert len(detections) == 2
    for image_detections, (height, width) in zip(detections, [(64, 96), (50, 60)]):
        count = len(image_detections["scores"])
        assert 0 < count <= cfg.TEST.DETECTIONS_PER_IMAGE
        assert image_detections["boxes"].shape == (count, 4)
        assert image_detections["classes"].dtype == torch.int64
        assert image_detections["boxes"][:, 2].max() <= width and image_detections["boxes"][:, 3].max() <= height
    model.train()
    with pytest.raises(ValueError, match="training needs targets"):
        model(images, [(64, 96), (50, 60)])
    # An image without objects trains its RoIs and anchors as background.
    empty = [{"boxes": torch.zeros(0, 4), "classes": torch.zeros(0, dtype=torch.int64)}] * 2
    losses = model(images, [(64, 96), (50, 60)], empty)
    assert all(torch.isfinite(loss) for loss in losses.values())
    assert losses["loss_rpn_loc"].item() == 0.0 and losses["loss_box_reg"].item() == 0.0


def test_state_dict_names():
    names = set(build_faster_rcnn(tiny_cfg()).state_dict())
    for expected in (
        "backbone.bottom_up.stem.conv1.weight",
        "backbone.bottom_up.res2.0.conv1.weight",
        "backbone.fpn.inner_blocks.0.0.weight",
        "backbone.fpn.layer_blocks.3.0.weight",
        "rpn.head.conv.weight",
        "rpn.head.objectness_logits.weight",
        "rpn.head.anchor_deltas.weight",
        "roi_heads.box_head.fc1.weight",
        "roi_heads.box_head.fc2.weight",
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.bbox_pred.weight",
    ):
        assert expected in names
    assert not any("anchor" in name and "anchor_deltas" not in name for name in names)


@pytest.mark.parametrize(
    "node, levels, message",
    [
        ("RPN", ["p2", "p7"], "MODEL.RPN.IN_FEATURES: ['p7'] are not backbone levels ['p2', 'p3', 'p4', 'p5', 'p6']"),
        (
            "ROI_HEADS",
            ["res2"],
            "MODEL.ROI_HEADS.IN_FEATURES: ['res2'] are not backbone levels ['p2', 'p3', 'p4', 'p5', 'p6']",
        ),
    ],
)
def test_unknown_levels(node, levels, message):
    cfg = tiny_cfg()
    cfg.MODEL[node].IN_FEATURES = levels
    with pytest.raises(SltnetError) as info:
        build_faster_rcnn(cfg)
    assert str(info.value) == message
