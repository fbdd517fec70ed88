"""ST-COCO annotation files (docs/data.md#st-coco): read, validate with precise messages, load.

ST-COCO is COCO instances JSON where every image also has ``video`` (string) and ``frame_number``
(int), images are ordered by video then frame, and every annotation has ``id_track``. Still-image
sets (no image has ``video``/``frame_number``) are read as one-frame videos.

Every problem is reported as one line that starts with the file and names the image or annotation,
e.g. ``ann.json: annotation 17 (image 4): box [3, 4, 0, 5] has non-positive width``.
"""

import json
import math
import os
from typing import Any

import numpy as np
from tqdm import tqdm

from sltnet.data.records import FrameRecord, StCocoDataset, VideoRecord
from sltnet.errors import SltnetError

REQUIRED_IMAGE_FIELDS = ("id", "file_name", "width", "height", "video", "frame_number")
REQUIRED_ANNOTATION_FIELDS = ("id", "image_id", "category_id", "bbox", "id_track")
REQUIRED_CATEGORY_FIELDS = ("id", "name")
VIDEO_FIELDS = ("video", "frame_number")

# Boxes may reach this many pixels past the image border. Annotations converted from inclusive
# pixel coordinates (ImageNet VID's xmax = width - 1 becomes x + w = width, sometimes width + 1
# after off-by-one conversions) legitimately touch or overshoot the border by one pixel; anything
# beyond is a wrong box or a wrong image size. Loaded boxes are clipped to the image.
BOX_BORDER_TOLERANCE = 1.0


