"""Detections in the COCO results format, read and checked against the dataset they describe."""

import json
import math
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

from sltnet.data.records import StCocoDataset
from sltnet.errors import SltnetError

RESULT_FIELDS = ("image_id", "category_id", "bbox", "score")


@dataclass
class Detections:
    """Detections of a dataset's frames as flat arrays, in file order.

    Attributes:
        image_ids: [n] int64 COCO image id of each detection.
        boxes: [n, 4] float64 boxes (x1, y1, x2, y2) in pixels.
        scores: [n] float64 confidences.
        classes: [n] int64 contiguous class indices 0..K-1 of the dataset.
    """

    image_ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def _is_number(value: Any) -> bool:
    # JSON true/false load as bool, which Python counts as an int.
    return isinstance(value, Real) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_result(
    result: Any,
    where: str,
    image_ids: set,
    category_id_to_class: dict[int, int],
) -> tuple[int, int, list[float], float]:
    """Check one COCO result entry; return (image_id, class index, [x, y, w, h], score)."""
    if not isinstance(result, dict):
        raise SltnetError(f"{where}: not a JSON object (expected fields {', '.join(RESULT_FIELDS)})")
    for name in RESULT_FIELDS:
        if name not in result:
            raise SltnetError(f"{where}: missing required field '{name}'")
    image_id = result["image_id"]
    if not _is_integer(image_id):
        raise SltnetError(f"{where}: 'image_id' must be an integer, got {image_id!r}")
    if image_id not in image_ids:
        raise SltnetError(f"{where}: unknown image id {image_id}")
    where = f"{where} (image {image_id})"
    category_id = result["category_id"]
    if not _is_integer(category_id):
        raise SltnetError(f"{where}: 'category_id' must be an integer, got {category_id!r}")
    if category_id not in category_id_to_class:
        raise SltnetError(f"{where}: unknown category id {category_id}")
    bbox = result["bbox"]
    if not (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(_is_number(v) and math.isfinite(v) for v in bbox)
        and bbox[2] >= 0
        and bbox[3] >= 0
    ):
        raise SltnetError(
            f"{where}: 'bbox' must be [x, y, width, height] with 4 finite numbers and width, height >= 0, got {bbox!r}"
        )
    score = result["score"]
    if not (_is_number(score) and math.isfinite(score)):
        raise SltnetError(f"{where}: 'score' must be a finite number, got {score!r}")
    return image_id, category_id_to_class[category_id], bbox, float(score)


def parse_detections(results: Any, dataset: StCocoDataset, source: str) -> Detections:
    """Check COCO-format results against ``dataset`` and convert them to :class:`Detections`.

    Args:
        results: the decoded JSON: a list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
            with the dataset's original image and category ids.
        dataset: the ground truth the detections belong to.
        source: name used in error messages (the file path).
    Raises:
        SltnetError: naming ``source`` and the offending entry's index.
    """
    if not isinstance(results, list):
        raise SltnetError(f"{source}: expected a JSON list of detections")
    image_ids = {frame.image_id for frame in dataset.frames()}
    category_id_to_class = dataset.category_id_to_class
    parsed = [
        _parse_result(result, f"{source}: detection {index}", image_ids, category_id_to_class)
        for index, result in enumerate(results)
    ]
    xywh = np.array([p[2] for p in parsed], dtype=np.float64).reshape(-1, 4)
    return Detections(
        image_ids=np.array([p[0] for p in parsed], dtype=np.int64),
        boxes=np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
        scores=np.array([p[3] for p in parsed], dtype=np.float64),
        classes=np.array([p[1] for p in parsed], dtype=np.int64),
    )


def load_detections(path: str, dataset: StCocoDataset) -> Detections:
    """Read a COCO results JSON file (a list of detections) for ``dataset``.

    Raises:
        SltnetError: the file is missing, is not JSON, or an entry is malformed or names an image or
            category the dataset does not have.
    """
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except OSError as err:
        raise SltnetError(f"{path}: cannot read detections ({err.strerror or err})") from err
    except json.JSONDecodeError as err:
        raise SltnetError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from err
    except UnicodeDecodeError as err:
        raise SltnetError(f"{path}: not valid JSON (not UTF-8 text)") from err
    return parse_detections(results, dataset, path)
