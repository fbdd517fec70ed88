"""Many streams on one pair of engines (docs/deployment.md#many-streams): each stream's detections
equal a single-stream run of its video, whatever the interleaving, batch, window mode, and when a
stream ends early; ``sltnet-export --batch``."""

import json
import random

import pytest
import torch

from export.cli import main as export_main
from runtime.detector import StreamingRuntime
from runtime.engines import onnxruntime_backend, torch_backend
from runtime.multistream import MultiStreamRuntime, StreamResult, run_streams
from sltnet.contract import Manifest
from sltnet.errors import SltnetError

from helpers import CLASS_NAMES, SCORE_THRESH, SYMMETRIC_N, TINY_SLTNET, assert_same_results, make_weights, video

# Three videos of different lengths; the third at another size than the export's 128x128.
CLIPS = [((128, 128), 8, 1), ((128, 128), 5, 2), ((96, 128), 11, 3)]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("weights"))["sltnet"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory, weights):
    """{(mode, batch): export folder}."""
    folders = {}
    for mode, extra in (("sequential", []), ("symmetric", ["--mode", "symmetric", *SYMMETRIC_N])):
        for batch in (1, 2):
            out = tmp_path_factory.mktemp(f"{mode}{batch}") / "engines"
            argv = ["--config-file", TINY_SLTNET, "--weights", str(weights), "--out", str(out)]
            argv += ["--class-names", CLASS_NAMES, "--batch", str(batch), *extra, *SCORE_THRESH]
            assert export_main(argv) == 0
            folders[mode, batch] = out
    return folders


def open_runtime(out, num_streams=None, backend_name="onnxruntime"):
    manifest = Manifest.load(out)
    if backend_name == "torch":
        backend = torch_backend(out, manifest, "cpu")
    else:
        backend = onnxruntime_backend(out, manifest, num_threads=1)
    if num_streams is None:
        return StreamingRuntime(manifest, backend)
    return MultiStreamRuntime(manifest, backend, num_streams)


def clips():
    return [video(size, num_frames=length, seed=seed) for size, length, seed in CLIPS]


def single_stream(out, frames):
    runtime = open_runtime(out)
    results = [result for frame in frames for result in runtime.push(frame)]
    return results + runtime.flush()


def interleaving(lengths, seed=0):
    """Stream ids in push order: uneven bursts of one to three frames of a random unfinished stream."""
    rng = random.Random(seed)
    left, order = list(lengths), []
    while any(left):
        stream_id = rng.choice([i for i, n in enumerate(left) if n])
        burst = min(rng.randint(1, 3), left[stream_id])
        order += [stream_id] * burst
        left[stream_id] -= burst
    return order


def by_stream(results: list[StreamResult], num_streams):
    grouped = [[] for _ in range(num_streams)]
    for stream_id, result in results:
        grouped[stream_id].append(result)
    return grouped


def assert_identical(expected, actual):
    assert [r.frame_index for r in actual] == [r.frame_index for r in expected]
    for ours, theirs in zip(actual, expected):
        assert torch.equal(ours.boxes, theirs.boxes), ours.frame_index
        assert torch.equal(ours.scores, theirs.scores) and torch.equal(ours.classes, theirs.classes)


@pytest.mark.parametrize("mode", ["sequential", "symmetric"])
@pytest.mark.parametrize("batch", [1, 2])
def test_each_stream_equals_its_single_stream_run(exports, mode, batch):
    """Uneven interleaving, a stream that ends early (flushed at once, while the others go on),
    frames of two sizes. Batch 1: the same engine runs the same computation, so results are equal
    bit for bit. Batch 2: the batched frame engine may round differently from the one-frame engine,
    so detections are matched with the tolerance used between backends (helpers.assert_same_results)."""
    videos = clips()
    runtime = open_runtime(exports[mode, batch], len(videos))
    pushed = [0] * len(videos)
    results = []
    for stream_id in interleaving([len(frames) for frames in videos]):
        results += runtime.push(stream_id, videos[stream_id][pushed[stream_id]])
        pushed[stream_id] += 1
        if pushed[stream_id] == len(videos[stream_id]):
            results += runtime.flush(stream_id)
    assert runtime.engines.backend.temporal.num_runs == sum(pushed)
    if batch > 1:
        assert runtime.engines.backend.frame.num_runs < sum(pushed)  # some runs took two streams' frames
    for frames, actual in zip(videos, by_stream(results, len(videos))):
        expected = single_stream(exports[mode, 1], frames)
        assert sum(len(r.scores) for r in expected) > 0
        if batch == 1:
            assert_identical(expected, actual)
        else:
            assert_same_results([(r, 0) for r in expected], [(r, 0) for r in actual], float(SCORE_THRESH[1]))


