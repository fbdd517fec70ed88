"""A model split into its two engines, at a fixed input size, set up as a manifest states."""

from typing import NamedTuple

import torch
from torch import Tensor

from sltnet.contract import Manifest, Preprocessing
from sltnet.data.transforms import ImagePreprocessor
from sltnet.deploy.frame_engine import FrameEngine, frame_row
from sltnet.deploy.temporal_engine import TemporalEngine
from sltnet.modeling.baseline import FasterRCNN
from sltnet.modeling.sltnet import SLTnet
from sltnet.modeling.streaming import StreamingDetector


class EngineModules(NamedTuple):
    """The two engines of a model as PyTorch modules, with example inputs for tracing.

    Attributes:
        frame, temporal: the engines.
        input_size: (height, width) of the frame engine's image.
        resized_size: (height, width) of the frame after the resize, before padding.
        frame_inputs, temporal_inputs: example inputs, in the engines' input order.
        batch: frames per frame-engine run.
    """

    frame: FrameEngine
    temporal: TemporalEngine
    input_size: tuple[int, int]
    resized_size: tuple[int, int]
    frame_inputs: list[Tensor]
    temporal_inputs: list[Tensor]
    batch: int


def _example_memory(temporal: TemporalEngine, like: Tensor) -> list[Tensor]:
    """K memory slots of plausible rows, half of them valid, so tracing sees the masked path used at
    run time; in input order (features, boxes, valid of slot 0, then slot 1, ...)."""
    generator = torch.Generator().manual_seed(0)
    slots: list[Tensor] = []
    for _ in range(temporal.num_keyframes):
        features, boxes, valid = temporal.empty_entry(like)
        features = torch.rand(features.shape, generator=generator).to(like)
        corners = torch.rand((len(boxes), 2), generator=generator) * 0.5 * min(temporal.image_size)
        boxes = torch.cat([corners, corners + 8], dim=1).to(like)
        valid[: len(valid) // 2] = True
        slots += [features, boxes, valid]
    return slots


def build_engine_modules(
    model: SLTnet | FasterRCNN,
    preprocessor: ImagePreprocessor,
    input_size: tuple[int, int],
    num_keyframes: int,
    batch: int = 1,
) -> EngineModules:
    """Split ``model`` (switched to inference mode) into its frame and temporal engines.

    Args:
        preprocessor: the test-time image path the frame engine contains.
        input_size: (height, width) of the frames the engines will take.
        num_keyframes: K, memory slots of the temporal engine (SLTnet with long-term attention).
        batch: frames per frame-engine run (the temporal engine takes one frame's outputs per slot).
    """
    frame = FrameEngine(model, preprocessor).eval()
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (batch, 3, *input_size), dtype=torch.uint8, generator=generator)
    with torch.no_grad():
        frame_outputs = frame_row(frame(image), batch, 0)
        anchors_per_level, mosaic = frame.layout(image)
    resized_size = frame.resized_size(input_size)
    temporal = TemporalEngine(model, anchors_per_level, mosaic, resized_size, num_keyframes)
    by_name = dict(zip(frame.output_names, frame_outputs))
    temporal_inputs: list[Tensor] = [
        by_name[output] for slot in range(temporal.window.size) for output in temporal.slot_outputs(slot)
    ]
    temporal_inputs += _example_memory(temporal, frame_outputs[-1])
    size = (input_size[0], input_size[1])
    return EngineModules(frame, temporal, size, resized_size, [image], temporal_inputs, batch)


def preprocessor_of(preprocessing: Preprocessing) -> ImagePreprocessor:
    """The image path a manifest says the frame engine contains."""
    return ImagePreprocessor(
        short_side=preprocessing.resize_short_side,
        max_size=preprocessing.resize_max_size,
        pixel_mean=preprocessing.pixel_mean,
        pixel_std=preprocessing.pixel_std,
        input_format=preprocessing.network_channel_order,
        size_divisibility=preprocessing.size_divisibility,
    )


def configure_as_exported(model: SLTnet | FasterRCNN, manifest: Manifest) -> None:
    """Give ``model`` every inference setting the manifest states (thresholds, proposal counts, window)
    in place of its own."""
    model.roi_heads.score_thresh = manifest.detections.score_thresh
    model.roi_heads.nms_thresh = manifest.detections.nms_thresh
    model.rpn.set_inference_topk(manifest.rpn.pre_nms_topk, manifest.rpn.post_nms_topk)
    model.rpn.nms_thresh = manifest.rpn.nms_thresh
    model.rpn.min_size = manifest.rpn.min_size
    if isinstance(model, SLTnet):
        model.window = manifest.frame_window


def engine_modules_of(model: SLTnet | FasterRCNN, manifest: Manifest) -> EngineModules:
    """The engines of ``model`` as the manifest describes them, at the manifest's input size and batch."""
    configure_as_exported(model, manifest)
    preprocessor = preprocessor_of(manifest.input.preprocessing_in_frame_engine)
    size, batch = manifest.input.size, manifest.input.batch
    return build_engine_modules(model, preprocessor, size, manifest.memory.num_keyframes, batch)


def streaming_detector_of(model: SLTnet | FasterRCNN, manifest: Manifest) -> StreamingDetector:
    """The PyTorch streaming detector that answers as the export's engines do."""
    configure_as_exported(model, manifest)
    memory = manifest.memory
    preprocessor = preprocessor_of(manifest.input.preprocessing_in_frame_engine)
    return StreamingDetector(model, preprocessor, memory.num_keyframes, memory.keyframe_interval)
