"""``sltnet-run`` given several sources: one multi-stream runtime, each source its own stream; each
source's detections equal a run on it alone, a source lost mid-way leaves the others whole, bad
input in one source fails the run in one line with no output left (docs/runtime.md#several-sources)."""

import json
import re
import time
from pathlib import Path

import pytest
import test_live_sources
import test_run_cli
import torch
from PIL import Image
from test_live_sources import CLIP_FRAMES, decoded_frames, jsonl, mid_stream, reconnections, write_clip
from test_run_cli import one_error_line, run_argv, temporaries

import runtime.cli as cli
from export.cli import main as export_main
from runtime.video import VideoSource
from sltnet.contract import FrameResult
from sltnet.data.synthetic.writing import write_mp4

from helpers import CLASS_NAMES, SCORE_THRESH, SYMMETRIC_N, TINY_SLTNET, assert_same_results, make_weights, video

engine = test_run_cli.engine  # the tiny sequential SLTnet export (batch 1), a module fixture
serve = test_live_sources.serve  # local HTTP servers, stopped after each test

TAG = ("stream", "source")  # what every record of a run on several sources starts with


@pytest.fixture(scope="module")
def batched(tmp_path_factory):
    """A symmetric export of the tiny SLTnet whose frame engine takes two frames at once."""
    weights = make_weights(tmp_path_factory.mktemp("weights"))["sltnet"]
    out = tmp_path_factory.mktemp("symmetric2") / "engines"
    argv = ["--config-file", TINY_SLTNET, "--weights", str(weights), "--out", str(out), "--class-names", CLASS_NAMES]
    assert export_main([*argv, "--batch", "2", "--mode", "symmetric", *SYMMETRIC_N, *SCORE_THRESH]) == 0
    return out


def mp4(path, size, num_frames, seed):
    write_mp4((frame.permute(1, 2, 0).numpy() for frame in video(size, num_frames, seed)), str(path), 10)
    return path


def image_folder(path, size, num_frames, seed):
    path.mkdir()
    for index, frame in enumerate(video(size, num_frames, seed)):
        Image.fromarray(frame.permute(1, 2, 0).numpy()).save(path / f"{index:04d}.png")
    return path


def three_sources(folder):
    """Two files of different lengths and sizes and a folder of images: (path, (H, W), frames)."""
    return [
        (mp4(folder / "clip_a.mp4", (128, 128), 8, seed=1), (128, 128), 8),
        (mp4(folder / "clip_b.mp4", (96, 160), 5, seed=2), (96, 160), 5),
        (image_folder(folder / "frames", (128, 128), 6, seed=3), (128, 128), 6),
    ]


def multi_argv(sources, engine, *extra):
    return [*map(str, sources), *run_argv(sources[0], engine, *extra)[1:]]


def single_run(folder, engine, source):
    """(JSON lines, COCO results) of a run on ``source`` alone."""
    lines, dets = folder / f"{Path(source).name}.jsonl", folder / f"{Path(source).name}.json"
    assert cli.main(run_argv(source, engine, "--jsonl", lines, "--json", dets)) == 0
    return jsonl(lines), json.loads(dets.read_text())


def of_stream(records, index, source):
    """The records of stream ``index`` without their tag (the tag checked: that stream, that source)."""
    mine = [record for record in records if record["stream"] == index]
    assert all(record["source"] == str(source) for record in mine)
    return [{key: value for key, value in record.items() if key not in TAG} for record in mine]


def as_results(lines):
    """The JSON lines of a run as FrameResults (boxes [x1, y1, x2, y2]; classes as category ids)."""
    results = []
    for line in lines:
        detections = line["detections"]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in detections)]
        results.append(
            FrameResult(
                line["frame_index"],
                torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
                torch.tensor([d["score"] for d in detections], dtype=torch.float64),
                torch.tensor([d["category_id"] for d in detections]),
            )
        )
    return results


