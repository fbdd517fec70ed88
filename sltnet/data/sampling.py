"""Which frames go together: training frame groups (docs/method.md#two-stage-training) and test-time windows
(docs/method.md#frame-window).

Sequential mode uses windows of N frames ending at the reference frame; symmetric mode windows of
2N + 1 frames centred on it. Still images are one-frame videos: their window is the frame repeated.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from sltnet.contract import Window
from sltnet.data.records import FrameRecord, StCocoDataset, VideoRecord
from sltnet.errors import SltnetError


def video_windows(video: VideoRecord, window: Window) -> Iterator[tuple[FrameRecord, list[FrameRecord]]]:
    """Test-time order: ``(reference frame, window frames)`` for every frame, in frame order."""
    for t, frame in enumerate(video.frames):
        yield frame, [video.frames[i] for i in window.indices(t, len(video.frames))]


def _candidate_groups(video: VideoRecord, size: int) -> list[list[FrameRecord]]:
    """Every group of ``size`` consecutive frames that satisfies the track-id rule.

    A group is valid when every frame has the same, non-empty, ordered list of track ids, so the
    ground-truth boxes of the group line up as tubelets. A video shorter than the group (a still
    image included) has one candidate: its frames with the first frame repeated in front, as the
    test-time start padding does.
    """
    frames = video.frames
    if len(frames) < size:
        padded = [frames[0]] * (size - len(frames)) + list(frames)
        tracks = {tuple(frame.track_ids.tolist()) for frame in frames}
        return [padded] if len(tracks) == 1 and () not in tracks else []
    track_lists = [tuple(frame.track_ids.tolist()) for frame in frames]
    # same_run[i]: how many frames from i on have exactly frame i's track list.
    same_run = [1] * len(frames)
    for i in range(len(frames) - 2, -1, -1):
        if track_lists[i] == track_lists[i + 1]:
            same_run[i] = same_run[i + 1] + 1
    return [
        frames[start : start + size]
        for start in range(len(frames) - size + 1)
        if track_lists[start] and same_run[start] >= size
    ]


def training_groups(video: VideoRecord, group_size: int, max_groups: int) -> list[list[FrameRecord]]:
    """The training groups of a video (docs/method.md#two-stage-training).

    Args:
        video: the video.
        group_size: frames per group (:attr:`Window.size`).
        max_groups: most groups to return (``TRAIN_GROUPS_PER_VIDEO``).
    Returns:
        At most ``max_groups`` valid groups (see :func:`_candidate_groups`), spread evenly over all
        valid groups of the video, in frame order.
    """
    if group_size < 1 or max_groups < 1:
        raise ValueError(f"group_size and max_groups must be at least 1, got {group_size} and {max_groups}")
    return _spread(_candidate_groups(video, group_size), max_groups)


def _spread(groups: list[list[FrameRecord]], max_groups: int) -> list[list[FrameRecord]]:
    """At most ``max_groups`` of ``groups``, evenly spaced, first and last included."""
    if len(groups) <= max_groups:
        return groups
    # Steps of at least one position: rounding keeps the picks distinct.
    picks = np.round(np.linspace(0, len(groups) - 1, max_groups)).astype(int)
    return [groups[i] for i in picks]


def support_groups(
    video: VideoRecord, group: Sequence[FrameRecord], count: int, group_size: int, rng: np.random.Generator
) -> list[list[FrameRecord]]:
    """Random valid groups of the same video that share no frame with ``group`` (long-term support).

    Drawn without replacement while there are enough, with replacement otherwise. Fallback: a
    video with no such group (a short video, a still image, or one whose other frames break the
    track-id rule) uses ``group`` itself ``count`` times, so the references come from the sample's
    own frames, as at the first keyframe of a video at test time.
    """
    return _pick_support_groups(_candidate_groups(video, group_size), group, count, rng)


def _pick_support_groups(
    candidates: list[list[FrameRecord]], group: Sequence[FrameRecord], count: int, rng: np.random.Generator
) -> list[list[FrameRecord]]:
    if count <= 0:
        return []
    used = {frame.image_id for frame in group}
    disjoint = [candidate for candidate in candidates if not any(frame.image_id in used for frame in candidate)]
    if not disjoint:
        return [list(group) for _ in range(count)]
    picks = rng.choice(len(disjoint), size=count, replace=len(disjoint) < count)
    return [disjoint[i] for i in picks]


def temporal_dropout(group: Sequence[FrameRecord], num_frames: int, rng: np.random.Generator) -> list[FrameRecord]:
    """Symmetric-mode temporal dropout (docs/method.md#two-stage-training): one random past frame, the
    reference, one random future frame."""
    past = int(rng.integers(0, num_frames))
    future = int(rng.integers(num_frames + 1, 2 * num_frames + 1))
    return [group[past], group[num_frames], group[future]]


@dataclass
class TrainingSample:
    """One training sample: a frame group and how to augment it.

    Attributes:
        frames: the group's frames, oldest first (the window the model sees).
        reference: index of the reference frame in ``frames``.
        flip: flip every frame of the sample and its support groups horizontally.
        short_side: training resize of the short side, the same for every frame.
        support: long-term support groups from other parts of the video.
    """

    frames: list[FrameRecord]
    reference: int
    flip: bool
    short_side: int
    support: list[list[FrameRecord]]


class TrainingGroupSampler:
    """The training samples of an epoch over a whole dataset (docs/method.md#two-stage-training).

    The groups of each video are fixed (evenly spread, :func:`training_groups`); every epoch draws
    from ``np.random.default_rng([seed, epoch])`` the sample order, one horizontal flip and one
    resize per group, the support groups and, if enabled, the temporal-dropout frames. The same
    seed and epoch always give the same samples.

    Args:
        dataset: the loaded dataset.
        num_frames: N of the window.
        symmetric: symmetric windows (2N + 1 frames) instead of sequential ones (N frames).
        groups_per_video: ``TRAIN_GROUPS_PER_VIDEO``.
        num_support_groups: long-term support groups per sample (0 without long-term attention).
        short_sides: training resize choices for the short side.
        flip_probability: chance that a sample is flipped.
        temporal_dropout: train on reference + one random past + one random future frame (symmetric
            only); support groups keep all their frames.
        seed: base seed.
    """

    def __init__(
        self,
        dataset: StCocoDataset,
        num_frames: int,
        symmetric: bool,
        groups_per_video: int,
        num_support_groups: int = 2,
        short_sides: Sequence[int] = (600,),
        flip_probability: float = 0.5,
        temporal_dropout: bool = False,
        seed: int = 0,
    ) -> None:
        if num_frames < 1:
            raise SltnetError(f"MODEL.SPATIOTEMPORAL.NUM_FRAMES must be at least 1, got {num_frames}")
        if groups_per_video < 1:
            raise SltnetError(f"DATALOADER.TRAIN_GROUPS_PER_VIDEO must be at least 1, got {groups_per_video}")
        if temporal_dropout and not symmetric:
            raise SltnetError("MODEL.SPATIOTEMPORAL.TEMPORAL_DROPOUT needs FORWARD_AGGREGATION (symmetric mode)")
        if not short_sides:
            raise SltnetError("INPUT.MIN_SIZE_TRAIN must list at least one size")
        self.window = Window(num_frames, symmetric)
        self.num_support_groups = num_support_groups
        self.short_sides = [int(s) for s in short_sides]
        self.flip_probability = flip_probability
        self.temporal_dropout = temporal_dropout
        self.seed = seed
        # Per video: all valid groups (the support pool) and the evenly spread training groups.
        self._candidates = [_candidate_groups(video, self.window.size) for video in dataset.videos]
        self._groups: list[tuple[int, list[FrameRecord]]] = [
            (video_index, group)
            for video_index, candidates in enumerate(self._candidates)
            for group in _spread(candidates, groups_per_video)
        ]
        if not self._groups:
            raise SltnetError(
                f"{dataset.json_path}: no frame group of {self.window.size} frames where every frame has the "
                "same, non-empty list of track ids; nothing to train on"
            )

    @classmethod
    def from_config(cls, dataset: StCocoDataset, cfg) -> "TrainingGroupSampler":
        """Build from ``MODEL.SPATIOTEMPORAL``, ``DATALOADER``, ``INPUT`` and ``SEED``."""
        st = cfg.MODEL.SPATIOTEMPORAL
        if cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "choice":
            short_sides = list(cfg.INPUT.MIN_SIZE_TRAIN)
        elif cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "range" and len(cfg.INPUT.MIN_SIZE_TRAIN) == 2:
            low, high = cfg.INPUT.MIN_SIZE_TRAIN
            short_sides = list(range(low, high + 1))
        else:
            raise SltnetError(
                f"INPUT.MIN_SIZE_TRAIN_SAMPLING: expected 'choice', or 'range' with two sizes, "
                f"got {cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING!r} with {list(cfg.INPUT.MIN_SIZE_TRAIN)}"
            )
        if cfg.INPUT.RANDOM_FLIP not in ("horizontal", "none"):
            raise SltnetError(f"INPUT.RANDOM_FLIP: expected 'horizontal' or 'none', got {cfg.INPUT.RANDOM_FLIP!r}")
        return cls(
            dataset,
            num_frames=st.NUM_FRAMES,
            symmetric=st.FORWARD_AGGREGATION,
            groups_per_video=cfg.DATALOADER.TRAIN_GROUPS_PER_VIDEO,
            num_support_groups=st.TRAIN_SUPPORT_GROUPS if st.LONG_TERM else 0,
            short_sides=short_sides,
            flip_probability=0.5 if cfg.INPUT.RANDOM_FLIP == "horizontal" else 0.0,
            temporal_dropout=st.TEMPORAL_DROPOUT,
            seed=cfg.SEED,
        )

    def __len__(self) -> int:
        return len(self._groups)

    def epoch(self, epoch: int) -> list[TrainingSample]:
        """The samples of one epoch, in training order."""
        rng = np.random.default_rng([self.seed, epoch])
        samples = []
        for index in rng.permutation(len(self._groups)):
            video_index, group = self._groups[index]
            frames, reference = group, self.window.reference_position
            if self.temporal_dropout:
                frames, reference = temporal_dropout(group, self.window.num_frames, rng), 1
            samples.append(
                TrainingSample(
                    frames=list(frames),
                    reference=reference,
                    flip=bool(rng.random() < self.flip_probability),
                    short_side=self.short_sides[int(rng.integers(len(self.short_sides)))],
                    support=_pick_support_groups(self._candidates[video_index], group, self.num_support_groups, rng),
                )
            )
        return samples
