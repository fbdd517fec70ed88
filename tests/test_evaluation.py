"""Evaluation metrics (docs/metrics.md#the-metrics): VID mAP@0.5, its motion breakdown, COCO AP, detection files."""

import json
import time
from collections.abc import Sequence

import numpy as np
import pytest

from sltnet.data.records import FrameRecord, StCocoDataset, VideoRecord
from sltnet.errors import SltnetError
from sltnet.evaluation import Detections, evaluate, format_table, load_detections, parse_detections
from sltnet.evaluation.motion import FAST, ISOLATED, MEDIUM, SLOW, motion_ious, speed_groups
from sltnet.evaluation.vid_map import average_precision, ground_truth_table, match_frame, match_thresholds

CATEGORY_IDS = [10, 20, 30]
CLASS_NAMES = ["cat", "dog", "fox"]

# One ground-truth box: (video, frame_number, class, track id, (x1, y1, x2, y2)).
Box = tuple[str, int, int, int, Sequence[float]]


def make_dataset(frames: Sequence[tuple[str, int]], boxes: Sequence[Box]) -> StCocoDataset:
    """A dataset with the given (video, frame_number) frames in order; image ids are 1, 2, ..."""
    boxes_of_frame: dict[tuple[str, int], list[Box]] = {}
    for box in boxes:
        boxes_of_frame.setdefault((box[0], box[1]), []).append(box)
    videos: list[VideoRecord] = []
    for image_id, (video, frame_number) in enumerate(frames, start=1):
        mine = boxes_of_frame.get((video, frame_number), [])
        frame = FrameRecord(
            image_id=image_id,
            file_name=f"{video}/{frame_number:06d}.jpg",
            video=video,
            frame_number=frame_number,
            width=640,
            height=480,
            boxes=np.array([b[4] for b in mine], dtype=np.float32).reshape(-1, 4),
            classes=np.array([b[2] for b in mine], dtype=np.int64),
            track_ids=np.array([b[3] for b in mine], dtype=np.int64),
            annotation_ids=np.arange(len(mine), dtype=np.int64),
        )
        if not videos or videos[-1].name != video:
            videos.append(VideoRecord(name=video, frames=[]))
        videos[-1].frames.append(frame)
    return StCocoDataset("gt.json", ".", list(CLASS_NAMES), list(CATEGORY_IDS), videos)


def image_id_of(dataset: StCocoDataset) -> dict[tuple[str, int], int]:
    return {(f.video, f.frame_number): f.image_id for f in dataset.frames()}


def make_detections(dataset: StCocoDataset, rows: Sequence[tuple[str, int, int, float, Sequence[float]]]) -> Detections:
    """Detections from rows (video, frame_number, class, score, (x1, y1, x2, y2))."""
    ids = image_id_of(dataset)
    return Detections(
        image_ids=np.array([ids[(r[0], r[1])] for r in rows], dtype=np.int64),
        boxes=np.array([r[4] for r in rows], dtype=np.float64).reshape(-1, 4),
        scores=np.array([r[3] for r in rows], dtype=np.float64),
        classes=np.array([r[2] for r in rows], dtype=np.int64),
    )


def shifted(box: Sequence[float], dx: float) -> list[float]:
    return [box[0] + dx, box[1], box[2] + dx, box[3]]


def ground_truth_as_results(dataset: StCocoDataset) -> list[dict]:
    """The dataset's boxes in COCO results format, score 1."""
    return [
        {
            "image_id": frame.image_id,
            "category_id": dataset.category_ids[cls],
            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
            "score": 1.0,
        }
        for frame in dataset.frames()
        for (x1, y1, x2, y2), cls in zip(frame.boxes, frame.classes)
    ]


# ------------------------------------------------------------------------------------------------
# Ground truth as detections


