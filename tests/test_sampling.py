"""Frame groups for training (docs/method.md#two-stage-training) and test-time windows (docs/method.md#frame-window)."""

import numpy as np
import pytest

from sltnet.config import get_cfg
from sltnet.contract import Window
from sltnet.data.records import FrameRecord, StCocoDataset, VideoRecord
from sltnet.data.sampling import (
    TrainingGroupSampler,
    support_groups,
    temporal_dropout,
    training_groups,
    video_windows,
)
from sltnet.errors import SltnetError


def make_video(track_lists, name="v", first_id=0):
    """A video whose frame i has the boxes of tracks ``track_lists[i]``."""
    frames = []
    for i, tracks in enumerate(track_lists):
        n = len(tracks)
        frames.append(
            FrameRecord(
                image_id=first_id + i,
                file_name=f"{name}/{i:06d}.jpg",
                video=name,
                frame_number=i,
                width=32,
                height=24,
                boxes=np.tile(np.array([[1, 2, 10, 12]], np.float32), (n, 1)),
                classes=np.zeros(n, np.int64),
                track_ids=np.array(tracks, np.int64),
                annotation_ids=np.arange(n, dtype=np.int64),
            )
        )
    return VideoRecord(name=name, frames=frames)


def frame_indices(groups):
    return [[frame.frame_number for frame in group] for group in groups]


@pytest.mark.parametrize(
    "t, length, n, symmetric, expected",
    [
        (5, 10, 3, False, [3, 4, 5]),
        (0, 10, 3, False, [0, 0, 0]),
        (1, 10, 3, False, [0, 0, 1]),
        (5, 10, 2, True, [3, 4, 5, 6, 7]),
        (0, 10, 2, True, [0, 0, 0, 1, 2]),
        (9, 10, 2, True, [7, 8, 9, 9, 9]),
        (1, 2, 3, True, [0, 0, 0, 1, 1, 1, 1]),  # video shorter than the window: both ends padded
        (0, 1, 3, False, [0, 0, 0]),  # a still image
        (0, 1, 1, True, [0, 0, 0]),
    ],
)
def test_window_indices(t, length, n, symmetric, expected):
    window = Window(n, symmetric)
    assert window.indices(t, length) == expected
    assert len(expected) == window.size
    assert expected[window.reference_position] == t
    assert window.latency == (n if symmetric else 0)


@pytest.mark.parametrize("mode, num_frames, size", [("sequential", 3, 3), ("symmetric", 2, 5), ("single_frame", 4, 1)])
def test_window_modes_round_trip(mode, num_frames, size):
    """A manifest's mode and N give the window; an SLTnet window names its mode; a config gives the same window."""
    window = Window.of_mode(mode, num_frames)
    assert window.size == size
    if mode != "single_frame":
        assert window.temporal_mode() == mode
        cfg = get_cfg()
        cfg.MODEL.SPATIOTEMPORAL.NUM_FRAMES = num_frames
        cfg.MODEL.SPATIOTEMPORAL.FORWARD_AGGREGATION = mode == "symmetric"
        assert Window.of_config(cfg.MODEL.SPATIOTEMPORAL) == window


def test_video_windows_gives_one_window_per_real_frame_in_order():
    video = make_video([[0]] * 4)
    windows = list(video_windows(video, Window(2, symmetric=True)))
    assert [ref.frame_number for ref, _ in windows] == [0, 1, 2, 3]
    assert [[f.frame_number for f in window] for _, window in windows][-1] == [1, 2, 3, 3, 3]


def test_groups_are_consecutive_non_overlapping_frames_with_the_same_tracks():
    video = make_video([[1, 2]] * 7)  # frame 6 alone would be an incomplete group
    assert frame_indices(training_groups(video, 3, 10)) == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize(
    "breaking_tracks",
    [pytest.param([1], id="different"), pytest.param([], id="empty"), pytest.param([2, 1], id="reordered")],
)
def test_group_rule_rejects_groups_over_a_frame_with_other_tracks(breaking_tracks):
    video = make_video([[1, 2]] * 4 + [breaking_tracks] + [[1, 2]] * 4)
    assert frame_indices(training_groups(video, 3, 10)) == [[0, 1, 2], [6, 7, 8]]


def test_frames_without_boxes_give_no_group():
    assert training_groups(make_video([[]] * 5), 2, 10) == []


def test_groups_are_spread_evenly_beyond_the_maximum():
    video = make_video([[7]] * 48)  # 16 groups of 3
    assert len(training_groups(video, 3, 6)) == 16  # not more than 6 x 3
    starts = [group[0].frame_number for group in training_groups(video, 3, 5)]  # more than 5 x 3
    assert starts == [0, 12, 24, 33, 45]  # positions round(linspace(0, 15, 5)) = 0, 4 (3.75), 8 (7.5), 11, 15


