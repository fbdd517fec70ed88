"""ST-COCO validation messages and loading (docs/data.md#st-coco)."""

import copy
import json

import numpy as np
import pytest

from sltnet.data.stcoco import load_stcoco, read_stcoco_json, validate_stcoco
from sltnet.errors import SltnetError

JSON = "ann.json"


def make_stcoco():
    """Two 64x48 videos of 3 frames, one track each; category ids 7 and 3 (not contiguous, not sorted)."""
    images, annotations = [], []
    for v, video in enumerate(("cat_video", "dog_video")):
        for f in range(3):
            image_id = v * 3 + f + 1
            images.append(
                dict(id=image_id, file_name=f"{video}/{f:06d}.jpg", width=64, height=48, video=video, frame_number=f)
            )
            category_id = 7 if v == 0 else 3
            annotations.append(
                dict(id=image_id, image_id=image_id, category_id=category_id, bbox=[10, 5, 20 + f, 10], id_track=0)
            )
    categories = [dict(id=7, name="cat"), dict(id=3, name="dog")]
    return dict(images=images, annotations=annotations, categories=categories)


def problems_after(change):
    data = make_stcoco()
    change(data)
    return validate_stcoco(data, JSON)


def test_valid_file_has_no_problems():
    assert validate_stcoco(make_stcoco(), JSON) == []


def _del(entry, key):
    del entry[key]


def _set(entry, key, value):
    entry[key] = value


@pytest.mark.parametrize(
    "change, expected",
    [
        pytest.param(
            lambda d: _del(d["images"][1], "width"),
            "ann.json: image 2: missing required field 'width'",
            id="image-missing-width",
        ),
        pytest.param(
            lambda d: (_del(d["images"][1], "frame_number"), _del(d["images"][1], "video")),
            "ann.json: image 2: missing required fields 'video', 'frame_number' (other images have them: "
            "a video set needs them on every image, a still-image set on none)",
            id="image-mix-of-still-and-video",
        ),
        pytest.param(
            lambda d: _del(d["annotations"][4], "id_track"),
            "ann.json: annotation 5: missing required field 'id_track'",
            id="annotation-missing-track",
        ),
        pytest.param(
            lambda d: _del(d["annotations"][0], "bbox"),
            "ann.json: annotation 1: missing required field 'bbox'",
            id="annotation-missing-bbox",
        ),
        pytest.param(
            lambda d: _del(d["categories"][1], "name"),
            "ann.json: category 3: missing required field 'name'",
            id="category-missing-name",
        ),
        pytest.param(
            lambda d: d["annotations"].append("x"),
            "ann.json: annotations[6]: not a JSON object",
            id="annotation-not-object",
        ),
        pytest.param(
            lambda d: _set(d["images"][2], "frame_number", 1),
            "ann.json: image 3: frame_number 1 of video 'cat_video' does not come after frame 1 "
            "(frames must be in increasing frame_number order)",
            id="frame-out-of-order",
        ),
        pytest.param(
            lambda d: d["images"].append(d["images"].pop(1)),
            "ann.json: image 2: video 'cat_video' appears again after other videos "
            "(images must be grouped by video, then ordered by frame)",
            id="video-not-contiguous",
        ),
        pytest.param(
            lambda d: _set(d["annotations"][3], "bbox", [3, 4, 0, 5]),
            "ann.json: annotation 4 (image 4): box [3, 4, 0, 5] has non-positive width",
            id="zero-width",
        ),
        pytest.param(
            lambda d: _set(d["annotations"][3], "bbox", [3, 4, 2, -1.5]),
            "ann.json: annotation 4 (image 4): box [3, 4, 2, -1.5] has non-positive height",
            id="negative-height",
        ),
        pytest.param(
            lambda d: _set(d["annotations"][0], "bbox", [50, 5, 20, 10]),
            "ann.json: annotation 1 (image 1): box [50, 5, 20, 10] lies outside the 64x48 image",
            id="box-outside-right",
        ),
        pytest.param(
            lambda d: _set(d["annotations"][0], "bbox", [-2, 5, 20, 10]),
            "ann.json: annotation 1 (image 1): box [-2, 5, 20, 10] lies outside the 64x48 image",
            id="box-outside-left",
        ),
        pytest.param(
            lambda d: _set(d["annotations"][0], "bbox", [1, 2, 3]),
            "ann.json: annotation 1 (image 1): "
            "'bbox' must be [x, y, width, height] with 4 finite numbers, got [1, 2, 3]",
            id="bbox-three-numbers",
        ),
        pytest.param(
            lambda d: _set(d["annotations"][5], "id", 1),
            "ann.json: annotation 1 (image 6): duplicate annotation id",
            id="duplicate-annotation-id",
        ),
        pytest.param(
            lambda d: d["categories"].append(dict(id=7, name="other")),
            "ann.json: category 7: duplicate category id",
            id="duplicate-category-id",
        ),
        pytest.param(
            lambda d: _set(d["annotations"][2], "category_id", 99),
            "ann.json: annotation 3 (image 3): unknown category id 99",
            id="unknown-category",
        ),
        pytest.param(
            lambda d: _set(d["annotations"][2], "image_id", 42),
            "ann.json: annotation 3 (image 42): unknown image id 42",
            id="unknown-image",
        ),
        pytest.param(
            lambda d: d["annotations"].append(dict(d["annotations"][0], id=100)),
            "ann.json: annotation 100 (image 1): track 0 has two boxes in this image",
            id="track-twice-in-image",
        ),
        pytest.param(
            lambda d: _set(d["images"][0], "height", 0),
            "ann.json: image 1: 'height' must be a positive integer, got 0",
            id="zero-image-height",
        ),
        pytest.param(
            lambda d: _set(d["images"][0], "frame_number", "0"),
            "ann.json: image 1: 'frame_number' must be an integer, got '0'",
            id="frame-number-string",
        ),
        pytest.param(
            lambda d: d.pop("annotations"),
            "ann.json: not a COCO instances file (missing top-level 'annotations')",
            id="no-annotations-key",
        ),
        pytest.param(
            lambda d: (d["images"].clear(), d["annotations"].clear()),
            "ann.json: no images",
            id="no-images",
        ),
    ],
)
def test_each_problem_is_one_precise_line(change, expected):
    assert problems_after(change) == [expected]