@pytest.mark.parametrize("backend_name", ["onnxruntime", "torch"])
def test_run_streams_answers_every_frame_of_every_source_once(exports, backend_name):
    videos = clips()
    runtime = open_runtime(exports["symmetric", 2], len(videos), backend_name)
    grouped = by_stream(list(run_streams(runtime, videos)), len(videos))
    for frames, actual in zip(videos, grouped):
        assert [r.frame_index for r in actual] == list(range(len(frames)))
        expected = single_stream(exports["symmetric", 1], frames)
        assert_same_results([(r, 0) for r in expected], [(r, 0) for r in actual], float(SCORE_THRESH[1]))


def test_batches_wait_for_the_live_streams_and_a_flushed_stream_no_longer_holds_them(exports):
    runtime = open_runtime(exports["sequential", 2], 2)
    frames = video((128, 128), num_frames=4)
    frame_runs = runtime.engines.backend.frame
    assert runtime.push(0, frames[0]) == []  # stream 1 is live: wait for its frame to fill the batch
    assert [(s, r.frame_index) for s, r in runtime.push(1, frames[0])] == [(0, 0), (1, 0)]
    assert frame_runs.num_runs == 1
    assert runtime.push(0, frames[1]) == []
    # Stream 0 again while its frame waits: the batch runs first, half empty, so frames stay in order.
    assert [(s, r.frame_index) for s, r in runtime.push(0, frames[2])] == [(0, 1)]
    assert [(s, r.frame_index) for s, r in runtime.flush(1)] == [(0, 2)]  # ran stream 0's waiting frame
    assert frame_runs.num_runs == 3
    # Stream 1 has ended: stream 0 alone runs at once.
    assert [(s, r.frame_index) for s, r in runtime.push(0, frames[3])] == [(0, 3)]
    assert [r.frame_index for _, r in runtime.push(1, frames[0])] == []  # stream 1 live again, a new video
    assert [(s, r.frame_index) for s, r in runtime.flush(1)] == [(1, 0)]


def test_reset_drops_a_waiting_frame_and_bad_streams_are_refused(exports):
    manifest = Manifest.load(exports["sequential", 2])
    runtime = open_runtime(exports["sequential", 2], 2)
    frames = video((128, 128), num_frames=2)
    assert runtime.push(0, frames[0]) == []
    assert runtime.reset(0) == []
    assert runtime.run_ready() == [] and runtime.engines.backend.frame.num_runs == 0
    assert [(s, r.frame_index) for s, r in runtime.push(1, frames[0])] == [(1, 0)]  # stream 0 is not live
    with pytest.raises(SltnetError, match=r"stream 2: the runtime has streams 0 \.\. 1"):
        runtime.push(2, frames[0])
    with pytest.raises(SltnetError, match=r"the runtime takes uint8 \[3, H, W\] RGB frames"):
        runtime.push(0, frames[0].float())
    with pytest.raises(SltnetError, match="0 streams: need at least one"):
        MultiStreamRuntime(manifest, runtime.engines.backend, 0)
    with pytest.raises(SltnetError, match="3 sources for a runtime of 2 streams"):
        list(run_streams(runtime, [frames] * 3))


def test_export_batch_shapes_the_frame_engine_and_the_manifest(exports, tmp_path, capsys):
    one = json.loads((exports["sequential", 1] / "manifest.json").read_text())
    two = json.loads((exports["sequential", 2] / "manifest.json").read_text())
    assert "batch" not in one["input"] and one["input"]["shape"] == [1, 3, 128, 128]
    assert two["input"]["batch"] == 2 and two["input"]["shape"] == [2, 3, 128, 128]
    per_frame = {spec["name"]: spec["shape"] for spec in one["engines"]["frame"]["outputs"]}
    batched = {spec["name"]: spec["shape"] for spec in two["engines"]["frame"]["outputs"]}
    assert batched == {
        "features": [2, *per_frame["features"]],
        "objectness_logits": [2, *per_frame["objectness_logits"]],
        "boxes": [2, *per_frame["boxes"]],
    }
    for io in ("inputs", "outputs"):  # the temporal engine takes one frame's outputs per slot either way
        assert two["engines"]["temporal"][io] == one["engines"]["temporal"][io]
    argv = ["--config-file", TINY_SLTNET, "--out", str(tmp_path / "out"), "--batch", "0", "--class-names", CLASS_NAMES]
    assert export_main(argv) == 2
    assert capsys.readouterr().err == "error: --batch 0: must be at least 1\n"


def test_a_batched_export_also_serves_one_stream_at_once(exports):
    """StreamingRuntime on a batch-2 export: the frame runs in row 0, padding in row 1, answered at once."""
    frames = clips()[2]
    runtime = open_runtime(exports["sequential", 2])
    actual = [[r.frame_index for r in runtime.push(frame)] for frame in frames]
    assert actual == [[t] for t in range(len(frames))]
    expected = single_stream(exports["sequential", 1], frames)
    again = single_stream(exports["sequential", 2], frames)
    assert_same_results([(r, 0) for r in expected], [(r, 0) for r in again], float(SCORE_THRESH[1]))
