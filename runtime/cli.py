"""``sltnet-run``: detect objects in videos, cameras or network streams with an exported engine pair.

    sltnet-run SOURCE [SOURCE ...] [--engine DIR] [--backend auto|tensorrt|onnxruntime|torch]
               [--out OUT.mp4 | --out-dir DIR] [--json DETS.json] [--jsonl PATH|-] [--score-thresh T]
               [--draw-thresh T] [--max-frames N] [--realtime] [--timeout S] [--reconnect N [--reconnect-delay S]]
               [--input-format FMT] [--input-option KEY=VALUE ...] [--gt-json GT.json [--gt-video NAME]]

SOURCE is a video file, a folder of image files (sorted by name), a camera (/dev/video0) or a URL
FFmpeg opens (rtsp://, http://, https://, an HLS playlist, ...); frames of any size are handed to
the runtime as they are and the annotated video has the source's size (docs/runtime.md#sources).
Several sources run at once on one pair of engines, each its own stream of a
:class:`~runtime.multistream.MultiStreamRuntime`, read by its own thread and fed as its frames
arrive; ``--out-dir`` takes their annotated videos and every ``--json`` / ``--jsonl`` record names
its source (docs/runtime.md#several-sources). Outputs are written under temporary names and renamed
once complete (an error or an interruption removes them); an output is never one of the inputs or
another output. Nothing is kept per frame: the detections are streamed into the JSON and the JSON
lines as they come. Exit status: 0, 2 for bad input, 3 when a camera or stream was lost for good
(the outputs then hold the frames processed; the other sources go on to their end), 130/143 when
interrupted.
"""

import argparse
import json
import math
import os
import re
import stat
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from torch import Tensor
from tqdm import tqdm

from runtime.detector import StreamingRuntime
from runtime.draw import DEFAULT_DRAW_THRESH, annotate
from runtime.engines import BACKENDS, open_backend
from runtime.multistream import MultiStreamRuntime, StreamResult
from runtime.video import (
    DEFAULT_TIMEOUT,
    MAX_RECONNECT_DELAY,
    POLL_INTERVAL,
    DecodedFrame,
    SourceOptions,
    VideoSource,
    VideoWriter,
    is_url,
)
from sltnet.atomic_io import atomic_output, check_outputs
from sltnet.cli import ArgumentParser, console_entry
from sltnet.contract import FrameResult, Manifest
from sltnet.errors import SltnetError