@pytest.mark.parametrize(
    "change, expected",
    [
        pytest.param(
            lambda d: _del(d["images"][0], "id"),
            "ann.json: images[0]: missing required field 'id'",
            id="image-missing-id",
        ),
        pytest.param(
            lambda d: _set(d["images"][4], "id", 2),
            "ann.json: image 2: duplicate image id",
            id="duplicate-image-id",
        ),
    ],
)
def test_image_id_problems_also_orphan_their_annotations(change, expected):
    problems = problems_after(change)
    assert problems[0] == expected
    assert len(problems) == 2 and "unknown image id" in problems[1]


def test_top_level_must_be_an_object():
    assert validate_stcoco([1, 2], JSON) == [
        "ann.json: not a COCO instances file (top level is a JSON list, not an object)"
    ]


def test_box_within_one_pixel_of_the_border_is_accepted_and_clipped(tmp_path):
    data = make_stcoco()
    data["annotations"][0]["bbox"] = [-1, 0, 65, 49]  # 1 px past every border
    assert validate_stcoco(data, JSON) == []
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    dataset = load_stcoco(str(path), str(tmp_path))
    np.testing.assert_array_equal(dataset.videos[0].frames[0].boxes, [[0, 0, 64, 48]])


def test_every_problem_is_listed():
    data = make_stcoco()
    data["annotations"][0]["category_id"] = 5
    data["annotations"][1]["bbox"] = [0, 0, -1, 4]
    data["annotations"][2]["bbox"] = [0, 0, 4, 0]
    assert len(validate_stcoco(data, JSON)) == 3


def test_missing_image_files_are_reported_with_check_images(tmp_path):
    data = make_stcoco()
    for image in data["images"][1:]:
        (tmp_path / image["file_name"]).parent.mkdir(exist_ok=True)
        (tmp_path / image["file_name"]).write_bytes(b"")
    assert validate_stcoco(data, JSON, str(tmp_path)) == []  # files are only checked on request
    assert validate_stcoco(data, JSON, str(tmp_path), check_images=True) == [
        f"ann.json: image 1: image file not found: {tmp_path / 'cat_video/000000.jpg'}"
    ]


