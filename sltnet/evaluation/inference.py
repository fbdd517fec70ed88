"""Run a model over a dataset in video order and collect COCO-format results."""

import os
from typing import List, Optional, Union

from tqdm import tqdm
from yacs.config import CfgNode

from sltnet.data.records import FrameRecord, StCocoDataset
from sltnet.data.transforms import read_image
from sltnet.modeling.baseline import FasterRCNN
from sltnet.modeling.sltnet import SLTnet
from sltnet.modeling.streaming import FrameResult, StreamingDetector


def detect_dataset(
    model: Union[SLTnet, FasterRCNN],
    cfg: CfgNode,
    dataset: StCocoDataset,
    progress: bool = True,
    score_thresh: Optional[float] = None,
) -> List[dict]:
    """Stream every video of ``dataset`` through the model (DESIGN A.2 order and padding).

    Returns:
        COCO results: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` with the
        dataset's own image and category ids, one entry per detection.
    """
    detector = StreamingDetector.from_config(model, cfg, score_thresh)
    results: List[dict] = []
    with tqdm(total=len(dataset), desc="inference", unit="frame", disable=not progress) as bar:
        for video in dataset.videos:
            detector.reset()
            for frame in video.frames:
                image = read_image(os.path.join(dataset.image_root, frame.file_name))
                for result in detector.push(image):
                    results += _coco_results(video.frames[result.frame_index], result, dataset.category_ids)
                bar.update(1)
            for result in detector.flush():
                results += _coco_results(video.frames[result.frame_index], result, dataset.category_ids)
    return results


def _coco_results(frame: FrameRecord, result: FrameResult, category_ids: List[int]) -> List[dict]:
    boxes = result.boxes.tolist()
    return [
        {
            "image_id": frame.image_id,
            "category_id": category_ids[int(label)],
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(score),
        }
        for (x1, y1, x2, y2), score, label in zip(boxes, result.scores.tolist(), result.classes.tolist())
    ]
