"""``sltnet-run`` as a service runs it: outputs never replace inputs, an interruption leaves no file
behind, option values are checked, outputs get the umask's mode, nothing is kept per frame; and the
soak benchmark's slope arithmetic (benchmarks/soak.py)."""

import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from itertools import cycle, islice
from pathlib import Path

import pytest
from PIL import Image

import runtime.cli as cli
import runtime.video as video_module
from benchmarks.soak import rss_slope
from export.cli import main as export_main
from runtime.video import VideoSource, VideoWriter
from sltnet.data.synthetic.writing import write_mp4
from sltnet.errors import SltnetError

from helpers import CLASS_NAMES, SCORE_THRESH, TINY_SLTNET, make_weights, video

FRAME_SIZE = (128, 128)  # the tiny config's default export size


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    weights = make_weights(tmp_path_factory.mktemp("weights"))["sltnet"]
    out = tmp_path_factory.mktemp("sequential") / "engines"
    argv = ["--config-file", TINY_SLTNET, "--weights", str(weights), "--out", str(out), "--class-names", CLASS_NAMES]
    assert export_main([*argv, *SCORE_THRESH]) == 0
    return out


def clip(path, num_frames=6, fps=10):
    """An mp4 of the test video (its frames cycled for long clips)."""
    frames = [frame.permute(1, 2, 0).numpy() for frame in video(FRAME_SIZE)]
    write_mp4(islice(cycle(frames), num_frames), str(path), fps)
    return path


def run_argv(video_path, engine, *extra):
    return [str(video_path), "--engine", str(engine), "--backend", "onnxruntime", "--no-progress", *map(str, extra)]


def temporaries(folder):
    return sorted(p.name for p in Path(folder).rglob("*.tmp"))