DEFAULT_ENGINE = "./output/engines/small_sltnet_sequential"
FPS_SMOOTHING = 0.9  # weight of the past in the overlay's moving average
MAX_FPS = 1000.0  # the highest --fps of a folder of images
EXIT_SOURCE_LOST = 3  # a camera or stream was lost for good; the outputs hold the frames processed
Tag = dict[str, int | str]  # {"stream": index, "source": SOURCE}: what a record of several sources starts with


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="sltnet-run",
        description="Detect objects in videos, cameras or streams with exported SLTnet engines.",
    )
    parser.add_argument(
        "sources",
        metavar="SOURCE",
        nargs="+",
        help="a video file, a folder of images, a camera (/dev/video0) or a URL FFmpeg opens (rtsp, http, hls, ...); "
        "several run at once on the same engines",
    )
    parser.add_argument(
        "--engine", metavar="DIR", default=DEFAULT_ENGINE, help=f"export folder (default {DEFAULT_ENGINE})"
    )
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="default auto: the fastest available")
    parser.add_argument(
        "--out", metavar="OUT.mp4", help="write the annotated video (at the source's size); one SOURCE only"
    )
    parser.add_argument(
        "--out-dir", metavar="DIR", help="write each SOURCE's annotated video to DIR/NAME.mp4 (NAME: its file stem)"
    )
    parser.add_argument(
        "--json", metavar="DETS.json", help="write the detections (COCO results + frame index, timestamp)"
    )
    parser.add_argument(
        "--jsonl",
        metavar="PATH|-",
        help="one JSON line per frame as soon as it is known; - is stdout (messages then go to stderr)",
    )
    parser.add_argument(
        "--score-thresh", type=float, metavar="T", help="keep detections scoring >= T (default: the export's)"
    )
    parser.add_argument(
        "--draw-thresh",
        type=float,
        metavar="T",
        default=DEFAULT_DRAW_THRESH,
        help=f"draw detections scoring >= T in --out (default {DEFAULT_DRAW_THRESH:g}); the JSON keeps all",
    )
    parser.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames of the source")
    parser.add_argument(
        "--fps", type=float, default=25.0, help=f"frame rate of a folder of images (default 25, at most {MAX_FPS:g})"
    )
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="never fall behind: drop the frames inference has no time for (files play at their own pace)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        default=DEFAULT_TIMEOUT,
        help=f"give up an open or a read that gets no data for S seconds (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--reconnect",
        type=int,
        metavar="N",
        default=0,
        help="reopen a lost camera or stream up to N times in a row, with exponential backoff (default 0)",
    )
    parser.add_argument(
        "--reconnect-delay",
        type=float,
        metavar="S",
        default=1.0,
        help=f"seconds before the first reconnection, doubled for each next one up to {MAX_RECONNECT_DELAY:g}",
    )
    parser.add_argument("--input-format", metavar="FMT", help="FFmpeg input format (v4l2, avfoundation, mpegts, ...)")
    parser.add_argument(
        "--input-option",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="an FFmpeg option of the input (video_size=1280x720, rtsp_transport=tcp, ...); repeatable",
    )
    parser.add_argument(
        "--gt-json",
        metavar="GT.json",
        help="ST-COCO ground truth of this video: the JSON's image_id becomes the frame's id there (for sltnet-eval)",
    )
    parser.add_argument(
        "--gt-video",
        metavar="NAME",
        help="the video's name in --gt-json (default: SOURCE's file stem); one SOURCE only",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _check_writable(option: str, path: str | None) -> None:
    """Fail before any work if ``path``'s folder cannot take a new file."""
    if path is None:
        return
    folder = Path(path).parent
    if not folder.is_dir():
        raise SltnetError(f"{option} {path}: folder {folder} does not exist")
    if Path(path).is_dir():
        raise SltnetError(f"{option} {path}: is a folder")
    if not os.access(folder, os.W_OK):
        raise SltnetError(f"{option} {path}: folder {folder} is not writable")


def gt_image_ids(gt_json: str, video_name: str) -> list[int]:
    """Image ids of ``video_name``'s frames in an ST-COCO JSON, in frame order.

    Raises:
        SltnetError: unreadable JSON, or no such video.
    """
    try:
        images = json.loads(Path(gt_json).read_text(encoding="utf-8"))["images"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SltnetError(f"--gt-json {gt_json}: not a readable ST-COCO file ({err})") from None
    frames = sorted((image["frame_number"], image["id"]) for image in images if image.get("video") == video_name)
    if not frames:
        raise SltnetError(f"--gt-json {gt_json}: no images of video {video_name!r} (pass --gt-video NAME)")
    return [image_id for _, image_id in frames]


def detection_entries(result: FrameResult, manifest: Manifest) -> list[dict]:
    """One entry per detection: category id and name, box [x, y, w, h] in frame pixels, score."""
    entries = []
    for (x1, y1, x2, y2), score, label in zip(result.boxes.tolist(), result.scores.tolist(), result.classes.tolist()):
        entries.append(
            {
                "category_id": manifest.category_ids[label],
                "category_name": manifest.classes[label],
                "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                "score": round(score, 6),
            }
        )
    return entries


def coco_results(entries: list[dict], frame: DecodedFrame, image_id: int, tag: Tag | None = None) -> list[dict]:
    """The COCO results of one frame: its detection entries with the image id, frame index and
    timestamp (and, of several sources, the ``tag`` first)."""
    where = {**(tag or {}), "image_id": image_id, "frame_index": frame.index, "timestamp": round(frame.timestamp, 6)}
    return [{**where, **entry} for entry in entries]


def frame_line(
    entries: list[dict], frame: DecodedFrame, dropped: int, image_id: int | None, tag: Tag | None = None
) -> str:
    """The JSON line of one frame: (of several sources, the ``tag``,) index and timestamp in the
    source, frames dropped before it (--realtime), the ST-COCO image id (--gt-json) and its detections."""
    line: dict = {**(tag or {}), "frame_index": frame.index, "timestamp": round(frame.timestamp, 6), "dropped": dropped}
    if image_id is not None:
        line["image_id"] = image_id
    line["detections"] = entries
    return json.dumps(line) + "\n"


class ResultsArray:
    """The COCO results array streamed into ``stream`` one entry at a time (nothing kept per frame).

    Writes what ``json.dumps(entries) + "\\n"`` of all the entries would, once :meth:`end` is called.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self.count = 0
        stream.write("[")

    def extend(self, entries: Iterable[dict]) -> None:
        for entry in entries:
            self._stream.write((", " if self.count else "") + json.dumps(entry))
            self.count += 1

    def end(self) -> None:
        self._stream.write("]\n")


def check_options(args: argparse.Namespace) -> SourceOptions:
    """Every option in its range, before any work.

    Returns:
        how the source is to be opened and read.
    Raises:
        SltnetError: one line naming the option and the value.
    """
    several = len(args.sources) > 1
    if args.out is not None and args.out_dir is not None:
        raise SltnetError("--out and --out-dir: give one of them")
    if args.out is not None and several:
        raise SltnetError(
            f"--out {args.out}: takes one SOURCE ({len(args.sources)} given); write each one's video with --out-dir DIR"
        )
    if args.gt_video is not None and several:
        raise SltnetError(
            f"--gt-video {args.gt_video}: takes one SOURCE ({len(args.sources)} given); "
            "each source's video in --gt-json is its file stem"
        )
    if args.max_frames is not None and args.max_frames < 1:
        raise SltnetError(f"--max-frames {args.max_frames}: must be at least 1")
    if not 0 < args.fps <= MAX_FPS:
        raise SltnetError(f"--fps {args.fps}: must be more than 0 and at most {MAX_FPS} frames per second")
    for option, value in (("--score-thresh", args.score_thresh), ("--draw-thresh", args.draw_thresh)):
        if value is not None and not 0 <= value <= 1:
            raise SltnetError(f"{option} {value}: must be between 0 and 1")
    if not 0 < args.timeout < math.inf:
        raise SltnetError(f"--timeout {args.timeout}: must be a positive number of seconds")
    if args.reconnect < 0:
        raise SltnetError(f"--reconnect {args.reconnect}: must be at least 0")
    if not 0 <= args.reconnect_delay <= MAX_RECONNECT_DELAY:
        raise SltnetError(f"--reconnect-delay {args.reconnect_delay}: must be between 0 and {MAX_RECONNECT_DELAY:g} s")
    input_options = {}
    for option in args.input_option:
        key, equals, value = option.partition("=")
        if not key or not equals:
            raise SltnetError(f"--input-option {option!r}: must be KEY=VALUE")
        input_options[key] = value
    return SourceOptions(
        timeout=args.timeout,
        reconnect=args.reconnect,
        reconnect_delay=args.reconnect_delay,
        realtime=args.realtime,
        input_format=args.input_format,
        input_options=input_options,
    )


def output_names(sources: Sequence[str]) -> list[str]:
    """Each SOURCE's NAME in ``--out-dir``: its file stem (of a URL, its path's, else its host's),
    with ``_<stream index>`` appended where two sources have the same stem."""
    stems = []
    for source in sources:
        if is_url(source):
            parts = urlsplit(source)
            stem = Path(parts.path).stem or parts.hostname or ""
        else:
            stem = Path(source).stem
        stems.append(re.sub(r"[^\w.-]", "_", stem).lstrip(".") or "source")  # never a hidden file
    counts = Counter(stems)
    return [stem if counts[stem] == 1 else f"{stem}_{index}" for index, stem in enumerate(stems)]


def video_outputs(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """(what names it, path or None) of each SOURCE's annotated video, in SOURCE order."""
    if args.out_dir is None:
        return [("--out", args.out if index == 0 else None) for index in range(len(args.sources))]
    return [
        (f"--out-dir's {name}.mp4", os.path.join(args.out_dir, f"{name}.mp4")) for name in output_names(args.sources)
    ]


def _is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def check_paths(args: argparse.Namespace, videos: Sequence[tuple[str, str | None]]) -> None:
    """Refuse an output that is an input (a SOURCE, a frame of a folder, --gt-json, a file of the
    engine folder; links resolved) or another output, and an output folder that cannot be written.

    Args:
        videos: :func:`video_outputs`.
    Raises:
        SltnetError: one line naming both paths.
    """
    inputs: dict[str, str | None] = {"--gt-json": args.gt_json}
    folders = {"--engine": args.engine}
    for source in args.sources:
        option = "SOURCE" if len(args.sources) == 1 else f"SOURCE {source}"
        inputs[option] = None if is_url(source) else source
        folders[option] = source
    for option, folder in folders.items():
        if os.path.isdir(folder):
            inputs.update({f"{option}'s {file.name}": str(file) for file in sorted(Path(folder).iterdir())})
    jsonl = None if args.jsonl == "-" else args.jsonl
    named_videos = {name: path for name, path in videos if path is not None}
    check_outputs(inputs, {**named_videos, "--json": args.json, "--jsonl": jsonl})
    if args.out_dir is not None:
        if not os.path.isdir(args.out_dir):
            raise SltnetError(f"--out-dir {args.out_dir}: not a folder")
        if not os.access(args.out_dir, os.W_OK):
            raise SltnetError(f"--out-dir {args.out_dir}: folder is not writable")
    _check_writable("--out", args.out)
    _check_writable("--json", args.json)
    if jsonl is not None and not _is_fifo(jsonl):
        _check_writable("--jsonl", jsonl)


class JsonLines:
    """``--jsonl``: one line per frame, flushed at once so that a reader sees it live.

    ``-`` is stdout. A named pipe (FIFO) is written directly (opening it waits for its reader); any
    other path is written like every output, under a temporary name renamed once complete.
    """

    def __init__(self, path: str, stack: ExitStack) -> None:
        self.path = path
        if path == "-":
            self._stream: IO[str] = sys.stdout
        elif _is_fifo(path):
            self._stream = stack.enter_context(open(path, "w", encoding="utf-8"))
        else:
            self._stream = stack.enter_context(atomic_output(path, "w"))

    def write(self, line: str) -> None:
        """Write one line and flush it.

        Raises:
            SltnetError: the reader of stdout or of the pipe went away.
        """
        try:
            self._stream.write(line)
            self._stream.flush()
        except BrokenPipeError:
            if self.path == "-":  # nothing more can reach stdout: no second error at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SltnetError(f"--jsonl {self.path}: the reader closed the pipe") from None


class FrameRate:
    """Frames per second, a moving average over the gaps between :meth:`tick` calls."""

    def __init__(self) -> None:
        self.fps: float | None = None
        self._last = time.perf_counter()

    def tick(self) -> None:
        now = time.perf_counter()
        rate = 1.0 / max(now - self._last, 1e-9)
        self.fps = rate if self.fps is None else FPS_SMOOTHING * self.fps + (1 - FPS_SMOOTHING) * rate
        self._last = now


@dataclass
class Stream:
    """One SOURCE's run: its reader, its annotated video and its counts.

    Attributes:
        index: its stream in the runtime (its place among the SOURCEs).
        frames: frames pushed so far.
        waiting: frames pushed but not answered yet (symmetric latency), by push number, with the
            number of frames dropped before each (--realtime): dropped frames are absent from the window.
        tag: what its JSON records start with when there are several sources (None for one).
    """

    index: int
    path: str
    source: VideoSource
    image_ids: list[int] | None
    writer: VideoWriter | None = None
    tag: Tag | None = None
    waiting: dict[int, tuple[DecodedFrame, int]] = field(default_factory=dict)
    frames: int = 0
    detections: int = 0
    rate: FrameRate = field(default_factory=FrameRate)

    def take(self, frame: DecodedFrame) -> None:
        """Count ``frame`` as pushed; it waits for its result."""
        self.waiting[self.frames] = (frame, frame.index - self.frames)
        self.frames += 1

    def details(self, realtime: bool) -> str:
        """``, N dropped`` (--realtime) and ``, N reconnection(s)`` where there were any."""
        count = self.source.reconnections
        dropped = f", {self.source.dropped} dropped" if realtime else ""
        return dropped + (f", {count} reconnection{'s' if count > 1 else ''}" if count else "")


class OneStream:
    """A :class:`StreamingRuntime` answering as a :class:`MultiStreamRuntime` of one stream: one
    source runs on the single-stream runtime, as it always has."""

    def __init__(self, runtime: StreamingRuntime) -> None:
        self.runtime = runtime

    def push(self, stream_id: int, image: Tensor) -> list[StreamResult]:
        return [StreamResult(stream_id, result) for result in self.runtime.push(image)]

    def run_ready(self) -> list[StreamResult]:
        return []  # every push runs at once

    def flush(self, stream_id: int) -> list[StreamResult]:
        return [StreamResult(stream_id, result) for result in self.runtime.flush()]


def feed(
    runtime: MultiStreamRuntime | OneStream,
    streams: Sequence[Stream],
    wake: threading.Event,
    answer: Callable[[list[StreamResult]], None],
    pushed: Callable[[Stream], None],
) -> None:
    """Push every stream's frames as they arrive, taking at most one frame of each in turn, until
    every source has ended; a source that ends (or is lost) is flushed at once while the others go on.
    When no source has a new frame, the frames waiting for a batch run at once (latency first), then
    the loop waits for any reader's ``wake``.

    Args:
        answer: called with the results of each runtime call.
        pushed: called after each push with the stream pushed to.
    Raises:
        SltnetError: a source failed part-way, or ended without giving a frame.
    """
    active = list(streams)
    while active:
        wake.clear()  # before the polls: a frame arriving after its source's poll sets it again
        fed = False
        for stream in list(active):
            frame = stream.source.poll()
            if frame is not None:
                stream.take(frame)
                answer(runtime.push(stream.index, frame.image))
                pushed(stream)
                fed = True
            elif stream.source.ended:
                if stream.frames == 0:
                    lost = f" ({stream.source.lost})" if stream.source.lost else ""
                    raise SltnetError(f"{stream.path}: no frames decoded{lost}")
                active.remove(stream)
                answer(runtime.flush(stream.index))
        if active and not fed:
            answer(runtime.run_ready())
            wake.wait(POLL_INTERVAL)


@console_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # SOURCEs may come before and after options
    options = check_options(args)
    videos = video_outputs(args)
    check_paths(args, videos)
    manifest = Manifest.load(args.engine)
    several = len(args.sources) > 1
    say = partial(print, file=sys.stderr if args.jsonl == "-" else sys.stdout, flush=True)  # stdout: JSON lines
    with ExitStack() as stack:
        log = partial(tqdm.write, file=sys.stderr)  # reconnection lines, above the progress bar
        wake = threading.Event()  # set by every reader: a frame, an error or the end is there
        streams = []
        for index, path in enumerate(args.sources):
            source = VideoSource(path, args.max_frames, args.fps, options=options, log=log, wake=wake)
            stack.callback(source.close)
            tag: Tag | None = {"stream": index, "source": path} if several else None
            streams.append(Stream(index, path, source, None, tag=tag))
        if args.gt_json:
            for stream in streams:
                stream.image_ids = gt_image_ids(args.gt_json, args.gt_video or Path(stream.path).stem)
        backend = open_backend(args.backend, args.engine, manifest)
        say(f"backend: {backend.description}")
        runtime: MultiStreamRuntime | OneStream
        if several:
            runtime = MultiStreamRuntime(manifest, backend, len(streams), args.score_thresh)
        else:
            runtime = OneStream(StreamingRuntime(manifest, backend, args.score_thresh))
        for stream, (_, video) in zip(streams, videos):
            if video is not None:
                stream.writer = VideoWriter(video, stream.source.width, stream.source.height, stream.source.fps)
                stack.callback(stream.writer.abort)  # does nothing once close() named the file
        results = ResultsArray(stack.enter_context(atomic_output(args.json, "w"))) if args.json else None
        lines = JsonLines(args.jsonl, stack) if args.jsonl else None

        def answer(answered: list[StreamResult]) -> None:
            for stream_id, result in answered:
                stream = streams[stream_id]
                frame, dropped = stream.waiting.pop(result.frame_index)
                stream.detections += len(result.scores)
                image_id = frame.index
                if stream.image_ids is not None:
                    if frame.index >= len(stream.image_ids):
                        raise SltnetError(
                            f"--gt-json {args.gt_json}: {stream.path} has more frames than its "
                            f"{len(stream.image_ids)} images"
                        )
                    image_id = stream.image_ids[frame.index]
                if results is not None or lines is not None:
                    entries = detection_entries(result, manifest)
                    if results is not None:
                        results.extend(coco_results(entries, frame, image_id, stream.tag))
                    if lines is not None:
                        gt_id = image_id if stream.image_ids is not None else None
                        lines.write(frame_line(entries, frame, dropped, gt_id, stream.tag))
                if stream.writer is not None:
                    image = frame.image.permute(1, 2, 0).numpy()
                    stream.writer.write(annotate(image, result, manifest.classes, stream.rate.fps, args.draw_thresh))

        declared = [stream.source.num_frames for stream in streams]
        total = None if args.realtime or None in declared else sum(n for n in declared if n is not None)
        start = time.perf_counter()
        overall = FrameRate()
        with tqdm(total=total, unit="frame", disable=args.no_progress, desc="sltnet-run", file=sys.stderr) as bar:

            def pushed(stream: Stream) -> None:
                stream.rate.tick()
                overall.tick()
                postfix = {"dropped": sum(s.source.dropped for s in streams)} if args.realtime else {}
                bar.set_postfix(
                    fps=f"{overall.fps:.1f}", **postfix, refresh=False
                )  # drawn by update, 10 times a second
                bar.update(1)

            feed(runtime, streams, wake, answer, pushed)
        elapsed = time.perf_counter() - start
        for stream in streams:
            if stream.writer is not None:
                stream.writer.close()
        if results is not None:
            results.end()
    # Leaving the block renamed the JSON files into place; any error or interruption removed every output.
    for stream in streams:
        if stream.source.lost:
            print(
                f"sltnet-run: {stream.path}: lost ({stream.source.lost}); "
                f"the outputs hold the {stream.frames} frames processed",
                file=sys.stderr,
                flush=True,
            )
    jsonl = "stdout" if args.jsonl == "-" else args.jsonl
    outputs = ", ".join(p for p in (*(video for _, video in videos), args.json, jsonl) if p)
    num_frames = sum(stream.frames for stream in streams)
    num_detections = sum(stream.detections for stream in streams)
    fps = f"{num_frames / elapsed:.1f} fps"
    if several:
        for stream in streams:
            say(
                f"sltnet-run: {stream.path}: {stream.frames} frames{stream.details(args.realtime)}, "
                f"{stream.detections} detections"
            )
        say(
            f"sltnet-run: {len(streams)} sources, {num_frames} frames in {elapsed:.2f} s ({fps}), "
            f"{num_detections} detections, backend {backend.description}; outputs: {outputs or 'none'}"
        )
    else:
        say(
            f"sltnet-run: {num_frames} frames in {elapsed:.2f} s ({fps}){streams[0].details(args.realtime)}, "
            f"{num_detections} detections, backend {backend.description}; outputs: {outputs or 'none'}"
        )
    return EXIT_SOURCE_LOST if any(stream.source.lost for stream in streams) else 0


if __name__ == "__main__":
    raise SystemExit(main())
