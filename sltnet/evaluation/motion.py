"""VID mAP by object speed (the FGFA protocol, docs/metrics.md#the-metrics).

A GT's motion IoU is its mean IoU with the same track (same video and track id) in the frames whose
``frame_number`` lies within ±10 of its own, itself excluded. Slow: > 0.9, medium: 0.7 to 0.9 (both
ends included, so every value has exactly one speed), fast: < 0.7.

Where FGFA's motion-IoU file and its ``vid_eval_motion`` leave choices, this module follows them:

- A GT without a neighbour in the window has no motion IoU (NaN; the mean of nothing). FGFA's range
  tests are false for NaN, so such a GT is never ignored: it counts as a positive in every speed.
- For one speed, GTs of the other speeds are *ignored*. Matching is unchanged (a detection may take an
  ignored GT of its class); a detection matched to an ignored GT is neither TP nor FP.
- An unmatched detection is compared with all GTs of its frame, of any class: if it overlaps a counted
  GT more than any ignored one it is a FP; if it overlaps an ignored GT more, it is not counted. On a
  tie (usually: it overlaps nothing) it counts as a fraction of a FP, the fraction of the frame's GTs
  that are ignored, as FGFA computes it; in a frame without GT the fraction is the share of all GTs
  that have this speed. (FGFA's share also counted placeholder entries of frames without objects,
  an artefact of its file layout that is not reproduced.)
"""

import itertools
from collections.abc import Sequence

import numpy as np

from sltnet.evaluation.detections import Detections
from sltnet.evaluation.vid_map import DetectionMatches, GroundTruthTable, box_iou, class_average_precisions

#: Half width, in frame numbers, of the window a GT's motion IoU is averaged over.
MOTION_WINDOW = 10
#: Motion IoU above which an object is slow.
SLOW_ABOVE = 0.9
#: Motion IoU below which an object is fast.
FAST_BELOW = 0.7
#: Speed names; a speed's index is its GT group.
SPEEDS = ("slow", "medium", "fast")
SLOW, MEDIUM, FAST = range(len(SPEEDS))
#: Group of GTs without neighbours in the window; they count in every speed.
ISOLATED = len(SPEEDS)
NUM_MOTION_GROUPS = len(SPEEDS) + 1


def motion_ious(ground_truth: GroundTruthTable, window: int = MOTION_WINDOW) -> np.ndarray:
    """Mean IoU of every GT with its own track in the frames within ``window`` frame numbers.

    Returns:
        [m] float64 in [0, 1]; NaN for GTs whose track has no other box in the window.
    """
    order = np.lexsort((ground_truth.frame_numbers, ground_truth.track_ids, ground_truth.video_index))
    video = ground_truth.video_index[order]
    track = ground_truth.track_ids[order]
    frame = ground_truth.frame_numbers[order]
    boxes = ground_truth.boxes[order]
    iou_sum = np.zeros(len(order))
    neighbours = np.zeros(len(order))
    # Pair each box with the box `offset` rows later. Rows of a track are sorted by frame number, so
    # once no pair of one track is within the window at some offset, none is at a larger one.
    for offset in itertools.count(1):
        first = np.arange(len(order) - offset)
        second = first + offset
        same_track = (video[first] == video[second]) & (track[first] == track[second])
        gap = frame[second] - frame[first]
        if not np.any(same_track & (gap <= window)):
            break
        pairs = same_track & (gap > 0) & (gap <= window)
        first, second = first[pairs], second[pairs]
        iou = box_iou(boxes[first], boxes[second])
        # Within one offset every row occurs at most once as `first` and once as `second`.
        iou_sum[first] += iou
        neighbours[first] += 1
        iou_sum[second] += iou
        neighbours[second] += 1
    mean_iou = np.full(len(order), np.nan)
    has_neighbours = neighbours > 0
    mean_iou[order[has_neighbours]] = iou_sum[has_neighbours] / neighbours[has_neighbours]
    return mean_iou