def test_ground_truth_as_detections_scores_one_everywhere():
    frames = [("a", t) for t in range(13)] + [("b", 0)]
    boxes: list[Box] = []
    for t in range(13):
        boxes.append(("a", t, 0, 0, [100, 100, 200, 200]))  # static: slow
        boxes.append(("a", t, 1, 1, shifted([300, 50, 350, 100], 15 * t)))  # 15 px/frame on 50 px: fast
        boxes.append(("a", t, 0, 2, shifted([20, 300, 120, 400], 1.5 * t)))  # 1.5 px/frame: medium
    boxes.append(("b", 0, 1, 0, [10, 10, 40, 40]))  # alone in its video: no motion neighbours
    dataset = make_dataset(frames, boxes)
    detections = parse_detections(ground_truth_as_results(dataset), dataset, "dets.json")

    metrics = evaluate(dataset, detections)

    assert metrics["vid"]["mAP"] == pytest.approx(1.0)
    assert metrics["vid"]["per_class"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0), "fox": None}
    for speed in ("slow", "medium", "fast"):
        assert metrics["motion"][speed]["num_ground_truth"] > 0
        assert metrics["motion"][speed]["mAP"] == pytest.approx(1.0)
    assert metrics["num_isolated_ground_truth"] == 1
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert metrics["coco"][name] == pytest.approx(1.0)
    assert metrics["num_frames"] == 14
    assert metrics["num_ground_truth"] == 40
    assert metrics["ground_truth_per_class"] == {"cat": 26, "dog": 14, "fox": 0}


def test_metrics_are_json_and_table_lists_every_class():
    dataset = make_dataset([("a", 0)], [("a", 0, 0, 0, [0, 0, 50, 50])])
    metrics = evaluate(dataset, make_detections(dataset, [("a", 0, 0, 0.9, [0, 0, 50, 50])]))
    assert json.loads(json.dumps(metrics, allow_nan=False)) == metrics
    table = format_table(metrics)
    assert "VID mAP@0.5" in table and "COCO AP" in table
    fox_row = next(line for line in table.splitlines() if line.startswith("fox"))
    assert fox_row.split() == ["fox", "0", "n/a", "n/a", "n/a", "n/a"]
    cat_row = next(line for line in table.splitlines() if line.startswith("cat"))
    assert cat_row.split()[:3] == ["cat", "1", "100.0"]


# ------------------------------------------------------------------------------------------------
# VID mAP@0.5 rules


def test_match_thresholds_relax_only_small_objects():
    thresholds = match_thresholds(np.array([[0, 0, 10, 10], [0, 0, 100, 100], [0, 0, 20, 5]], dtype=np.float64))
    assert thresholds == pytest.approx([100 / 400, 0.5, 100 / (30 * 15)])


@pytest.mark.parametrize("shift, matches", [(5.9, True), (6.1, False)])
def test_small_object_just_under_threshold_is_false_positive(shift, matches):
    # A 10x10 GT needs IoU 0.25; shifting a copy by s gives IoU (10 - s) / (10 + s): 0.258 and 0.242.
    gt = [100, 100, 110, 110]
    dataset = make_dataset([("a", 0)], [("a", 0, 0, 0, gt)])
    metrics = evaluate(dataset, make_detections(dataset, [("a", 0, 0, 0.9, shifted(gt, shift))]))
    assert metrics["vid"]["mAP"] == pytest.approx(1.0 if matches else 0.0)


def test_large_object_needs_half_overlap():
    gt = [100, 100, 200, 200]
    dataset = make_dataset([("a", 0)], [("a", 0, 0, 0, gt)])
    # IoU 40 / 160 = 0.25 would match a small object but not a 100x100 one.
    metrics = evaluate(dataset, make_detections(dataset, [("a", 0, 0, 0.9, shifted(gt, 60))]))
    assert metrics["vid"]["mAP"] == pytest.approx(0.0)


def test_duplicate_detection_counts_once():
    a, b = [0, 0, 100, 100], [300, 300, 400, 400]
    dataset = make_dataset([("a", 0)], [("a", 0, 0, 0, a), ("a", 0, 0, 1, b)])
    rows = [("a", 0, 0, 0.9, a), ("a", 0, 0, 0.8, shifted(a, 1)), ("a", 0, 0, 0.7, b)]
    metrics = evaluate(dataset, make_detections(dataset, rows))
    # TP, FP, TP: recall 0.5, 0.5, 1 with precision 1, 1/2, 2/3 -> AP = 0.5 * 1 + 0.5 * 2/3.
    assert metrics["vid"]["mAP"] == pytest.approx(5 / 6)


