"""``sltnet-run`` on live sources: a clip streamed over HTTP from a server on 127.0.0.1 that the test
starts and stops, servers that die, stall or pause mid-stream, reconnection, ``--realtime`` frame
dropping, JSON lines read while the run goes on, ``--draw-thresh``, and cameras."""

import glob
import http.server
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from itertools import cycle, islice
from pathlib import Path

import av
import pytest
import test_run_cli
import torch
from test_run_cli import FRAME_SIZE, one_error_line, run_argv, temporaries

import runtime.cli as cli
import runtime.draw as draw
from runtime.detector import StreamingRuntime
from runtime.engines import open_backend
from runtime.video import SourceOptions, VideoSource
from sltnet.contract import Manifest
from sltnet.errors import SltnetError

from helpers import video

engine = test_run_cli.engine  # the tiny SLTnet export, a module fixture

CLIP_FRAMES = 40
RECONNECTING = re.compile(r"after (\d+) frames; reconnecting in [\d.]+ s \(attempt (\d+) of (\d+)\)")


def write_clip(path, num_frames=CLIP_FRAMES, fps=10, container_format="mp4"):
    """The test video (its frames cycled) as an mp4 with its index first, as streamed mp4s are
    (``movflags=faststart``), or as MPEG-TS, which declares no frame count, as a live stream."""
    frames = [frame.permute(1, 2, 0).numpy() for frame in video(FRAME_SIZE)]
    options = {"movflags": "faststart"} if container_format == "mp4" else {}
    with av.open(str(path), "w", format=container_format, options=options) as container:
        stream = container.add_stream("mpeg4", rate=fps, options={"qscale": "3"})
        stream.height, stream.width = FRAME_SIZE
        stream.pix_fmt = "yuv420p"
        for image in islice(cycle(frames), num_frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def mid_stream(data):
    """Where a server cuts ``data`` off: late enough that frames were decoded before (FFmpeg probes
    the first part of a stream when it opens it, and a cut there fails the open)."""
    return len(data) * 9 // 10


class ClipServer:
    """An HTTP server on 127.0.0.1, on a port the system picks, that streams files from their start
    with their Content-Length (no Range requests: it reads like a live stream server).

    Args:
        files: {"/name": bytes}.
        cut_at: the first response stops after this many bytes; then, by ``after_cut``: "close" the
            connection (a server that dies and comes back), "die" (and stop listening for good),
            "stall" (keep the connection open and send nothing more), "pause" (send the rest once
            :attr:`resume` is set). Later responses send the whole file.
        silent: accept connections and send nothing at all.
    """

    def __init__(self, files, cut_at=None, after_cut="close", silent=False):
        self.files, self.cut_at, self.after_cut, self.silent = files, cut_at, after_cut, silent
        self.resume = threading.Event()
        self.released = threading.Event()  # set by stop: nothing waits any more
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.clip = self
        self._serving = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self._serving.start()
        self._listening = True

    def url(self, name):
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{name}"

    def take_cut(self):
        """The cut of this response (the first one only)."""
        with self._lock:
            cut, self.cut_at = self.cut_at, None
            return cut

    def stop_listening(self):
        with self._lock:
            if not self._listening:
                return
            self._listening = False
        self._httpd.shutdown()
        self._httpd.server_close()

    def stop(self):
        self.released.set()
        self.resume.set()
        self.stop_listening()
        self._serving.join()


class _Server(http.server.ThreadingHTTPServer):
    block_on_close = False  # "die" closes the server from one of its own handler threads

    def handle_error(self, request, client_address):
        pass  # a client that went away mid-response is what these tests do


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        clip = self.server.clip
        cut = clip.take_cut()
        if clip.silent:
            clip.released.wait()
            return
        body = clip.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if cut is None:
            self.wfile.write(body)
            return
        self.wfile.write(body[:cut])
        self.wfile.flush()
        if clip.after_cut == "pause":
            clip.resume.wait()
            self.wfile.write(body[cut:])
        elif clip.after_cut == "stall":
            clip.released.wait()
        elif clip.after_cut == "die":
            clip.stop_listening()

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """``serve(files, **behaviour)`` starts a :class:`ClipServer`; every one is stopped after the test."""
    servers = []

    def start(files, **behaviour):
        servers.append(ClipServer(files, **behaviour))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def file_run(tmp_path, engine, clip, *extra):
    """The JSON lines and the COCO results of a run on the file itself."""
    lines, dets = tmp_path / f"{clip.stem}_file.jsonl", tmp_path / f"{clip.stem}_file.json"
    assert cli.main(run_argv(clip, engine, "--jsonl", lines, "--json", dets, *extra)) == 0
    return jsonl(lines), json.loads(dets.read_text())


def served_clip(tmp_path, engine, serve, name="/clip.mp4", after_cut=None):
    """(URL, the JSON lines and COCO results of a run on the file) of the test clip (MPEG-TS for a
    .ts name) served by a :class:`ClipServer` that cuts it :func:`mid_stream` if ``after_cut`` says how."""
    clip = write_clip(tmp_path / name[1:], container_format="mpegts" if name.endswith(".ts") else "mp4")
    expected_lines, expected_dets = file_run(tmp_path, engine, clip)
    data = clip.read_bytes()
    cut = {} if after_cut is None else {"cut_at": mid_stream(data), "after_cut": after_cut}
    return serve({name: data}, **cut).url(name), expected_lines, expected_dets


def reconnections(err):
    """(frames before, attempt, of) of every reconnection line on stderr."""
    return [tuple(map(int, match.groups())) for match in RECONNECTING.finditer(err)]


def decoded_frames(path):
    source = VideoSource(str(path))
    try:
        return [(frame.image.shape, frame.index) for frame in source]
    finally:
        source.close()


# ------------------------------------------------------------------------------------------------
# A clip over HTTP
# ------------------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_an_http_stream_gives_the_file_s_detections_one_result_per_frame(tmp_path, engine, serve):
    url, expected_lines, expected_dets = served_clip(tmp_path, engine, serve)
    lines, dets = tmp_path / "url.jsonl", tmp_path / "url.json"
    assert cli.main(run_argv(url, engine, "--jsonl", lines, "--json", dets)) == 0
    assert [line["frame_index"] for line in jsonl(lines)] == list(range(CLIP_FRAMES))
    assert jsonl(lines) == expected_lines and json.loads(dets.read_text()) == expected_dets
    assert sum(len(line["detections"]) for line in expected_lines) == len(expected_dets) > 0


@pytest.mark.timeout(120)
def test_a_recording_cut_mid_stream_resumes_after_its_last_frame(tmp_path, engine, serve, capsys):
    """The server closes the first connection part-way and serves the next: the run reconnects once
    and every frame gets the detections of the uninterrupted run (the window never saw the gap)."""
    url, expected_lines, expected_dets = served_clip(tmp_path, engine, serve, after_cut="close")
    lines, dets, out = tmp_path / "url.jsonl", tmp_path / "url.json", tmp_path / "url.mp4"
    capsys.readouterr()
    argv = run_argv(url, engine, "--jsonl", lines, "--json", dets, "--out", out)
    assert cli.main([*argv, "--reconnect", "2", "--reconnect-delay", "0.05"]) == 0
    err = capsys.readouterr().err
    [(before, attempt, attempts)] = reconnections(err)
    assert 0 < before < CLIP_FRAMES and (attempt, attempts) == (1, 2), err
    assert jsonl(lines) == expected_lines and json.loads(dets.read_text()) == expected_dets
    assert len(decoded_frames(out)) == CLIP_FRAMES and "Traceback" not in err


@pytest.mark.timeout(120)
def test_a_live_stream_cut_mid_stream_goes_on_with_what_it_sends_after_reconnecting(tmp_path, engine, serve, capsys):
    """MPEG-TS declares no frame count: after the reconnection the frames are taken as they come (here
    the server sends the clip again), numbered on, their timestamps following the last one."""
    url, expected_lines, _ = served_clip(tmp_path, engine, serve, "/clip.ts", after_cut="close")
    lines = tmp_path / "url.jsonl"
    capsys.readouterr()
    assert cli.main(run_argv(url, engine, "--jsonl", lines, "--reconnect", "1")) == 0
    captured = capsys.readouterr()
    err = captured.err
    [(before, _, _)] = reconnections(err)
    answered = jsonl(lines)
    assert len(answered) == before + CLIP_FRAMES, err
    assert [line["frame_index"] for line in answered] == list(range(len(answered)))
    assert answered[:before] == expected_lines[:before]
    timestamps = [line["timestamp"] for line in answered]
    assert all(later > earlier for earlier, later in zip(timestamps, timestamps[1:]))
    assert f"sltnet-run: {len(answered)} frames" in captured.out and ", 1 reconnection," in captured.out


@pytest.mark.timeout(120)
def test_a_server_that_dies_for_good_ends_the_run_cleanly_after_the_attempts(tmp_path, engine, serve, capsys):
    url, expected_lines, _ = served_clip(tmp_path, engine, serve, after_cut="die")
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    lines, dets, out = outputs / "url.jsonl", outputs / "url.json", outputs / "url.mp4"
    capsys.readouterr()
    argv = run_argv(url, engine, "--jsonl", lines, "--json", dets, "--out", out)
    assert cli.main([*argv, "--reconnect", "2", "--reconnect-delay", "0.05"]) == cli.EXIT_SOURCE_LOST
    captured = capsys.readouterr()
    attempts = reconnections(captured.err)
    assert [(attempt, of) for _, attempt, of in attempts] == [(1, 2), (2, 2)], captured.err
    before = attempts[0][0]
    [lost] = [line for line in captured.err.splitlines() if "lost (" in line]
    assert "2 reconnection attempts failed" in lost and f"hold the {before} frames processed" in lost
    assert "Traceback" not in captured.err and f"sltnet-run: {before} frames" in captured.out
    answered = jsonl(lines)
    assert answered == expected_lines[:before] and len(decoded_frames(out)) == before
    assert len(json.loads(dets.read_text())) == sum(len(line["detections"]) for line in answered)
    assert temporaries(outputs) == []


# ------------------------------------------------------------------------------------------------
# Timeouts
# ------------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_server_that_answers_nothing_is_given_up_within_the_timeout(tmp_path, engine, serve, capsys):
    server = serve({}, silent=True)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    started = time.monotonic()
    argv = run_argv(server.url("/clip.mp4"), engine, "--timeout", "1", "--json", outputs / "dets.json")
    assert cli.main(argv) == 2
    # The open and the stream probing may each wait the timeout; the rest is bookkeeping.
    assert time.monotonic() - started < 2 * 1 + 5
    assert "clip.mp4: no answer within --timeout 1 s" in one_error_line(capsys)
    assert list(outputs.iterdir()) == []


@pytest.mark.timeout(60)
def test_a_stream_that_stalls_mid_way_ends_within_the_timeout_with_what_it_gave(tmp_path, engine, serve, capsys):
    url, expected_lines, _ = served_clip(tmp_path, engine, serve, after_cut="stall")
    lines = tmp_path / "url.jsonl"
    capsys.readouterr()
    assert cli.main(run_argv(url, engine, "--timeout", "1", "--jsonl", lines)) == 3
    err = capsys.readouterr().err
    assert "lost (no data for 1 s)" in err and "Traceback" not in err, err
    answered = jsonl(lines)
    assert 0 < len(answered) < CLIP_FRAMES and answered == expected_lines[: len(answered)]


@pytest.mark.timeout(60)
def test_a_source_whose_reads_ignore_the_timeout_is_given_up_by_the_consumer(tmp_path, monkeypatch):
    """A read stuck where FFmpeg's interrupt callback never runs (a camera driver): iteration ends
    and says so, and close() does not wait for the stuck thread."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(3):
        (frames / f"{index}.png").write_bytes(b"")
    stuck, reads = threading.Event(), []

    def read_image(path):  # the first read is the folder's opening, the next ones are stuck
        if reads:
            stuck.wait(30)
        reads.append(path)
        return torch.zeros(3, 8, 8, dtype=torch.uint8)

    monkeypatch.setattr("runtime.video.read_image", read_image)
    source = VideoSource(str(frames), options=SourceOptions(timeout=0.2))
    try:
        assert list(source) == [] and source.lost == "no frame for 1.4 s (the source stalled)"
        started = time.monotonic()
        source.close()
        assert time.monotonic() - started < 1
    finally:
        stuck.set()


# ------------------------------------------------------------------------------------------------
# Results as they come
# ------------------------------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_jsonl_on_stdout_can_be_read_while_the_run_goes_on(tmp_path, engine, serve):
    """The server pauses part-way: lines for the frames so far are on stdout while the run waits for
    the rest; at the end stdout holds one JSON line per frame and nothing else."""
    clip = write_clip(tmp_path / "clip.mp4")
    data = clip.read_bytes()
    server = serve({"/clip.mp4": data}, cut_at=mid_stream(data), after_cut="pause")
    argv = [server.url("/clip.mp4"), "--engine", str(engine), "--backend", "onnxruntime", "--jsonl", "-"]
    command = [sys.executable, "-m", "runtime.cli", *argv]  # with the progress bar: it goes to stderr
    root = str(Path(cli.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = json.loads(process.stdout.readline())
        assert first["frame_index"] == 0 and process.poll() is None  # the run waits for the server
        server.resume.set()
        rest, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    answered = [first, *map(json.loads, rest.splitlines())]
    assert [line["frame_index"] for line in answered] == list(range(CLIP_FRAMES))
    assert all(set(line) == {"frame_index", "timestamp", "dropped", "detections"} for line in answered)
    assert f"sltnet-run: {CLIP_FRAMES} frames" in stderr and "backend: " in stderr


@pytest.mark.timeout(120)
def test_jsonl_into_a_named_pipe_is_read_as_it_is_written(tmp_path, engine):
    clip = write_clip(tmp_path / "clip.mp4", num_frames=6)
    expected_lines, _ = file_run(tmp_path, engine, clip)
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.extend(fifo.read_text().splitlines()))
    reader.start()
    assert cli.main(run_argv(clip, engine, "--jsonl", fifo)) == 0
    reader.join(timeout=60)
    assert [json.loads(line) for line in received] == expected_lines
    assert stat.S_ISFIFO(fifo.stat().st_mode) and temporaries(tmp_path) == []


@pytest.mark.timeout(120)
def test_draw_thresh_selects_what_is_drawn_and_leaves_the_detections_alone(tmp_path, engine, monkeypatch):
    clip = write_clip(tmp_path / "clip.mp4", num_frames=8)
    detections_to_draw, drawn = draw.detections_to_draw, []

    def counting(result, score_thresh):
        chosen = detections_to_draw(result, score_thresh)
        drawn.append((result.scores.tolist(), [score for _, score, _ in chosen], score_thresh))
        return chosen

    monkeypatch.setattr(draw, "detections_to_draw", counting)

    def run(name, *extra):
        """(COCO results, (drawn scores, threshold) per frame) of a run."""
        drawn.clear()
        dets = tmp_path / f"{name}.json"
        assert cli.main(run_argv(clip, engine, "--out", tmp_path / f"{name}.mp4", "--json", dets, *extra)) == 0
        assert len(drawn) == 8
        for scores, chosen, thresh in drawn:
            assert chosen == [score for score in scores if score >= thresh]
        return json.loads(dets.read_text()), [(chosen, thresh) for _, chosen, thresh in drawn]

    dets, by_default = run("default")
    assert {thresh for _, thresh in by_default} == {draw.DEFAULT_DRAW_THRESH}  # below the export's 0.7: all
    assert sum(len(chosen) for chosen, _ in by_default) == len(dets) > 0
    median = sorted(d["score"] for d in dets)[len(dets) // 2]  # about half the detections score below it
    median_dets, by_median = run("median", "--draw-thresh", str(median))
    assert median_dets == dets and {thresh for _, thresh in by_median} == {median}
    assert 0 < sum(len(chosen) for chosen, _ in by_median) < len(dets)


# ------------------------------------------------------------------------------------------------
# --realtime
# ------------------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_realtime_drops_the_frames_a_slow_inference_has_no_time_for(tmp_path, engine, monkeypatch, capsys):
    """Each push waits until the source has dropped a frame (a backend slower than the source,
    without timing): every processed frame has one result, and processed + dropped = the clip."""
    clip = write_clip(tmp_path / "clip.mp4", num_frames=20, fps=50)
    sources = []

    class Recorded(VideoSource):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            sources.append(self)

    class Slow(StreamingRuntime):
        def push(self, image):
            dropped, deadline = sources[0].dropped, time.monotonic() + 1.0  # the last frames drop nothing
            while sources[0].dropped == dropped and time.monotonic() < deadline:
                time.sleep(0.002)
            return super().push(image)

    monkeypatch.setattr(cli, "VideoSource", Recorded)
    monkeypatch.setattr(cli, "StreamingRuntime", Slow)
    lines, dets = tmp_path / "rt.jsonl", tmp_path / "rt.json"
    assert cli.main(run_argv(clip, engine, "--realtime", "--jsonl", lines, "--json", dets)) == 0
    answered, dropped = jsonl(lines), sources[0].dropped
    assert dropped > 0 and len(answered) + dropped == 20
    indices = [line["frame_index"] for line in answered]
    assert indices == sorted(set(indices)) and set(indices) <= set(range(20))
    assert [line["dropped"] for line in answered] == [index - n for n, index in enumerate(indices)]
    assert {d["frame_index"] for d in json.loads(dets.read_text())} <= set(indices)
    assert f"sltnet-run: {len(answered)} frames" in capsys.readouterr().out


def test_realtime_plays_a_file_at_the_pace_of_its_timestamps(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", num_frames=10, fps=20)
    source = VideoSource(str(clip), options=SourceOptions(realtime=True))
    arrivals = []
    try:
        for frame in source:
            arrivals.append((time.monotonic(), frame.timestamp))
    finally:
        source.close()
    assert len(arrivals) + source.dropped == 10
    (first, first_time), (last, last_time) = arrivals[0], arrivals[-1]
    # the pacing waits until each frame's time has come: never earlier (10 ms for clock granularity)
    assert last - first >= last_time - first_time - 0.01 and last_time - first_time > 0


# ------------------------------------------------------------------------------------------------
# Bad sources, cameras, frame sizes
# ------------------------------------------------------------------------------------------------
def closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    ("source", "extra", "message"),
    [
        (f"http://127.0.0.1:{closed_port()}/clip.mp4", [], r"clip.mp4: cannot open \(Connection refused\)"),
        ("/dev/null", [], r"/dev/null: cannot open \(Inappropriate ioctl for device\)"),
        ("/dev/video-none", [], "/dev/video-none: not found"),
        ("/dev/video-none", ["--input-format", "no-such-format"], "--input-format no-such-format: not an input"),
    ],
)
def test_a_source_that_cannot_be_opened_gives_one_line_and_status_2(tmp_path, engine, source, extra, message, capsys):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    argv = run_argv(source, engine, "--out", outputs / "out.mp4", "--jsonl", outputs / "dets.jsonl", *extra)
    assert cli.main([*argv, "--reconnect", "3"]) == 2
    assert re.search(message, one_error_line(capsys))
    assert list(outputs.iterdir()) == []


def takes_frames_of(engine, size):
    """Whether the runtime takes frames of ``size`` (H, W) from this export."""
    manifest = Manifest.load(engine)
    runtime = StreamingRuntime(manifest, open_backend("onnxruntime", engine, manifest))
    try:
        runtime.push(torch.zeros(3, *size, dtype=torch.uint8))
    except SltnetError:
        return False
    return True


CAMERAS = sorted(path for path in glob.glob("/dev/video*") if stat.S_ISCHR(os.stat(path).st_mode))


@pytest.mark.skipif(not CAMERAS, reason="no V4L2 camera (/dev/video*) on this machine")
@pytest.mark.timeout(120)
def test_a_camera_gives_one_line_per_frame(tmp_path, engine):
    source = VideoSource(CAMERAS[0], max_frames=1)
    size = (source.height, source.width)
    source.close()
    if not takes_frames_of(engine, size):
        pytest.skip(f"the runtime does not take {size[1]}x{size[0]} frames from a {FRAME_SIZE} export")
    lines = tmp_path / "camera.jsonl"
    assert cli.main(run_argv(CAMERAS[0], engine, "--max-frames", "3", "--jsonl", lines, "--realtime")) == 0
    answered = jsonl(lines)
    assert 0 < len(answered) <= 3 and [line["frame_index"] for line in answered] == sorted(
        {line["frame_index"] for line in answered}
    )


@pytest.mark.timeout(120)
def test_the_annotated_video_has_the_source_s_size(tmp_path, engine):
    size = (96, 160)
    if not takes_frames_of(engine, size):
        pytest.skip(f"the runtime does not take {size[1]}x{size[0]} frames from a {FRAME_SIZE} export")
    frames = [frame.permute(1, 2, 0).numpy() for frame in video(size, num_frames=4)]
    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    out, dets = tmp_path / "out.mp4", tmp_path / "dets.json"
    assert cli.main(run_argv(clip, engine, "--out", out, "--json", dets)) == 0
    assert decoded_frames(out) == [((3, *size), index) for index in range(4)]
    for detection in json.loads(dets.read_text()):
        x, y, w, h = detection["bbox"]
        assert -1e-3 <= x <= x + w <= size[1] + 1e-3 and -1e-3 <= y <= y + h <= size[0] + 1e-3
