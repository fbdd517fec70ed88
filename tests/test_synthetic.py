"""The synthetic video benchmark: valid ST-COCO, reproducible bytes, hidden class evidence, CLI errors."""

import dataclasses
import hashlib
import json
import os
from collections import defaultdict

import av
import numpy as np
import pytest

from sltnet.data.stcoco import load_stcoco, validate_stcoco
from sltnet.data.synthetic import sampling, writing
from sltnet.data.synthetic.rendering import render_frame
from sltnet.data.synthetic.sampling import CLASS_INKS, HIDE_TYPES, SynthOptions, sample_video, split_seed, visible_boxes
from sltnet.errors import SltnetError
from sltnet.tools.synth import main

SMALL = ["--videos", "3", "--frames", "10", "--size", "64"]


def _run(out_dir, *args):
    return main([str(out_dir), "--split", "s", *SMALL, "--workers", "1", *args])


def _file_hashes(root):
    hashes = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                hashes[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return hashes


def _load(out_dir, split="s"):
    with open(os.path.join(out_dir, "annotations", f"{split}.json")) as f:
        return json.load(f)


def _tracks(data):
    """(video, id_track) -> [(frame_number, annotation)] in frame order."""
    images = {image["id"]: image for image in data["images"]}
    tracks = defaultdict(list)
    for ann in data["annotations"]:
        image = images[ann["image_id"]]
        tracks[(image["video"], ann["id_track"])].append((image["frame_number"], ann))
    return {key: sorted(frames, key=lambda item: item[0]) for key, frames in tracks.items()}


def test_output_is_valid_stcoco(tmp_path, capsys):
    assert _run(tmp_path, "--classes", "5") == 0
    assert "3 videos, 30 frames" in capsys.readouterr().out
    json_path = str(tmp_path / "annotations" / "s.json")
    data = _load(tmp_path)
    assert validate_stcoco(data, json_path, str(tmp_path / "s"), check_images=True) == []
    dataset = load_stcoco(json_path, str(tmp_path / "s"), check_images=True)
    assert dataset.class_names == list(sampling.CLASS_PATTERNS[:5])
    assert [video.name for video in dataset.videos] == ["video_00000", "video_00001", "video_00002"]
    assert all([f.frame_number for f in video.frames] == list(range(10)) for video in dataset.videos)
    assert data["images"][3]["file_name"] == "video_00000/000003.jpg"
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        assert w >= sampling.MIN_VISIBLE_SIDE and h >= sampling.MIN_VISIBLE_SIDE
        assert 0 <= x and 0 <= y and x + w <= 64 + 1e-6 and y + h <= 64 + 1e-6
        assert ann["iscrowd"] == 0 and ann["area"] == pytest.approx(w * h, abs=0.01)
        assert (ann["hide_type"] in HIDE_TYPES) if ann["hidden"] else ann["hide_type"] is None
    assert sorted(os.listdir(tmp_path)) == ["annotations", "s"]  # no temporary folders left


def test_same_arguments_give_same_bytes_whatever_the_worker_count(tmp_path):
    assert _run(tmp_path / "a", "--mp4") == 0
    assert main([str(tmp_path / "b"), "--split", "s", *SMALL, "--workers", "2", "--mp4"]) == 0
    hashes = _file_hashes(tmp_path / "a")
    assert len(hashes) == 1 + 3 * 10 + 3  # JSON, frames, one mp4 per video
    assert hashes == _file_hashes(tmp_path / "b")


def test_different_seeds_and_splits_give_different_videos(tmp_path):
    assert _run(tmp_path / "a", "--seed", "1") == 0
    assert _run(tmp_path / "b", "--seed", "2") == 0
    assert main([str(tmp_path / "c"), "--split", "t", *SMALL, "--workers", "1", "--seed", "1"]) == 0
    a, b = _file_hashes(tmp_path / "a" / "s"), _file_hashes(tmp_path / "b" / "s")
    c = _file_hashes(tmp_path / "c" / "t")
    assert a.keys() == b.keys() == c.keys()
    assert all(a[name] != b[name] and a[name] != c[name] for name in a)


def test_every_track_shows_and_hides_its_class(tmp_path):
    assert _run(tmp_path, "--frames", "16", "--hide-prob", "0.4", "--max-hidden-run", "3") == 0
    tracks = _tracks(_load(tmp_path))
    for frames in tracks.values():
        hidden = [ann["hidden"] for _, ann in frames]
        assert not hidden[0]  # causal models have seen the class before the first hidden run
        assert 0 < sum(hidden) < len(hidden)
        assert sum(hidden) == min(max(round(0.4 * len(hidden)), 1), len(hidden) - 1)
        assert len({ann["category_id"] for _, ann in frames}) == 1


def test_hidden_runs_are_contiguous_and_bounded():
    options = SynthOptions(hide_prob=0.5, max_hidden_run=3)
    rng = np.random.default_rng(0)
    for _ in range(50):
        hides = sampling.sample_hidden_runs(rng, np.arange(2, 22), 24, options)
        assert hides[:3] == (None, None, None) and hides[22:] == (None, None)
        assert sum(h is not None for h in hides) == 10
        runs = [[hides[0]]]
        for previous, current in zip(hides, hides[1:]):
            if current is previous:
                runs[-1].append(current)
            else:
                runs.append([current])
        assert all(len(run) <= 3 for run in runs if run[0] is not None)


def test_hide_prob_zero_hides_nothing(tmp_path):
    assert _run(tmp_path, "--hide-prob", "0") == 0
    assert not any(ann["hidden"] for ann in _load(tmp_path)["annotations"])


def _video(seed=0, **knobs):
    options = SynthOptions(noise=0.0, **knobs)
    return sample_video("v", split_seed(seed, "test"), 12, 96, options)


def test_boxes_match_the_rendered_objects():
    checked = 0
    for seed in range(6):
        spec = _video(seed, max_objects=1, hide_prob=0.0)
        empty = render_frame(dataclasses.replace(spec, tracks=()), 0).astype(int)
        boxes, annotated = visible_boxes(spec.tracks[0].centres, spec.tracks[0].sizes, 96)
        for frame in np.flatnonzero(annotated):
            drawn = np.abs(render_frame(spec, frame).astype(int) - empty).max(axis=2) > 2
            ys, xs = np.nonzero(drawn)
            pixel_box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            # Anti-aliased edges and the thin tips of diamonds and triangles are within 2 pixels.
            assert np.abs(pixel_box - boxes[frame]).max() <= 2.0, (seed, frame, pixel_box, boxes[frame])
            checked += 1
    assert checked > 30


@pytest.mark.parametrize("hide_type", HIDE_TYPES)
def test_hidden_frames_carry_no_class_evidence(hide_type):
    """Changing a track's class changes its shown frames and leaves its hidden frames identical."""
    spec = _video(max_objects=1, hide_prob=0.5, hide_types=(hide_type,), num_classes=8)
    track = spec.tracks[0]
    other_class = (track.class_index + 1) % 8
    relabelled = dataclasses.replace(
        spec, tracks=(dataclasses.replace(track, class_index=other_class, ink=CLASS_INKS[other_class]),)
    )
    _, annotated = visible_boxes(track.centres, track.sizes, 96)
    hidden_frames = [t for t in np.flatnonzero(annotated) if track.hides[t] is not None]
    shown_frames = [t for t in np.flatnonzero(annotated) if track.hides[t] is None]
    assert hidden_frames and shown_frames
    assert all(track.hides[t].kind == hide_type for t in hidden_frames)
    for frame in hidden_frames:
        assert np.array_equal(render_frame(spec, frame), render_frame(relabelled, frame))
    for frame in shown_frames:
        assert not np.array_equal(render_frame(spec, frame), render_frame(relabelled, frame))


@pytest.mark.parametrize("hide_type", HIDE_TYPES)
def test_hidden_objects_stay_visible(hide_type):
    spec = _video(max_objects=1, hide_prob=0.5, hide_types=(hide_type,))
    track = spec.tracks[0]
    empty = render_frame(dataclasses.replace(spec, tracks=()), 0).astype(int)
    boxes, annotated = visible_boxes(track.centres, track.sizes, 96)
    for frame in np.flatnonzero(annotated):
        if track.hides[frame] is None:
            continue
        x1, y1, x2, y2 = np.round(boxes[frame]).astype(int)
        change = np.abs(render_frame(spec, frame).astype(int) - empty)[y1:y2, x1:x2].max(axis=2)
        assert (change > 10).mean() > 0.3


def test_motion_covers_all_speed_buckets_and_objects_leave_the_frame():
    """Motion IoU (docs/metrics.md#the-metrics) over ±10 frames puts boxes in every bucket; some tracks exit."""
    buckets = set()
    partly_outside = 0
    for seed in range(40):
        spec = sample_video("v", split_seed(seed, "speed"), 30, 128, SynthOptions())
        for track in spec.tracks:
            boxes, annotated = visible_boxes(track.centres, track.sizes, 128)
            partly_outside += int(not annotated.all())
            for t in np.flatnonzero(annotated):
                near = [s for s in range(max(t - 10, 0), min(t + 11, 30)) if s != t and annotated[s]]
                lo = np.maximum(boxes[near, :2], boxes[t, :2])
                hi = np.minimum(boxes[near, 2:], boxes[t, 2:])
                inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
                areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
                motion_iou = np.mean(inter / (areas[near] + areas[t] - inter))
                buckets.add("slow" if motion_iou > 0.9 else "fast" if motion_iou < 0.7 else "medium")
    assert buckets == {"slow", "medium", "fast"}
    assert partly_outside > 0


def test_mp4_has_every_frame(tmp_path):
    assert _run(tmp_path, "--mp4", "--fps", "5") == 0
    with av.open(str(tmp_path / "s_mp4" / "video_00001.mp4")) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == 10 and frames[0].shape == (64, 64, 3)


def test_regenerating_replaces_the_split(tmp_path):
    assert _run(tmp_path / "a", "--seed", "5", "--videos", "4", "--mp4") == 0
    assert _run(tmp_path / "a", "--seed", "6") == 0
    assert _run(tmp_path / "b", "--seed", "6") == 0
    assert _file_hashes(tmp_path / "a") == _file_hashes(tmp_path / "b")  # no stale videos or mp4s


def test_failed_run_keeps_the_previous_split(tmp_path, monkeypatch):
    assert _run(tmp_path, "--seed", "1") == 0
    before = _file_hashes(tmp_path)
    write_video = writing._write_video

    def fail_on_second_video(task):
        if task.name == "video_00001":
            raise OSError(28, "No space left on device", os.path.join(task.image_dir, task.name))
        return write_video(task)

    monkeypatch.setattr(writing, "_write_video", fail_on_second_video)
    with pytest.raises(SltnetError, match="No space left on device"):
        writing.generate_split(str(tmp_path), "s", 3, 10, 64, seed=2, progress=False)
    assert _file_hashes(tmp_path) == before
    assert sorted(os.listdir(tmp_path)) == ["annotations", "s"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--frames", "0"], "--frames: must be at least 1, got 0"),
        (["--videos", "0"], "--videos: must be at least 1, got 0"),
        (["--size", "16"], "--size: must be at least 32 pixels, got 16"),
        (["--size", "65", "--mp4"], "--size: must be even with --mp4"),
        (["--seed", "-1"], "--seed: must be a non-negative integer"),
        (["--classes", "9"], "--classes: must be between 1 and 8, got 9"),
        (["--max-objects", "0"], "--max-objects: must be at least 1"),
        (["--hide-prob", "1"], "--hide-prob: must be in [0, 1), got 1"),
        (["--hide-types", "blur"], "--hide-types: expected a comma-separated subset of"),
        (["--min-object-size", "0.5", "--max-object-size", "0.2"], "--min-object-size/--max-object-size"),
        (["--max-speed", "2"], "--max-speed: must be in [0, 1]"),
        (["--noise", "-0.1"], "--noise: must be in [0, 1]"),
        (["--workers", "0"], "--workers: must be at least 1"),
        (["--split", "../up"], "--split: must be a folder name"),
    ],
)
def test_bad_options_fail_with_one_line(tmp_path, capsys, args, message):
    out_dir = tmp_path / "out"
    assert main([str(out_dir), "--split", "s", *SMALL, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not out_dir.exists()


def test_unwritable_output_folder_fails_with_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert _run(blocker / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {blocker / 'out'}") and "cannot write" in err and err.count("\n") == 1
