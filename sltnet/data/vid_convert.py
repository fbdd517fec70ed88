"""Conversions between the ImageNet VID formats (docs/data.md#imagenet-vid-formats) and ST-COCO (docs/data.md#st-coco).

Box convention. The VID XML boxes are inclusive pixel indices: ``xmin..xmax`` are the first and last
pixel columns the object covers, so its extent in continuous coordinates is ``[xmin, xmax + 1)``.
ST-COCO boxes are continuous, so a box becomes ``[xmin, ymin, xmax - xmin + 1, ymax - ymin + 1]``
and a detection goes back as ``xmax = x + w - 1``. With this rule the width and height of an ST-COCO
box equal the devkit's ``xmax - xmin + 1``, so an IoU computed on continuous ST-COCO boxes (no +1) is
exactly the devkit's IoU on the XML boxes.

Names. A video is named by its folder relative to the annotation folder that was converted, which is
how the devkit's ``ImageSets/VID`` files name it (``ILSVRC2015_val_00000000`` for ``.../VID/val``,
``ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000`` for ``.../VID/train``); a frame's image-set
key is ``<video>/<xml file stem>``. ``file_name`` is relative to ``ILSVRC2015/Data/VID``: the part of
the annotation folder below ``Annotations/VID/`` (the file prefix, e.g. ``val/``), then the video, then
``<stem>.JPEG``.
"""

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, NamedTuple

from tqdm import tqdm

from sltnet.atomic_io import atomic_output
from sltnet.errors import SltnetError

#: The 30 ImageNet VID classes as (WordNet id, readable name), in the devkit's class-index order.
VID_CLASSES: tuple[tuple[str, str], ...] = (
    ("n02691156", "airplane"),
    ("n02419796", "antelope"),
    ("n02131653", "bear"),
    ("n02834778", "bicycle"),
    ("n01503061", "bird"),
    ("n02924116", "bus"),
    ("n02958343", "car"),
    ("n02402425", "cattle"),
    ("n02084071", "dog"),
    ("n02121808", "domestic_cat"),
    ("n02503517", "elephant"),
    ("n02118333", "fox"),
    ("n02510455", "giant_panda"),
    ("n02342885", "hamster"),
    ("n02374451", "horse"),
    ("n02129165", "lion"),
    ("n01674464", "lizard"),
    ("n02484322", "monkey"),
    ("n03790512", "motorcycle"),
    ("n02324045", "rabbit"),
    ("n02509815", "red_panda"),
    ("n02411705", "sheep"),
    ("n01726692", "snake"),
    ("n02355227", "squirrel"),
    ("n02129604", "tiger"),
    ("n04468005", "train"),
    ("n01662784", "turtle"),
    ("n04530566", "watercraft"),
    ("n02062744", "whale"),
    ("n02391049", "zebra"),
)

#: Devkit class index (1-based, also the ST-COCO category id) of each WordNet id.
VID_CLASS_INDEX: dict[str, int] = {wnid: index for index, (wnid, _) in enumerate(VID_CLASSES, start=1)}

#: Extension of the VID frame images.
VID_IMAGE_EXTENSION = ".JPEG"


def vid_categories() -> list[dict]:
    """The ST-COCO categories of the VID classes: ids 1..30 in devkit order, with ``wnid``."""
    return [
        {"id": index, "name": name, "wnid": wnid, "supercategory": "vid"}
        for index, (wnid, name) in enumerate(VID_CLASSES, start=1)
    ]


def xml_box_to_coco(xmin: float, ymin: float, xmax: float, ymax: float) -> list[float]:
    """Inclusive-pixel VID box -> continuous COCO ``[x, y, w, h]`` (see the module docstring)."""
    return [xmin, ymin, xmax - xmin + 1.0, ymax - ymin + 1.0]


