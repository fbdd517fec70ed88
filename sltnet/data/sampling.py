"""Which frames go together: training frame groups (docs/method.md#frame-groups) and test-time windows
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

#: ``DATALOADER.SUPPORT_DRAW``: support groups drawn once per group when the sampler is built (the
#: original's), or afresh every epoch.
SUPPORT_DRAWS = ("once", "per_epoch")
_SUPPORT_DRAW_STREAM = 1


def video_windows(video: VideoRecord, window: Window) -> Iterator[tuple[FrameRecord, list[FrameRecord]]]:
    """Test-time order: ``(reference frame, window frames)`` for every frame, in frame order."""
    for t, frame in enumerate(video.frames):
        yield frame, [video.frames[i] for i in window.indices(t, len(video.frames))]


def _has_tubelets(frames: Sequence[FrameRecord]) -> bool:
    """The track-id rule: every frame has the same, non-empty, ordered list of track ids, so the
    ground-truth boxes of the frames line up as tubelets."""
    tracks = tuple(frames[0].track_ids.tolist())
    return bool(tracks) and all(tuple(frame.track_ids.tolist()) == tracks for frame in frames[1:])


def _candidate_groups(video: VideoRecord, size: int) -> list[tuple[int, list[FrameRecord]]]:
    """The valid groups of ``size`` frames of a video, each with its position in the video.

    The video is cut into consecutive, non-overlapping groups (frames 0 .. size - 1, size ..
    2 size - 1, ...; an incomplete last group is dropped) and a group is kept when it satisfies the
    track-id rule (:func:`_has_tubelets`), crowd annotations left out. A video shorter than one
    group (a still image included) has one candidate: its frames with the first frame repeated in
    front, as the test-time start padding does.
    """
    frames = [frame.without_crowd() for frame in video.frames]
    if len(frames) < size:
        padded = [frames[0]] * (size - len(frames)) + frames
        return [(0, padded)] if _has_tubelets(frames) else []
    groups = [(start // size, frames[start : start + size]) for start in range(0, len(frames) - size + 1, size)]
    return [(position, group) for position, group in groups if _has_tubelets(group)]


def _subsample(
    candidates: list[tuple[int, list[FrameRecord]]], max_groups: int, group_size: int
) -> list[tuple[int, list[FrameRecord]]]:
    """The training groups among a video's valid groups (docs/method.md#frame-groups).

    All of them, unless there are more than ``max_groups`` x ``group_size``; then ``max_groups``
    picks: positions evenly spaced from the first valid group's to the last one's, rounded, each
    taking the first valid group at or after it. A pick may repeat a group when invalid groups lie
    between the spaced positions.
    """
    if len(candidates) <= max_groups * group_size:
        return candidates
    positions = np.array([position for position, _ in candidates])
    targets = np.round(np.linspace(positions[0], positions[-1], max_groups))
    return [candidates[i] for i in np.searchsorted(positions, targets)]


def training_groups(video: VideoRecord, group_size: int, max_groups: int) -> list[list[FrameRecord]]:
    """The training groups of a video (docs/method.md#frame-groups).

    Args:
        video: the video.
        group_size: frames per group (:attr:`Window.size`).
        max_groups: ``TRAIN_GROUPS_PER_VIDEO``.
    Returns:
        The valid groups (:func:`_candidate_groups`) subsampled by :func:`_subsample`, in frame order.
    """
    if group_size < 1 or max_groups < 1:
        raise ValueError(f"group_size and max_groups must be at least 1, got {group_size} and {max_groups}")
    return [group for _, group in _subsample(_candidate_groups(video, group_size), max_groups, group_size)]


def support_groups(
    video: VideoRecord, group: Sequence[FrameRecord], count: int, group_size: int, rng: np.random.Generator
) -> list[list[FrameRecord]]:
    """Random valid groups of the same video that share no frame with ``group`` (long-term support).

    Drawn without replacement while there are enough, with replacement otherwise. Fallback: a
    video with no such group (a short video, a still image, or one whose other frames break the
    track-id rule) uses ``group`` itself ``count`` times, so the references come from the sample's
    own frames, as at the first keyframe of a video at test time.
    """
    candidates = [candidate for _, candidate in _candidate_groups(video, group_size)]
    return _pick_support_groups(candidates, group, count, rng)


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
    """Symmetric-mode temporal dropout (docs/method.md#temporal-dropout): one random past frame, the
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
        support: long-term support groups from other parts of the video (3 frames each when
            temporal dropout applies to them).
    """

    frames: list[FrameRecord]
    reference: int
    flip: bool
    short_side: int
    support: list[list[FrameRecord]]


class TrainingGroupSampler:
    """The training samples of an epoch over a whole dataset (docs/method.md#frame-groups).

    The groups of each video are fixed (:func:`training_groups`). Every epoch draws from
    ``np.random.default_rng([seed, epoch])`` the sample order and, per sample, the temporal-dropout
    frames (if enabled), one horizontal flip and one resize, and with ``support_draw`` "per_epoch"
    its support groups; with "once" each group's support groups are drawn when the sampler is
    built, from a stream of their own. The same seed and epoch always give the same samples.

    Args:
        dataset: the loaded dataset.
        num_frames: N of the window.
        symmetric: symmetric windows (2N + 1 frames) instead of sequential ones (N frames).
        groups_per_video: ``TRAIN_GROUPS_PER_VIDEO``.
        num_support_groups: long-term support groups per sample (0 without long-term attention).
        short_sides: training resize choices for the short side.
        flip_probability: chance that a sample is flipped.
        temporal_dropout: train on reference + one random past + one random future frame (symmetric
            only).
        support_dropout: with ``temporal_dropout``, drop the support groups' frames the same way
            (each group its own random frames); else they keep their whole window.
        support_draw: ``DATALOADER.SUPPORT_DRAW``, one of :data:`SUPPORT_DRAWS`.
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
        support_dropout: bool = True,
        support_draw: str = "once",
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
        if support_draw not in SUPPORT_DRAWS:
            raise SltnetError(f"DATALOADER.SUPPORT_DRAW: expected 'once' or 'per_epoch', got {support_draw!r}")
        self.window = Window(num_frames, symmetric)
        self.num_support_groups = num_support_groups
        self.short_sides = [int(s) for s in short_sides]
        self.flip_probability = flip_probability
        self.temporal_dropout = temporal_dropout
        self.support_dropout = support_dropout
        self.seed = seed
        # Per video: all valid groups (the support pool); over the dataset: the training groups.
        candidates = [_candidate_groups(video, self.window.size) for video in dataset.videos]
        self._candidates = [[group for _, group in video_candidates] for video_candidates in candidates]
        self._groups: list[tuple[int, list[FrameRecord]]] = [
            (video_index, group)
            for video_index, video_candidates in enumerate(candidates)
            for _, group in _subsample(video_candidates, groups_per_video, self.window.size)
        ]
        if not self._groups:
            raise SltnetError(
                f"{dataset.json_path}: no frame group of {self.window.size} frames where every frame has the "
                "same, non-empty list of track ids; nothing to train on"
            )
        self._fixed_support: list[list[list[FrameRecord]]] | None = None
        if support_draw == "once":
            # Its own stream: SeedSequence(seed, spawn_key=...) never equals an epoch's [seed, epoch].
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SUPPORT_DRAW_STREAM,)))
            self._fixed_support = [self._draw_support(index, rng) for index in range(len(self._groups))]

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
        if st.LONG_TERM and st.TRAIN_SUPPORT_GROUPS < 1:
            raise SltnetError(
                "MODEL.SPATIOTEMPORAL.TRAIN_SUPPORT_GROUPS must be at least 1 with LONG_TERM: the support "
                f"groups are the long-term references in training, got {st.TRAIN_SUPPORT_GROUPS}"
            )
        return cls(
            dataset,
            num_frames=st.NUM_FRAMES,
            symmetric=st.FORWARD_AGGREGATION,
            groups_per_video=cfg.DATALOADER.TRAIN_GROUPS_PER_VIDEO,
            num_support_groups=st.TRAIN_SUPPORT_GROUPS if st.LONG_TERM else 0,
            short_sides=short_sides,
            flip_probability=0.5 if cfg.INPUT.RANDOM_FLIP == "horizontal" else 0.0,
            temporal_dropout=st.TEMPORAL_DROPOUT,
            support_dropout=st.SUPPORT_TEMPORAL_DROPOUT,
            support_draw=cfg.DATALOADER.SUPPORT_DRAW,
            seed=cfg.SEED,
        )

    def __len__(self) -> int:
        return len(self._groups)

    def _draw_support(self, index: int, rng: np.random.Generator) -> list[list[FrameRecord]]:
        video_index, group = self._groups[index]
        return _pick_support_groups(self._candidates[video_index], group, self.num_support_groups, rng)

    def epoch(self, epoch: int) -> list[TrainingSample]:
        """The samples of one epoch, in training order."""
        rng = np.random.default_rng([self.seed, epoch])
        samples = []
        for index in rng.permutation(len(self._groups)):
            group = self._groups[index][1]
            support = self._draw_support(index, rng) if self._fixed_support is None else self._fixed_support[index]
            frames, reference = group, self.window.reference_position
            if self.temporal_dropout:
                frames, reference = temporal_dropout(group, self.window.num_frames, rng), 1
                if self.support_dropout:
                    support = [temporal_dropout(other, self.window.num_frames, rng) for other in support]
            samples.append(
                TrainingSample(
                    frames=list(frames),
                    reference=reference,
                    flip=bool(rng.random() < self.flip_probability),
                    short_side=self.short_sides[int(rng.integers(len(self.short_sides)))],
                    support=[list(other) for other in support],
                )
            )
        return samples