def read_stcoco_json(json_path: str) -> dict[str, Any]:
    """Parse an annotation file; a missing or unparsable file raises :class:`SltnetError`."""
    if not os.path.isfile(json_path):
        raise SltnetError(f"{json_path}: annotation file not found")
    try:
        with open(json_path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise SltnetError(f"{json_path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    except UnicodeDecodeError:
        raise SltnetError(f"{json_path}: not valid JSON (not UTF-8 text)") from None
    except OSError as err:
        raise SltnetError(f"{json_path}: cannot read ({err.strerror})") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _format_box(bbox: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in bbox) + "]"


class _Problems:
    """Collects one-line problems prefixed with the file name."""

    def __init__(self, json_path: str) -> None:
        self.json_path = json_path
        self.lines: list[str] = []

    def add(self, where: str, problem: str) -> None:
        self.lines.append(f"{self.json_path}: {where}: {problem}" if where else f"{self.json_path}: {problem}")


def _check_fields(
    entry: Any, kind: str, index: int, required: tuple[str, ...], problems: _Problems, missing_note: str = ""
) -> str | None:
    """Check that ``entry`` is an object with the required fields and an integer id.

    Returns how to name the entry in messages (``image 4``), or None when it is unusable.
    """
    label = f"{kind}s[{index}]"
    if not isinstance(entry, dict):
        problems.add(label, "not a JSON object")
        return None
    if _is_int(entry.get("id")):
        label = f"{kind} {entry['id']}"
    missing = [name for name in required if name not in entry]
    if missing:
        names = ", ".join(f"'{name}'" for name in missing)
        problems.add(label, f"missing required field{'s' if len(missing) > 1 else ''} {names}{missing_note}")
        return None
    if not _is_int(entry["id"]):
        problems.add(label, f"'id' must be an integer, got {entry['id']!r}")
        return None
    return label


def _validate_categories(categories: list[Any], problems: _Problems) -> set[int]:
    """Check the categories; return every integer category id (even of a faulty category, so its
    annotations are not reported a second time as having an unknown category)."""
    category_ids: set[int] = set()
    for index, category in enumerate(categories):
        label = _check_fields(category, "category", index, REQUIRED_CATEGORY_FIELDS, problems)
        if label is not None:
            if not isinstance(category["name"], str) or not category["name"]:
                problems.add(label, f"'name' must be a non-empty string, got {category['name']!r}")
            if category["id"] in category_ids:
                problems.add(label, "duplicate category id")
        if isinstance(category, dict) and _is_int(category.get("id")):
            category_ids.add(category["id"])
    return category_ids


def _is_still_image_set(images: list[Any]) -> bool:
    """True when no image carries ``video`` or ``frame_number``: each image is its own video."""
    return not any(isinstance(image, dict) and any(name in image for name in VIDEO_FIELDS) for image in images)


def _validate_images(images: list[Any], still_images: bool, problems: _Problems) -> dict[int, tuple[int, int]]:
    """Check the images; return ``{image id: (width, height)}`` of the images with a usable size."""
    required: tuple[str, ...] = REQUIRED_IMAGE_FIELDS
    if still_images:
        required = tuple(name for name in REQUIRED_IMAGE_FIELDS if name not in VIDEO_FIELDS)
    image_sizes: dict[int, tuple[int, int]] = {}
    seen_ids: set[int] = set()
    finished_videos: set[str] = set()  # videos whose images ended earlier in the file
    still_video_owner: dict[str, int] = {}  # still-image sets: video name -> first image id
    current_video: str | None = None
    last_frame_number = 0
    for index, image in enumerate(images):
        note = ""
        if not still_images and isinstance(image, dict) and not any(name in image for name in VIDEO_FIELDS):
            note = " (other images have them: a video set needs them on every image, a still-image set on none)"
        label = _check_fields(image, "image", index, required, problems, note)
        if label is None:
            continue
        if image["id"] in seen_ids:
            problems.add(label, "duplicate image id")
        seen_ids.add(image["id"])
        file_name = image["file_name"]
        if not isinstance(file_name, str) or not file_name:
            problems.add(label, f"'file_name' must be a non-empty string, got {file_name!r}")
            file_name = None
        size_ok = True
        for name in ("width", "height"):
            if not _is_int(image[name]) or image[name] <= 0:
                problems.add(label, f"'{name}' must be a positive integer, got {image[name]!r}")
                size_ok = False
        if size_ok:
            image_sizes[image["id"]] = (image["width"], image["height"])

        if still_images:
            if file_name is not None:
                video = os.path.splitext(file_name)[0]
                if video in still_video_owner:
                    problems.add(
                        label,
                        f"file_name '{file_name}' gives the same one-frame video name '{video}' "
                        f"as image {still_video_owner[video]}",
                    )
                still_video_owner.setdefault(video, image["id"])
            continue

        video, frame_number = image["video"], image["frame_number"]
        if not isinstance(video, str) or not video:
            problems.add(label, f"'video' must be a non-empty string, got {video!r}")
            continue
        if not _is_int(frame_number):
            problems.add(label, f"'frame_number' must be an integer, got {frame_number!r}")
            continue
        if video != current_video:
            if video in finished_videos:
                problems.add(
                    label,
                    f"video '{video}' appears again after other videos "
                    "(images must be grouped by video, then ordered by frame)",
                )
            if current_video is not None:
                finished_videos.add(current_video)
            current_video = video
        elif frame_number <= last_frame_number:
            problems.add(
                label,
                f"frame_number {frame_number} of video '{video}' does not come after frame {last_frame_number} "
                "(frames must be in increasing frame_number order)",
            )
        last_frame_number = frame_number
    return image_sizes


def _validate_annotations(
    annotations: list[Any],
    image_sizes: dict[int, tuple[int, int]],
    image_ids: set[int],
    category_ids: set[int],
    problems: _Problems,
) -> None:
    seen_ids: set[int] = set()
    tracks_in_image: set[tuple[int, int]] = set()
    for index, ann in enumerate(tqdm(annotations, desc="checking annotations", unit="ann", leave=False, disable=None)):
        label = _check_fields(ann, "annotation", index, REQUIRED_ANNOTATION_FIELDS, problems)
        if label is None:
            continue
        image_id, category_id = ann["image_id"], ann["category_id"]
        if _is_int(image_id):
            label = f"{label} (image {image_id})"
        if ann["id"] in seen_ids:
            problems.add(label, "duplicate annotation id")
        seen_ids.add(ann["id"])
        if not _is_int(image_id):
            problems.add(label, f"'image_id' must be an integer, got {image_id!r}")
            continue
        if image_id not in image_ids:
            problems.add(label, f"unknown image id {image_id}")
        if not _is_int(category_id):
            problems.add(label, f"'category_id' must be an integer, got {category_id!r}")
        elif category_id not in category_ids:
            problems.add(label, f"unknown category id {category_id}")
        track = ann["id_track"]
        if not _is_int(track):
            problems.add(label, f"'id_track' must be an integer, got {track!r}")
        elif (image_id, track) in tracks_in_image:
            problems.add(label, f"track {track} has two boxes in this image")
        else:
            tracks_in_image.add((image_id, track))
        _check_box(ann["bbox"], image_sizes.get(image_id), label, problems)
        if ann.get("iscrowd", 0) not in (0, 1):
            problems.add(label, f"'iscrowd' must be 0 or 1, got {ann['iscrowd']!r}")


def _check_box(bbox: Any, image_size: tuple[int, int] | None, label: str, problems: _Problems) -> None:
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        problems.add(label, f"'bbox' must be [x, y, width, height] with 4 finite numbers, got {bbox!r}")
        return
    x, y, w, h = bbox
    if w <= 0:
        problems.add(label, f"box {_format_box(bbox)} has non-positive width")
    if h <= 0:
        problems.add(label, f"box {_format_box(bbox)} has non-positive height")
    if image_size is None or w <= 0 or h <= 0:
        return
    width, height = image_size
    tol = BOX_BORDER_TOLERANCE
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        problems.add(label, f"box {_format_box(bbox)} lies outside the {width}x{height} image")


def _validate_image_files(images: list[Any], image_root: str, problems: _Problems) -> None:
    for image in tqdm(images, desc="checking image files", unit="img", leave=False, disable=None):
        if isinstance(image, dict) and isinstance(image.get("file_name"), str) and image["file_name"]:
            path = os.path.join(image_root, image["file_name"])
            if not os.path.isfile(path):
                problems.add(f"image {image.get('id')!r}", f"image file not found: {path}")


def validate_stcoco(data: Any, json_path: str, image_root: str | None = None, check_images: bool = False) -> list[str]:
    """Every problem in a parsed ST-COCO file, one line each (empty when the file is valid).

    Args:
        data: the parsed JSON.
        json_path: the file it came from; every line starts with it.
        image_root: folder that ``file_name`` paths are relative to (needed by ``check_images``).
        check_images: also report images whose file does not exist under ``image_root``.

    Runs in linear time (sets and dicts only), so ImageNet VID's ~1M annotations take seconds.
    """
    problems = _Problems(json_path)
    if not isinstance(data, dict):
        problems.add("", f"not a COCO instances file (top level is a JSON {type(data).__name__}, not an object)")
        return problems.lines
    sections = {}
    for name in ("images", "annotations", "categories"):
        if name not in data:
            problems.add("", f"not a COCO instances file (missing top-level '{name}')")
        elif not isinstance(data[name], list):
            problems.add("", f"not a COCO instances file (top-level '{name}' must be a list)")
        else:
            sections[name] = data[name]
    if len(sections) < 3:
        return problems.lines
    images, annotations, categories = sections["images"], sections["annotations"], sections["categories"]
    if not images:
        problems.add("", "no images")
    if not categories:
        problems.add("", "no categories")

    category_ids = _validate_categories(categories, problems)
    image_sizes = _validate_images(images, _is_still_image_set(images), problems)
    image_ids = {image["id"] for image in images if isinstance(image, dict) and _is_int(image.get("id"))}
    _validate_annotations(annotations, image_sizes, image_ids, category_ids, problems)
    if check_images:
        if image_root is None:
            raise SltnetError("checking image files needs an image root")
        if not os.path.isdir(image_root):
            problems.add("", f"image root not found: {image_root}")
        else:
            _validate_image_files(images, image_root, problems)
    return problems.lines


def build_stcoco_dataset(data: dict[str, Any], json_path: str, image_root: str) -> StCocoDataset:
    """Build the in-memory dataset from a parsed file that :func:`validate_stcoco` accepted.

    Category ids are sorted ascending and mapped to classes 0..K-1; boxes become (x1, y1, x2, y2)
    clipped to the image (they may overshoot by :data:`BOX_BORDER_TOLERANCE`). Annotations keep
    their file order within a frame; crowd annotations (``iscrowd`` 1) are kept and flagged
    (``FrameRecord.crowd``), training leaves them out.
    """
    categories = sorted(data["categories"], key=lambda c: c["id"])
    category_ids = [c["id"] for c in categories]
    class_of_category = {cat_id: index for index, cat_id in enumerate(category_ids)}
    images = data["images"]
    index_of_image = {image["id"]: index for index, image in enumerate(images)}

    # Column arrays of all annotations, grouped by image with a stable sort; each frame then
    # takes a slice. This keeps loading ~1M annotations to seconds.
    annotations = data["annotations"]
    count = len(annotations)
    ann_image = np.fromiter((index_of_image[a["image_id"]] for a in annotations), np.int64, count)
    order = np.argsort(ann_image, kind="stable")
    annotations = [annotations[i] for i in order]
    xywh = np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)
    all_boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    all_classes = np.fromiter((class_of_category[a["category_id"]] for a in annotations), np.int64, count)
    all_tracks = np.fromiter((a["id_track"] for a in annotations), np.int64, count)
    all_ids = np.fromiter((a["id"] for a in annotations), np.int64, count)
    all_crowd = np.fromiter((a.get("iscrowd", 0) == 1 for a in annotations), bool, count)
    bounds = np.searchsorted(ann_image[order], np.arange(len(images) + 1))

    still_images = _is_still_image_set(images)
    videos: list[VideoRecord] = []
    for index, image in enumerate(images):
        if still_images:
            video, frame_number = os.path.splitext(image["file_name"])[0], 0
        else:
            video, frame_number = image["video"], image["frame_number"]
        width, height = image["width"], image["height"]
        rows = slice(bounds[index], bounds[index + 1])
        boxes = np.clip(all_boxes[rows], 0, [width, height, width, height]).astype(np.float32)
        frame = FrameRecord(
            image_id=image["id"],
            file_name=image["file_name"],
            video=video,
            frame_number=frame_number,
            width=width,
            height=height,
            boxes=boxes,
            classes=all_classes[rows],
            track_ids=all_tracks[rows],
            annotation_ids=all_ids[rows],
            crowd=all_crowd[rows],
        )
        if not videos or videos[-1].name != video:
            videos.append(VideoRecord(name=video, frames=[]))
        videos[-1].frames.append(frame)
    return StCocoDataset(
        json_path=json_path,
        image_root=image_root,
        class_names=[c["name"] for c in categories],
        category_ids=category_ids,
        videos=videos,
    )


def load_stcoco(json_path: str, image_root: str, check_images: bool = False) -> StCocoDataset:
    """Read, validate and load an ST-COCO file.

    Raises:
        SltnetError: with the first problem and how many more there are.
    """
    data = read_stcoco_json(json_path)
    problems = validate_stcoco(data, json_path, image_root, check_images)
    if problems:
        more = len(problems) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''}; run 'sltnet-data validate' to list them)"
        raise SltnetError(problems[0] + (suffix if more else ""))
    return build_stcoco_dataset(data, json_path, image_root)