def coco_box_to_xml(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    """Continuous COCO ``[x, y, w, h]`` -> inclusive-pixel ``(xmin, ymin, xmax, ymax)``; inverse of
    :func:`xml_box_to_coco`."""
    x, y, w, h = bbox
    return x, y, x + w - 1.0, y + h - 1.0


def derive_file_prefix(annotations_dir: str) -> str:
    """The image path prefix for frames under ``annotations_dir``: its part below ``Annotations/VID``.

    ``.../ILSVRC2015/Annotations/VID/val`` -> ``"val/"``; ``.../Annotations/VID`` itself -> ``""``.
    Raises SltnetError when the path has no ``Annotations/VID`` component.
    """
    parts = os.path.abspath(annotations_dir).split(os.sep)
    for start in range(len(parts) - 2, -1, -1):
        if parts[start] == "Annotations" and parts[start + 1] == "VID":
            return normalize_file_prefix("/".join(parts[start + 2 :]))
    raise SltnetError(
        f"{annotations_dir}: cannot derive the image path prefix (no Annotations/VID in the path); pass --file-prefix"
    )


def normalize_file_prefix(prefix: str) -> str:
    """``"val"``, ``"val/"`` or ``"/val/"`` -> ``"val/"``; an empty prefix stays empty."""
    stripped = prefix.strip("/")
    return stripped + "/" if stripped else ""


def read_image_set(path: str) -> dict[str, int]:
    """Read a devkit image set (lines ``<video>/<frame> <index>``) into ``{key: frame_index}``."""
    frame_index: dict[str, int] = {}
    for line_number, fields in _read_lines(path):
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise SltnetError(f"{path}: line {line_number}: expected '<video>/<frame> <index>'")
        key, index = fields[0], int(fields[1])
        if key in frame_index:
            raise SltnetError(f"{path}: line {line_number}: frame {key} is listed twice")
        frame_index[key] = index
    return frame_index


def read_videos_list(path: str) -> list[str]:
    """Read a list of videos: the first field of every non-empty line (so devkit ``train_<c>.txt``
    files with a label column work as they are)."""
    return [fields[0] for _, fields in _read_lines(path)]


def _read_lines(path: str) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, whitespace-split fields) of every non-empty line of a text file."""
    try:
        with open(path, encoding="utf-8") as fp:
            for line_number, line in enumerate(fp, start=1):
                fields = line.split()
                if fields:
                    yield line_number, fields
    except OSError as err:
        raise SltnetError(f"{path}: cannot read ({err.strerror})") from None


class VidObject(NamedTuple):
    """One annotated object of a VID frame, already in ST-COCO terms."""

    category_id: int
    track_id: int
    bbox: list[float]  # continuous [x, y, w, h], clipped to the image
    occluded: int
    generated: int


class VidFrame(NamedTuple):
    """What the conversion keeps of one frame XML."""

    width: int
    height: int
    objects: list[VidObject]


def parse_vid_xml(path: str) -> VidFrame:
    """Read one frame annotation XML (docs/data.md#imagenet-vid-formats).

    Boxes are converted with :func:`xml_box_to_coco` and clipped to the image. A missing
    ``<occluded>`` / ``<generated>`` counts as 0. Raises SltnetError naming the file for malformed XML,
    missing fields, an unknown WordNet id or a box with no area inside the image.
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise SltnetError(f"{path}: malformed XML ({err})") from None
    except OSError as err:
        raise SltnetError(f"{path}: cannot read ({err.strerror})") from None
    size = _child(root, "size", path)
    width = int(_number(size, "width", path))
    height = int(_number(size, "height", path))
    if width <= 0 or height <= 0:
        raise SltnetError(f"{path}: image size {width}x{height} is not positive")
    objects = []
    for number, element in enumerate(root.findall("object")):
        wnid = _text(element, "name", path)
        if wnid not in VID_CLASS_INDEX:
            raise SltnetError(f"{path}: object {number}: unknown class '{wnid}' (not one of the 30 VID WordNet ids)")
        box = _child(element, "bndbox", path)
        x, y, w, h = xml_box_to_coco(*(_number(box, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax")))
        # Clip to the image: the devkit's boxes are meant to lie inside it.
        x1, y1 = max(x, 0.0), max(y, 0.0)
        x2, y2 = min(x + w, float(width)), min(y + h, float(height))
        if x2 <= x1 or y2 <= y1:
            raise SltnetError(f"{path}: object {number}: box has no area inside the {width}x{height} image")
        objects.append(
            VidObject(
                category_id=VID_CLASS_INDEX[wnid],
                track_id=int(_number(element, "trackid", path)),
                bbox=[x1, y1, x2 - x1, y2 - y1],
                occluded=int(_number(element, "occluded", path, default=0.0)),
                generated=int(_number(element, "generated", path, default=0.0)),
            )
        )
    return VidFrame(width, height, objects)


def _child(element: ET.Element, tag: str, path: str) -> ET.Element:
    child = element.find(tag)
    if child is None:
        raise SltnetError(f"{path}: <{element.tag}> has no <{tag}>")
    return child


def _text(element: ET.Element, tag: str, path: str) -> str:
    text = (_child(element, tag, path).text or "").strip()
    if not text:
        raise SltnetError(f"{path}: <{tag}> in <{element.tag}> is empty")
    return text


def _number(element: ET.Element, tag: str, path: str, default: float | None = None) -> float:
    if default is not None and element.find(tag) is None:
        return default
    text = _text(element, tag, path)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise SltnetError(f"{path}: <{tag}> in <{element.tag}> is not a number: '{text}'")
    return value


class VideoFolder(NamedTuple):
    """A folder of frame XMLs: its name (relative posix path) and (frame number, xml file name) pairs
    sorted by frame number."""

    name: str
    frames: list[tuple[int, str]]


def find_video_folders(annotations_dir: str) -> list[VideoFolder]:
    """Every folder below ``annotations_dir`` that holds ``.xml`` files, in sorted path order.

    Works for ``VID/val`` (videos directly below) and ``VID/train`` (videos one level deeper).
    Raises SltnetError when the folder is missing or holds no XML at all.
    """
    if not os.path.isdir(annotations_dir):
        raise SltnetError(f"{annotations_dir}: annotation folder does not exist")
    videos: list[VideoFolder] = []
    pending = [""]  # relative posix paths still to scan; a stack, so depth first in sorted order
    while pending:
        relative = pending.pop()
        folder = os.path.join(annotations_dir, relative)
        with os.scandir(folder) as scanned:
            entries = sorted(scanned, key=lambda entry: entry.name)
        subfolders = [entry.name for entry in entries if entry.is_dir()]
        xml_names = [entry.name for entry in entries if entry.is_file() and entry.name.endswith(".xml")]
        if xml_names and not relative:
            raise SltnetError(
                f"{annotations_dir}: holds frame XMLs itself; pass the split folder above the video folders"
            )
        if xml_names:
            frames = sorted((_frame_number(os.path.join(folder, name)), name) for name in xml_names)
            videos.append(VideoFolder(relative, frames))
        pending.extend(f"{relative}/{name}" if relative else name for name in reversed(subfolders))
    if not videos:
        raise SltnetError(f"{annotations_dir}: no frame annotation (.xml) files found")
    return videos


def _frame_number(xml_path: str) -> int:
    stem = os.path.basename(xml_path)[: -len(".xml")]
    if not stem.isdigit():
        raise SltnetError(f"{xml_path}: file name is not a frame number")
    return int(stem)


@dataclass
class ConversionSummary:
    """Counts of what a conversion wrote."""

    videos: int
    images: int
    annotations: int


class _ImageRecord(NamedTuple):
    file_name: str
    video: str
    frame_number: int
    width: int
    height: int
    frame_index: int | None


def convert_vid_to_stcoco(
    annotations_dir: str,
    out_json: str,
    split_name: str | None = None,
    image_set: str | None = None,
    videos_list: str | None = None,
    file_prefix: str | None = None,
) -> ConversionSummary:
    """Convert a VID annotation tree to one ST-COCO JSON file (written atomically).

    Args:
        annotations_dir: e.g. ``ILSVRC2015/Annotations/VID/val``.
        out_json: the ST-COCO file to write.
        split_name: recorded as ``info.split_name``; default: the folder's base name.
        image_set: a devkit image set (``ImageSets/VID/val.txt``): keep only its frames and store each
            one's index as the image's ``frame_index``.
        videos_list: a file of video names (first field per line): keep only those videos.
        file_prefix: prefix of every ``file_name``; default: derived by :func:`derive_file_prefix`.

    Videos are sorted by name, frames by number; image ids and annotation ids count from 1 in that
    order; frames without objects are kept. Only compact records are held, never the XML trees.
    """
    prefix = derive_file_prefix(annotations_dir) if file_prefix is None else normalize_file_prefix(file_prefix)
    videos = find_video_folders(annotations_dir)
    if videos_list is not None:
        videos = _select_videos(videos, read_videos_list(videos_list), videos_list, annotations_dir)
    frame_index = read_image_set(image_set) if image_set is not None else None

    unmatched_keys = set(frame_index or ())
    images: list[_ImageRecord] = []
    annotations: list[tuple[int, VidObject]] = []  # (image id, object)
    videos_written = 0
    # The context manager closes the bar (ending its line) before an error message is printed.
    with tqdm(videos, desc="vid-to-stcoco", unit="video") as progress:
        for video in progress:
            video_has_frames = False
            for frame_number, xml_name in video.frames:
                stem = xml_name[: -len(".xml")]
                key = f"{video.name}/{stem}"
                if frame_index is not None:
                    if key not in frame_index:
                        continue
                    unmatched_keys.discard(key)
                frame = parse_vid_xml(os.path.join(annotations_dir, *video.name.split("/"), xml_name))
                images.append(
                    _ImageRecord(
                        file_name=f"{prefix}{key}{VID_IMAGE_EXTENSION}",
                        video=video.name,
                        frame_number=frame_number,
                        width=frame.width,
                        height=frame.height,
                        frame_index=None if frame_index is None else frame_index[key],
                    )
                )
                annotations.extend((len(images), obj) for obj in frame.objects)
                video_has_frames = True
            videos_written += video_has_frames
    if unmatched_keys:
        assert frame_index is not None  # only an image set leaves keys unmatched
        missing = min(unmatched_keys, key=frame_index.__getitem__)
        raise SltnetError(
            f"{image_set}: frame {missing} has no annotation file {missing}.xml under {annotations_dir}"
            + (" (or its video is not in the videos list)" if videos_list is not None else "")
        )

    info = {
        "description": "ImageNet VID annotations in ST-COCO form",
        "split_name": split_name or os.path.basename(os.path.normpath(annotations_dir)),
    }
    head = {"info": info, "licenses": [], "categories": vid_categories()}
    image_entries = (_image_entry(image_id, image) for image_id, image in enumerate(images, start=1))
    annotation_entries = (
        _annotation_entry(annotation_id, image_id, obj)
        for annotation_id, (image_id, obj) in enumerate(annotations, start=1)
    )
    with atomic_output(out_json) as fp:
        _write_json_object(fp, head, {"images": image_entries, "annotations": annotation_entries})
    return ConversionSummary(videos=videos_written, images=len(images), annotations=len(annotations))


def _select_videos(
    videos: list[VideoFolder], wanted: list[str], list_path: str, annotations_dir: str
) -> list[VideoFolder]:
    by_name = {video.name: video for video in videos}
    for name in wanted:
        if name not in by_name:
            raise SltnetError(f"{list_path}: video {name} has no annotation folder under {annotations_dir}")
    wanted_names = set(wanted)
    return [video for video in videos if video.name in wanted_names]


def _image_entry(image_id: int, image: _ImageRecord) -> dict:
    entry = {
        "id": image_id,
        "file_name": image.file_name,
        "width": image.width,
        "height": image.height,
        "video": image.video,
        "frame_number": image.frame_number,
    }
    if image.frame_index is not None:
        entry["frame_index"] = image.frame_index
    return entry


def _annotation_entry(annotation_id: int, image_id: int, obj: VidObject) -> dict:
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": obj.category_id,
        "bbox": obj.bbox,
        "area": obj.bbox[2] * obj.bbox[3],
        "iscrowd": 0,
        "id_track": obj.track_id,
        "occluded": obj.occluded,
        "generated": obj.generated,
    }


def _write_json_object(fp: IO[str], head: dict, arrays: dict[str, Iterable[dict]]) -> None:
    """Write ``{**head, **arrays}`` as JSON, serialising the arrays one entry at a time so that a
    million-frame dataset never exists as one big Python structure."""
    fp.write("{")
    for key, value in head.items():
        fp.write(f"{json.dumps(key)}: {json.dumps(value)}, ")
    for position, (key, entries) in enumerate(arrays.items()):
        fp.write(f"{', ' if position else ''}{json.dumps(key)}: [")
        for number, entry in enumerate(entries):
            fp.write(f"{',' if number else ''}\n{json.dumps(entry)}")
        fp.write("\n]")
    fp.write("}\n")


# ------------------------------------------------------------------------------------------------
# Detections -> devkit result lines


def _load_json(path: str) -> object:
    try:
        with open(path, encoding="utf-8") as fp:
            return json.load(fp)
    except OSError as err:
        raise SltnetError(f"{path}: cannot read ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise SltnetError(f"{path}: not valid JSON ({err})") from None


def _vid_class_by_category(gt: dict, gt_json: str) -> dict[int, int]:
    """{category id: devkit class index} from the ``wnid`` field of the GT categories."""
    categories = gt.get("categories")
    if not isinstance(categories, list):
        raise SltnetError(f"{gt_json}: no 'categories' list")
    class_index = {}
    for position, category in enumerate(categories):
        if not isinstance(category, dict) or "id" not in category or "wnid" not in category:
            raise SltnetError(
                f"{gt_json}: categories[{position}] has no 'id' and 'wnid' (write the ground truth with "
                "sltnet-convert vid-to-stcoco)"
            )
        wnid = category["wnid"]
        if wnid not in VID_CLASS_INDEX:
            raise SltnetError(f"{gt_json}: category {category['id']}: unknown WordNet id '{wnid}'")
        class_index[category["id"]] = VID_CLASS_INDEX[wnid]
    return class_index


def _frame_index_by_image(gt: dict, gt_json: str, image_set: str | None) -> dict[int, int]:
    """{image id: devkit frame index}, from the images' ``frame_index`` or from ``image_set``."""
    images = gt.get("images")
    if not isinstance(images, list):
        raise SltnetError(f"{gt_json}: no 'images' list")
    frame_index_of_key = read_image_set(image_set) if image_set is not None else None
    frame_index = {}
    for position, image in enumerate(images):
        if not isinstance(image, dict) or "id" not in image:
            raise SltnetError(f"{gt_json}: images[{position}] has no 'id'")
        image_id = image["id"]
        if frame_index_of_key is None:
            if "frame_index" not in image:
                raise SltnetError(
                    f"{gt_json}: image {image_id} has no 'frame_index'; convert with "
                    "vid-to-stcoco --image-set or pass --image-set to to-vid"
                )
            frame_index[image_id] = image["frame_index"]
            continue
        if "video" not in image or "file_name" not in image:
            raise SltnetError(f"{gt_json}: image {image_id} has no 'video'/'file_name' to look up in {image_set}")
        key = f"{image['video']}/{PurePosixPath(image['file_name']).stem}"
        if key not in frame_index_of_key:
            raise SltnetError(f"{image_set}: no line for frame {key} (image {image_id} of {gt_json})")
        frame_index[image_id] = frame_index_of_key[key]
    return frame_index


def coco_results_to_vid(detections_json: str, gt_json: str, out_txt: str, image_set: str | None = None) -> int:
    """Write COCO-format detections as devkit result lines (docs/data.md#imagenet-vid-formats); returns the line count.

    Each line is ``<frame_index> <class_index> <score> <xmin> <ymin> <xmax> <ymax>`` with the box in the
    XML convention (:func:`coco_box_to_xml`). ``frame_index`` comes from ``image_set`` when given, else
    from the GT images' ``frame_index`` field; class indices come from the GT categories' ``wnid``.
    Lines are ordered by frame index, keeping the detections' order within a frame.
    """
    gt = _load_json(gt_json)
    if not isinstance(gt, dict):
        raise SltnetError(f"{gt_json}: not a COCO annotation object")
    class_index = _vid_class_by_category(gt, gt_json)
    frame_index = _frame_index_by_image(gt, gt_json, image_set)
    detections = _load_json(detections_json)
    if not isinstance(detections, list):
        raise SltnetError(f"{detections_json}: expected a list of COCO detection results")

    with tqdm(detections, desc="to-vid", unit="det", mininterval=1.0) as progress:
        rows = [
            _devkit_row(det, number, detections_json, frame_index, class_index) for number, det in enumerate(progress)
        ]
    rows.sort(key=lambda row: row[0])
    with atomic_output(out_txt) as fp:
        for frame, cls, score, x1, y1, x2, y2 in rows:
            fp.write(f"{frame} {cls} {score:.6f} {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f}\n")
    return len(rows)


def _devkit_row(
    det: object, number: int, detections_json: str, frame_index: dict[int, int], class_index: dict[int, int]
) -> tuple[int, int, float, float, float, float, float]:
    where = f"{detections_json}: detection {number}"
    if not isinstance(det, dict) or not {"image_id", "category_id", "bbox", "score"} <= det.keys():
        raise SltnetError(f"{where}: needs image_id, category_id, bbox and score")
    if det["image_id"] not in frame_index:
        raise SltnetError(f"{where}: unknown image_id {det['image_id']!r}")
    if det["category_id"] not in class_index:
        raise SltnetError(f"{where}: unknown category_id {det['category_id']!r}")
    bbox, score = det["bbox"], det["score"]
    if not (isinstance(bbox, list) and len(bbox) == 4) or not all(
        isinstance(v, (int, float)) and math.isfinite(v) for v in (*bbox, score)
    ):
        raise SltnetError(f"{where}: bbox must be 4 finite numbers and score a finite number")
    return (frame_index[det["image_id"]], class_index[det["category_id"]], float(score), *coco_box_to_xml(bbox))
