"""ImageNet VID mAP@0.5 (docs/metrics.md#the-metrics): the ILSVRC devkit's matching rule and VOC-style average
precision.

Box convention: the devkit works on inclusive integer pixel indices (XML ``xmin..xmax``) and so adds one
pixel to every width, height and intersection. ST-COCO boxes and detections are continuous
``[x, y, w, h]`` extents, where ``w`` already counts every pixel, so widths here are ``x2 - x1`` with no
``+ 1``. For ground truth converted from the VID XML as ``w = xmax - xmin + 1`` (as
:mod:`sltnet.data.vid_convert` does) this gives exactly the devkit's IoUs and small-object thresholds;
adding the pixel again would enlarge every box by one.
"""

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from sltnet.data.records import StCocoDataset
from sltnet.evaluation.detections import Detections

#: IoU a detection needs with a ground-truth box of ordinary size.
IOU_THRESHOLD = 0.5
#: Pixels added to a ground-truth box's sides for the small-object rule.
PIXEL_TOLERANCE = 10.0


@dataclass
class GroundTruthTable:
    """Every ground-truth box of a dataset as flat arrays, frames in dataset order.

    GT ``j`` of frame ``f`` is row ``frame_offsets[f] + j``; evaluation code refers to GTs by row.

    Attributes:
        boxes: [m, 4] float64 boxes (x1, y1, x2, y2).
        classes: [m] int64 contiguous class indices.
        frame_index: [m] int64 position of the box's frame in ``dataset.frames()``.
        video_index: [m] int64 position of the box's video in ``dataset.videos``.
        frame_numbers: [m] int64 ``frame_number`` of the box's frame.
        track_ids: [m] int64 track id within the video.
        frame_offsets: [F + 1] int64 first row of each frame; the last entry is m.
        frame_image_ids: [F] int64 COCO image id of each frame.
    """

    boxes: np.ndarray
    classes: np.ndarray
    frame_index: np.ndarray
    video_index: np.ndarray
    frame_numbers: np.ndarray
    track_ids: np.ndarray
    frame_offsets: np.ndarray
    frame_image_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def num_frames(self) -> int:
        return len(self.frame_offsets) - 1


def ground_truth_table(dataset: StCocoDataset) -> GroundTruthTable:
    """Flatten the dataset's annotations into a :class:`GroundTruthTable`."""
    frames = [(video_index, frame) for video_index, video in enumerate(dataset.videos) for frame in video.frames]
    counts = np.array([len(frame.classes) for _, frame in frames], dtype=np.int64)
    frame_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    per_frame = np.arange(len(frames), dtype=np.int64)
    return GroundTruthTable(
        boxes=np.concatenate([np.zeros((0, 4))] + [frame.boxes for _, frame in frames]).astype(np.float64),
        classes=np.concatenate([np.zeros(0, np.int64)] + [frame.classes for _, frame in frames]).astype(np.int64),
        frame_index=np.repeat(per_frame, counts),
        video_index=np.repeat(np.array([v for v, _ in frames], dtype=np.int64), counts),
        frame_numbers=np.repeat(np.array([f.frame_number for _, f in frames], dtype=np.int64), counts),
        track_ids=np.concatenate([np.zeros(0, np.int64)] + [frame.track_ids for _, frame in frames]).astype(np.int64),
        frame_offsets=frame_offsets,
        frame_image_ids=np.array([frame.image_id for _, frame in frames], dtype=np.int64),
    )


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU of (x1, y1, x2, y2) boxes that broadcast against each other.

    ``box_iou(a[:, None], b[None])`` gives the [n, m] matrix, ``box_iou(a, b)`` the element-wise [n].
    Pairs with an empty union have IoU 0.
    """
    width = np.clip(np.minimum(boxes1[..., 2], boxes2[..., 2]) - np.maximum(boxes1[..., 0], boxes2[..., 0]), 0, None)
    height = np.clip(np.minimum(boxes1[..., 3], boxes2[..., 3]) - np.maximum(boxes1[..., 1], boxes2[..., 1]), 0, None)
    intersection = width * height
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    union = area1 + area2 - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def match_thresholds(gt_boxes: np.ndarray) -> np.ndarray:
    """IoU each GT needs: min(0.5, wh / ((w + 10)(h + 10))), which relaxes the rule for small objects.

    Args:
        gt_boxes: [m, 4] (x1, y1, x2, y2).
    Returns:
        [m] float64 thresholds.
    """
    width = gt_boxes[:, 2] - gt_boxes[:, 0]
    height = gt_boxes[:, 3] - gt_boxes[:, 1]
    small = width * height / ((width + PIXEL_TOLERANCE) * (height + PIXEL_TOLERANCE))
    return np.minimum(IOU_THRESHOLD, small)


def match_frame(
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    det_classes: np.ndarray,
    gt_boxes: np.ndarray,
    gt_classes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Match one frame's detections to its GTs with the devkit's greedy rule.

    Detections are taken by descending score; each takes, among the GTs of its class not yet taken whose
    IoU with it reaches their threshold, the one it overlaps most. A detection that finds none (for
    instance a duplicate of an already matched object) stays unmatched.

    Args:
        det_boxes: [n, 4]; det_scores: [n]; det_classes: [n].
        gt_boxes: [m, 4]; gt_classes: [m].
    Returns:
        matched: [n] int64 index of the matched GT in the frame, or -1.
        iou: [n, m] float64 IoU of every detection with every GT.
    """
    matched = np.full(len(det_scores), -1, dtype=np.int64)
    iou = box_iou(det_boxes[:, None], gt_boxes[None])
    candidates = (iou >= match_thresholds(gt_boxes)[None]) & (det_classes[:, None] == gt_classes[None])
    taken = np.zeros(len(gt_classes), dtype=bool)
    for det in np.argsort(-det_scores, kind="stable"):
        free = candidates[det] & ~taken
        if free.any():
            gt = int(np.argmax(np.where(free, iou[det], -np.inf)))
            matched[det] = gt
            taken[gt] = True
    return matched, iou