class Primed(VideoSource):
    """A source whose reader has queued all its frames before the run goes on (every clip here has
    at most the queue's 8 frames), so that every pass of the run finds a frame of each unfinished source."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        deadline = time.monotonic() + 60
        while self._queue.qsize() < (self.num_frames or 0) and time.monotonic() < deadline:
            time.sleep(0.01)


# ------------------------------------------------------------------------------------------------
# Each source equals its run alone
# ------------------------------------------------------------------------------------------------
@pytest.mark.timeout(240)
def test_each_source_gives_the_detections_of_a_run_on_it_alone(tmp_path, engine, capsys):
    """Batch-1 export: each stream's frame engine and temporal engine runs compute what the run on
    that source alone computes, so the JSON records are equal, not just close."""
    sources = three_sources(tmp_path)
    paths = [path for path, _, _ in sources]
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    lines, dets = outputs / "all.jsonl", outputs / "all.json"
    argv = multi_argv(paths, engine, "--out-dir", outputs, "--jsonl", lines, "--json", dets)
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "sltnet-run: 3 sources, 19 frames in " in out
    answered, entries = jsonl(lines), json.loads(dets.read_text())
    assert all(list(record)[:2] == list(TAG) for record in [*answered, *entries])
    for index, (path, size, num_frames) in enumerate(sources):
        expected_lines, expected_dets = single_run(tmp_path, engine, path)
        assert [line["frame_index"] for line in expected_lines] == list(range(num_frames))
        assert of_stream(answered, index, path) == expected_lines
        assert of_stream(entries, index, path) == expected_dets
        assert f"sltnet-run: {path}: {num_frames} frames, {len(expected_dets)} detections" in out
        assert decoded_frames(outputs / f"{Path(path).stem}.mp4") == [((3, *size), t) for t in range(num_frames)]
    assert entries
    assert sorted(p.name for p in outputs.iterdir()) == [
        "all.json",
        "all.jsonl",
        "clip_a.mp4",
        "clip_b.mp4",
        "frames.mp4",
    ]


@pytest.mark.timeout(240)
def test_a_batched_export_runs_the_sources_together_with_the_same_detections(tmp_path, batched, monkeypatch):
    """Batch-2 symmetric export: the frame engine takes frames of two streams in one run. A frame's
    outputs depend only on its own row, but the batched kernels may round its row differently from
    the run on the source alone (its frame always in row 0 with padding beside it), so detections
    are matched with the tolerance used between backends (helpers.assert_same_results: boxes within
    0.01 px, scores within 1e-4, a detection within 1e-4 of the export's threshold on one side only)."""
    runtimes = []

    class Recorded(cli.MultiStreamRuntime):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            runtimes.append(self)

    sources = three_sources(tmp_path)
    paths = [path for path, _, _ in sources]
    expected = [single_run(tmp_path, batched, path)[0] for path in paths]
    monkeypatch.setattr(cli, "MultiStreamRuntime", Recorded)
    monkeypatch.setattr(cli, "VideoSource", Primed)
    lines = tmp_path / "all.jsonl"
    assert cli.main(multi_argv(paths, batched, "--jsonl", lines)) == 0
    [runtime] = runtimes
    total = sum(num_frames for _, _, num_frames in sources)
    assert runtime.engines.backend.temporal.num_runs == total
    assert runtime.engines.backend.frame.num_runs < total  # runs took two streams' frames
    answered = jsonl(lines)
    for index, (path, expected_lines) in enumerate(zip(paths, expected)):
        mine = of_stream(answered, index, path)
        assert [line["frame_index"] for line in mine] == [line["frame_index"] for line in expected_lines]
        assert sum(len(line["detections"]) for line in expected_lines) > 0
        threshold = float(SCORE_THRESH[1])
        assert_same_results([(r, 0) for r in as_results(expected_lines)], [(r, 0) for r in as_results(mine)], threshold)


@pytest.mark.timeout(120)
def test_gt_json_gives_each_source_the_image_ids_of_its_own_video(tmp_path, engine):
    clips = [mp4(tmp_path / f"vid_{name}.mp4", (128, 128), 3, seed) for seed, name in enumerate("ab")]
    gt = tmp_path / "gt.json"
    images = [
        {"id": 100 * (1 + v) + i, "video": f"vid_{name}", "frame_number": i, "file_name": f"{name}/{i}.jpg"}
        for v, name in enumerate("ab")
        for i in range(3)
    ]
    gt.write_text(json.dumps({"images": images}))
    dets = tmp_path / "dets.json"
    argv = [*run_argv(clips[0], engine, "--json", dets, "--gt-json", gt), str(clips[1])]  # SOURCEs around options
    assert cli.main(argv) == 0
    entries = json.loads(dets.read_text())
    assert {entry["stream"] for entry in entries} == {0, 1}
    assert all(entry["image_id"] == 100 * (1 + entry["stream"]) + entry["frame_index"] for entry in entries)


# ------------------------------------------------------------------------------------------------
# A source lost mid-way
# ------------------------------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_a_stream_that_dies_leaves_the_file_beside_it_complete(tmp_path, engine, serve, capsys):
    """The server dies for good part-way: that stream is flushed with the frames it gave, the file
    goes on to its end with the detections of its run alone, and the exit status says a source was lost."""
    served = write_clip(tmp_path / "served.mp4")
    served_lines, _ = single_run(tmp_path, engine, served)
    data = served.read_bytes()
    url = serve({"/cam.mp4": data}, cut_at=mid_stream(data), after_cut="die").url("/cam.mp4")
    clip = mp4(tmp_path / "clip_a.mp4", (96, 160), 8, seed=1)
    clip_lines, clip_dets = single_run(tmp_path, engine, clip)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    lines, dets = outputs / "all.jsonl", outputs / "all.json"
    capsys.readouterr()
    argv = multi_argv([url, clip], engine, "--out-dir", outputs, "--jsonl", lines, "--json", dets)
    assert cli.main([*argv, "--reconnect", "1", "--reconnect-delay", "0.05"]) == cli.EXIT_SOURCE_LOST
    captured = capsys.readouterr()
    [(before, attempt, attempts)] = reconnections(captured.err)
    assert 0 < before < CLIP_FRAMES and (attempt, attempts) == (1, 1), captured.err
    [lost] = [line for line in captured.err.splitlines() if "lost (" in line]
    assert lost.startswith(f"sltnet-run: {url}: lost (") and f"hold the {before} frames processed" in lost
    assert "Traceback" not in captured.err
    answered, entries = jsonl(lines), json.loads(dets.read_text())
    assert of_stream(answered, 1, clip) == clip_lines and of_stream(entries, 1, clip) == clip_dets
    assert of_stream(answered, 0, url) == served_lines[:before]
    assert len(decoded_frames(outputs / "cam.mp4")) == before
    assert len(decoded_frames(outputs / "clip_a.mp4")) == 8
    assert temporaries(outputs) == []


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("when", ["at the start", "part-way"])
def test_bad_input_in_one_source_fails_the_run_with_no_output(tmp_path, engine, when, capsys):
    """A source that is not a video, or a folder whose fourth image is corrupt while the other
    sources are being read: one line naming it, status 2, and no output of any source is left."""
    clip = mp4(tmp_path / "clip_a.mp4", (128, 128), 8, seed=1)
    if when == "at the start":
        bad = tmp_path / "notes.mp4"
        bad.write_text("not a video\n")
        message = r"notes.mp4: not a video FFmpeg can read"
    else:
        bad = image_folder(tmp_path / "frames", (128, 128), 6, seed=3)
        (bad / "0003.png").write_bytes(b"\x89PNG not an image")
        message = r"0003.png: cannot decode image"
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    outs = ["--out-dir", outputs, "--json", outputs / "d.json", "--jsonl", outputs / "d.jsonl"]
    assert cli.main(multi_argv([clip, bad], engine, *outs)) == 2
    assert re.search(message, one_error_line(capsys))
    assert list(outputs.iterdir()) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--out", "x.mp4"], r"--out x.mp4: takes one SOURCE \(2 given\); write each one's video with --out-dir DIR"),
        (["--out", "x.mp4", "--out-dir", "."], "--out and --out-dir: give one of them"),
        (["--gt-video", "v"], r"--gt-video v: takes one SOURCE \(2 given\)"),
        (["--out-dir", "no-such-folder"], "--out-dir no-such-folder: not a folder"),
    ],
)
def test_options_that_take_one_source_are_refused_with_several(tmp_path, engine, extra, message, capsys):
    clips = [mp4(tmp_path / f"{name}.mp4", (128, 128), 2, seed) for seed, name in enumerate("ab")]
    assert cli.main(multi_argv(clips, engine, *extra)) == 2
    assert re.search(message, one_error_line(capsys))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4"]


