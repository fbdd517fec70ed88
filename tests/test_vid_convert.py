"""ImageNet VID <-> ST-COCO conversions (``sltnet-convert``): tiny hand-made annotation trees."""

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from sltnet.data.vid_convert import (
    VID_CLASSES,
    coco_box_to_xml,
    derive_file_prefix,
    find_video_folders,
    vid_categories,
    xml_box_to_coco,
)
from sltnet.tools.convert import main

# (trackid, wnid, xmin, ymin, xmax, ymax, occluded, generated)
Obj = tuple[int, str, int, int, int, int, int, int]

VAL_VIDEOS = {
    "ILSVRC2015_val_00000000": [
        [(0, "n02691156", 10, 20, 59, 39, 0, 0)],  # airplane: class 1
        [(0, "n02691156", 12, 21, 61, 40, 1, 0), (3, "n02391049", 0, 0, 9, 9, 0, 1)],  # + zebra: class 30
        [],  # a frame without objects is still an image
    ],
    "ILSVRC2015_val_00001000": [
        [(5, "n02084071", 100, 50, 199, 149, 0, 0)],  # dog: class 9
        [(5, "n02084071", 101, 50, 200, 149, 0, 0)],
        [(5, "n02084071", 102, 50, 201, 149, 0, 0)],
    ],
}


def frame_xml(objects: Sequence[Obj], width: int = 320, height: int = 240) -> str:
    parts = [f"<annotation><folder>x</folder><size><width>{width}</width><height>{height}</height></size>"]
    for track, wnid, xmin, ymin, xmax, ymax, occluded, generated in objects:
        parts.append(
            f"<object><trackid>{track}</trackid><name>{wnid}</name><bndbox><xmax>{xmax}</xmax>"
            f"<xmin>{xmin}</xmin><ymax>{ymax}</ymax><ymin>{ymin}</ymin></bndbox>"
            f"<occluded>{occluded}</occluded><generated>{generated}</generated></object>"
        )
    return "".join(parts) + "</annotation>"


def write_tree(split_dir: Path, videos: dict) -> None:
    for video, frames in videos.items():
        folder = split_dir / video
        folder.mkdir(parents=True)
        for number, objects in enumerate(frames):
            (folder / f"{number:06d}.xml").write_text(frame_xml(objects))


@pytest.fixture
def val_dir(tmp_path: Path) -> Path:
    split_dir = tmp_path / "ILSVRC2015" / "Annotations" / "VID" / "val"
    write_tree(split_dir, VAL_VIDEOS)
    return split_dir


