"""``sltnet-data``: exit codes, one-line errors, no tracebacks."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sltnet.tools.data import main

# One video of two frames, one track, category id 5.
VALID = {
    "images": [
        {"id": 1, "file_name": "v/0.jpg", "width": 20, "height": 10, "video": "v", "frame_number": 0},
        {"id": 2, "file_name": "v/1.jpg", "width": 20, "height": 10, "video": "v", "frame_number": 1},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 1, 4, 4], "id_track": 3},
        {"id": 2, "image_id": 2, "category_id": 5, "bbox": [2, 1, 4, 4], "id_track": 3},
    ],
    "categories": [{"id": 5, "name": "car"}, {"id": 9, "name": "bus"}],
}


@pytest.fixture
def valid_json(tmp_path):
    path = tmp_path / "valid.json"
    path.write_text(json.dumps(VALID))
    return path


def write_invalid(tmp_path, problems):
    data = json.loads(json.dumps(VALID))
    data["annotations"] = [
        {"id": 10 + i, "image_id": 1, "category_id": 77, "bbox": [1, 1, 2, 2], "id_track": i} for i in range(problems)
    ]
    path = tmp_path / "invalid.json"
    path.write_text(json.dumps(data))
    return path


def test_validate_prints_summary(valid_json, capsys):
    assert main(["validate", "--json", str(valid_json)]) == 0
    out = capsys.readouterr().out
    assert f"{valid_json}: valid" in out
    assert "videos:      1" in out and "frames:      2" in out
    assert "annotations: 2" in out and "tracks:      1" in out and "classes:     2" in out
    class_rows = [line.split() for line in out.splitlines()[-2:]]
    assert class_rows == [["0", "5", "2", "1", "car"], ["1", "9", "0", "0", "bus"]]


def test_validate_lists_problems_and_exits_1(tmp_path, capsys):
    path = write_invalid(tmp_path, 3)
    assert main(["validate", "--json", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"{path}: annotation {10 + i} (image 1): unknown category id 77" for i in range(3)
    ]
    assert captured.err == f"{path}: 3 problems\n"


def test_validate_caps_the_problem_list(tmp_path, capsys):
    path = write_invalid(tmp_path, 60)
    assert main(["validate", "--json", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 51
    assert lines[-1] == "... and 10 more problems (--max-problems 0 lists all)"
    assert main(["validate", "--json", str(path), "--max-problems", "0"]) == 1
    assert len(capsys.readouterr().out.splitlines()) == 60


def test_validate_checks_image_files(valid_json, tmp_path, capsys):
    (tmp_path / "v").mkdir()
    (tmp_path / "v/0.jpg").write_bytes(b"")
    assert main(["validate", "--json", str(valid_json), "--image-root", str(tmp_path), "--check-images"]) == 1
    assert capsys.readouterr().out == f"{valid_json}: image 2: image file not found: {tmp_path / 'v/1.jpg'}\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["validate", "--json", "{tmp}/nope.json"], "error: {tmp}/nope.json: annotation file not found"),
        (
            ["validate", "--json", "{tmp}/bad.json"],
            "error: {tmp}/bad.json: not valid JSON (line 1, column 1: Expecting value)",
        ),
        (["validate", "vid_vall"], "error: unknown dataset 'vid_vall'; did you mean 'vid_val'?"),
        (["validate"], "error: validate: give a dataset name or --json FILE"),
        (["validate", "--json", "{tmp}/valid.json", "--check-images"], "error: --check-images needs --image-root"),
        (["list", "--catalog", "{tmp}/nope.yaml"], "error: {tmp}/nope.yaml: catalog file not found"),
        (["list", "--dataset-spec", "broken"], "error: --dataset-spec 'broken': expected NAME=IMAGE_ROOT,JSON"),
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path, valid_json, capsys, args, message):
    (tmp_path / "bad.json").write_text("nope")
    assert main([a.format(tmp=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(tmp=tmp_path))
    assert err.count("\n") == 1 and "Traceback" not in err


def test_validate_by_catalog_name(valid_json, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLTNET_DATA", str(tmp_path))
    assert main(["validate", "mine", "--dataset-spec", "mine=frames,valid.json"]) == 0
    assert f"{valid_json}: valid" in capsys.readouterr().out


def test_list_shows_names_paths_and_status(valid_json, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLTNET_DATA", str(tmp_path))
    (tmp_path / "frames").mkdir()
    assert main(["list", "--dataset-spec", "mine=frames,valid.json", "--dataset-spec", "half=frames,gone.json"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["mine"].split()[1] == "ok"
    assert f"json={tmp_path / 'valid.json'}" in lines["mine"]
    assert "missing json" in lines["half"]
    assert "missing json and images" in lines["vid_val"]
    assert {"vid_train_split0", "vid_train_split3", "det_train_subsampled", "synth_tiny_train"} <= set(lines)


def test_console_script_reports_errors_without_traceback(tmp_path):
    script = Path(sys.executable).with_name("sltnet-data")
    result = subprocess.run(
        [str(script), "validate", "--json", str(tmp_path / "nope.json")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path / 'nope.json'}: annotation file not found\n"
    assert result.stdout == ""