def test_later_detection_takes_the_best_free_ground_truth():
    gt_boxes = np.array([[0, 0, 10, 10], [2, 0, 12, 10]], dtype=np.float64)
    det_boxes = np.array([[0, 0, 10, 10], [0.5, 0, 10.5, 10]], dtype=np.float64)
    # The second detection overlaps the first GT most (0.90) but that one is taken; the second GT
    # (0.74) still qualifies, as in the devkit.
    matched, iou = match_frame(det_boxes, np.array([0.9, 0.8]), np.array([0, 0]), gt_boxes, np.array([0, 0]))
    assert matched.tolist() == [0, 1]
    assert iou[1] == pytest.approx([9.5 / 10.5, 8.5 / 11.5])
    # Highest score first, whatever the order in the file.
    matched, _ = match_frame(det_boxes[::-1], np.array([0.8, 0.9]), np.array([0, 0]), gt_boxes, np.array([0, 0]))
    assert matched.tolist() == [1, 0]


def test_equal_scores_rank_in_frame_order_whatever_the_file_order():
    """The devkit sorts by score with a stable sort over frames taken in order: a shuffled file scores
    the same as a sorted one."""
    box = [0, 0, 100, 100]
    dataset = make_dataset([("a", 0), ("a", 1)], [("a", 1, 0, 0, box)])
    false_positive, true_positive = ("a", 0, 0, 0.5, box), ("a", 1, 0, 0.5, box)
    in_frame_order = evaluate(dataset, make_detections(dataset, [false_positive, true_positive]))
    shuffled = evaluate(dataset, make_detections(dataset, [true_positive, false_positive]))
    # Frame 0's false positive ranks first: precision 1/2 at recall 1.
    assert in_frame_order["vid"]["mAP"] == pytest.approx(0.5)
    assert shuffled["vid"] == in_frame_order["vid"]


def test_class_without_ground_truth_is_skipped():
    cat, dog1, dog2 = [0, 0, 50, 50], [100, 0, 150, 50], [200, 0, 250, 50]
    dataset = make_dataset([("a", 0)], [("a", 0, 0, 0, cat), ("a", 0, 1, 1, dog1), ("a", 0, 1, 2, dog2)])
    rows = [("a", 0, 0, 0.9, cat), ("a", 0, 1, 0.9, dog1), ("a", 0, 2, 0.95, [300, 300, 350, 350])]
    metrics = evaluate(dataset, make_detections(dataset, rows))
    assert metrics["vid"]["per_class"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(0.5), "fox": None}
    assert metrics["vid"]["mAP"] == pytest.approx(0.75)


def test_wrong_class_never_matches():
    box = [0, 0, 50, 50]
    dataset = make_dataset([("a", 0)], [("a", 0, 0, 0, box)])
    metrics = evaluate(dataset, make_detections(dataset, [("a", 0, 1, 0.9, box)]))
    assert metrics["vid"]["per_class"]["cat"] == pytest.approx(0.0)
    assert metrics["vid"]["per_class"]["dog"] is None
    assert metrics["coco"]["AP"] == pytest.approx(0.0)


def test_no_detections_scores_zero():
    dataset = make_dataset([("a", 0)], [("a", 0, 0, 0, [0, 0, 50, 50])])
    metrics = evaluate(dataset, make_detections(dataset, []))
    assert metrics["vid"]["mAP"] == 0.0
    assert metrics["coco"]["AP"] == 0.0
    assert metrics["coco"]["APl"] is None  # no large objects


def test_dataset_without_ground_truth_has_nothing_to_score():
    dataset = make_dataset([("a", 0)], [])
    metrics = evaluate(dataset, make_detections(dataset, [("a", 0, 0, 0.9, [0, 0, 50, 50])]))
    assert metrics["vid"]["mAP"] is None
    assert all(metrics["motion"][speed]["mAP"] is None for speed in ("slow", "medium", "fast"))
    assert all(value is None for value in metrics["coco"].values())


