"""``benchmarks/fps.py`` and the runtime's ``timer`` hook: the report's structure, the stage
accounting (stages add up to no more than the frame's wall time), latency/delay bookkeeping,
the ratios and checks, and the one-line errors. No speed is asserted: targets are benchmarks."""

import json
from contextlib import nullcontext

import pytest

from benchmarks import fps
from export.cli import main as export_main
from runtime.detector import TIMED_STAGES, StreamingRuntime
from runtime.engines import open_backend
from sltnet.contract import Manifest
from sltnet.data.synthetic.writing import write_mp4

from helpers import (
    BASELINE_SCORE_THRESH,
    CLASS_NAMES,
    SCORE_THRESH,
    TINY_BASELINE,
    TINY_SLTNET,
    make_weights,
    video,
)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def exports(tmp_path_factory, weights):
    folders = {}
    for name, config, overrides in (
        ("sequential", TINY_SLTNET, SCORE_THRESH),
        ("baseline", TINY_BASELINE, BASELINE_SCORE_THRESH),
    ):
        out = tmp_path_factory.mktemp(name) / f"tiny_{name}"
        argv = ["--config-file", config, "--weights", str(weights["sltnet" if name == "sequential" else name])]
        assert export_main([*argv, "--out", str(out), "--class-names", CLASS_NAMES, *overrides]) == 0
        folders[name] = out
    out = tmp_path_factory.mktemp("batch2") / "tiny_batch2"
    argv = ["--config-file", TINY_SLTNET, "--weights", str(weights["sltnet"]), "--out", str(out), "--batch", "2"]
    assert export_main([*argv, "--class-names", CLASS_NAMES, *SCORE_THRESH]) == 0
    folders["batch2"] = out
    return folders


def test_timer_sees_every_stage_of_each_frame(exports):
    manifest = Manifest.load(exports["sequential"])
    stages = []

    def timer(stage):
        stages.append(stage)
        return nullcontext()

    backend = open_backend("onnxruntime", exports["sequential"], manifest, "cpu", 1)
    runtime = StreamingRuntime(manifest, backend, timer=timer)
    for frame in video((128, 128), num_frames=3):
        runtime.push(frame)
    assert stages == list(TIMED_STAGES) * 3


def test_report_json_and_markdown(exports, tmp_path, capsys):
    out = tmp_path / "fps.json"
    argv = ["--engine", str(exports["sequential"]), "--engine", str(exports["baseline"]), "--backend", "onnxruntime"]
    argv += ["eager", "--frames", "4", "--warmup", "2", "--threads", "1", "--json", str(out)]
    assert fps.main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["markdown"] == printed
    assert {"cpu", "cores", "threads", "torch", "onnxruntime", "command"} <= set(report["machine"])
    assert report["machine"]["threads"] == 1 and report["settings"]["frames"] == 4

    rows = report["rows"]
    assert [(row["target"], row["backend"]) for row in rows] == [
        ("tiny_sequential", "onnxruntime"),
        ("tiny_sequential", "eager"),
        ("tiny_baseline", "onnxruntime"),
        ("tiny_baseline", "eager"),
    ]
    for row in rows:
        assert row["frames"] == 4 and row["delay_frames"] == 0
        assert row["fps"] == pytest.approx(1e3 / row["per_frame_ms"])
        assert row["latency_ms"]["p50"] <= row["latency_ms"]["p95"] <= row["latency_ms"]["p99"]
        assert row["peak_rss_mib"] > 0 and row["peak_cuda_mib"] is None
        stages = row["stages_ms"]
        if row["backend"] == "eager":
            assert [s for s in fps.STAGES if stages[s] is not None] == ["decode"]
            assert row["bookkeeping_share"] is None
            continue
        assert all(stages[s] >= 0 for s in fps.STAGES)
        assert sum(stages.values()) <= row["per_frame_ms"] * (1 + 1e-9)
        assert row["bookkeeping_share"] == pytest.approx(stages["bookkeeping"] / row["per_frame_ms"])
    sequential, baseline = rows[0], rows[2]
    assert report["ratios"]["sltnet_vs_baseline_fps"][0] == {
        "sltnet": "tiny_sequential",
        "baseline": "tiny_baseline",
        "backend": "onnxruntime",
        "ratio": pytest.approx(sequential["fps"] / baseline["fps"]),
    }
    assert [e["target"] for e in report["ratios"]["onnxruntime_vs_eager_fps"]] == ["tiny_sequential", "tiny_baseline"]
    assert [c["status"] in ("PASS", "FAIL") for c in report["checks"][:4]] == [True] * 4
    # The int8 checks need an int8 row beside the fp32 one.
    assert [c["status"] for c in report["checks"][4:]] == ["SKIP", "SKIP"]
    assert "| tiny_sequential | sequential | fp32 | onnxruntime" in printed
    assert "SLTnet/baseline fps (onnxruntime): tiny_sequential / tiny_baseline = " in printed


