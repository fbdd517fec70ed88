"""COCO box AP (AP, AP50, AP75, APs, APm, APl) through pycocotools (docs/metrics.md#the-metrics)."""

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sltnet.evaluation.detections import Detections
from sltnet.evaluation.vid_map import GroundTruthTable

#: Names of the first six entries of ``COCOeval.stats``.
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _xywh(boxes: np.ndarray) -> np.ndarray:
    """[n, 4] (x1, y1, x2, y2) -> [n, 4] (x, y, w, h)."""
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _coco_from_dict(content: dict[str, Any]) -> COCO:
    """An in-memory COCO object, without writing or re-reading a file."""
    coco = COCO()
    coco.dataset = content
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _annotations(image_ids: np.ndarray, category_ids: np.ndarray, boxes: np.ndarray) -> list[dict[str, Any]]:
    xywh = _xywh(boxes)
    # Box-only annotations: the area COCO ranks as small/medium/large is the box area. Ids start at 1
    # because COCOeval stores the matched id and reads 0 as "unmatched".
    rows = zip(image_ids.tolist(), category_ids.tolist(), xywh.tolist(), (xywh[:, 2] * xywh[:, 3]).tolist())
    return [
        {"id": index + 1, "image_id": image, "category_id": category, "bbox": bbox, "area": area, "iscrowd": 0}
        for index, (image, category, bbox, area) in enumerate(rows)
    ]


def coco_metrics(
    ground_truth: GroundTruthTable, category_ids: Sequence[int], detections: Detections
) -> dict[str, float | None]:
    """COCO AP of ``detections``.

    Args:
        ground_truth: the dataset's GTs.
        category_ids: original COCO category id of each contiguous class index.
        detections: the detections to score.
    Returns:
        ``{name: value}`` for :data:`COCO_METRICS`, values in [0, 1]; None where COCO has no ground truth
        to score (for instance APl without large objects).
    """
    category_id_by_class = np.asarray(category_ids, dtype=np.int64)
    images = [{"id": image_id} for image_id in ground_truth.frame_image_ids.tolist()]
    categories = [{"id": category_id} for category_id in category_id_by_class.tolist()]
    gt_annotations = _annotations(
        ground_truth.frame_image_ids[ground_truth.frame_index],
        category_id_by_class[ground_truth.classes],
        ground_truth.boxes,
    )
    dt_annotations = _annotations(detections.image_ids, category_id_by_class[detections.classes], detections.boxes)
    for annotation, score in zip(dt_annotations, detections.scores.tolist()):
        annotation["score"] = score

    coco_gt = _coco_from_dict({"images": images, "categories": categories, "annotations": gt_annotations})
    coco_dt = _coco_from_dict({"images": images, "categories": categories, "annotations": dt_annotations})
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # COCOeval reports -1 where a metric has no ground truth.
    return {name: (float(value) if value >= 0 else None) for name, value in zip(COCO_METRICS, evaluator.stats)}
