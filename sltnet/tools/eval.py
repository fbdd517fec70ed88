"""``sltnet-eval``: score COCO-format detections against ST-COCO ground truth.

Prints VID mAP@0.5 with its slow/medium/fast breakdown and COCO AP as a table; ``--output`` also
writes them as JSON.
"""

import argparse
import os
from typing import Optional, Sequence

from sltnet.cli import ArgumentParser, console_entry
from sltnet.data.stcoco import load_stcoco
from sltnet.errors import SltnetError
from sltnet.evaluation import evaluate, format_table, load_detections, write_metrics


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="sltnet-eval",
        description="Score detections: VID mAP@0.5 (ILSVRC rule), mAP by motion speed (FGFA) and COCO AP.",
    )
    parser.add_argument("--gt", required=True, metavar="GT.json", help="ST-COCO ground-truth annotation file")
    parser.add_argument(
        "--detections",
        required=True,
        metavar="DETS.json",
        help="COCO results file: a list of {image_id, category_id, bbox: [x, y, w, h], score}",
    )
    parser.add_argument("--output", metavar="METRICS.json", help="also write the metrics to this JSON file")
    return parser


@console_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.output is not None and os.path.isdir(args.output):
        raise SltnetError(f"--output {args.output}: is a folder, expected a file name")
    # Scoring needs only the annotations; image paths are resolved against the JSON's folder.
    dataset = load_stcoco(args.gt, os.path.dirname(os.path.abspath(args.gt)))
    detections = load_detections(args.detections, dataset)
    metrics = evaluate(dataset, detections)
    print(format_table(metrics))
    if args.output is not None:
        write_metrics(metrics, args.output)
    return 0
