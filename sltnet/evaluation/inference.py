"""Run a streaming detector over a dataset in video order and collect COCO-format results."""

import os
from collections.abc import Sequence
from typing import Protocol

from torch import Tensor
from tqdm import tqdm
from yacs.config import CfgNode

from sltnet.contract import FrameResult
from sltnet.data.records import StCocoDataset
from sltnet.data.transforms import read_image
from sltnet.modeling.baseline import FasterRCNN
from sltnet.modeling.sltnet import SLTnet
from sltnet.modeling.streaming import StreamingDetector


class Streamer(Protocol):
    """What streams a video: the PyTorch ``StreamingDetector`` or the engines' ``StreamingRuntime``."""

    def reset(self) -> None: ...

    def push(self, image: Tensor) -> list[FrameResult]: ...

    def flush(self) -> list[FrameResult]: ...


def stream_dataset(
    streamer: Streamer, dataset: StCocoDataset, progress: bool = True, description: str = "inference"
) -> dict[int, FrameResult]:
    """Stream every video of ``dataset`` (docs/method.md#frame-window), each from a cleared state.

    Returns:
        every frame's result, by COCO image id.
    """
    results: dict[int, FrameResult] = {}
    with tqdm(total=len(dataset), desc=description, unit="frame", disable=not progress) as bar:
        for video in dataset.videos:
            streamer.reset()
            answered: list[FrameResult] = []
            for frame in video.frames:
                answered += streamer.push(read_image(os.path.join(dataset.image_root, frame.file_name)))
                bar.update(1)
            answered += streamer.flush()
            results.update({video.frames[r.frame_index].image_id: r for r in answered})
    return results


def coco_results(results: dict[int, FrameResult], category_ids: Sequence[int]) -> list[dict]:
    """``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` per detection, with the
    dataset's own category ids (``category_ids[k]`` of class k)."""
    entries = []
    for image_id, result in results.items():
        for (x1, y1, x2, y2), score, label in zip(
            result.boxes.tolist(), result.scores.tolist(), result.classes.tolist()
        ):
            entries.append(
                {
                    "image_id": image_id,
                    "category_id": category_ids[int(label)],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    return entries


def detect_dataset(
    model: SLTnet | FasterRCNN,
    cfg: CfgNode,
    dataset: StCocoDataset,
    progress: bool = True,
    score_thresh: float | None = None,
) -> list[dict]:
    """The PyTorch model's COCO results on every frame of ``dataset`` (see :func:`coco_results`)."""
    detector = StreamingDetector.from_config(model, cfg, score_thresh)
    return coco_results(stream_dataset(detector, dataset, progress), dataset.category_ids)
