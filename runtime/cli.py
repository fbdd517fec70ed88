"""``sltnet-run``: detect objects in a video with an exported engine pair.

    sltnet-run VIDEO [--engine DIR] [--backend auto|tensorrt|onnxruntime|torch] [--out OUT.mp4]
               [--json DETS.json] [--score-thresh T] [--max-frames N] [--gt-json GT.json [--gt-video NAME]]

VIDEO is anything FFmpeg reads, or a folder of image files (sorted by name). Its frames must have
the export's input size: the frame engine resizes inside, so a host-side resize in front would
resize twice; other sizes are refused with the ``sltnet-export --input-size H W`` to use.
Outputs are written under temporary names and renamed once complete (an error or an interruption
removes them); an output is never one of the inputs or the other output. Nothing is kept per frame:
the detections are streamed into the JSON as they come.
"""

import argparse
import json
import os
import time
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import IO

from tqdm import tqdm

from runtime.detector import StreamingRuntime
from runtime.draw import annotate
from runtime.engines import BACKENDS, open_backend
from runtime.video import DecodedFrame, VideoSource, VideoWriter
from sltnet.atomic_io import atomic_output, check_outputs
from sltnet.cli import ArgumentParser, console_entry
from sltnet.contract import FrameResult, Manifest
from sltnet.errors import SltnetError

DEFAULT_ENGINE = "./output/engines/small_sltnet_sequential"
FPS_SMOOTHING = 0.9  # weight of the past in the overlay's moving average
MAX_FPS = 1000.0  # the highest --fps of a folder of images


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="sltnet-run", description="Detect objects in a video with exported SLTnet engines.")
    parser.add_argument("video", metavar="VIDEO", help="a video file (anything FFmpeg reads) or a folder of images")
    parser.add_argument(
        "--engine", metavar="DIR", default=DEFAULT_ENGINE, help=f"export folder (default {DEFAULT_ENGINE})"
    )
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="default auto: the fastest available")
    parser.add_argument("--out", metavar="OUT.mp4", help="write the annotated video")
    parser.add_argument(
        "--json", metavar="DETS.json", help="write the detections (COCO results + frame index, timestamp)"
    )
    parser.add_argument(
        "--score-thresh", type=float, metavar="T", help="keep detections scoring >= T (default: the export's)"
    )
    parser.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    parser.add_argument(
        "--fps", type=float, default=25.0, help=f"frame rate of a folder of images (default 25, at most {MAX_FPS:g})"
    )
    parser.add_argument(
        "--gt-json",
        metavar="GT.json",
        help="ST-COCO ground truth of this video: the JSON's image_id becomes the frame's id there (for sltnet-eval)",
    )
    parser.add_argument("--gt-video", metavar="NAME", help="the video's name in --gt-json (default: VIDEO's file stem)")
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


def coco_results(result: FrameResult, timestamp: float, image_id: int, manifest: Manifest) -> list[dict]:
    """One COCO result per detection, with the frame index, its timestamp and the class name."""
    entries = []
    for (x1, y1, x2, y2), score, label in zip(result.boxes.tolist(), result.scores.tolist(), result.classes.tolist()):
        entries.append(
            {
                "image_id": image_id,
                "frame_index": result.frame_index,
                "timestamp": round(timestamp, 6),
                "category_id": manifest.category_ids[label],
                "category_name": manifest.classes[label],
                "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                "score": round(score, 6),
            }
        )
    return entries


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


def check_options(args: argparse.Namespace) -> None:
    """Every numeric option in its range, before any work.

    Raises:
        SltnetError: one line naming the option and the value.
    """
    if args.max_frames is not None and args.max_frames < 1:
        raise SltnetError(f"--max-frames {args.max_frames}: must be at least 1")
    if not 0 < args.fps <= MAX_FPS:
        raise SltnetError(f"--fps {args.fps}: must be more than 0 and at most {MAX_FPS} frames per second")
    if args.score_thresh is not None and not 0 <= args.score_thresh <= 1:
        raise SltnetError(f"--score-thresh {args.score_thresh}: must be between 0 and 1")


