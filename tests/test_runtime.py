"""The streaming runtime (docs/deployment.md#runtime) and ``sltnet-run``: parity of every available backend with the
PyTorch reference, the ring bookkeeping (one frame-engine run per frame, re-bound window slots,
no allocation after warm-up, reset between videos) and the command line's outputs and errors."""

import json
import re
import shutil

import av
import pytest
import torch
from PIL import Image

import runtime.detector as detector_module
from export.cli import main as export_main
from runtime.cli import main
from runtime.detector import StreamingRuntime
from runtime.engines import onnxruntime_backend, open_backend, tensorrt_unavailable, torch_backend
from sltnet.config import load_config
from sltnet.contract import Manifest
from sltnet.errors import SltnetError
from sltnet.modeling.build import build_model
from sltnet.modeling.streaming import StreamingDetector

from helpers import (
    CLASS_NAMES,
    SCORE_THRESH,
    SYMMETRIC_N,
    TINY_SLTNET,
    assert_same_results,
    make_weights,
    stream,
    video,
)

FRAME_SIZE = (128, 128)  # the tiny config's default export size


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("weights"))["sltnet"]


def export(tmp_path_factory, weights, name, *args):
    out = tmp_path_factory.mktemp(name) / "engines"
    argv = ["--config-file", TINY_SLTNET, "--weights", str(weights), "--out", str(out), "--class-names", CLASS_NAMES]
    assert export_main([*argv, *args, *SCORE_THRESH]) == 0
    return out


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, weights):
    return export(tmp_path_factory, weights, "sequential")


@pytest.fixture(scope="module")
def symmetric(tmp_path_factory, weights):
    return export(tmp_path_factory, weights, "symmetric", "--mode", "symmetric", *SYMMETRIC_N)


def reference(weights, mode_overrides=()):
    cfg = load_config(TINY_SLTNET, ["MODEL.WEIGHTS", str(weights), *SCORE_THRESH, *mode_overrides])
    return StreamingDetector.from_config(build_model(cfg), cfg)


