"""In-memory form of an ST-COCO dataset (docs/data.md#st-coco): videos of frames with their annotations."""

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np


@dataclass
class FrameRecord:
    """One frame and its ground truth.

    Attributes:
        image_id: the COCO image id.
        file_name: image path relative to the dataset's image root.
        video: name of the video the frame belongs to.
        frame_number: position in the video (increasing, not necessarily contiguous).
        width, height: image size in pixels.
        boxes: [n, 4] float32 boxes (x1, y1, x2, y2) in pixels.
        classes: [n] int64 contiguous class indices 0..K-1.
        track_ids: [n] int64 track id of each box within its video.
        annotation_ids: [n] int64 COCO annotation ids.
        crowd: [n] bool, the COCO ``iscrowd`` flag (empty: no crowd annotation in the frame).
    """

    image_id: int
    file_name: str
    video: str
    frame_number: int
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    classes: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    track_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    annotation_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    crowd: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))

    def without_crowd(self) -> "FrameRecord":
        """The frame with its crowd annotations removed (training targets, docs/data.md#st-coco);
        the frame itself when it has none."""
        if not self.crowd.any():
            return self
        keep = ~self.crowd
        return replace(
            self,
            boxes=self.boxes[keep],
            classes=self.classes[keep],
            track_ids=self.track_ids[keep],
            annotation_ids=self.annotation_ids[keep],
            crowd=self.crowd[keep],
        )


@dataclass
class VideoRecord:
    """A video: its name and its frames in frame order."""

    name: str
    frames: list[FrameRecord]


@dataclass
class StCocoDataset:
    """A loaded, validated ST-COCO dataset.

    Attributes:
        json_path: the annotation file it was read from.
        image_root: folder that frame ``file_name`` paths are relative to.
        class_names: name of each contiguous class index 0..K-1.
        category_ids: the original COCO category id of each contiguous class index.
        videos: the videos in file order (video order, then frame order).
    """

    json_path: str
    image_root: str
    class_names: list[str]
    category_ids: list[int]
    videos: list[VideoRecord]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def category_id_to_class(self) -> dict[int, int]:
        """Map from original COCO category id to contiguous class index."""
        return {cat_id: index for index, cat_id in enumerate(self.category_ids)}

    def frames(self) -> Iterator[FrameRecord]:
        """Every frame, in video order then frame order."""
        for video in self.videos:
            yield from video.frames

    def __len__(self) -> int:
        return sum(len(video.frames) for video in self.videos)
