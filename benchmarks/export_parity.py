"""Accuracy of an exported engine pair against PyTorch on an ST-COCO split.

    python benchmarks/export_parity.py --engine DIR --config-file C --weights W --dataset synth_small_val
                                       [--threads N] [--json OUT.json] [KEY VALUE ...]

Streams every video of the split in frame order through the PyTorch ``StreamingDetector`` and
through onnxruntime (CPU) running the export's frame and temporal engines with the runtime's
bookkeeping (``runtime.detector.StreamingRuntime``), and prints VID mAP@0.5 of both, their
difference, the share of frames with the same number of detections, and the largest box and score
differences on frames whose counts agree. The export's acceptance: |mAP difference| <= 0.2 points
and the same count on >= 99 % of frames; the exit status is 1 when either fails.

The engines bake in the export's score threshold, mode and input size; the script refuses a config
whose values differ, so both sides compute the same thing.
"""

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np
import torch
from yacs.config import CfgNode

from runtime.detector import StreamingRuntime
from runtime.engines import onnxruntime_backend
from sltnet.atomic_io import atomic_write_text
from sltnet.cli import ArgumentParser, console_entry
from sltnet.config import load_config
from sltnet.contract import FrameResult, Manifest, Window
from sltnet.data.catalog import DatasetCatalog, load_dataset
from sltnet.errors import SltnetError
from sltnet.evaluation import evaluate
from sltnet.evaluation.detections import Detections
from sltnet.evaluation.inference import stream_dataset
from sltnet.modeling.build import build_model
from sltnet.modeling.streaming import StreamingDetector

MAX_MAP_DIFFERENCE = 0.2  # points of mAP@0.5
MIN_SAME_COUNT_SHARE = 0.99


def as_detections(results: dict[int, FrameResult]) -> Detections:
    image_ids = [np.full(len(r.scores), image_id, dtype=np.int64) for image_id, r in results.items()]
    return Detections(
        image_ids=np.concatenate(image_ids),
        boxes=np.concatenate([r.boxes.double().numpy() for r in results.values()]).reshape(-1, 4),
        scores=np.concatenate([r.scores.double().numpy() for r in results.values()]),
        classes=np.concatenate([r.classes.numpy() for r in results.values()]).astype(np.int64),
    )


def compare(reference: dict[int, FrameResult], engine: dict[int, FrameResult]) -> dict[str, float]:
    """Share of frames with the same detection count; largest differences where counts agree."""
    same = [i for i in reference if len(reference[i].scores) == len(engine[i].scores)]
    box_diffs = [float((reference[i].boxes - engine[i].boxes).abs().max()) for i in same if len(reference[i].scores)]
    score_diffs = [
        float((reference[i].scores - engine[i].scores).abs().max()) for i in same if len(reference[i].scores)
    ]
    class_agree = [bool(torch.equal(reference[i].classes, engine[i].classes)) for i in same]
    return {
        "same_count_share": len(same) / len(reference),
        "same_classes_share": sum(class_agree) / len(reference),
        "max_box_difference_px": max(box_diffs, default=0.0),
        "max_score_difference": max(score_diffs, default=0.0),
    }


def _check_same_setup(manifest: Manifest, cfg: CfgNode) -> None:
    score_thresh = manifest.detections.score_thresh
    if abs(score_thresh - cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST) > 1e-9:
        raise SltnetError(
            f"the engines use score threshold {score_thresh}, the config {cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST}: "
            f"pass MODEL.ROI_HEADS.SCORE_THRESH_TEST {score_thresh}"
        )
    if cfg.MODEL.META_ARCHITECTURE == "SLTnet":
        mode = Window.of_config(cfg.MODEL.SPATIOTEMPORAL).temporal_mode()
        if mode != manifest.mode:
            raise SltnetError(f"the engines are {manifest.mode}, the config is {mode}")


@console_entry
def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="export_parity.py", description="PyTorch vs onnxruntime engines: mAP and counts")
    parser.add_argument("--engine", required=True, metavar="DIR", help="export folder (manifest.json)")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--weights", metavar="W", help="weights (default: the config's MODEL.WEIGHTS)")
    parser.add_argument("--dataset", default="synth_small_val", help="catalog name of the split")
    parser.add_argument("--threads", type=int, help="intra-op threads of PyTorch and onnxruntime (default: theirs)")
    parser.add_argument("--json", metavar="OUT", help="also write the numbers as JSON")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    manifest = Manifest.load(args.engine)
    overrides = list(args.opts) + ["MODEL.DEVICE", "cpu"] + (["MODEL.WEIGHTS", args.weights] if args.weights else [])
    cfg = load_config(args.config_file, overrides)
    _check_same_setup(manifest, cfg)
    dataset = load_dataset(args.dataset, DatasetCatalog())

    reference = stream_dataset(StreamingDetector.from_config(build_model(cfg), cfg), dataset, description="pytorch")
    backend = onnxruntime_backend(args.engine, manifest, num_threads=args.threads)
    exported = stream_dataset(StreamingRuntime(manifest, backend), dataset, description="onnxruntime")

    report = {
        "dataset": args.dataset,
        "engine": args.engine,
        "mAP50_pytorch": evaluate(dataset, as_detections(reference))["vid"]["mAP"],
        "mAP50_onnxruntime": evaluate(dataset, as_detections(exported))["vid"]["mAP"],
        **compare(reference, exported),
    }
    difference = 100 * abs(report["mAP50_pytorch"] - report["mAP50_onnxruntime"])
    passed = difference <= MAX_MAP_DIFFERENCE and report["same_count_share"] >= MIN_SAME_COUNT_SHARE
    print(f"mAP@0.5 PyTorch      {100 * report['mAP50_pytorch']:.2f}")
    print(f"mAP@0.5 onnxruntime  {100 * report['mAP50_onnxruntime']:.2f}  (difference {difference:.2f} points)")
    print(f"frames with the same detection count  {100 * report['same_count_share']:.2f} %")
    print(f"frames with the same classes          {100 * report['same_classes_share']:.2f} %")
    print(
        f"largest box difference {report['max_box_difference_px']:.2e} px, "
        f"score difference {report['max_score_difference']:.2e} (frames with the same count)"
    )
    print(
        f"{'PASS' if passed else 'FAIL'}: |difference| <= {MAX_MAP_DIFFERENCE} points and >= "
        f"{100 * MIN_SAME_COUNT_SHARE:.0f} % same counts"
    )
    if args.json:
        atomic_write_text(
            args.json, json.dumps({**report, "passed": passed, "command": " ".join(sys.argv)}, indent=2) + "\n"
        )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