@dataclass
class DetectionMatches:
    """Every detection's outcome against the ground truth, aligned with :class:`Detections`.

    Attributes:
        frame_index: [n] int64 position of the detection's frame in ``dataset.frames()``.
        matched_gt: [n] int64 row of the matched GT in the :class:`GroundTruthTable`, or -1.
        best_iou_by_group: [n, G] float64 highest IoU of the detection with the GTs (of any class) of each
            group in its frame; -1 where its frame has no GT of that group. Groups are the caller's
            partition of the GTs (the motion speeds); the IoUs decide what an unmatched detection counts as.
    """

    frame_index: np.ndarray
    matched_gt: np.ndarray
    best_iou_by_group: np.ndarray


def match_detections(
    detections: Detections,
    ground_truth: GroundTruthTable,
    gt_groups: np.ndarray,
    num_groups: int,
) -> DetectionMatches:
    """Match all detections frame by frame (see :func:`match_frame`).

    Args:
        detections: n detections.
        ground_truth: the m GTs.
        gt_groups: [m] int64 group of each GT in ``0..num_groups-1``.
        num_groups: G.
    """
    frame_of_image = {image_id: frame for frame, image_id in enumerate(ground_truth.frame_image_ids.tolist())}
    frame_index = np.array([frame_of_image[i] for i in detections.image_ids.tolist()], dtype=np.int64)
    matched_gt = np.full(len(detections), -1, dtype=np.int64)
    best_iou_by_group = np.full((len(detections), num_groups), -1.0)
    order = np.argsort(frame_index, kind="stable")
    bounds = np.searchsorted(frame_index[order], np.arange(ground_truth.num_frames + 1))
    offsets = ground_truth.frame_offsets
    for frame in tqdm(range(ground_truth.num_frames), desc="matching detections", unit="frame", disable=None):
        dets = order[bounds[frame] : bounds[frame + 1]]
        gts = slice(offsets[frame], offsets[frame + 1])
        if len(dets) == 0 or offsets[frame] == offsets[frame + 1]:
            continue
        matched, iou = match_frame(
            detections.boxes[dets],
            detections.scores[dets],
            detections.classes[dets],
            ground_truth.boxes[gts],
            ground_truth.classes[gts],
        )
        matched_gt[dets] = np.where(matched >= 0, matched + offsets[frame], -1)
        frame_groups = gt_groups[gts]
        for group in np.unique(frame_groups):
            best_iou_by_group[dets, group] = iou[:, frame_groups == group].max(axis=1)
    return DetectionMatches(frame_index=frame_index, matched_gt=matched_gt, best_iou_by_group=best_iou_by_group)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the interpolated precision-recall curve (VOC all-points, as the VID devkit).

    Args:
        recall: [d] non-decreasing recall after each detection in score order.
        precision: [d] precision after each detection.
    """
    recall = np.concatenate([[0.0], recall, [1.0]])
    # Interpolate: the precision at a recall is the best precision at that recall or any higher one.
    precision = np.maximum.accumulate(np.concatenate([[0.0], precision, [0.0]])[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def class_average_precisions(
    scores: np.ndarray,
    classes: np.ndarray,
    frame_index: np.ndarray,
    true_positive: np.ndarray,
    false_positive: np.ndarray,
    num_positives: np.ndarray,
) -> np.ndarray:
    """Average precision of every class from per-detection outcomes.

    Args:
        scores, classes: [n] of the detections.
        frame_index: [n] their frames' positions: equal scores rank in frame order, then in file order,
            as the devkit's stable sort over frames taken in order does (a shuffled file scores the same).
        true_positive, false_positive: [n] float64 weight each detection adds to the TP and FP counts
            (0 and 1 for plain VID mAP; the motion breakdown also ignores detections and weights some FPs).
        num_positives: [K] number of GTs each class must find.
    Returns:
        [K] float64 AP; NaN for classes without ground truth, which are skipped.
    """
    order = np.lexsort((np.arange(len(scores)), frame_index, -scores))
    sorted_classes = classes[order]
    aps = np.full(len(num_positives), np.nan)
    for cls in np.flatnonzero(num_positives > 0):
        dets = order[sorted_classes == cls]
        tp = np.cumsum(true_positive[dets])
        fp = np.cumsum(false_positive[dets])
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps[cls] = average_precision(tp / num_positives[cls], precision)
    return aps


def vid_average_precisions(
    detections: Detections, matches: DetectionMatches, ground_truth: GroundTruthTable, num_classes: int
) -> np.ndarray:
    """Per-class VID AP@0.5: matched detections are TPs, all others FPs.

    Returns:
        [K] float64; NaN for classes without ground truth.
    """
    true_positive = (matches.matched_gt >= 0).astype(np.float64)
    return class_average_precisions(
        detections.scores,
        detections.classes,
        matches.frame_index,
        true_positive,
        1.0 - true_positive,
        np.bincount(ground_truth.classes, minlength=num_classes),
    )