NO_CUDA = "torch sees no CUDA GPU"
BACKEND_PARAMS = [
    "torch",
    "onnxruntime",
    pytest.param("torch-cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)),
    pytest.param(
        "tensorrt", marks=pytest.mark.skipif(tensorrt_unavailable() is not None, reason=f"{tensorrt_unavailable()}")
    ),
]


def open_named(name, out, manifest):
    if name == "torch-cuda":
        return torch_backend(out, manifest, "cuda")
    return open_backend(name, out, manifest, device="cpu" if name != "tensorrt" else None, num_threads=1)


# ------------------------------------------------------------------------------------------------
# Parity and bookkeeping
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
@pytest.mark.parametrize("mode", ["sequential", "symmetric"])
@pytest.mark.parametrize("num_frames", [8, 2])
def test_backends_match_the_pytorch_reference(request, weights, backend_name, mode, num_frames):
    """Boxes within 1e-2 px, same classes and scores, every frame answered once and at the same time
    as PyTorch, also for clips shorter than the window."""
    out = request.getfixturevalue(mode)
    manifest = Manifest.load(out)
    overrides = ["MODEL.SPATIOTEMPORAL.FORWARD_AGGREGATION", "true", *SYMMETRIC_N] if mode == "symmetric" else []
    frames = video(FRAME_SIZE, num_frames=num_frames)
    expected = stream(reference(weights, overrides), frames)
    backend = open_named(backend_name, out, manifest)
    actual = stream(StreamingRuntime(manifest, backend), frames)
    assert [r.frame_index for r, _ in actual] == list(range(num_frames))
    assert backend.frame.num_runs == num_frames and backend.temporal.num_runs == num_frames
    if num_frames == 8:
        assert sum(len(r.scores) for r, _ in expected) > 0
    if backend_name == "tensorrt":  # TF32 may be used for FP32 layers
        for (ref, _), (res, _) in zip(expected, actual):
            torch.testing.assert_close(res.boxes, ref.boxes, rtol=0, atol=0.1)
            assert torch.equal(res.classes, ref.classes)
    else:
        assert_same_results(expected, actual, float(SCORE_THRESH[1]))


def test_symmetric_results_wait_for_the_future_and_flush_at_the_end(symmetric):
    manifest = Manifest.load(symmetric)
    runtime = StreamingRuntime(manifest, onnxruntime_backend(symmetric, manifest, num_threads=1))
    latency = manifest.window.latency_frames
    answered = [[r.frame_index for r in runtime.push(frame)] for frame in video(FRAME_SIZE, num_frames=5)]
    assert answered == [[]] * latency + [[t - latency] for t in range(latency, 5)]
    assert [r.frame_index for r in runtime.flush()] == list(range(5 - latency, 5))


def test_window_rebinds_slots_and_padding_repeats_the_first_slot(sequential):
    manifest = Manifest.load(sequential)
    backend = onnxruntime_backend(sequential, manifest, num_threads=1)
    runtime = StreamingRuntime(manifest, backend)
    bound = backend.temporal._bound
    frames = video(FRAME_SIZE, num_frames=5)
    runtime.push(frames[0])
    assert [bound[f"frame{i}_features"] is runtime.slots[0]["features"] for i in range(3)] == [True] * 3
    for t in range(1, 5):
        runtime.push(frames[t])
        window = [max(i, 0) % 3 for i in range(t - 2, t + 1)]
        assert all(bound[f"frame{i}_boxes"] is runtime.slots[slot]["boxes"] for i, slot in enumerate(window))
    # The frame engine wrote frame 4 into slot 4 mod 3 = 1, as it is stored nowhere else.
    assert backend.frame._bound["boxes"] is runtime.slots[1]["boxes"]


def test_no_buffer_is_allocated_after_warm_up(sequential, monkeypatch):
    """The rings are allocated at open; onnxruntime writes its outputs into them in place."""
    manifest = Manifest.load(sequential)
    runtime = StreamingRuntime(manifest, onnxruntime_backend(sequential, manifest, num_threads=1))
    frames = video(FRAME_SIZE, num_frames=10)
    for frame in frames[:3]:
        runtime.push(frame)
    addresses = {name: t.data_ptr() for name, t in runtime.buffers().items()}
    allocations = []
    monkeypatch.setattr(detector_module, "_empty", lambda *a: allocations.append(a))
    before = runtime.slots[0]["boxes"].clone()
    for frame in frames[3:]:
        runtime.push(frame)
    runtime.flush()
    assert allocations == []
    assert {name: t.data_ptr() for name, t in runtime.buffers().items()} == addresses
    assert not torch.equal(runtime.slots[0]["boxes"], before)  # the engine wrote into the same buffer
    assert len(runtime.memory) == 0  # flush reset the memory ring


def test_a_new_video_starts_from_a_clean_state(sequential):
    manifest = Manifest.load(sequential)
    runtime = StreamingRuntime(manifest, onnxruntime_backend(sequential, manifest, num_threads=1))
    first, second = video(FRAME_SIZE, seed=1), video(FRAME_SIZE, seed=2)
    stream(runtime, first)
    again = stream(runtime, second)
    fresh = stream(StreamingRuntime(manifest, onnxruntime_backend(sequential, manifest, num_threads=1)), second)
    assert_same_results(fresh, again)
    runtime.push(first[0])
    runtime.reset()
    assert len(runtime.memory) == 0 and [r.frame_index for r in runtime.push(second[0])] == [0]


def test_memory_ring_keeps_keyframe_entries_by_rebinding_the_slot_the_engine_wrote(sequential, monkeypatch):
    manifest = Manifest.load(sequential)
    backend = onnxruntime_backend(sequential, manifest, num_threads=1)
    runtime = StreamingRuntime(manifest, backend)
    interval, num_slots = manifest.memory.keyframe_interval, manifest.memory.num_keyframes
    names = [f"memory{k}_valid" for k in range(num_slots)] + ["entry_valid"]
    runs = []  # the memory buffers bound at each temporal run
    execute = backend.temporal._execute

    def recording_execute():
        runs.append([backend.temporal._bound[name] for name in names])
        execute()

    monkeypatch.setattr(backend.temporal, "_execute", recording_execute)
    slot_buffers = {id(slot["valid"]) for slot in runtime.memory.slots}
    for t, frame in enumerate(video(FRAME_SIZE)):
        runtime.push(frame)
        assert runtime.memory.num_writes == t // interval + 1
        *inputs, entry = runs[t]
        # K inputs and the output are K + 1 distinct ring buffers: no output aliases an input.
        assert {id(x) for x in runs[t]} == slot_buffers
        if t > 0 and (t - 1) % interval == 0:  # after a keyframe: the slot the engine wrote is the newest input
            assert inputs[-1] is runs[t - 1][-1] and inputs[-1].any()
        elif t > 0:
            assert entry is runs[t - 1][-1]  # a frame that is no keyframe leaves the spare to be overwritten
    assert len(runtime.memory) == num_slots


def test_what_is_no_rgb_frame_and_a_too_low_threshold_are_refused(sequential):
    """Frames of any size are taken (tests/test_any_resolution.py); other types and shapes are not."""
    manifest = Manifest.load(sequential)
    runtime = StreamingRuntime(manifest, onnxruntime_backend(sequential, manifest, num_threads=1))
    for frame in (torch.zeros(3, 120, 128), torch.zeros(1, 120, 128, dtype=torch.uint8), torch.zeros(3, 0, 5).byte()):
        with pytest.raises(SltnetError, match=r"the runtime takes uint8 \[3, H, W\] RGB frames"):
            runtime.push(frame)
    assert [r.frame_index for r in runtime.push(torch.zeros(3, 120, 128, dtype=torch.uint8))] == [0]
    with pytest.raises(SltnetError, match="below the threshold 0.7 built into the engines"):
        StreamingRuntime(manifest, runtime.backend, score_thresh=0.1)


@pytest.mark.skipif(tensorrt_unavailable() is None, reason="TensorRT is available here")
def test_tensorrt_backend_says_why_it_cannot_run(sequential):
    with pytest.raises(SltnetError, match="--backend tensorrt: "):
        open_backend("tensorrt", sequential, Manifest.load(sequential))


# ------------------------------------------------------------------------------------------------
# sltnet-run
# ------------------------------------------------------------------------------------------------
def write_mp4(path, frames, fps=10):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[3], frames.shape[2], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame.permute(1, 2, 0).numpy(), format="rgb24")))
        container.mux(stream.encode())
    return path