def check_paths(args: argparse.Namespace) -> None:
    """Refuse an output that is an input (the video, a frame of a folder, --gt-json, a file of the
    engine folder; links resolved) or the other output, and an output folder that cannot be written.

    Raises:
        SltnetError: one line naming both paths.
    """
    inputs: dict[str, str | None] = {"VIDEO": args.video, "--gt-json": args.gt_json}
    for option, folder in (("VIDEO", args.video), ("--engine", args.engine)):
        if os.path.isdir(folder):
            inputs.update({f"{option}'s {file.name}": str(file) for file in sorted(Path(folder).iterdir())})
    check_outputs(inputs, {"--out": args.out, "--json": args.json})
    _check_writable("--out", args.out)
    _check_writable("--json", args.json)


@console_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_options(args)
    check_paths(args)
    manifest = Manifest.load(args.engine)
    with ExitStack() as stack:
        source = VideoSource(args.video, args.max_frames, args.fps)
        stack.callback(source.close)
        height, width = manifest.input.size
        if (source.height, source.width) != (height, width):
            raise SltnetError(
                f"{args.video}: frames are {source.width}x{source.height}, the engines in {args.engine} take "
                f"{width}x{height} (export for this video with sltnet-export --input-size "
                f"{source.height} {source.width})"
            )
        image_ids = gt_image_ids(args.gt_json, args.gt_video or Path(args.video).stem) if args.gt_json else None
        backend = open_backend(args.backend, args.engine, manifest)
        print(f"backend: {backend.description}", flush=True)
        runtime = StreamingRuntime(manifest, backend, args.score_thresh)
        writer = None
        if args.out:
            writer = VideoWriter(args.out, width, height, source.fps)
            stack.callback(writer.abort)  # does nothing once close() named the file
        results = ResultsArray(stack.enter_context(atomic_output(args.json, "w"))) if args.json else None
        waiting: dict[int, DecodedFrame] = {}  # frames decoded but not answered yet (symmetric latency)
        fps = None
        start = last = time.perf_counter()
        num_frames = num_detections = 0

        def emit(answered: list[FrameResult]) -> None:
            nonlocal num_detections
            for result in answered:
                frame = waiting.pop(result.frame_index)
                num_detections += len(result.scores)
                if image_ids is not None and result.frame_index >= len(image_ids):
                    raise SltnetError(
                        f"--gt-json {args.gt_json}: the video has more frames than its {len(image_ids)} images"
                    )
                if results is not None:
                    image_id = image_ids[result.frame_index] if image_ids is not None else result.frame_index
                    results.extend(coco_results(result, frame.timestamp, image_id, manifest))
                if writer is not None:
                    writer.write(annotate(frame.image.permute(1, 2, 0).numpy(), result, manifest.classes, fps))

        with tqdm(total=source.num_frames, unit="frame", disable=args.no_progress, desc="sltnet-run") as bar:
            for frame in source:
                waiting[frame.index] = frame
                emit(runtime.push(frame.image))
                num_frames += 1
                now = time.perf_counter()
                rate = 1.0 / max(now - last, 1e-9)
                fps = rate if fps is None else FPS_SMOOTHING * fps + (1 - FPS_SMOOTHING) * rate
                last = now
                bar.set_postfix(fps=f"{fps:.1f}", refresh=False)  # drawn by update, at most 10 times a second
                bar.update(1)
            emit(runtime.flush())
        if num_frames == 0:
            raise SltnetError(f"{args.video}: no frames decoded")
        elapsed = time.perf_counter() - start
        if writer is not None:
            writer.close()
        if results is not None:
            results.end()
    # Leaving the block renamed the JSON into place; any error or interruption removed both outputs.
    outputs = ", ".join(p for p in (args.out, args.json) if p) or "none"
    print(
        f"sltnet-run: {num_frames} frames in {elapsed:.2f} s ({num_frames / elapsed:.1f} fps), "
        f"{num_detections} detections, backend {backend.description}; outputs: {outputs}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