def test_average_precision_interpolates_precision():
    # Precision 1, 0.5, 2/3 at recall 1/3, 1/3, 2/3; the 0.5 is lifted to 2/3 and recall 1 is never reached.
    assert average_precision(np.array([1 / 3, 1 / 3, 2 / 3]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(
        1 / 3 + 1 / 3 * 2 / 3
    )
    assert average_precision(np.zeros(0), np.zeros(0)) == 0.0


# ------------------------------------------------------------------------------------------------
# Motion IoU and speeds


def test_motion_iou_of_hand_made_tracks():
    box = [0, 0, 10, 10]
    frames = [("a", 0), ("a", 1), ("a", 2), ("a", 10), ("a", 15), ("b", 0), ("b", 1)]
    boxes: list[Box] = [
        ("a", 0, 0, 0, box),
        ("a", 0, 1, 1, [100, 0, 110, 10]),
        ("a", 1, 0, 0, shifted(box, 1)),
        ("a", 2, 0, 0, shifted(box, 2)),
        ("a", 10, 1, 1, [105, 0, 115, 10]),  # 10 frames after its previous box: still in the window
        ("a", 15, 0, 0, shifted(box, 2)),  # 13 frames after its previous box: no neighbours
        ("b", 0, 0, 0, box),  # same track id in another video: a different track
        ("b", 1, 0, 0, box),
    ]
    ground_truth = ground_truth_table(make_dataset(frames, boxes))

    mean_iou = motion_ious(ground_truth)

    # Rows follow frames, then annotation order. A 1 px shift of a 10 px box has IoU 9/11, 2 px 8/12.
    expected = [(9 / 11 + 8 / 12) / 2, 5 / 15, 9 / 11, (8 / 12 + 9 / 11) / 2, 5 / 15, np.nan, 1.0, 1.0]
    np.testing.assert_allclose(mean_iou, expected)
    assert speed_groups(mean_iou).tolist() == [MEDIUM, FAST, MEDIUM, MEDIUM, FAST, ISOLATED, SLOW, SLOW]


def test_speed_boundaries():
    groups = speed_groups(np.array([0.95, 0.9, 0.8, 0.7, 0.69, np.nan]))
    assert groups.tolist() == [SLOW, MEDIUM, MEDIUM, MEDIUM, FAST, ISOLATED]


# A video where one cat stands still (slow) while another cat and a dog jump 40 px a frame (fast);
# frame 2 is empty. A third of the GTs are slow; in frames 0 and 1, two GTs of three are fast.
SLOW_BOX = [10, 10, 60, 60]
FAST_BOXES = [[100, 100, 150, 150], [140, 100, 190, 150]]
DOG_BOXES = [[400, 300, 450, 350], [440, 300, 490, 350]]


def two_speed_dataset() -> StCocoDataset:
    boxes: list[Box] = [("v", t, 0, 0, SLOW_BOX) for t in (0, 1)]
    boxes += [("v", t, 0, 1, FAST_BOXES[t]) for t in (0, 1)]
    boxes += [("v", t, 1, 2, DOG_BOXES[t]) for t in (0, 1)]
    return make_dataset([("v", 0), ("v", 1), ("v", 2)], boxes)


def slow_detections(score: float = 0.9) -> list:
    return [("v", t, 0, score, SLOW_BOX) for t in (0, 1)]


def test_two_speed_dataset_has_one_slow_and_two_fast_tracks():
    metrics = evaluate(two_speed_dataset(), make_detections(two_speed_dataset(), slow_detections()))
    assert [metrics["motion"][s]["num_ground_truth"] for s in ("slow", "medium", "fast")] == [2, 0, 4]
    assert metrics["motion"]["slow"]["per_class"] == {"cat": pytest.approx(1.0), "dog": None, "fox": None}
    assert metrics["motion"]["medium"]["mAP"] is None
    assert metrics["motion"]["fast"]["per_class"]["cat"] == pytest.approx(0.0)
    assert metrics["vid"]["per_class"]["cat"] == pytest.approx(0.5)


def test_ground_truth_without_neighbours_counts_in_every_speed():
    box = [0, 0, 50, 50]
    # Two one-frame videos: the cat has no neighbours, the dog is found, the cat is not.
    dataset = make_dataset([("s", 0), ("t", 0)], [("s", 0, 0, 0, box), ("t", 0, 1, 0, box)])
    metrics = evaluate(dataset, make_detections(dataset, [("t", 0, 1, 0.9, box), ("s", 0, 0, 0.8, shifted(box, 40))]))
    assert metrics["num_isolated_ground_truth"] == 2
    for speed in ("slow", "medium", "fast"):
        assert metrics["motion"][speed]["num_ground_truth"] == 0
        assert metrics["motion"][speed]["per_class"] == {"cat": 0.0, "dog": 1.0, "fox": None}


def test_detection_matched_to_ignored_ground_truth_is_neither_tp_nor_fp():
    dataset = two_speed_dataset()
    # The best-scored detection finds the fast cat: in the slow breakdown that GT is ignored.
    rows = [("v", 0, 0, 0.95, FAST_BOXES[0])] + slow_detections()
    with_it = evaluate(dataset, make_detections(dataset, rows))
    without_it = evaluate(dataset, make_detections(dataset, slow_detections()))
    assert with_it["motion"]["slow"]["mAP"] == pytest.approx(without_it["motion"]["slow"]["mAP"]) == 1.0
    # For the fast breakdown the same detection is a TP.
    assert with_it["motion"]["fast"]["per_class"]["cat"] == pytest.approx(0.5)


def test_unmatched_detection_on_ignored_ground_truth_is_not_a_false_positive():
    dataset = two_speed_dataset()
    # Two detections on the fast cat: the second is a duplicate that overlaps only an ignored GT.
    rows = [("v", 0, 0, 0.99, FAST_BOXES[0]), ("v", 0, 0, 0.95, shifted(FAST_BOXES[0], 1))] + slow_detections()
    metrics = evaluate(dataset, make_detections(dataset, rows))
    assert metrics["motion"]["slow"]["mAP"] == pytest.approx(1.0)
    # Plain VID mAP counts it: TP, FP, TP, TP over 4 GTs -> 0.25 * 1 + 0.5 * 3/4.
    assert metrics["vid"]["per_class"]["cat"] == pytest.approx(0.25 + 0.5 * 0.75)


def test_false_positive_in_empty_frame_weighs_the_speed_share():
    dataset = two_speed_dataset()
    rows = [("v", 2, 0, 0.99, [300, 300, 350, 350])] + slow_detections()
    metrics = evaluate(dataset, make_detections(dataset, rows))
    # A third of the GTs are slow: the FP weighs 1/3. Precision 0, 3/4, 6/7 -> AP 6/7.
    assert metrics["motion"]["slow"]["mAP"] == pytest.approx(6 / 7)


def test_false_positive_overlapping_nothing_weighs_the_ignored_share_of_its_frame():
    dataset = two_speed_dataset()
    rows = [("v", 0, 0, 0.99, [300, 300, 350, 350])] + slow_detections()
    metrics = evaluate(dataset, make_detections(dataset, rows))
    # It overlaps counted and ignored GTs equally (not at all); 2 of the frame's 3 GTs are ignored, so
    # (as FGFA computes it) it weighs 2/3. Precision 0, 3/5, 3/4 -> AP 3/4.
    assert metrics["motion"]["slow"]["mAP"] == pytest.approx(0.75)
    # Overlapping the counted GT makes it a whole FP: precision 0, 1/2, 2/3 -> AP 2/3.
    rows = [("v", 0, 0, 0.99, shifted(SLOW_BOX, 30))] + slow_detections()
    metrics = evaluate(dataset, make_detections(dataset, rows))
    assert metrics["motion"]["slow"]["mAP"] == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------------
# Detection files


def test_parse_detections_converts_ids_and_boxes():
    dataset = make_dataset([("a", 0), ("a", 1)], [])
    results = [
        {"image_id": 2, "category_id": 30, "bbox": [1, 2, 3, 4], "score": 0.5},
        {"image_id": 1, "category_id": 10, "bbox": [0.5, 0, 10, 20.5], "score": 1},
    ]
    detections = parse_detections(results, dataset, "dets.json")
    assert detections.image_ids.tolist() == [2, 1]
    assert detections.classes.tolist() == [2, 0]
    assert detections.boxes.tolist() == [[1, 2, 4, 6], [0.5, 0, 10.5, 20.5]]
    assert detections.scores.tolist() == [0.5, 1.0]


GOOD = {"image_id": 1, "category_id": 10, "bbox": [1, 2, 3, 4], "score": 0.5}


@pytest.mark.parametrize(
    "entry, message",
    [
        ({**GOOD, "image_id": 99}, "dets.json: detection 1: unknown image id 99"),
        ({**GOOD, "image_id": "1"}, "dets.json: detection 1: 'image_id' must be an integer, got '1'"),
        ({**GOOD, "category_id": 11}, "dets.json: detection 1 (image 1): unknown category id 11"),
        ({**GOOD, "category_id": 10.0}, "dets.json: detection 1 (image 1): 'category_id' must be an integer, got 10.0"),
        (
            {**GOOD, "bbox": [1, 2, -3, 4]},
            "dets.json: detection 1 (image 1): 'bbox' must be [x, y, width, height] with 4 finite numbers "
            "and width, height >= 0, got [1, 2, -3, 4]",
        ),
        ({**GOOD, "bbox": [1, 2, 3]}, "dets.json: detection 1 (image 1): 'bbox' must be"),
        ({**GOOD, "bbox": [1, 2, float("nan"), 4]}, "dets.json: detection 1 (image 1): 'bbox' must be"),
        ({**GOOD, "bbox": [1, 2, True, 4]}, "dets.json: detection 1 (image 1): 'bbox' must be"),
        ({**GOOD, "score": "high"}, "dets.json: detection 1 (image 1): 'score' must be a finite number, got 'high'"),
        ({k: v for k, v in GOOD.items() if k != "score"}, "dets.json: detection 1: missing required field 'score'"),
        ([1, 2], "dets.json: detection 1: not a JSON object"),
    ],
)
def test_bad_detection_entries_are_named(entry, message):
    dataset = make_dataset([("a", 0)], [])
    with pytest.raises(SltnetError) as err:
        parse_detections([GOOD, entry], dataset, "dets.json")
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ("[{]", "not valid JSON (line 1, column 3: Expecting property name enclosed in double quotes)"),
        ('{"image_id": 1}', "expected a JSON list of detections"),
    ],
)
def test_bad_detection_files_are_named(tmp_path, content, message):
    path = tmp_path / "dets.json"
    path.write_text(content)
    with pytest.raises(SltnetError) as err:
        load_detections(str(path), make_dataset([("a", 0)], []))
    assert str(err.value) == f"{path}: {message}"


