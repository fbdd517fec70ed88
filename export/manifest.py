"""The manifest of a fresh export (:class:`sltnet.contract.Manifest`, docs/deployment.md#manifest):
what the engines were built with, read off the exported modules and the config."""

from collections.abc import Sequence

import onnx
import torch
import torchvision
from yacs.config import CfgNode

import sltnet
from export.onnx_export import OPSET, ExportedEngines
from sltnet.contract import (
    DETECTION_OUTPUTS,
    IMAGE_INPUT,
    MEMORY_INPUT_TEMPLATE,
    SLOT_INPUT_TEMPLATE,
    DetectionSection,
    EnginesSection,
    InputSection,
    Manifest,
    MemorySection,
    Preprocessing,
    RpnSection,
    WindowSection,
)


def build_manifest(
    cfg: CfgNode, engines: ExportedEngines, classes: Sequence[str], category_ids: Sequence[int], source: dict[str, str]
) -> Manifest:
    """The manifest of a fresh ONNX export (``files`` filled in by :meth:`Manifest.write`).

    Args:
        source: where the model came from (``config_file``, ``weights``).
    """
    modules = engines.modules
    temporal = modules.temporal
    model = temporal.model
    window = temporal.window
    st = cfg.MODEL.SPATIOTEMPORAL
    return Manifest(
        architecture=cfg.MODEL.META_ARCHITECTURE,
        mode=window.temporal_mode() if temporal.temporal else "single_frame",
        classes=list(classes),
        category_ids=[int(i) for i in category_ids],
        input=InputSection(
            tensor=IMAGE_INPUT,
            shape=(modules.batch, 3, *modules.input_size),
            batch=modules.batch,
            dtype="uint8",
            channel_order="RGB",
            resized_size=modules.resized_size,
            preprocessing_in_frame_engine=Preprocessing(
                resize_short_side=cfg.INPUT.MIN_SIZE_TEST,
                resize_max_size=cfg.INPUT.MAX_SIZE_TEST,
                resize_mode="PIL bilinear (antialiased when shrinking), as constant matrix products",
                network_channel_order=cfg.INPUT.FORMAT,
                pixel_mean=list(cfg.MODEL.PIXEL_MEAN),
                pixel_std=list(cfg.MODEL.PIXEL_STD),
                size_divisibility=cfg.DATALOADER.SIZE_DIVISIBILITY,
            ),
        ),
        window=WindowSection(
            num_frames=window.num_frames,
            size=window.size,
            reference_position=window.reference_position,
            latency_frames=window.latency,
            padding="the first frame repeats before the video start, the last after its end",
            slot_input=SLOT_INPUT_TEMPLATE,
            frame_outputs=modules.frame.output_names,
        ),
        memory=MemorySection(
            long_term=temporal.long_term,
            num_keyframes=temporal.num_keyframes,
            keyframe_interval=st.KEYFRAME_INTERVAL if temporal.long_term else 0,
            rows_per_entry=temporal.entry_rows,
            slot_input=MEMORY_INPUT_TEMPLATE,
            feature_dim=temporal.feature_dim if temporal.long_term else 0,
        ),
        tubelets=temporal.num_tubelets,
        detections=DetectionSection(
            slots=engines.temporal.output_specs()[DETECTION_OUTPUTS[0]].shape[0],
            score_thresh=model.roi_heads.score_thresh,
            nms_thresh=model.roi_heads.nms_thresh,
        ),
        rpn=RpnSection(
            pre_nms_topk=model.rpn.pre_nms_topk,
            post_nms_topk=model.rpn.post_nms_topk,
            nms_thresh=model.rpn.nms_thresh,
            min_size=model.rpn.min_size,
        ),
        engines=EnginesSection(frame=engines.frame, temporal=engines.temporal),
        versions={
            "sltnet": sltnet.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "onnx": onnx.__version__,
            "opset": OPSET,
        },
        source=dict(source),
    )
