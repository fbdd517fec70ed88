"""``sltnet-eval``: table on stdout, metrics JSON, one-line errors with exit status 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sltnet.config import load_config
from sltnet.data.synthetic.writing import generate_split
from sltnet.modeling.build import build_model
from sltnet.tools.eval import main

# Two videos of 3 frames; a static cat (slow), a dog moving 30 px a frame (fast).
GROUND_TRUTH = {
    "images": [
        {
            "id": 1 + 3 * v + t,
            "file_name": f"v{v}/{t:06d}.JPEG",
            "width": 320,
            "height": 240,
            "video": f"v{v}",
            "frame_number": t,
        }
        for v in range(2)
        for t in range(3)
    ],
    "annotations": [
        {
            "id": 1 + 6 * v + 2 * t,
            "image_id": 1 + 3 * v + t,
            "category_id": 7,
            "bbox": [10, 10, 60, 40],
            "id_track": 0,
            "area": 2400,
            "iscrowd": 0,
        }
        for v in range(2)
        for t in range(3)
    ]
    + [
        {
            "id": 2 + 6 * v + 2 * t,
            "image_id": 1 + 3 * v + t,
            "category_id": 9,
            "bbox": [100 + 30 * t, 100, 50, 50],
            "id_track": 1,
            "area": 2500,
            "iscrowd": 0,
        }
        for v in range(2)
        for t in range(3)
    ],
    "categories": [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}, {"id": 11, "name": "fox"}],
}


@pytest.fixture
def files(tmp_path):
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(GROUND_TRUTH))
    # The ground truth itself, as detections with score 1.
    detections = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in GROUND_TRUTH["annotations"]
    ]
    dets_path = tmp_path / "dets.json"
    dets_path.write_text(json.dumps(detections))
    return gt_path, dets_path, tmp_path / "metrics.json"


def test_prints_table_and_writes_metrics(files, capsys):
    gt_path, dets_path, out_path = files
    assert main(["--gt", str(gt_path), "--detections", str(dets_path), "--output", str(out_path)]) == 0
    table = capsys.readouterr().out
    assert "VID mAP@0.5" in table and "COCO AP" in table
    metrics = json.loads(out_path.read_text())
    assert metrics["vid"]["mAP"] == pytest.approx(1.0)
    assert metrics["vid"]["per_class"]["fox"] is None
    assert metrics["motion"]["slow"]["num_ground_truth"] == 6
    assert metrics["motion"]["fast"]["num_ground_truth"] == 6
    assert metrics["motion"]["slow"]["mAP"] == pytest.approx(1.0)
    assert metrics["motion"]["fast"]["mAP"] == pytest.approx(1.0)
    assert metrics["motion"]["medium"]["mAP"] is None
    assert metrics["coco"]["AP"] == pytest.approx(1.0)
    assert sorted(p.name for p in out_path.parent.iterdir()) == ["dets.json", "gt.json", "metrics.json"]


def run_failing(argv, capsys) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_bad_detections_exit_2_without_output(files, capsys):
    gt_path, dets_path, out_path = files
    dets_path.write_text(json.dumps([{"image_id": 1, "category_id": 8, "bbox": [0, 0, 5, 5], "score": 0.5}]))
    line = run_failing(["--gt", str(gt_path), "--detections", str(dets_path), "--output", str(out_path)], capsys)
    assert line == f"error: {dets_path}: detection 0 (image 1): unknown category id 8"
    assert not out_path.exists()


def test_detections_not_json(files, capsys):
    gt_path, dets_path, _ = files
    dets_path.write_text("not json")
    line = run_failing(["--gt", str(gt_path), "--detections", str(dets_path)], capsys)
    assert line.startswith(f"error: {dets_path}: not valid JSON")


def test_bad_ground_truth(files, capsys):
    gt_path, dets_path, _ = files
    gt_path.write_text("{")
    line = run_failing(["--gt", str(gt_path), "--detections", str(dets_path)], capsys)
    assert line.startswith(f"error: {gt_path}: not valid JSON")


def test_output_is_a_folder(files, capsys):
    gt_path, dets_path, out_path = files
    line = run_failing(["--gt", str(gt_path), "--detections", str(dets_path), "--output", str(out_path.parent)], capsys)
    assert line == f"error: --output {out_path.parent}: is a folder, expected a file name"


def test_console_script_reports_one_line_and_no_traceback(files):
    gt_path, dets_path, _ = files
    dets_path.write_text(json.dumps([{"image_id": 99, "category_id": 7, "bbox": [0, 0, 5, 5], "score": 0.5}]))
    script = Path(sys.executable).parent / "sltnet-eval"
    if not script.exists():
        pytest.skip("sltnet-eval console script not installed")
    result = subprocess.run(
        [str(script), "--gt", str(gt_path), "--detections", str(dets_path)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr == f"error: {dets_path}: detection 0: unknown image id 99\n"
    assert "Traceback" not in result.stderr


def test_runs_a_model_over_a_dataset_and_scores_it(tmp_path, capsys):
    """--config-file: the model streams the dataset in video order; its detections are written and scored."""
    summary = generate_split(str(tmp_path), "clip", 1, 4, 128, seed=0, workers=1, progress=False)
    cfg = load_config("configs/synthetic/tiny_baseline.yaml")
    torch.manual_seed(0)
    weights = tmp_path / "weights.pt"
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    detections = tmp_path / "dets.json"
    metrics = tmp_path / "metrics.json"
    status = main(
        [
            "--config-file",
            "configs/synthetic/tiny_baseline.yaml",
            "--weights",
            str(weights),
            "--gt",
            str(summary.json_path),
            "--image-root",
            str(tmp_path / "clip"),
            "--no-progress",
            "--detections-out",
            str(detections),
            "--output",
            str(metrics),
            "--score-thresh",
            "0.0",
        ]
    )
    assert status == 0
    results = json.loads(detections.read_text())
    image_ids = {image["id"] for image in json.loads(Path(summary.json_path).read_text())["images"]}
    assert results and {r["image_id"] for r in results} <= image_ids
    assert json.loads(metrics.read_text())["num_detections"] == len(results)
    assert "VID mAP@0.5" in capsys.readouterr().out


def test_model_options_need_a_config(tmp_path, capsys):
    status = main(["--gt", "gt.json", "--detections", "d.json", "--weights", "w.pt"])
    assert status == 2
    assert capsys.readouterr().err.strip() == (
        "error: --dataset, --weights, --detections-out and KEY VALUE overrides need --config-file"
    )