def test_one_frame_video_gives_the_frame_repeated():
    video = make_video([[3]])
    assert frame_indices(training_groups(video, 3, 10)) == [[0, 0, 0]]


def test_short_video_is_padded_with_its_first_frame():
    assert frame_indices(training_groups(make_video([[3], [3]]), 5, 10)) == [[0, 0, 0, 0, 1]]
    assert training_groups(make_video([[3], [4]]), 5, 10) == []


def test_support_groups_come_from_other_parts_of_the_video():
    video = make_video([[1]] * 30)
    group = video.frames[10:13]
    rng = np.random.default_rng(0)
    for _ in range(20):
        support = support_groups(video, group, 2, 3, rng)
        assert len(support) == 2
        for s in support:
            numbers = [f.frame_number for f in s]
            assert numbers == list(range(numbers[0], numbers[0] + 3))
            assert not set(numbers) & {10, 11, 12}


def test_support_groups_fall_back_to_the_sample_group():
    video = make_video([[1]] * 4)
    group = video.frames[1:4]
    assert frame_indices(support_groups(video, group, 2, 3, np.random.default_rng(0))) == [[1, 2, 3], [1, 2, 3]]
    assert support_groups(video, group, 0, 3, np.random.default_rng(0)) == []


def test_temporal_dropout_keeps_reference_with_one_past_and_one_future_frame():
    group = make_video([[1]] * 7).frames  # N = 3, reference index 3
    rng = np.random.default_rng(0)
    for _ in range(20):
        past, reference, future = [f.frame_number for f in temporal_dropout(group, 3, rng)]
        assert past < 3 and reference == 3 and future > 3


def make_dataset():
    videos = [make_video([[1]] * 12, "a", 0), make_video([[2]] * 8, "b", 100), make_video([[5]], "c", 200)]
    return StCocoDataset("x.json", "root", ["thing"], [1], videos)


def test_sampler_gives_one_flip_and_one_size_per_group_and_is_seeded():
    sampler = TrainingGroupSampler(make_dataset(), 3, False, 2, short_sides=(400, 600), seed=1)
    assert len(sampler) == 7  # 4 + 2 + 1 groups of 3 (12, 8 and 1 frames): at most 2 x 3 per video, all kept
    samples = sampler.epoch(0)
    assert len(samples) == 7
    for sample in samples:
        assert isinstance(sample.flip, bool)  # a single decision for every frame of the group
        assert sample.short_side in (400, 600)
        assert sample.reference == 2
        assert len({f.video for f in sample.frames}) == 1
        assert len(sample.support) == 2
    assert [(s.frames[0].image_id, s.flip, s.short_side) for s in samples] == [
        (s.frames[0].image_id, s.flip, s.short_side) for s in sampler.epoch(0)
    ]
    flips = [s.flip for e in range(10) for s in sampler.epoch(e)]
    assert 0 < sum(flips) < len(flips)


def test_sampler_from_config_symmetric_with_dropout():
    cfg = get_cfg()
    cfg.MODEL.SPATIOTEMPORAL.NUM_FRAMES = 2
    cfg.MODEL.SPATIOTEMPORAL.FORWARD_AGGREGATION = True
    cfg.MODEL.SPATIOTEMPORAL.TEMPORAL_DROPOUT = True
    cfg.MODEL.SPATIOTEMPORAL.LONG_TERM = False
    cfg.INPUT.RANDOM_FLIP = "none"
    sampler = TrainingGroupSampler.from_config(make_dataset(), cfg)
    for sample in sampler.epoch(3):
        assert len(sample.frames) == 3 and sample.reference == 1
        assert not sample.flip and sample.support == []


def test_sampler_rejects_dropout_in_sequential_mode():
    with pytest.raises(SltnetError, match=r"^MODEL.SPATIOTEMPORAL.TEMPORAL_DROPOUT needs FORWARD_AGGREGATION"):
        TrainingGroupSampler(make_dataset(), 3, False, 2, temporal_dropout=True)


def test_sampler_reports_a_dataset_without_valid_groups():
    dataset = StCocoDataset("x.json", "root", ["thing"], [1], [make_video([[]] * 5)])
    with pytest.raises(SltnetError) as err:
        TrainingGroupSampler(dataset, 3, False, 2)
    assert str(err.value) == (
        "x.json: no frame group of 3 frames where every frame has the same, non-empty list of track ids; "
        "nothing to train on"
    )
