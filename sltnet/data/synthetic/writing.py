"""Writing: a split of the benchmark on disk, JPEG frames (and mp4s) and its ST-COCO JSON.

Frames are JPEG (Pillow, fixed quality); the annotation JSON has sorted keys and is written last,
atomically.
"""

import dataclasses
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
from PIL import Image
from tqdm import tqdm

from sltnet import __version__
from sltnet.data.synthetic.rendering import frame_annotations, render_frame
from sltnet.data.synthetic.sampling import CLASS_PATTERNS, SynthOptions, sample_video, split_seed, video_name
from sltnet.errors import SltnetError

MIN_IMAGE_SIZE = 32
JPEG_QUALITY = 90


def frame_file_name(video: str, frame: int) -> str:
    """``file_name`` of a frame, relative to the split's image folder."""
    return f"{video}/{frame:06d}.jpg"


def write_mp4(frames: Iterable[np.ndarray], path: str, fps: int) -> None:
    """Encode [S, S, 3] uint8 RGB frames to an MPEG-4 part 2 mp4.

    MPEG-4 part 2 rather than H.264: libx264's bytes were seen to differ between runs on one machine
    when several videos were encoded at once, and the benchmark promises the same bytes for the same
    arguments. Bit-exact flags keep version strings and timestamps out.
    """
    codec_options = {"flags": "+bitexact", "threads": "1", "qscale": "3"}
    with av.open(path, "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = None
        for image in frames:
            if stream is None:
                stream = container.add_stream("mpeg4", rate=fps, options=codec_options)
                stream.height, stream.width = image.shape[:2]
                stream.pix_fmt = "yuv420p"
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        if stream is not None:
            container.mux(stream.encode())


@dataclass(frozen=True)
class _VideoTask:
    """One unit of parallel work: sample, render and write one video."""

    name: str
    seed: np.random.SeedSequence
    num_frames: int
    image_size: int
    options: SynthOptions
    image_dir: str
    mp4_path: str | None
    fps: int


def _write_video(task: _VideoTask) -> list[list[dict[str, Any]]]:
    """Write a video's JPEG frames (and mp4); return each frame's annotations."""
    spec = sample_video(task.name, task.seed, task.num_frames, task.image_size, task.options)
    os.makedirs(os.path.join(task.image_dir, spec.name))
    images = []
    for frame in range(spec.num_frames):
        image = render_frame(spec, frame)
        path = os.path.join(task.image_dir, frame_file_name(spec.name, frame))
        Image.fromarray(image).save(path, format="JPEG", quality=JPEG_QUALITY)
        if task.mp4_path is not None:
            images.append(image)
    if task.mp4_path is not None:
        write_mp4(images, task.mp4_path, task.fps)
    return [frame_annotations(spec, frame) for frame in range(spec.num_frames)]


def build_stcoco(
    video_annotations: Sequence[list[list[dict[str, Any]]]], image_size: int, num_classes: int, info: dict[str, Any]
) -> dict[str, Any]:
    """Assemble the ST-COCO dict: images by video then frame, ids counting from 1, categories 1..K.

    Args:
        video_annotations: per video (named by :func:`video_name` of its index), per frame, the
            objects from :func:`frame_annotations`.
    """
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for video_index, frames in enumerate(video_annotations):
        video = video_name(video_index)
        for frame, objects in enumerate(frames):
            image_id = len(images) + 1
            images.append(
                {
                    "id": image_id,
                    "file_name": frame_file_name(video, frame),
                    "width": image_size,
                    "height": image_size,
                    "video": video,
                    "frame_number": frame,
                }
            )
            for obj in objects:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": obj["class_index"] + 1,
                        "bbox": obj["bbox"],
                        "area": obj["area"],
                        "iscrowd": 0,
                        "id_track": obj["id_track"],
                        "hidden": obj["hidden"],
                        "hide_type": obj["hide_type"],
                    }
                )
    categories = [{"id": k + 1, "name": CLASS_PATTERNS[k], "supercategory": "synthetic"} for k in range(num_classes)]
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


@dataclass(frozen=True)
class SplitSummary:
    """What :func:`generate_split` wrote."""

    json_path: str
    image_dir: str
    mp4_dir: str | None
    videos: int
    frames: int
    boxes: int
    hidden_boxes: int


