"""Short-term anchor linking (docs/method.md#short-term-anchor-linking)."""

import math

import torch

from sltnet.modeling.tubelets import link_tubelets

IMAGE_SIZE = (100, 400)  # (height, width)


def grid_boxes(num_frames: int, num_anchors: int) -> torch.Tensor:
    """[N, A, 4] disjoint 10x10 boxes; anchor a sits at x = 20a, shifted down by its frame index."""
    anchors = torch.arange(num_anchors, dtype=torch.float32)
    frames = torch.arange(num_frames, dtype=torch.float32)
    x1 = (20 * anchors)[None, :].expand(num_frames, -1)
    y1 = (5 + frames)[:, None].expand(-1, num_anchors)
    return torch.stack((x1, y1, x1 + 10, y1 + 10), dim=2)


def link(boxes, logits, levels, reference_index, pre_nms_topk=100, post_nms_topk=100, min_size=0.0):
    return link_tubelets(boxes, logits, levels, reference_index, IMAGE_SIZE, pre_nms_topk, post_nms_topk, 0.7, min_size)


def test_tubelet_keeps_the_boxes_its_anchor_regressed_in_every_frame():
    boxes = grid_boxes(3, 6)
    logits = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    tubelets = link(boxes, logits, [4, 2], reference_index=2)
    assert tubelets.boxes.shape == (3, 6, 4)
    assert sorted(tubelets.anchor_indices.tolist()) == list(range(6))
    torch.testing.assert_close(tubelets.boxes, boxes[:, tubelets.anchor_indices])


def test_ranking_uses_the_reference_frame_score_only():
    boxes = grid_boxes(3, 6)
    # Frames 0 and 2 rank the anchors in opposite orders; frame 1 is the reference.
    reference_logits = torch.tensor([0.1, 0.5, 0.3, 0.9, 0.2, 0.7])
    logits = torch.stack((-reference_logits, reference_logits, -reference_logits))
    tubelets = link(boxes, logits, [6], reference_index=1)
    assert tubelets.anchor_indices.tolist() == [3, 5, 1, 2, 4, 0]
    torch.testing.assert_close(tubelets.scores, reference_logits[tubelets.anchor_indices])


def test_pre_nms_topk_is_per_level_by_reference_score():
    boxes = grid_boxes(2, 6)
    reference_logits = torch.tensor([0.1, 0.5, 0.3, 0.9, 0.2, 0.7])
    logits = torch.stack((reference_logits.flip(0), reference_logits))
    tubelets = link(boxes, logits, [3, 3], reference_index=1, pre_nms_topk=1)
    # Level 0 = anchors 0..2 (best: 1), level 1 = anchors 3..5 (best: 3); sorted by score.
    assert tubelets.anchor_indices.tolist() == [3, 1]


def test_post_nms_topk_keeps_the_best_over_all_levels():
    boxes = grid_boxes(2, 6)
    reference_logits = torch.tensor([0.1, 0.5, 0.3, 0.9, 0.2, 0.7])
    logits = torch.stack((torch.zeros(6), reference_logits))
    tubelets = link(boxes, logits, [3, 3], reference_index=1, post_nms_topk=3)
    assert tubelets.anchor_indices.tolist() == [3, 5, 1]


def test_drops_tubelets_invalid_in_any_frame():
    boxes = grid_boxes(3, 8)
    logits = torch.zeros(3, 8)
    logits[1] = torch.arange(8, dtype=torch.float32)
    boxes[0, 1] = torch.tensor([500.0, 10, 520, 20])  # outside the image in frame 0: empty once clipped
    boxes[2, 2, 0] = float("nan")  # non-finite box in frame 2
    boxes[0, 3, 2] = float("inf")  # infinite corner: clipping alone would hide it
    logits[1, 4] = float("inf")  # non-finite reference score
    boxes[2, 5] = torch.tensor([100.0, 10, 102, 30])  # 2 px wide in frame 2: not above min_size
    logits[0, 6] = float("nan")  # a non-reference logit does not matter
    tubelets = link(boxes, logits, [8], reference_index=1, min_size=2.0)
    assert sorted(tubelets.anchor_indices.tolist()) == [0, 6, 7]


def test_every_frame_is_clipped_to_the_image():
    boxes = grid_boxes(2, 2)
    boxes[0, 0] = torch.tensor([-10.0, -5, 30, 50])
    boxes[1, 1] = torch.tensor([390.0, 90, 420, 130])
    tubelets = link(boxes, torch.tensor([[0.0, 0.0], [2.0, 1.0]]), [2], reference_index=1)
    assert tubelets.anchor_indices.tolist() == [0, 1]
    torch.testing.assert_close(tubelets.boxes[0, 0], torch.tensor([0.0, 0, 30, 50]))
    torch.testing.assert_close(tubelets.boxes[1, 1], torch.tensor([390.0, 90, 400, 100]))


def test_nms_on_reference_boxes_within_each_level():
    boxes = grid_boxes(2, 4)
    # Anchors 0 and 1 overlap in the reference frame (IoU 0.9 > 0.7), so do anchors 2 and 3, but
    # 2 and 3 are in different levels. In frame 0 nothing overlaps: only the reference counts.
    boxes[1, 1] = boxes[1, 0] + torch.tensor([0.0, 0.0, 0.0, -1.0])
    boxes[1, 3] = boxes[1, 2]
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.4, 0.3, 0.2, 0.1]])
    tubelets = link(boxes, logits, [3, 1], reference_index=1)
    assert tubelets.anchor_indices.tolist() == [0, 2, 3]
    assert math.isclose(tubelets.scores[0].item(), 0.4, rel_tol=1e-6)


def test_no_surviving_tubelet_gives_empty_outputs():
    boxes = torch.zeros(2, 3, 4)
    tubelets = link(boxes, torch.zeros(2, 3), [3], reference_index=0)
    assert tubelets.boxes.shape == (2, 0, 4)
    assert tubelets.scores.shape == (0,) and tubelets.anchor_indices.shape == (0,)


def test_window_validity_is_applied_after_the_per_level_topk():
    boxes = grid_boxes(2, 4)
    boxes[0, 1] = torch.tensor([500.0, 10, 520, 20])  # level 0's best anchor is empty in frame 0
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.5, 0.9, 0.2, 0.3]])
    tubelets = link(boxes, logits, [2, 2], reference_index=1, pre_nms_topk=1)
    # Level 0 does not fall back to its second-best anchor.
    assert tubelets.anchor_indices.tolist() == [3]
