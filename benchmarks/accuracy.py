"""Accuracy of the baseline and the SLTnet variants on one ST-COCO split, in one table.

    python benchmarks/accuracy.py [--dataset synth_small_val] [--row NAME=CONFIG,WEIGHTS[,KEY=VALUE...]]
                                  [--engine DIR ...] [--backend onnxruntime torch ...] [--threads N]
                                  [--json results.json] [--markdown table.md]

PyTorch rows are a config and its trained weights (see ROWS; ``--row`` replaces them), run in video
order through the PyTorch streaming detector. Engine rows stream the same split through each export
folder (``--engine``, default: the small exports under output/engines that exist) on each
``--backend``, with the runtime's bookkeeping (``runtime.detector.StreamingRuntime``). Every row is
scored with the project's metrics: VID mAP@0.5, mAP by motion speed, COCO AP, and mAP@0.5 on the
synthetic benchmark's *hidden* frames (boxes whose class evidence is hidden; other boxes ignored),
where a single frame cannot tell the class. Rows whose weights or backend are missing are listed as
skipped.
"""

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runtime.detector import StreamingRuntime
from runtime.engines import open_backend
from sltnet.atomic_io import atomic_write_text, check_outputs
from sltnet.cli import ArgumentParser, console_entry
from sltnet.config import load_config
from sltnet.contract import Manifest
from sltnet.data.catalog import DatasetCatalog, load_dataset
from sltnet.data.records import StCocoDataset
from sltnet.data.stcoco import read_stcoco_json
from sltnet.errors import SltnetError
from sltnet.evaluation import evaluate, parse_detections
from sltnet.evaluation.detections import Detections
from sltnet.evaluation.inference import Streamer, coco_results, stream_dataset
from sltnet.evaluation.report import subset_map
from sltnet.machine import machine_info
from sltnet.modeling.build import build_model
from sltnet.modeling.streaming import StreamingDetector


@dataclass
class Row:
    """One model to score: a config, its weights and config overrides."""

    name: str
    config: str
    weights: str
    overrides: Sequence[str] = ()


SMALL = "configs/synthetic/small_{}.yaml"
SMALL_WEIGHTS = "output/synthetic/small_{}/model_final.pt"
ROWS = [
    Row("baseline (single frame)", SMALL.format("baseline"), SMALL_WEIGHTS.format("baseline")),
    Row("+ short-term linking", SMALL.format("sltnet_short_term"), SMALL_WEIGHTS.format("sltnet_short_term")),
    Row(
        "+ long-term attention",
        SMALL.format("sltnet_sequential"),
        SMALL_WEIGHTS.format("sltnet_sequential"),
        ("MODEL.SPATIOTEMPORAL.DOUBLE_HEAD", "false"),
    ),
    Row(
        "+ double head = SLTnet sequential",
        SMALL.format("sltnet_sequential"),
        SMALL_WEIGHTS.format("sltnet_sequential"),
    ),
    Row("SLTnet symmetric", SMALL.format("sltnet_symmetric"), SMALL_WEIGHTS.format("sltnet_symmetric")),
    # What `python3 dev.py demo` runs: the sequential weights above, stored in float16.
    Row(
        "SLTnet sequential, shipped float16 weights",
        SMALL.format("sltnet_sequential"),
        "sltnet/weights/small_sltnet_sequential_fp16.pt",
    ),
]
ENGINES = [
    "output/engines/small_baseline",
    "output/engines/small_sltnet_sequential",
    "output/engines/small_sltnet_symmetric",
]
#: The largest mAP@0.5 loss against fp32 (points) of each precision's engines (the precision issue).
MAX_MAP_LOSS = {"fp16": 0.3, "int8": 1.0}
MODE_NAMES = {
    "single_frame": "baseline (single frame)",
    "sequential": "SLTnet sequential",
    "symmetric": "SLTnet symmetric",
}


def parse_row(text: str) -> Row:
    name, _, spec = text.partition("=")
    parts = spec.split(",")
    if not name or len(parts) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=CONFIG,WEIGHTS[,KEY=VALUE...]")
    overrides = [item for pair in parts[2:] for item in pair.split("=", 1)]
    return Row(name, parts[0], parts[1], overrides)


def hidden_frame_map(dataset: StCocoDataset, detections: Detections) -> float | None:
    """VID mAP@0.5 counting only ground-truth boxes marked ``hidden`` by the synthetic generator."""
    annotations = read_stcoco_json(dataset.json_path)["annotations"]
    hidden_ids = {a["id"] for a in annotations if a.get("hidden")}
    if not hidden_ids:
        return None
    counted = np.array([int(i) in hidden_ids for frame in dataset.frames() for i in frame.annotation_ids], dtype=bool)
    return subset_map(dataset, detections, counted)


def score_streamer(name: str, streamer: Streamer, dataset: StCocoDataset) -> dict:
    """Stream ``dataset`` through ``streamer`` and score it."""
    start = time.perf_counter()
    results = coco_results(stream_dataset(streamer, dataset, description=name), dataset.category_ids)
    seconds = time.perf_counter() - start
    detections = parse_detections(results, dataset, name)
    metrics = evaluate(dataset, detections)
    return {
        "name": name,
        "mAP50": metrics["vid"]["mAP"],
        "slow": metrics["motion"]["slow"]["mAP"],
        "medium": metrics["motion"]["medium"]["mAP"],
        "fast": metrics["motion"]["fast"]["mAP"],
        "hidden_mAP50": hidden_frame_map(dataset, detections),
        "coco_AP": metrics["coco"]["AP"],
        "seconds_per_frame": seconds / len(dataset),
    }


