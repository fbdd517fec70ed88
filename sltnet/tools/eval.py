"""``sltnet-eval``: score detections against ST-COCO ground truth, or run a model over a dataset first.

    sltnet-eval --gt GT.json --detections DETS.json [--output M.json]
    sltnet-eval --config-file C [--weights W] (--dataset NAME | --gt GT.json [--image-root DIR])
                [--output M.json] [--detections-out DETS.json] [KEY VALUE ...]

Prints VID mAP@0.5 with its slow/medium/fast breakdown and COCO AP as a table; ``--output`` also
writes them as JSON.
"""

import argparse
import json
import os
from collections.abc import Sequence

from sltnet.atomic_io import atomic_output, check_outputs
from sltnet.cli import ArgumentParser, console_entry
from sltnet.config import load_config
from sltnet.data.catalog import add_catalog_arguments, catalog_from_args, load_dataset
from sltnet.data.records import StCocoDataset
from sltnet.data.stcoco import load_stcoco
from sltnet.errors import SltnetError
from sltnet.evaluation import evaluate, format_table, load_detections, parse_detections, write_metrics


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="sltnet-eval",
        description="Score detections: VID mAP@0.5 (ILSVRC rule), mAP by motion speed (FGFA) and COCO AP. "
        "With --config-file, first run the model over the dataset in video order.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--detections",
        metavar="DETS.json",
        help="COCO results file to score: a list of {image_id, category_id, bbox: [x, y, w, h], score}",
    )
    source.add_argument("--config-file", metavar="FILE", help="run this model config over the dataset")
    parser.add_argument("--weights", metavar="W", help="model weights (default: the config's MODEL.WEIGHTS)")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--gt", metavar="GT.json", help="ST-COCO ground-truth annotation file")
    data.add_argument("--dataset", metavar="NAME", help="a dataset name from the catalog (with --config-file)")
    parser.add_argument("--image-root", metavar="DIR", help="folder of the --gt frames (default: the JSON's folder)")
    parser.add_argument("--output", metavar="METRICS.json", help="also write the metrics to this JSON file")
    parser.add_argument("--detections-out", metavar="DETS.json", help="write the model's detections (COCO results)")
    parser.add_argument(
        "--score-thresh", type=float, help="score threshold (default MODEL.ROI_HEADS.SCORE_THRESH_TEST)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_catalog_arguments(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")
    return parser


def _check_output_path(option: str, path: str | None) -> None:
    if path is not None and os.path.isdir(path):
        raise SltnetError(f"{option} {path}: is a folder, expected a file name")


def _ground_truth(args: argparse.Namespace, catalog_file: str) -> StCocoDataset:
    if args.dataset is not None:
        return load_dataset(args.dataset, catalog_from_args(args, catalog_file))
    return load_stcoco(args.gt, args.image_root or os.path.dirname(os.path.abspath(args.gt)))


def _outputs(args: argparse.Namespace) -> dict[str, str | None]:
    return {"--output": args.output, "--detections-out": args.detections_out}


def _run_model(args: argparse.Namespace) -> tuple:
    """Ground truth and the model's COCO results on it."""
    # Imported here: scoring a detections file does not need the model stack.
    from sltnet.evaluation.inference import detect_dataset
    from sltnet.modeling.build import build_model

    overrides = list(args.opts) + (["MODEL.WEIGHTS", args.weights] if args.weights else [])
    cfg = load_config(args.config_file, overrides)
    dataset = _ground_truth(args, cfg.DATASETS.CATALOG)
    if dataset.num_classes != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        raise SltnetError(
            f"{dataset.json_path}: {dataset.num_classes} classes, but the model has "
            f"MODEL.ROI_HEADS.NUM_CLASSES {cfg.MODEL.ROI_HEADS.NUM_CLASSES}"
        )
    check_outputs(
        {"the dataset's annotations": dataset.json_path, "MODEL.WEIGHTS": cfg.MODEL.WEIGHTS or None}, _outputs(args)
    )
    results = detect_dataset(build_model(cfg), cfg, dataset, not args.no_progress, args.score_thresh)
    if args.detections_out is not None:
        with atomic_output(args.detections_out) as stream:
            json.dump(results, stream)
    return dataset, parse_detections(results, dataset, "model output")


@console_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_output_path("--output", args.output)
    _check_output_path("--detections-out", args.detections_out)
    check_outputs(
        {
            "--gt": args.gt,
            "--detections": args.detections,
            "--config-file": args.config_file,
            "--weights": args.weights,
        },
        _outputs(args),
    )
    if args.detections is not None:
        if args.dataset is not None or args.weights or args.opts or args.detections_out:
            raise SltnetError("--dataset, --weights, --detections-out and KEY VALUE overrides need --config-file")
        # Scoring needs only the annotations; image paths are resolved against the JSON's folder.
        dataset = load_stcoco(args.gt, os.path.dirname(os.path.abspath(args.gt)))
        detections = load_detections(args.detections, dataset)
    else:
        dataset, detections = _run_model(args)
    metrics = evaluate(dataset, detections)
    print(format_table(metrics))
    if args.output is not None:
        write_metrics(metrics, args.output)
    return 0
