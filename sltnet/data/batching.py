"""Training samples as tensors: frame groups with their ground-truth tubelets (docs/method.md#two-stage-training)."""

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sltnet.data.records import FrameRecord
from sltnet.data.sampling import TrainingSample
from sltnet.data.transforms import ImagePreprocessor, load_frame


@dataclass
class FrameGroup:
    """Consecutive frames of one video, preprocessed, with their ground truth.

    Attributes:
        images: [N, 3, H, W] float, preprocessed and zero-padded to the size divisibility.
        image_size: (height, width) of every frame before padding.
        boxes: [N, G, 4] ground-truth boxes (x1, y1, x2, y2); row g is the same track in every frame,
            so each row over the frames is a ground-truth tubelet.
        classes: [G] int64 contiguous classes.
        reference: index of the reference frame in the group.
    """

    images: Tensor
    image_size: tuple[int, int]
    boxes: Tensor
    classes: Tensor
    reference: int


@dataclass
class TrainingGroup(FrameGroup):
    """A :class:`FrameGroup` plus its long-term support groups (empty without long-term attention)."""

    support: list[FrameGroup] = field(default_factory=list)


def load_frame_group(
    frames: Sequence[FrameRecord],
    reference: int,
    image_root: str,
    preprocessor: ImagePreprocessor,
    short_side: int,
    flip: bool,
) -> FrameGroup:
    """Decode, flip, resize and normalise a group; every frame must have the same size."""
    images, boxes = zip(*(load_frame(frame, image_root, preprocessor, short_side, flip) for frame in frames))
    image_size = tuple(images[0].shape[-2:])
    return FrameGroup(
        images=preprocessor.pad(torch.stack(images)),
        image_size=image_size,
        boxes=torch.stack(boxes),
        classes=torch.from_numpy(frames[reference].classes),
        reference=reference,
    )


def load_training_group(sample: TrainingSample, image_root: str, preprocessor: ImagePreprocessor) -> TrainingGroup:
    """Tensors of a sample and its support groups, all with the sample's flip and size."""
    group = load_frame_group(sample.frames, sample.reference, image_root, preprocessor, sample.short_side, sample.flip)
    support = [
        load_frame_group(
            frames, _support_reference(sample, frames), image_root, preprocessor, sample.short_side, sample.flip
        )
        for frames in sample.support
    ]
    return TrainingGroup(**vars(group), support=support)


def _support_reference(sample: TrainingSample, support_frames: Sequence[FrameRecord]) -> int:
    """A support group's reference sits where the sample's does; with temporal dropout the sample has
    only 3 frames while support groups keep the whole symmetric window, centred on its reference."""
    return sample.reference if len(support_frames) == len(sample.frames) else len(support_frames) // 2