def test_missing_detection_file(tmp_path):
    path = tmp_path / "missing.json"
    with pytest.raises(SltnetError, match=r"missing\.json: cannot read detections \(No such file or directory\)$"):
        load_detections(str(path), make_dataset([("a", 0)], []))


# ------------------------------------------------------------------------------------------------
# Speed (a benchmark: prints the time, asserts nothing about it)


def test_speed_of_scoring_2000_frames(capsys):
    rng = np.random.default_rng(0)
    frames, boxes, rows = [], [], []
    for video in range(20):
        start = rng.uniform(0, 300, size=(3, 2))
        velocity = rng.normal(0, 3, size=(3, 2))
        size = rng.uniform(20, 200, size=(3, 2))
        classes = rng.integers(0, 3, size=3)
        for t in range(100):
            frames.append((f"v{video}", t))
            for track in range(3):
                xy = start[track] + velocity[track] * t
                box = [*xy, *(xy + size[track])]
                boxes.append((f"v{video}", t, int(classes[track]), track, box))
                found = list(np.add(box, rng.normal(0, 3, size=4)))
                rows.append((f"v{video}", t, int(classes[track]), float(rng.uniform()), found))
            for _ in range(17):
                xy = rng.uniform(0, 500, size=2)
                rows.append((f"v{video}", t, int(rng.integers(0, 3)), float(rng.uniform()), [*xy, *(xy + 60)]))
    dataset = make_dataset(frames, boxes)
    detections = make_detections(dataset, rows)

    start_time = time.perf_counter()
    metrics = evaluate(dataset, detections)
    elapsed = time.perf_counter() - start_time

    assert metrics["num_frames"] == 2000 and metrics["num_detections"] == 40000
    with capsys.disabled():
        print(f"\nscoring 2000 frames, 6000 GTs, 40000 detections: {elapsed:.2f} s (target < 30 s)")


def test_subset_map_ignores_boxes_outside_the_subset():
    """Only the counted box matters: missing the ignored one costs nothing, finding it is no TP."""
    from sltnet.evaluation.report import subset_map

    frame = FrameRecord(
        image_id=1,
        file_name="a.jpg",
        video="v",
        frame_number=0,
        width=100,
        height=100,
        boxes=np.array([[0, 0, 20, 20], [50, 50, 90, 90]], np.float32),
        classes=np.array([0, 0]),
        track_ids=np.array([0, 1]),
        annotation_ids=np.array([1, 2]),
    )
    dataset = StCocoDataset("gt.json", ".", ["a"], [1], [VideoRecord("v", [frame])])
    only_second = Detections(np.array([1]), np.array([[50, 50, 90, 90]], np.float64), np.array([0.9]), np.array([0]))
    assert subset_map(dataset, only_second, np.array([False, True])) == pytest.approx(1.0)
    assert subset_map(dataset, only_second, np.array([True, False])) == pytest.approx(0.0)
