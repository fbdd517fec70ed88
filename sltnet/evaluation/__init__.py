"""Detection metrics: VID mAP@0.5 with the motion-speed breakdown, and COCO AP (docs/metrics.md#the-metrics)."""

from sltnet.evaluation.detections import Detections, load_detections, parse_detections
from sltnet.evaluation.report import evaluate, format_table, write_metrics

__all__ = ["Detections", "evaluate", "format_table", "load_detections", "parse_detections", "write_metrics"]