def speed_groups(motion_iou: np.ndarray) -> np.ndarray:
    """Speed group of each GT: SLOW, MEDIUM, FAST, or ISOLATED where the motion IoU is NaN.

    Args:
        motion_iou: [m] from :func:`motion_ious`.
    Returns:
        [m] int64.
    """
    groups = np.full(len(motion_iou), ISOLATED, dtype=np.int64)
    with np.errstate(invalid="ignore"):
        groups[motion_iou > SLOW_ABOVE] = SLOW
        groups[(motion_iou >= FAST_BELOW) & (motion_iou <= SLOW_ABOVE)] = MEDIUM
        groups[motion_iou < FAST_BELOW] = FAST
    return groups


def speed_average_precisions(
    speed: int,
    detections: Detections,
    matches: DetectionMatches,
    ground_truth: GroundTruthTable,
    gt_groups: np.ndarray,
    num_classes: int,
) -> np.ndarray:
    """Per-class AP@0.5 counting only the GTs of one speed (plus isolated GTs); rules in the module doc.

    Args:
        speed: SLOW, MEDIUM or FAST.
        matches: from :func:`~sltnet.evaluation.vid_map.match_detections` grouped by ``gt_groups``.
        gt_groups: [m] from :func:`speed_groups`.
    Returns:
        [K] float64; NaN for classes without a GT of this speed or without neighbours.
    """
    return subset_average_precisions([speed, ISOLATED], detections, matches, ground_truth, gt_groups, num_classes)


def subset_average_precisions(
    counted_groups: Sequence[int],
    detections: Detections,
    matches: DetectionMatches,
    ground_truth: GroundTruthTable,
    gt_groups: np.ndarray,
    num_classes: int,
) -> np.ndarray:
    """Per-class AP@0.5 counting only the GTs of some groups; the others are ignored as for speeds.

    Args:
        counted_groups: the groups whose GTs count (a speed and the isolated GTs, or any subset).
        matches: from :func:`~sltnet.evaluation.vid_map.match_detections` grouped by ``gt_groups``.
        gt_groups: [m] group of every GT, ``0 .. matches.best_iou_by_group.shape[1] - 1``.
    Returns:
        [K] float64; NaN for classes without a counted GT.
    """
    counted_groups = list(counted_groups)
    counted = np.isin(gt_groups, counted_groups)
    matched = matches.matched_gt >= 0
    true_positive = np.zeros(len(matched))
    true_positive[matched] = counted[matches.matched_gt[matched]]

    best_iou = matches.best_iou_by_group
    ignored_groups = [group for group in range(best_iou.shape[1]) if group not in counted_groups]
    overlap_counted = best_iou[:, counted_groups].max(axis=1)
    overlap_ignored = best_iou[:, ignored_groups].max(axis=1) if ignored_groups else np.full(len(matched), -1.0)

    frame_gts = np.diff(ground_truth.frame_offsets)[matches.frame_index]
    frame_ignored = np.bincount(ground_truth.frame_index[~counted], minlength=ground_truth.num_frames)
    # The share of the first counted group (the speed itself, not the isolated GTs), as FGFA has it.
    empty_frame_weight = np.mean(gt_groups == counted_groups[0]) if len(gt_groups) else 0.0
    tie_weight = np.where(
        frame_gts > 0, frame_ignored[matches.frame_index] / np.maximum(frame_gts, 1), empty_frame_weight
    )
    false_positive = np.select(
        [matched, overlap_counted > overlap_ignored, overlap_ignored > overlap_counted],
        [0.0, 1.0, 0.0],
        default=tie_weight,
    )
    return class_average_precisions(
        detections.scores,
        detections.classes,
        matches.frame_index,
        true_positive,
        false_positive,
        np.bincount(ground_truth.classes[counted], minlength=num_classes),
    )
