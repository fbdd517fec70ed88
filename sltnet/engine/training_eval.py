"""Evaluation after training: detect and score every ``DATASETS.TEST`` dataset and write
``OUTPUT_DIR/metrics_final.json``.
"""

import os
from pathlib import Path
from typing import Any

from yacs.config import CfgNode

from sltnet.data.catalog import DatasetCatalog
from sltnet.data.stcoco import load_stcoco
from sltnet.engine.training_state import note
from sltnet.errors import SltnetError
from sltnet.evaluation import evaluate, format_table, parse_detections, write_metrics
from sltnet.evaluation.inference import detect_dataset
from sltnet.modeling.baseline import FasterRCNN
from sltnet.modeling.sltnet import SLTnet

FINAL_METRICS_FILE = "metrics_final.json"


def evaluate_trained_model(
    model: FasterRCNN | SLTnet, cfg: CfgNode, catalog: DatasetCatalog, output_dir: Path, progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Detect and score every ``DATASETS.TEST`` dataset whose annotation file exists; print the
    tables and write ``OUTPUT_DIR/metrics_final.json`` (``{dataset name: metrics}``).

    Returns:
        The metrics per dataset name (empty when no test dataset is available).
    """
    results: dict[str, dict[str, Any]] = {}
    for name in cfg.DATASETS.TEST:
        image_root, json_path = catalog.get(name)
        if not os.path.isfile(json_path):
            note(f"note: skipping evaluation on {name}: {json_path} not found")
            continue
        dataset = load_stcoco(json_path, image_root)
        if dataset.num_classes != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise SltnetError(
                f"{json_path}: {dataset.num_classes} classes, but the model has MODEL.ROI_HEADS.NUM_CLASSES "
                f"{cfg.MODEL.ROI_HEADS.NUM_CLASSES}; evaluation skipped (the trained weights are saved)"
            )
        detections = detect_dataset(model, cfg, dataset, progress=progress)
        results[name] = evaluate(dataset, parse_detections(detections, dataset, name))
        print(f"evaluation on {name}:\n{format_table(results[name])}\n")
    if results:
        write_metrics(results, str(output_dir / FINAL_METRICS_FILE))
    elif cfg.DATASETS.TEST:
        note("note: no test dataset available, nothing evaluated")
    return results
