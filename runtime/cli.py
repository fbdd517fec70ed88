"""``sltnet-run``: detect objects in a video with an exported engine pair.

    sltnet-run VIDEO [--engine DIR] [--backend auto|tensorrt|onnxruntime|torch] [--out OUT.mp4]
               [--json DETS.json] [--score-thresh T] [--max-frames N] [--gt-json GT.json [--gt-video NAME]]

VIDEO is anything FFmpeg reads, or a folder of image files (sorted by name). Its frames must have
the export's input size: the frame engine resizes inside, so a host-side resize in front would
resize twice; other sizes are refused with the ``sltnet-export --input-size H W`` to use.
Outputs are written under temporary names and renamed once complete.
"""

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from runtime.detector import StreamingRuntime
from runtime.draw import annotate
from runtime.engines import BACKENDS, open_backend
from runtime.video import VideoSource, VideoWriter
from sltnet.atomic_io import atomic_write_text
from sltnet.cli import ArgumentParser, console_entry
from sltnet.contract import FrameResult, Manifest
from sltnet.errors import SltnetError

DEFAULT_ENGINE = "./output/engines/small_sltnet_sequential"
FPS_SMOOTHING = 0.9  # weight of the past in the overlay's moving average


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
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate of a folder of images (default 25)")
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


@console_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_frames is not None and args.max_frames < 1:
        raise SltnetError(f"--max-frames {args.max_frames}: must be at least 1")
    _check_writable("--out", args.out)
    _check_writable("--json", args.json)
    manifest = Manifest.load(args.engine)
    source = VideoSource(args.video, args.max_frames, args.fps)
    writer = None
    try:
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
        if args.out:
            writer = VideoWriter(args.out, width, height, source.fps)
        detections: list[dict] = []
        waiting: dict[int, tuple] = {}  # frames decoded but not answered yet (symmetric latency)
        fps = None
        start = last = time.perf_counter()
        num_frames = 0

        def emit(results: list[FrameResult]) -> None:
            for result in results:
                image, timestamp = waiting.pop(result.frame_index)
                if image_ids is not None and result.frame_index >= len(image_ids):
                    raise SltnetError(
                        f"--gt-json {args.gt_json}: the video has more frames than its {len(image_ids)} images"
                    )
                image_id = image_ids[result.frame_index] if image_ids is not None else result.frame_index
                detections.extend(coco_results(result, timestamp, image_id, manifest))
                if writer is not None:
                    writer.write(annotate(image.permute(1, 2, 0).numpy(), result, manifest.classes, fps))

        with tqdm(total=source.num_frames, unit="frame", disable=args.no_progress, desc="sltnet-run") as bar:
            for frame in source:
                waiting[frame.index] = (frame.image, frame.timestamp)
                emit(runtime.push(frame.image))
                num_frames += 1
                now = time.perf_counter()
                rate = 1.0 / max(now - last, 1e-9)
                fps = rate if fps is None else FPS_SMOOTHING * fps + (1 - FPS_SMOOTHING) * rate
                last = now
                bar.set_postfix(fps=f"{fps:.1f}")
                bar.update(1)
            emit(runtime.flush())
        if num_frames == 0:
            raise SltnetError(f"{args.video}: no frames decoded")
        elapsed = time.perf_counter() - start
        if writer is not None:
            writer.close()
            writer = None
        if args.json:
            atomic_write_text(args.json, json.dumps(detections) + "\n")
    finally:
        source.close()
        if writer is not None:
            writer.abort()
    outputs = ", ".join(p for p in (args.out, args.json) if p) or "none"
    print(
        f"sltnet-run: {num_frames} frames in {elapsed:.2f} s ({num_frames / elapsed:.1f} fps), "
        f"{len(detections)} detections, backend {backend.description}; outputs: {outputs}",
        flush=True,
    )
    return 0