def test_streams_table_has_a_row_per_stream_count(exports, tmp_path, capsys):
    out = tmp_path / "fps.json"
    argv = ["--engine", str(exports["batch2"]), "--backend", "onnxruntime", "--streams", "1", "2", "4"]
    assert fps.main([*argv, "--frames", "3", "--warmup", "1", "--threads", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert [(row["target"], row["backend"]) for row in report["rows"]] == [("tiny_batch2", "onnxruntime")]
    assert report["settings"]["streams"] == [1, 2, 4]
    rows = report["stream_rows"]
    assert [(row["streams"], row["batch"]) for row in rows] == [(1, 2), (2, 2), (4, 2)]
    for row in rows:
        assert row["frames"] == 3 * row["streams"]
        assert row["fps"] == pytest.approx(row["fps_per_stream"] * row["streams"])
        assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p95"]
    # One stream runs each frame alone; two or four streams fill every batch of two.
    assert [row["frame_engine_runs_per_frame"] for row in rows] == [1.0, 0.5, 0.5]
    assert "| target | mode | precision | backend | batch | streams | fps (all streams) |" in printed
    assert "| tiny_batch2 | sequential | fp32 | onnxruntime (CPUExecutionProvider) | 2 | 4 |" in printed


def test_config_without_export_gets_an_eager_row(weights, capsys):
    argv = ["--config-file", TINY_SLTNET, "--weights", str(weights["sltnet"]), "--frames", "2", "--warmup", "1"]
    assert fps.main([*argv, "--threads", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny_sltnet")]
    assert len(rows) == 1 and rows[0].startswith("| tiny_sltnet (config) | sequential | fp32 | eager PyTorch (cpu) |")


def test_summary_skips_warmup_and_counts_delay():
    timing = fps.FrameTiming(wall=0.010, push=0.008, stages={"decode": 0.002, "frame_engine": 0.005})
    timings = [timing] * 5
    # Symmetric N=1: frame t is answered by push t + 1; frame 4 only by the flush.
    latency = {0: 0.5, 1: 0.020, 2: 0.020, 3: 0.030}
    delay = {t: 1 for t in latency}
    summary = fps.summarize(timings, latency, delay, warmup=1, staged=True)
    assert summary["frames"] == 4 and summary["fps"] == pytest.approx(100.0)
    assert summary["delay_frames"] == 1
    assert summary["latency_ms"]["p50"] == pytest.approx(20.0) and summary["latency_ms"]["p99"] < 30.0 + 1e-9
    assert summary["stages_ms"]["bookkeeping"] == pytest.approx(3.0)
    assert summary["stages_ms"]["temporal_engine"] == 0.0
    assert summary["bookkeeping_share"] == pytest.approx(0.3)


def speed_row(target: str, precision: str, fps_value: float, frame_ms: float, temporal_ms: float) -> dict:
    """A sequential N=3 onnxruntime row with the fields the ratios and checks read."""
    return {
        "target": target,
        "mode": "sequential",
        "num_frames": 3,
        "backend": "onnxruntime",
        "precision": precision,
        "fps": fps_value,
        "stages_ms": {"frame_engine": frame_ms, "temporal_engine": temporal_ms},
        "bookkeeping_share": 0.01,
        "latency_ms": {"p50": 10.0, "p95": 11.0, "p99": 12.0},
    }


def test_int8_checks_compare_each_int8_row_with_its_fp32_row():
    rows = [speed_row("a_fp32", "fp32", 10.0, 40.0, 50.0), speed_row("a_int8", "int8", 12.0, 20.0, 45.0)]
    (ratio,) = fps.ratios(rows)["int8_vs_fp32"]
    assert (ratio["int8"], ratio["fp32"]) == ("a_int8", "a_fp32")
    assert ratio["fps"] == pytest.approx(1.2) and ratio["frame_engine"] == pytest.approx(2.0)
    checks = {c["check"]: c for c in fps.acceptance_checks(rows)}
    assert checks["int8 frame engine speed-up over fp32 (onnxruntime)"]["status"] == "PASS"  # 2.0 >= 1.6
    assert checks["int8 SLTnet fps / fp32 SLTnet fps (onnxruntime)"]["status"] == "FAIL"  # 1.2 < 1.3


def test_checks_skip_without_the_rows_they_compare():
    checks = fps.acceptance_checks([])
    assert [c["status"] for c in checks] == ["SKIP"] * 6


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config-file", TINY_SLTNET], "--config-file and --weights: give both or neither"),
        (["--frames", "0"], "--frames 0 --warmup 50: need at least 1 frame and no negative warm-up"),
        (["--threads", "0"], "--threads 0: must be at least 1"),
        (["--streams", "2", "0"], "--streams 0: must be at least 1"),
        (["--json", "missing/out.json"], "--json missing/out.json: folder missing does not exist"),
    ],
)
def test_argument_errors(args, message, capsys):
    assert fps.main(args) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_video_of_another_size_is_refused(exports, tmp_path, capsys):
    path = str(tmp_path / "small.mp4")
    write_mp4((frame.permute(1, 2, 0).numpy() for frame in video((64, 64), num_frames=2)), path, 25)
    assert fps.main(["--engine", str(exports["baseline"]), "--video", path]) == 2
    assert capsys.readouterr().err == f"error: --video {path}: frames are 64x64, tiny_baseline takes 128x128\n"