def score_row(row: Row, dataset: StCocoDataset) -> dict:
    """A PyTorch row: the model of ``row`` in the streaming detector."""
    cfg = load_config(row.config, ["MODEL.WEIGHTS", row.weights, *row.overrides])
    scores = score_streamer(row.name, StreamingDetector.from_config(build_model(cfg), cfg), dataset)
    return {
        **scores,
        "backend": "pytorch",
        "config": row.config,
        "weights": row.weights,
        "overrides": list(row.overrides),
    }


def score_engine(engine: str, backend_name: str, dataset: StCocoDataset, threads: int | None) -> dict:
    """An engine row: the export folder ``engine`` on one backend (skipped when it cannot run here)."""
    manifest = Manifest.load(engine)
    precision = manifest.precision.precision
    name = f"{MODE_NAMES[manifest.mode]}, {precision}, {backend_name}"
    identity = {"backend": backend_name, "engine": engine, "mode": manifest.mode, "precision": precision}
    try:
        device = None if backend_name == "tensorrt" else "cpu"
        backend = open_backend(backend_name, engine, manifest, device=device, num_threads=threads)
    except SltnetError as err:
        return {"name": name, **identity, "skipped": str(err)}
    scores = score_streamer(name, StreamingRuntime(manifest, backend), dataset)
    return {**scores, **identity, "backend": backend.description, "backend_name": backend_name}


def precision_checks(rows: Sequence[dict]) -> list[str]:
    """PASS/FAIL lines: each fp16 and int8 engine row's mAP@0.5 within its limit of the fp32 row of
    the same mode and backend, and SLTnet above the baseline at each precision and backend."""
    engines = [row for row in rows if "precision" in row and "skipped" not in row]

    def find(**match) -> dict | None:
        return next((row for row in engines if all(row[key] == value for key, value in match.items())), None)

    lines = []
    for row in engines:
        limit = MAX_MAP_LOSS.get(row["precision"])
        fp32 = find(mode=row["mode"], backend_name=row["backend_name"], precision="fp32")
        if limit is None or fp32 is None:
            continue
        loss = 100 * (fp32["mAP50"] - row["mAP50"])
        status = "PASS" if loss <= limit else "FAIL"
        difference = f"{abs(loss):.2f} points {'below' if loss > 0 else 'above'}" if loss else "equal to"
        lines.append(f"{status} {row['name']}: mAP@0.5 {difference} fp32 (loss limit {limit} points)")
    for row in engines:
        baseline = find(mode="single_frame", backend_name=row["backend_name"], precision=row["precision"])
        if row["mode"] == "single_frame" or baseline is None:
            continue
        gain = 100 * (row["mAP50"] - baseline["mAP50"])
        status = "PASS" if gain > 0 else "FAIL"
        lines.append(f"{status} {row['name']}: temporal gain over the baseline {gain:+.2f} points")
    return lines


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def markdown_table(rows: list[dict], dataset_name: str) -> str:
    lines = [
        f"Dataset `{dataset_name}`; mAP@0.5 (VID rule), by motion speed, on hidden frames, and COCO AP, in %.",
        "",
        "| model | run by | mAP@0.5 | slow | medium | fast | hidden frames | COCO AP |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['name']} | {row.get('backend', '')} | skipped: {row['skipped']} | | | | | |")
            continue
        values = [row[key] for key in ("mAP50", "slow", "medium", "fast", "hidden_mAP50", "coco_AP")]
        lines.append(f"| {row['name']} | {row['backend']} | " + " | ".join(_percent(v) for v in values) + " |")
    return "\n".join(lines)


@console_entry
def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="accuracy.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="synth_small_val", help="catalog name of the split to score")
    parser.add_argument("--row", action="append", type=parse_row, help="NAME=CONFIG,WEIGHTS[,KEY=VALUE...]")
    parser.add_argument("--engine", action="append", metavar="DIR", help="export folder (repeatable)")
    parser.add_argument("--backend", nargs="+", default=["onnxruntime", "torch"], help="backends of the engine rows")
    parser.add_argument("--threads", type=int, help="intra-op threads of PyTorch and onnxruntime (default: theirs)")
    parser.add_argument("--json", help="write the rows as JSON")
    parser.add_argument("--markdown", help="write the table as Markdown")
    args = parser.parse_args(argv)
    check_outputs({}, {"--json": args.json, "--markdown": args.markdown})

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dataset = load_dataset(args.dataset, DatasetCatalog())
    rows = []
    for row in args.row or ROWS:
        if not Path(row.weights).is_file():
            rows.append({"name": row.name, "config": row.config, "weights": row.weights, "skipped": "no weights"})
            continue
        print(f"== {row.name}: {row.config} {row.weights} {' '.join(row.overrides)}", flush=True)
        rows.append(score_row(row, dataset))
    engines = args.engine or [engine for engine in ENGINES if (Path(engine) / "manifest.json").is_file()]
    for engine in engines:
        for backend in args.backend:
            print(f"== {engine} on {backend}", flush=True)
            rows.append(score_engine(engine, backend, dataset, args.threads))
    table = markdown_table(rows, args.dataset)
    checks = precision_checks(rows)
    if checks:
        table += "\n\n" + "\n".join(f"- {line}" for line in checks)
    print(table)
    if args.json:
        report = {
            "dataset": args.dataset,
            "machine": machine_info(torch.get_num_threads(), sys.argv),
            "rows": rows,
            "markdown": table,
        }
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    if args.markdown:
        atomic_write_text(args.markdown, table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