@pytest.mark.parametrize("target", ["--out-dir over a SOURCE", "--json", "--jsonl"])
def test_no_output_of_any_source_replaces_an_input_of_any_source(tmp_path, engine, target, capsys):
    """The inputs are three sources; the output is one of their files (the first source's, the
    second's, an image of the third's folder)."""
    sources = [path for path, _, _ in three_sources(tmp_path)]
    before = {p: p.read_bytes() for p in [sources[0], sources[1], *sources[2].iterdir()]}
    extra, message = {
        "--out-dir over a SOURCE": (
            ["--out-dir", tmp_path],
            f"--out-dir's clip_a.mp4 {sources[0].resolve()}: is also SOURCE {sources[0]}; an output never replaces",
        ),
        "--json": (["--json", sources[1]], f"--json {sources[1].resolve()}: is also SOURCE {sources[1]}; "),
        "--jsonl": (["--jsonl", sources[2] / "0002.png"], f"is also SOURCE {sources[2]}'s 0002.png; "),
    }[target]
    assert cli.main(multi_argv(sources, engine, *extra)) == 2
    assert message in one_error_line(capsys)
    assert {p: p.read_bytes() for p in before} == before and temporaries(tmp_path) == []


def test_out_dir_names_each_source_after_its_stem_and_sources_with_one_stem_apart():
    sources = ["a/clip.mp4", "b/clip.mp4", "frames/", "/dev/video0", "rtsp://cam.local/live/main.sdp", "http://cam:81"]
    assert cli.output_names(sources) == ["clip_0", "clip_1", "frames", "video0", "main", "cam"]
    assert cli.output_names([".hidden.mp4", "..", "we ird?.ts"]) == ["hidden", "source", "we_ird_"]