def test_missing_image_root_is_reported(tmp_path):
    assert validate_stcoco(make_stcoco(), JSON, str(tmp_path / "nope"), check_images=True) == [
        f"ann.json: image root not found: {tmp_path / 'nope'}"
    ]


def test_missing_file(tmp_path):
    with pytest.raises(SltnetError, match=r"^.*/nope\.json: annotation file not found$"):
        read_stcoco_json(str(tmp_path / "nope.json"))


def test_not_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"images": [\n  oops')
    with pytest.raises(SltnetError) as err:
        read_stcoco_json(str(path))
    assert str(err.value) == f"{path}: not valid JSON (line 2, column 3: Expecting value)"


def test_load_reports_first_problem_and_count(tmp_path):
    data = make_stcoco()
    for ann in data["annotations"][:3]:
        ann["category_id"] = 99
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SltnetError) as err:
        load_stcoco(str(path), str(tmp_path))
    assert str(err.value) == (
        f"{path}: annotation 1 (image 1): unknown category id 99 "
        "(and 2 more problems; run 'sltnet-data validate' to list them)"
    )


def test_load_maps_categories_and_converts_boxes(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(make_stcoco()))
    dataset = load_stcoco(str(path), str(tmp_path))
    # Sorted ascending: category 3 (dog) is class 0, category 7 (cat) is class 1.
    assert dataset.category_ids == [3, 7]
    assert dataset.class_names == ["dog", "cat"]
    assert dataset.category_id_to_class == {3: 0, 7: 1}
    assert [v.name for v in dataset.videos] == ["cat_video", "dog_video"]
    cat_frames = dataset.videos[0].frames
    assert [f.frame_number for f in cat_frames] == [0, 1, 2]
    assert cat_frames[2].classes.tolist() == [1]
    assert dataset.videos[1].frames[0].classes.tolist() == [0]
    np.testing.assert_array_equal(cat_frames[2].boxes, [[10, 5, 32, 15]])  # [10, 5, 22, 10] xywh
    assert cat_frames[2].boxes.dtype == np.float32
    assert cat_frames[2].track_ids.tolist() == [0]
    assert cat_frames[2].annotation_ids.tolist() == [3]


def test_frames_keep_annotation_order_and_empty_frames(tmp_path):
    data = make_stcoco()
    data["annotations"].insert(0, dict(id=50, image_id=2, category_id=3, bbox=[0, 0, 5, 5], id_track=4))
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 3]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    frames = load_stcoco(str(path), str(tmp_path)).videos[0].frames
    assert frames[1].track_ids.tolist() == [4, 0]
    assert frames[1].annotation_ids.tolist() == [50, 2]
    assert frames[2].boxes.shape == (0, 4)


def test_still_images_are_one_frame_videos(tmp_path):
    data = make_stcoco()
    for image in data["images"]:
        del image["video"], image["frame_number"]
        image["file_name"] = image["file_name"].replace("/", "_")
    assert validate_stcoco(data, JSON) == []
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    dataset = load_stcoco(str(path), str(tmp_path))
    assert len(dataset.videos) == 6
    assert dataset.videos[0].name == "cat_video_000000"
    assert [len(v.frames) for v in dataset.videos] == [1] * 6
    assert dataset.videos[0].frames[0].frame_number == 0


@pytest.mark.parametrize("names", [("same.jpg", "same.png"), ("same.jpg", "same.jpg")])
def test_still_images_with_the_same_video_name_collide(names):
    data = make_stcoco()
    for image in data["images"]:
        del image["video"], image["frame_number"]
    data["images"][1]["file_name"], data["images"][4]["file_name"] = names
    assert validate_stcoco(data, JSON) == [
        f"ann.json: image 5: file_name '{names[1]}' gives the same one-frame video name 'same' as image 2"
    ]


def test_validation_does_not_modify_the_data():
    data = make_stcoco()
    data["annotations"][0]["bbox"] = [0, 0, -1, 4]
    before = copy.deepcopy(data)
    validate_stcoco(data, JSON)
    assert data == before
