"""The precision checks of ``benchmarks/accuracy.py``: each reduced-precision engine row against the
fp32 row of the same mode and backend (fp16 may lose 0.3, int8 1.0 mAP points), and the temporal
gain over the baseline at each precision."""

from benchmarks.accuracy import precision_checks


def engine_row(mode: str, precision: str, map50: float) -> dict:
    name = f"{mode}, {precision}, onnxruntime"
    return {"name": name, "mode": mode, "precision": precision, "backend_name": "onnxruntime", "mAP50": map50}


def test_losses_within_the_limits_pass_and_a_larger_one_fails():
    rows = [
        engine_row("single_frame", "fp32", 0.80),
        engine_row("single_frame", "fp16", 0.795),  # 0.5 points: over fp16's limit
        engine_row("single_frame", "int8", 0.795),  # within int8's
        engine_row("sequential", "fp32", 0.88),
        engine_row("sequential", "int8", 0.882),  # a gain, not a loss
    ]
    lines = precision_checks(rows)
    assert "FAIL single_frame, fp16, onnxruntime: mAP@0.5 0.50 points below fp32 (loss limit 0.3 points)" in lines
    assert "PASS single_frame, int8, onnxruntime: mAP@0.5 0.50 points below fp32 (loss limit 1.0 points)" in lines
    assert "PASS sequential, int8, onnxruntime: mAP@0.5 0.20 points above fp32 (loss limit 1.0 points)" in lines


def test_the_temporal_gain_is_checked_per_precision():
    rows = [
        engine_row("single_frame", "fp32", 0.80),
        engine_row("single_frame", "int8", 0.80),
        engine_row("sequential", "fp32", 0.88),
        engine_row("sequential", "int8", 0.79),  # below the int8 baseline
    ]
    lines = precision_checks(rows)
    assert any(line.startswith("PASS sequential, fp32, onnxruntime: temporal gain") for line in lines)
    assert any(line.startswith("FAIL sequential, int8, onnxruntime: temporal gain") for line in lines)


def test_rows_without_an_fp32_row_or_skipped_are_not_checked():
    skipped = {**engine_row("single_frame", "fp32", 0.8), "skipped": "no backend"}
    rows = [engine_row("sequential", "int8", 0.88), skipped]
    assert precision_checks(rows) == []