def check_split_arguments(
    split: str, num_videos: int, num_frames: int, image_size: int, seed: int, workers: int, fps: int, mp4: bool
) -> None:
    """Raise :class:`SltnetError` naming the command-line option of the first bad argument."""
    if not split or split.startswith(".") or not all(c.isalnum() or c in "_-." for c in split):
        raise SltnetError(f"--split: must be a folder name of letters, digits, '_', '-' or '.', got {split!r}")
    if num_videos < 1:
        raise SltnetError(f"--videos: must be at least 1, got {num_videos}")
    if num_frames < 1:
        raise SltnetError(f"--frames: must be at least 1, got {num_frames}")
    if image_size < MIN_IMAGE_SIZE:
        raise SltnetError(f"--size: must be at least {MIN_IMAGE_SIZE} pixels, got {image_size}")
    if mp4 and image_size % 2:
        raise SltnetError(f"--size: must be even with --mp4 (yuv420p video), got {image_size}")
    if seed < 0:
        raise SltnetError(f"--seed: must be a non-negative integer, got {seed}")
    if workers < 1:
        raise SltnetError(f"--workers: must be at least 1, got {workers}")
    if fps < 1:
        raise SltnetError(f"--fps: must be at least 1, got {fps}")


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _run_tasks(tasks: list[_VideoTask], workers: int, progress: bool) -> list[list[list[dict[str, Any]]]]:
    """Write every video, in parallel processes when ``workers > 1``; results in task order."""
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks))) if workers > 1 else None
    try:
        results = pool.map(_write_video, tasks) if pool is not None else map(_write_video, tasks)
        return list(tqdm(results, total=len(tasks), desc="videos", unit="video", disable=None if progress else True))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def generate_split(
    out_dir: str,
    split: str,
    num_videos: int,
    num_frames: int,
    image_size: int,
    seed: int,
    options: SynthOptions = SynthOptions(),
    workers: int = 1,
    mp4: bool = False,
    fps: int = 10,
    progress: bool = True,
) -> SplitSummary:
    """Generate one split of the benchmark.

    Writes ``out_dir/<split>/<video>/<frame:06d>.jpg``, ``out_dir/annotations/<split>.json`` and,
    with ``mp4``, ``out_dir/<split>_mp4/<video>.mp4``. An existing split of that name is replaced
    (its ``_mp4`` folder removed when ``mp4`` is off). Everything is written under temporary names
    first and the JSON is put in place last, so an interrupted run never leaves a JSON that points
    at missing or foreign frames.

    Raises:
        SltnetError: bad arguments or an output folder that cannot be written.
    """
    options.check()
    check_split_arguments(split, num_videos, num_frames, image_size, seed, workers, fps, mp4)
    annotation_dir = os.path.join(out_dir, "annotations")
    image_dir = os.path.join(out_dir, split)
    mp4_dir = os.path.join(out_dir, f"{split}_mp4")
    json_path = os.path.join(annotation_dir, f"{split}.json")
    staged_images = os.path.join(out_dir, f".{split}.partial")
    staged_mp4 = os.path.join(out_dir, f".{split}_mp4.partial")
    staged_json = os.path.join(annotation_dir, f".{split}.json.partial")
    retired = os.path.join(out_dir, f".{split}.old")
    try:
        os.makedirs(annotation_dir, exist_ok=True)
        for path in (staged_images, staged_mp4, staged_json, retired):
            _remove(path)
        os.makedirs(staged_images)
        if mp4:
            os.makedirs(staged_mp4)
        seeds = split_seed(seed, split).spawn(num_videos)
        tasks = [
            _VideoTask(
                video_name(i),
                seeds[i],
                num_frames,
                image_size,
                options,
                staged_images,
                os.path.join(staged_mp4, f"{video_name(i)}.mp4") if mp4 else None,
                fps,
            )
            for i in range(num_videos)
        ]
        video_annotations = _run_tasks(tasks, workers, progress)
        info = {
            "description": "sltnet synthetic video benchmark",
            "version": __version__,
            "split": split,
            "seed": seed,
            "videos": num_videos,
            "frames": num_frames,
            "size": image_size,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(options).items()},
        }
        data = build_stcoco(video_annotations, image_size, options.num_classes, info)
        with open(staged_json, "w", encoding="utf-8") as f:
            json.dump(data, f, sort_keys=True, separators=(",", ":"))
            f.write("\n")
        # Swap in: no JSON while the folders change, then the new JSON.
        _remove(json_path)
        os.makedirs(retired)
        for current, staged, kept in ((image_dir, staged_images, "images"), (mp4_dir, staged_mp4, "mp4")):
            if os.path.lexists(current):
                os.replace(current, os.path.join(retired, kept))
            if os.path.isdir(staged):
                os.replace(staged, current)
        os.replace(staged_json, json_path)
        _remove(retired)
    except OSError as err:
        where = err.filename or out_dir
        raise SltnetError(f"{where}: cannot write the synthetic split ({err.strerror or err})") from None
    finally:
        for path in (staged_images, staged_mp4, staged_json):
            if os.path.lexists(path):
                _remove(path)
    return SplitSummary(
        json_path=json_path,
        image_dir=image_dir,
        mp4_dir=mp4_dir if mp4 else None,
        videos=num_videos,
        frames=len(data["images"]),
        boxes=len(data["annotations"]),
        hidden_boxes=sum(1 for ann in data["annotations"] if ann["hidden"]),
    )