def read_mp4(path):
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_sltnet_run_writes_a_video_and_coco_json(tmp_path, sequential, capsys):
    clip = write_mp4(tmp_path / "clip.mp4", video(FRAME_SIZE, num_frames=6))
    out, dets = tmp_path / "out.mp4", tmp_path / "dets.json"
    argv = [str(clip), "--engine", str(sequential), "--backend", "onnxruntime", "--out", str(out), "--json", str(dets)]
    assert main([*argv, "--no-progress"]) == 0
    summary = capsys.readouterr().out
    assert "backend: onnxruntime (CPUExecutionProvider)" in summary and "sltnet-run: 6 frames" in summary
    frames = read_mp4(out)
    assert len(frames) == 6 and frames[0].shape == (*FRAME_SIZE, 3)
    detections = json.loads(dets.read_text())
    assert detections and {d["frame_index"] for d in detections} <= set(range(6))
    first = detections[0]
    assert set(first) == {"image_id", "frame_index", "timestamp", "category_id", "category_name", "bbox", "score"}
    assert first["image_id"] == first["frame_index"] and first["timestamp"] == pytest.approx(first["frame_index"] / 10)
    assert first["category_name"] == CLASS_NAMES.split(",")[first["category_id"] - 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "dets.json", "out.mp4"]