def one_error_line(capsys):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ------------------------------------------------------------------------------------------------
# An output never replaces an input
# ------------------------------------------------------------------------------------------------
TARGETS = ["SOURCE", "link to SOURCE", "--gt-json", "manifest.json", "frame.onnx", "image of SOURCE", "other output"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("option", ["--out", "--json", "--jsonl"])
def test_an_output_is_never_an_input_or_the_other_output(tmp_path, engine, option, target, capsys):
    engines = tmp_path / "engines"
    engines.mkdir()
    for file in engine.iterdir():
        (engines / file.name).write_bytes(file.read_bytes())
    source = clip(tmp_path / "vid_a.mp4")
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(video(FRAME_SIZE)[0].permute(1, 2, 0).numpy()).save(frames / "0000.png")
    gt = tmp_path / "gt.json"
    images = [{"id": 1 + i, "video": "vid_a", "frame_number": i, "file_name": f"{i}.jpg"} for i in range(6)]
    gt.write_text(json.dumps({"images": images}))
    (tmp_path / "link.mp4").symlink_to(source)
    video_path = frames if target == "image of SOURCE" else source
    other = {"--out": "--json", "--json": "--jsonl", "--jsonl": "--out"}[option]
    path, message = {
        "SOURCE": (source, "is also SOURCE; an output never replaces an input"),
        "link to SOURCE": (tmp_path / "link.mp4", "is also SOURCE; an output never replaces an input"),
        "--gt-json": (gt, "is also --gt-json; "),
        "manifest.json": (engines / "manifest.json", "is also --engine's manifest.json; "),
        "frame.onnx": (engines / "frame.onnx", "is also --engine's frame.onnx; "),
        "image of SOURCE": (frames / "0000.png", "is also SOURCE's 0000.png; "),
        "other output": (tmp_path / "both", "is also --(out|json|jsonl); give each output its own path"),
    }[target]
    inputs = [source, gt, frames / "0000.png", *engines.iterdir()]
    before = {p: p.read_bytes() for p in inputs}
    extra = [option, path]
    if target == "other output":
        extra += [other, path]
    assert cli.main(run_argv(video_path, engines, "--gt-json", gt, "--gt-video", "vid_a", *extra)) == 2
    line = one_error_line(capsys)
    assert re.search(message, line) and str(Path(path).resolve()) in line, line
    assert {p: p.read_bytes() for p in inputs} == before
    assert (tmp_path / "link.mp4").is_symlink()
    assert not (tmp_path / "both").exists()
    assert temporaries(tmp_path) == []


# ------------------------------------------------------------------------------------------------
# Option values
# ------------------------------------------------------------------------------------------------
BAD_OPTIONS = [
    ("--fps", "0", "--fps 0.0: must be more than 0"),
    ("--fps", "-5", "--fps -5.0: must be more than 0"),
    ("--fps", "nan", "--fps nan: must be more than 0"),
    ("--fps", "inf", "--fps inf: must be more than 0 and at most 1000"),
    ("--fps", "ten", "argument --fps: invalid float value: 'ten'"),
    ("--max-frames", "0", "--max-frames 0: must be at least 1"),
    ("--max-frames", "-2", "--max-frames -2: must be at least 1"),
    ("--max-frames", "1.5", "argument --max-frames: invalid int value"),
    ("--score-thresh", "1.5", "--score-thresh 1.5: must be between 0 and 1"),
    ("--score-thresh", "-0.1", "--score-thresh -0.1: must be between 0 and 1"),
    ("--score-thresh", "nan", "--score-thresh nan: must be between 0 and 1"),
    ("--draw-thresh", "1.5", "--draw-thresh 1.5: must be between 0 and 1"),
    ("--draw-thresh", "nan", "--draw-thresh nan: must be between 0 and 1"),
    ("--timeout", "0", "--timeout 0.0: must be a positive number of seconds"),
    ("--timeout", "inf", "--timeout inf: must be a positive number of seconds"),
    ("--timeout", "nan", "--timeout nan: must be a positive number of seconds"),
    ("--reconnect", "-1", "--reconnect -1: must be at least 0"),
    ("--reconnect-delay", "-1", "--reconnect-delay -1.0: must be between 0 and 30 s"),
    ("--reconnect-delay", "nan", "--reconnect-delay nan: must be between 0 and 30 s"),
    ("--input-option", "video_size", "--input-option 'video_size': must be KEY=VALUE"),
]


@pytest.mark.parametrize(("option", "value", "message"), BAD_OPTIONS)
def test_every_numeric_option_is_checked(tmp_path, engine, option, value, message, capsys):
    """On a folder of images, where --fps 0 divided by zero."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for index, frame in enumerate(video(FRAME_SIZE, num_frames=2)):
        Image.fromarray(frame.permute(1, 2, 0).numpy()).save(frames / f"{index:04d}.png")
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    argv = run_argv(frames, engine, "--out", outputs / "out.mp4", "--json", outputs / "dets.json", option, value)
    assert cli.main(argv) == 2
    assert message in one_error_line(capsys)
    assert list(outputs.iterdir()) == []


def test_a_folder_of_images_at_a_fractional_frame_rate(tmp_path, engine):
    frames = tmp_path / "frames"
    frames.mkdir()
    for index, frame in enumerate(video(FRAME_SIZE, num_frames=3)):
        Image.fromarray(frame.permute(1, 2, 0).numpy()).save(frames / f"{index:04d}.png")
    out, dets = tmp_path / "out.mp4", tmp_path / "dets.json"
    assert cli.main(run_argv(frames, engine, "--fps", "0.5", "--out", out, "--json", dets)) == 0
    assert {d["timestamp"] for d in json.loads(dets.read_text())} <= {0.0, 2.0, 4.0}
    source = VideoSource(str(out))
    try:
        assert source.fps == 0.5 and [frame.timestamp for frame in source] == [0.0, 2.0, 4.0]
    finally:
        source.close()


# ------------------------------------------------------------------------------------------------
# File modes
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_the_mode_the_umask_gives(tmp_path, engine, umask):
    source = clip(tmp_path / "clip.mp4")
    out, dets = tmp_path / "out.mp4", tmp_path / "dets.json"
    previous = os.umask(umask)
    try:
        assert cli.main(run_argv(source, engine, "--out", out, "--json", dets)) == 0
    finally:
        os.umask(previous)
    assert {p.name: p.stat().st_mode & 0o777 for p in (out, dets)} == {p.name: 0o666 & ~umask for p in (out, dets)}


# ------------------------------------------------------------------------------------------------
# Nothing kept per frame
# ------------------------------------------------------------------------------------------------
def test_results_array_streams_what_json_dumps_writes():
    entries = [{"image_id": i, "bbox": [1.5, 2.0, 3.0, 4.0], "category_name": "a\u00e9"} for i in range(3)]
    for count in (0, 1, 3):
        stream = io.StringIO()
        results = cli.ResultsArray(stream)
        for entry in entries[:count]:
            results.extend([entry])
            assert stream.getvalue().endswith(json.dumps(entry))  # written at once, not kept
        results.end()
        assert stream.getvalue() == json.dumps(entries[:count]) + "\n" and results.count == count


def test_without_json_no_coco_entry_is_built(tmp_path, engine, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli, "coco_results", lambda *args: calls.append(args) or [])
    assert cli.main(run_argv(clip(tmp_path / "clip.mp4"), engine)) == 0
    assert calls == [] and "sltnet-run: 6 frames" in capsys.readouterr().out


def test_json_streamed_to_disk_equals_the_detections(tmp_path, engine, capsys):
    dets = tmp_path / "dets.json"
    assert cli.main(run_argv(clip(tmp_path / "clip.mp4", num_frames=12), engine, "--json", dets)) == 0
    detections = json.loads(dets.read_text())
    assert detections and f"{len(detections)} detections" in capsys.readouterr().out
    assert [d["frame_index"] for d in detections] == sorted(d["frame_index"] for d in detections)


# ------------------------------------------------------------------------------------------------
# Video threads
# ------------------------------------------------------------------------------------------------
def test_an_interruption_while_aborting_leaves_no_temporary_file(tmp_path, monkeypatch):
    writer = VideoWriter(str(tmp_path / "out.mp4"), 128, 128, 10)
    frame = video(FRAME_SIZE)[0].permute(1, 2, 0).numpy()
    for _ in range(5):
        writer.write(frame)
    join = writer._thread.join

    def interrupted_join(*args, **kwargs):
        monkeypatch.setattr(writer._thread, "join", join)
        raise KeyboardInterrupt  # a second Ctrl-C while the encoder finishes

    monkeypatch.setattr(writer._thread, "join", interrupted_join)
    with pytest.raises(KeyboardInterrupt):
        writer.abort()
    assert temporaries(tmp_path) == []
    writer.abort()
    assert list(tmp_path.iterdir()) == [] and not writer._thread.is_alive()


class FailingStream:
    """Stands in for the encoder's stream: fails on the ``fail_at``-th call of encode (None: the flush)."""

    def __init__(self, stream, fail_at, error):
        self.stream, self.fail_at, self.error, self.calls = stream, fail_at, error, 0

    def encode(self, frame=None):
        self.calls += 1
        if self.calls == self.fail_at or (self.fail_at is None and frame is None):
            raise self.error
        return self.stream.encode(frame)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("fail_at", "error", "expected"),
    [(3, RuntimeError("encoder bug"), RuntimeError), (None, OSError(28, "No space left on device"), SltnetError)],
)
def test_an_encoder_failure_reaches_the_caller_and_removes_the_file(tmp_path, fail_at, error, expected):
    """A failure while encoding or while finishing the file: raised by write or close, never a hang."""
    writer = VideoWriter(str(tmp_path / "out.mp4"), 128, 128, 10, queue_size=2)
    writer._stream = FailingStream(writer._stream, fail_at, error)
    frame = video(FRAME_SIZE)[0].permute(1, 2, 0).numpy()
    with pytest.raises(expected, match="encoder bug|No space left"):
        for _ in range(200):
            writer.write(frame)
        writer.close()
    assert list(tmp_path.iterdir()) == [] and not writer._thread.is_alive()


