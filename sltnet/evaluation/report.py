"""All metrics of a set of detections in one dictionary, as a printed table and as a JSON file."""

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from sltnet.atomic_io import atomic_output
from sltnet.data.records import StCocoDataset
from sltnet.evaluation.coco_ap import COCO_METRICS, coco_metrics
from sltnet.evaluation.detections import Detections
from sltnet.evaluation.motion import (
    ISOLATED,
    NUM_MOTION_GROUPS,
    SPEEDS,
    motion_ious,
    speed_average_precisions,
    speed_groups,
    subset_average_precisions,
)
from sltnet.evaluation.vid_map import ground_truth_table, match_detections, vid_average_precisions


def _class_summary(aps: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """mAP over the classes that have ground truth, and every class's AP (None: no ground truth)."""
    scored = aps[~np.isnan(aps)]
    return {
        "mAP": float(scored.mean()) if len(scored) else None,
        "per_class": {name: (None if np.isnan(ap) else float(ap)) for name, ap in zip(class_names, aps)},
    }


def evaluate(dataset: StCocoDataset, detections: Detections) -> dict[str, Any]:
    """Score detections on a dataset: VID mAP@0.5, its slow/medium/fast breakdown and COCO AP.

    Returns:
        A JSON-ready dictionary; every AP is in [0, 1] or None where there is nothing to score::

            {"num_frames", "num_ground_truth", "num_detections", "num_isolated_ground_truth",
             "ground_truth_per_class": {class: count},
             "vid": {"mAP", "per_class": {class: AP}},
             "motion": {"slow" | "medium" | "fast": {"mAP", "num_ground_truth", "per_class"}},
             "coco": {"AP", "AP50", "AP75", "APs", "APm", "APl"}}

        A speed's ``num_ground_truth`` counts GTs of that speed; GTs without neighbours in the motion
        window (``num_isolated_ground_truth``) count in every speed.
    """
    ground_truth = ground_truth_table(dataset)
    groups = speed_groups(motion_ious(ground_truth))
    matches = match_detections(detections, ground_truth, groups, NUM_MOTION_GROUPS)
    num_classes = dataset.num_classes
    motion = {}
    for speed, name in enumerate(SPEEDS):
        aps = speed_average_precisions(speed, detections, matches, ground_truth, groups, num_classes)
        motion[name] = {"num_ground_truth": int(np.sum(groups == speed)), **_class_summary(aps, dataset.class_names)}
    return {
        "num_frames": ground_truth.num_frames,
        "num_ground_truth": len(ground_truth),
        "num_detections": len(detections),
        "num_isolated_ground_truth": int(np.sum(groups == ISOLATED)),
        "ground_truth_per_class": dict(
            zip(dataset.class_names, np.bincount(ground_truth.classes, minlength=num_classes).tolist())
        ),
        "vid": _class_summary(
            vid_average_precisions(detections, matches, ground_truth, num_classes), dataset.class_names
        ),
        "motion": motion,
        "coco": coco_metrics(ground_truth, dataset.category_ids, detections),
    }


def subset_map(dataset: StCocoDataset, detections: Detections, counted: np.ndarray) -> float | None:
    """VID mAP@0.5 counting only some ground-truth boxes; the others are ignored as in the speed
    breakdown (finding them is neither a TP nor an FP).

    Args:
        counted: [m] bool over the boxes in ``dataset.frames()`` order (each frame's annotation order).
    """
    ground_truth = ground_truth_table(dataset)
    groups = np.where(counted, 0, 1)
    matches = match_detections(detections, ground_truth, groups, 2)
    aps = subset_average_precisions([0], detections, matches, ground_truth, groups, dataset.num_classes)
    return _class_summary(aps, dataset.class_names)["mAP"]


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.1f}"


def _rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned first column, right-aligned others, widths fitted to the content."""
    table = [list(header)] + [list(row) for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return [
        "  ".join([row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]).rstrip()
        for row in table
    ]


def format_table(metrics: dict[str, Any]) -> str:
    """The metrics of :func:`evaluate` as text: a summary, then one line per class (APs in percent)."""
    summary = [("VID mAP@0.5", _percent(metrics["vid"]["mAP"]), str(metrics["num_ground_truth"]))]
    summary += [
        (f"  {name}", _percent(metrics["motion"][name]["mAP"]), str(metrics["motion"][name]["num_ground_truth"]))
        for name in SPEEDS
    ]
    summary += [
        ("COCO AP" if name == "AP" else f"  {name}", _percent(metrics["coco"][name]), "") for name in COCO_METRICS
    ]
    lines = [
        f"{metrics['num_frames']} frames, {metrics['num_ground_truth']} ground-truth boxes "
        f"({metrics['num_isolated_ground_truth']} without motion neighbours, counted in every speed), "
        f"{metrics['num_detections']} detections",
        "",
        *_rows(("metric", "%", "GT"), summary),
        "",
    ]
    per_class = [
        (
            name,
            str(count),
            _percent(metrics["vid"]["per_class"][name]),
            *(_percent(metrics["motion"][speed]["per_class"][name]) for speed in SPEEDS),
        )
        for name, count in metrics["ground_truth_per_class"].items()
    ]
    lines += _rows(("class", "GT", "AP@0.5", *SPEEDS), per_class)
    return "\n".join(lines)


def write_metrics(metrics: dict[str, Any], path: str) -> None:
    """Write the metrics as JSON atomically: a complete file or none.

    Raises:
        SltnetError: the file cannot be written.
    """
    with atomic_output(path) as f:
        json.dump(metrics, f, indent=2, allow_nan=False)
        f.write("\n")