def test_sltnet_run_reads_a_folder_of_frames(tmp_path, sequential):
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(video(FRAME_SIZE, num_frames=3)):
        Image.fromarray(frame.permute(1, 2, 0).numpy()).save(folder / f"{index:04d}.png")
    dets = tmp_path / "dets.json"
    argv = [str(folder), "--engine", str(sequential), "--json", str(dets), "--max-frames", "2", "--no-progress"]
    assert main([*argv, "--backend", "onnxruntime", "--fps", "5"]) == 0
    frames = {d["frame_index"]: d["timestamp"] for d in json.loads(dets.read_text())}
    assert set(frames) <= {0, 1} and all(t == pytest.approx(i / 5) for i, t in frames.items())


def bad_inputs(tmp_path, sequential):
    """(name, VIDEO, extra args, expected message)."""
    (tmp_path / "notes.txt").write_text("not a video\n")
    empty = tmp_path / "empty.mp4"
    with av.open(str(empty), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 128
        container.start_encoding()  # a header, no frames
    full = write_mp4(tmp_path / "full.mp4", video(FRAME_SIZE, num_frames=20))
    data = full.read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) * 2 // 3])
    stale = tmp_path / "stale"
    shutil.copytree(sequential, stale)
    with open(stale / "temporal.onnx", "ab") as handle:
        handle.write(b"\0")
    return [
        ("missing", tmp_path / "nope.mp4", [], "nope.mp4: not found"),
        ("not a video", tmp_path / "notes.txt", [], "notes.txt: not a video FFmpeg can read"),
        ("zero frames", empty, [], "empty.mp4: has no video stream, no frames"),
        ("corrupt", tmp_path / "truncated.mp4", [], "truncated.mp4: "),
        ("unwritable", full, ["--out", str(tmp_path / "notes.txt" / "out.mp4")], "folder .*notes.txt does not exist"),
        ("no manifest", full, ["--engine", str(tmp_path)], "manifest.json: not found"),
        ("stale manifest", full, ["--engine", str(stale)], "temporal.onnx: SHA-256 does not match"),
        ("threshold", full, ["--score-thresh", "0.1"], "--score-thresh 0.1: below the threshold"),
    ]


def test_sltnet_run_bad_input_gives_one_line_and_no_output(tmp_path, sequential, capsys):
    cases = bad_inputs(tmp_path, sequential)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    for name, clip, extra, message in cases:
        argv = [str(clip), "--engine", str(sequential), "--backend", "onnxruntime", "--no-progress"]
        argv += ["--out", str(outputs / "out.mp4"), "--json", str(outputs / "dets.json"), *extra]
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), (name, err)
        assert re.search(message, err), (name, err)
        assert list(outputs.iterdir()) == [], name


def test_gt_json_maps_frames_to_image_ids(tmp_path, sequential):
    clip = write_mp4(tmp_path / "vid_a.mp4", video(FRAME_SIZE, num_frames=3))
    gt = tmp_path / "gt.json"
    images = [{"id": 100 + i, "video": "vid_a", "frame_number": i, "file_name": f"vid_a/{i}.jpg"} for i in (2, 0, 1)]
    gt.write_text(json.dumps({"images": images}))
    dets = tmp_path / "dets.json"
    argv = [str(clip), "--engine", str(sequential), "--backend", "onnxruntime", "--json", str(dets), "--no-progress"]
    assert main([*argv, "--gt-json", str(gt)]) == 0
    assert all(d["image_id"] == 100 + d["frame_index"] for d in json.loads(dets.read_text()))
    assert main([*argv, "--gt-json", str(gt), "--gt-video", "other"]) == 2