def test_a_decoder_failure_is_raised_not_taken_for_the_end(tmp_path, monkeypatch):
    frames = tmp_path / "frames"
    frames.mkdir()
    for index, frame in enumerate(video(FRAME_SIZE, num_frames=4)):
        Image.fromarray(frame.permute(1, 2, 0).numpy()).save(frames / f"{index:04d}.png")
    read_image = video_module.read_image
    calls = []

    def failing(path):
        calls.append(path)
        if len(calls) == 3:  # the first image is read when the folder is opened
            raise MemoryError("out of memory")
        return read_image(path)

    monkeypatch.setattr(video_module, "read_image", failing)
    source = VideoSource(str(frames))
    try:
        with pytest.raises(MemoryError, match="out of memory"):
            list(source)
    finally:
        source.close()


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interrupted_run_leaves_no_file_and_says_so(tmp_path, engine, signum, status):
    """The signal arrives once the first encoded frames are on disk."""
    source = clip(tmp_path / "clip.mp4", num_frames=3000, fps=25)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    out, dets = outputs / "out.mp4", outputs / "dets.json"
    command = [sys.executable, "-m", "runtime.cli", *run_argv(source, engine, "--out", out, "--json", dets)]
    root = str(Path(cli.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if any(p.stat().st_size > 0 for p in outputs.glob(".out.mp4.*.tmp")):
                break
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()
        # the JSON is written while the video streams, not at the end
        assert sorted(p.name.split(".")[1] for p in outputs.glob(".*.tmp")) == ["dets", "out"]
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == status, stderr
    assert stderr.strip().splitlines()[-1] == "error: interrupted", stderr
    assert "Traceback" not in stderr and "sltnet-run: 3000 frames" not in stdout
    assert list(outputs.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# Soak benchmark
# ------------------------------------------------------------------------------------------------
def test_soak_slope_fits_the_middle_of_the_run():
    """A warm-up step before 10 % and a spike after 95 % do not move the least-squares slope."""
    samples = [(frame, 1000.0 + 0.25 * frame + (5000.0 if frame < 300 else 0.0)) for frame in range(0, 3001, 20)]
    samples += [(3000, 99999.0)]
    assert rss_slope(samples, 3000) == pytest.approx(0.25)
    noisy = [(frame, 2.0 * frame + (7.0 if frame % 40 else -7.0)) for frame in range(300, 2851, 20)]
    assert rss_slope(noisy, 3000) == pytest.approx(2.0, abs=0.01)
    assert rss_slope([(300, 5.0), (2850, 5.0)], 3000) == 0.0
    with pytest.raises(ValueError, match="too few"):
        rss_slope([(100, 1.0), (2990, 2.0)], 3000)
    assert math.isfinite(rss_slope(samples, 3000, window=(0.0, 1.0)))