def run_error(capsys, argv: list[str]) -> str:
    """Run the CLI expecting a user error; return the error line after checking it is one line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last


def test_vid_class_table():
    assert len(VID_CLASSES) == 30 and len({wnid for wnid, _ in VID_CLASSES}) == 30
    assert VID_CLASSES[0] == ("n02691156", "airplane")
    assert VID_CLASSES[8] == ("n02084071", "dog")
    assert VID_CLASSES[29] == ("n02391049", "zebra")
    categories = vid_categories()
    assert [c["id"] for c in categories] == list(range(1, 31))
    assert categories[9] == {"id": 10, "name": "domestic_cat", "wnid": "n02121808", "supercategory": "vid"}


def test_box_conventions_are_inverse():
    # Inclusive pixels 10..59 are 50 columns wide.
    assert xml_box_to_coco(10, 20, 59, 39) == [10, 20, 50, 20]
    assert coco_box_to_xml([10.0, 20.0, 50.0, 20.0]) == (10, 20, 59, 39)


def test_file_prefix_rule(tmp_path: Path):
    assert derive_file_prefix(str(tmp_path / "ILSVRC2015/Annotations/VID/val")) == "val/"
    assert derive_file_prefix(str(tmp_path / "Annotations/VID/train/ILSVRC2015_VID_train_0000")) == (
        "train/ILSVRC2015_VID_train_0000/"
    )
    assert derive_file_prefix(str(tmp_path / "Annotations/VID")) == ""


def test_vid_to_stcoco_val(val_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "out" / "vid_val.json"
    assert main(["vid-to-stcoco", str(val_dir), str(out)]) == 0
    assert "2 videos, 6 frames, 6 boxes" in capsys.readouterr().out
    data = json.loads(out.read_text())

    assert data["info"]["split_name"] == "val"
    assert data["categories"] == vid_categories()
    images = data["images"]
    assert [image["id"] for image in images] == [1, 2, 3, 4, 5, 6]
    assert [(image["video"], image["frame_number"]) for image in images] == [
        ("ILSVRC2015_val_00000000", 0),
        ("ILSVRC2015_val_00000000", 1),
        ("ILSVRC2015_val_00000000", 2),
        ("ILSVRC2015_val_00001000", 0),
        ("ILSVRC2015_val_00001000", 1),
        ("ILSVRC2015_val_00001000", 2),
    ]
    assert images[0]["file_name"] == "val/ILSVRC2015_val_00000000/000000.JPEG"
    assert images[5]["file_name"] == "val/ILSVRC2015_val_00001000/000002.JPEG"
    assert (images[0]["width"], images[0]["height"]) == (320, 240)
    assert all("frame_index" not in image for image in images)

    anns = data["annotations"]
    assert [a["id"] for a in anns] == [1, 2, 3, 4, 5, 6]
    assert [a["image_id"] for a in anns] == [1, 2, 2, 4, 5, 6]
    assert [a["category_id"] for a in anns] == [1, 1, 30, 9, 9, 9]
    assert [a["id_track"] for a in anns] == [0, 0, 3, 5, 5, 5]
    assert [a["bbox"] for a in anns[:3]] == [[10, 20, 50, 20], [12, 21, 50, 20], [0, 0, 10, 10]]
    assert anns[3]["bbox"] == [100, 50, 100, 100] and anns[3]["area"] == 10000
    assert [(a["occluded"], a["generated"]) for a in anns[:3]] == [(0, 0), (1, 0), (0, 1)]
    assert all(a["iscrowd"] == 0 for a in anns)

    stcoco = pytest.importorskip("sltnet.data.stcoco")
    if hasattr(stcoco, "validate_stcoco"):
        assert stcoco.validate_stcoco(data, str(out)) == []
    assert sorted(os.listdir(out.parent)) == ["vid_val.json"]  # no temporary left behind


def test_image_set_restricts_and_keeps_frame_index(val_dir: Path, tmp_path: Path):
    image_set = tmp_path / "val.txt"
    image_set.write_text(
        "ILSVRC2015_val_00000000/000000 1\nILSVRC2015_val_00000000/000001 2\n"
        "ILSVRC2015_val_00000000/000002 3\nILSVRC2015_val_00001000/000001 5\n"
    )
    out = tmp_path / "vid_val.json"
    assert main(["vid-to-stcoco", str(val_dir), str(out), "--image-set", str(image_set)]) == 0
    images = json.loads(out.read_text())["images"]
    assert [(image["file_name"], image["frame_index"]) for image in images] == [
        ("val/ILSVRC2015_val_00000000/000000.JPEG", 1),
        ("val/ILSVRC2015_val_00000000/000001.JPEG", 2),
        ("val/ILSVRC2015_val_00000000/000002.JPEG", 3),
        ("val/ILSVRC2015_val_00001000/000001.JPEG", 5),
    ]


def test_train_layout_videos_list_prefix_override_and_frame_order(tmp_path: Path):
    train_dir = tmp_path / "Annotations" / "VID" / "train"
    write_tree(train_dir / "ILSVRC2015_VID_train_0000", {"ILSVRC2015_train_00000000": [[], []]})
    write_tree(train_dir / "ILSVRC2015_VID_train_0001", {"ILSVRC2015_train_00001000": [[]]})
    unpadded = train_dir / "ILSVRC2015_VID_train_0001" / "ILSVRC2015_train_00002000"
    unpadded.mkdir()
    for number in (10, 9):  # frames sort by number, not by name
        (unpadded / f"{number}.xml").write_text(frame_xml([]))
    videos = find_video_folders(str(train_dir))
    assert [(video.name, [n for n, _ in video.frames]) for video in videos] == [
        ("ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000", [0, 1]),
        ("ILSVRC2015_VID_train_0001/ILSVRC2015_train_00001000", [0]),
        ("ILSVRC2015_VID_train_0001/ILSVRC2015_train_00002000", [9, 10]),
    ]

    videos_list = tmp_path / "train_1.txt"  # devkit style: "<video> <label>"
    videos_list.write_text("ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000 1\n")
    out = tmp_path / "train.json"
    assert main(["vid-to-stcoco", str(train_dir), str(out), "--videos-list", str(videos_list)]) == 0
    images = json.loads(out.read_text())["images"]
    assert [image["file_name"] for image in images] == [
        "train/ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000/000000.JPEG",
        "train/ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000/000001.JPEG",
    ]
    assert images[0]["video"] == "ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000"

    assert main(["vid-to-stcoco", str(train_dir), str(out), "--file-prefix", "", "--split-name", "t"]) == 0
    data = json.loads(out.read_text())
    assert data["info"]["split_name"] == "t"
    assert data["images"][0]["file_name"] == "ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000/000000.JPEG"


def test_unknown_wnid_is_one_line_error(val_dir: Path, tmp_path: Path, capsys):
    bad = val_dir / "ILSVRC2015_val_00001000" / "000001.xml"
    bad.write_text(frame_xml([(1, "n99999999", 0, 0, 5, 5, 0, 0)]))
    out = tmp_path / "out.json"
    line = run_error(capsys, ["vid-to-stcoco", str(val_dir), str(out)])
    assert line == f"error: {bad}: object 0: unknown class 'n99999999' (not one of the 30 VID WordNet ids)"
    assert not out.exists() and os.listdir(tmp_path) == ["ILSVRC2015"]


def test_malformed_xml_is_one_line_error(val_dir: Path, tmp_path: Path, capsys):
    bad = val_dir / "ILSVRC2015_val_00000000" / "000002.xml"
    bad.write_text("<annotation><size><width>3</width></annotation>")
    out = tmp_path / "out.json"
    line = run_error(capsys, ["vid-to-stcoco", str(val_dir), str(out)])
    assert line.startswith(f"error: {bad}: malformed XML (mismatched tag")
    assert not out.exists()


def test_missing_dir_and_missing_frame_are_errors(val_dir: Path, tmp_path: Path, capsys):
    missing = tmp_path / "Annotations" / "VID" / "nope"
    line = run_error(capsys, ["vid-to-stcoco", str(missing), str(tmp_path / "o.json")])
    assert line == f"error: {missing}: annotation folder does not exist"

    image_set = tmp_path / "val.txt"
    image_set.write_text("ILSVRC2015_val_00000000/000000 1\nILSVRC2015_val_00000000/000007 2\n")
    argv = ["vid-to-stcoco", str(val_dir), str(tmp_path / "o.json"), "--image-set", str(image_set)]
    line = run_error(capsys, argv)
    assert line == (
        f"error: {image_set}: frame ILSVRC2015_val_00000000/000007 has no annotation file "
        f"ILSVRC2015_val_00000000/000007.xml under {val_dir}"
    )

    elsewhere = tmp_path / "anns"
    write_tree(elsewhere, {"v": [[]]})
    line = run_error(capsys, ["vid-to-stcoco", str(elsewhere), str(tmp_path / "o.json")])
    assert line.startswith(f"error: {elsewhere}: cannot derive the image path prefix") and "--file-prefix" in line
    assert not (tmp_path / "o.json").exists()


def converted_gt(val_dir: Path, tmp_path: Path, with_image_set: bool) -> tuple[Path, Path]:
    image_set = tmp_path / "val.txt"
    image_set.write_text(
        "".join(
            f"{video}/{number:06d} {index}\n"
            for index, (video, number) in enumerate(((v, n) for v in sorted(VAL_VIDEOS) for n in range(3)), start=1)
        )
    )
    gt = tmp_path / "gt.json"
    extra = ["--image-set", str(image_set)] if with_image_set else []
    assert main(["vid-to-stcoco", str(val_dir), str(gt), *extra]) == 0
    return gt, image_set


DETECTIONS = [
    {"image_id": 5, "category_id": 9, "bbox": [101.0, 50.0, 100.0, 100.0], "score": 0.9},
    {"image_id": 1, "category_id": 1, "bbox": [10.5, 20.0, 50.0, 20.25], "score": 0.75},
    {"image_id": 1, "category_id": 30, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.125},
]
EXPECTED_LINES = [
    "1 1 0.750000 10.50 20.00 59.50 39.25",
    "1 30 0.125000 0.00 0.00 9.00 9.00",
    "5 9 0.900000 101.00 50.00 200.00 149.00",
]


@pytest.mark.parametrize("via", ["frame_index", "image_set_option"])
def test_to_vid_round_trip(val_dir: Path, tmp_path: Path, capsys, via: str):
    gt, image_set = converted_gt(val_dir, tmp_path, with_image_set=via == "frame_index")
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(DETECTIONS))
    out = tmp_path / "results.txt"
    extra = ["--image-set", str(image_set)] if via == "image_set_option" else []
    assert main(["to-vid", str(dets), "--gt", str(gt), str(out), *extra]) == 0
    assert out.read_text().splitlines() == EXPECTED_LINES
    assert "3 detections" in capsys.readouterr().out


def test_to_vid_errors(val_dir: Path, tmp_path: Path, capsys):
    gt, _ = converted_gt(val_dir, tmp_path, with_image_set=False)
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(DETECTIONS))
    out = tmp_path / "results.txt"
    line = run_error(capsys, ["to-vid", str(dets), "--gt", str(gt), str(out)])
    assert line == (
        f"error: {gt}: image 1 has no 'frame_index'; convert with vid-to-stcoco --image-set "
        "or pass --image-set to to-vid"
    )

    gt, _ = converted_gt(val_dir, tmp_path, with_image_set=True)
    dets.write_text(json.dumps(DETECTIONS + [{"image_id": 77, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]))
    line = run_error(capsys, ["to-vid", str(dets), "--gt", str(gt), str(out)])
    assert line == f"error: {dets}: detection 3: unknown image_id 77"

    dets.write_text(json.dumps([{"image_id": 1, "category_id": 31, "bbox": [0, 0, 1, 1], "score": 1}]))
    line = run_error(capsys, ["to-vid", str(dets), "--gt", str(gt), str(out)])
    assert line == f"error: {dets}: detection 0: unknown category_id 31"
    assert not out.exists()


def test_boxes_are_clipped_to_the_image(tmp_path: Path):
    split_dir = tmp_path / "Annotations" / "VID" / "val"
    # Column 320 is one past the last one (a known off-by-one in some annotations).
    write_tree(split_dir, {"v": [[(1, "n02691156", -2, 5, 320, 239, 0, 0)]]})
    out = tmp_path / "out.json"
    assert main(["vid-to-stcoco", str(split_dir), str(out)]) == 0
    assert json.loads(out.read_text())["annotations"][0]["bbox"] == [0, 5, 320, 235]


@pytest.mark.parametrize(
    "xml, problem",
    [
        ("<annotation><object/></annotation>", "<annotation> has no <size>"),
        (frame_xml([]).replace("<width>320</width>", "<width>w</width>"), "<width> in <size> is not a number: 'w'"),
        (
            frame_xml([(1, "n02691156", 0, 0, 5, 5, 0, 0)]).replace("<trackid>1</trackid>", ""),
            "<object> has no <trackid>",
        ),
        (frame_xml([(1, "n02691156", 5, 0, 4, 5, 0, 0)]), "object 0: box has no area inside the 320x240 image"),
    ],
)
def test_bad_frame_xml_is_one_line_error(tmp_path: Path, capsys, xml: str, problem: str):
    split_dir = tmp_path / "Annotations" / "VID" / "val"
    write_tree(split_dir, {"v": [[]]})
    bad = split_dir / "v" / "000000.xml"
    bad.write_text(xml)
    assert run_error(capsys, ["vid-to-stcoco", str(split_dir), str(tmp_path / "o.json")]) == f"error: {bad}: {problem}"


def test_bad_lists_and_layout_are_one_line_errors(val_dir: Path, tmp_path: Path, capsys):
    out = str(tmp_path / "o.json")
    image_set = tmp_path / "val.txt"
    image_set.write_text("ILSVRC2015_val_00000000/000000 1\nILSVRC2015_val_00000000/000001\n")
    line = run_error(capsys, ["vid-to-stcoco", str(val_dir), out, "--image-set", str(image_set)])
    assert line == f"error: {image_set}: line 2: expected '<video>/<frame> <index>'"

    image_set.write_text("ILSVRC2015_val_00000000/000000 1\nILSVRC2015_val_00000000/000000 2\n")
    line = run_error(capsys, ["vid-to-stcoco", str(val_dir), out, "--image-set", str(image_set)])
    assert line == f"error: {image_set}: line 2: frame ILSVRC2015_val_00000000/000000 is listed twice"

    videos_list = tmp_path / "videos.txt"
    videos_list.write_text("ILSVRC2015_val_00000009\n")
    line = run_error(capsys, ["vid-to-stcoco", str(val_dir), out, "--videos-list", str(videos_list)])
    assert line == f"error: {videos_list}: video ILSVRC2015_val_00000009 has no annotation folder under {val_dir}"

    (val_dir / "ILSVRC2015_val_00000000" / "last.xml").write_text(frame_xml([]))
    line = run_error(capsys, ["vid-to-stcoco", str(val_dir), out])
    assert line == f"error: {val_dir / 'ILSVRC2015_val_00000000' / 'last.xml'}: file name is not a frame number"

    video_dir = val_dir / "ILSVRC2015_val_00001000"
    line = run_error(capsys, ["vid-to-stcoco", str(video_dir), out])
    assert line == f"error: {video_dir}: holds frame XMLs itself; pass the split folder above the video folders"
    assert not os.path.exists(out)


@pytest.mark.parametrize(
    "detections, problem",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"image_id": 1}), "expected a list of COCO detection results"),
        (
            json.dumps([{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]),
            "detection 0: needs image_id, category_id, bbox and score",
        ),
        (
            json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 1}]),
            "detection 0: bbox must be 4 finite numbers and score a finite number",
        ),
    ],
)
def test_to_vid_bad_detections(val_dir: Path, tmp_path: Path, capsys, detections: str, problem: str):
    gt, _ = converted_gt(val_dir, tmp_path, with_image_set=True)
    dets = tmp_path / "dets.json"
    dets.write_text(detections)
    line = run_error(capsys, ["to-vid", str(dets), "--gt", str(gt), str(tmp_path / "r.txt")])
    assert line.startswith(f"error: {dets}: {problem}")


def test_to_vid_needs_vid_categories_and_a_complete_image_set(val_dir: Path, tmp_path: Path, capsys):
    gt, image_set = converted_gt(val_dir, tmp_path, with_image_set=False)
    dets = tmp_path / "dets.json"
    dets.write_text("[]")
    image_set.write_text("ILSVRC2015_val_00000000/000000 1\n")
    argv = ["to-vid", str(dets), "--gt", str(gt), str(tmp_path / "r.txt")]
    line = run_error(capsys, argv + ["--image-set", str(image_set)])
    assert line == f"error: {image_set}: no line for frame ILSVRC2015_val_00000000/000001 (image 2 of {gt})"

    data = json.loads(gt.read_text())
    del data["categories"][0]["wnid"]
    gt.write_text(json.dumps(data))
    line = run_error(capsys, argv)
    assert line == (
        f"error: {gt}: categories[0] has no 'id' and 'wnid' (write the ground truth with sltnet-convert vid-to-stcoco)"
    )
