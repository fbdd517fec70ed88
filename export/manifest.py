"""``manifest.json`` (DESIGN B.4): everything the runtime needs to drive the two engines, and the
SHA-256 of every engine file so a loader can refuse files that changed after the export.

Top-level keys:

- ``format``, ``format_version``; ``architecture`` ("SLTnet" / "GeneralizedRCNN") and ``mode``
  ("sequential", "symmetric" or "single_frame");
- ``classes`` (names of classes 0..K-1) and ``category_ids`` (their dataset category ids);
- ``input``: the frame engine's image tensor (uint8 RGB NCHW at a fixed size), ``resized_size``
  (the pixels the detections are in; scale x by W_in / w and y by H_in / h) and the preprocessing
  done inside the frame engine;
- ``window``: N, the window size, the reference position, the latency in frames and the padding rule;
- ``memory``: long-term memory size K x P, feature width d, the keyframe interval and the name
  template of the memory slots' inputs;
- ``tubelets``, ``detections`` (slots, score and NMS thresholds) and ``rpn`` settings;
- ``engines``: per engine its file names (``onnx``, after a TensorRT build also ``tensorrt``) and
  its input/output tensors (name, shape, dtype);
- ``files``: ``{file name: {"sha256", "bytes"}}``; ``tensorrt`` (after a build) and ``versions``.
"""

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Sequence, Union

import onnx
import torch
import torchvision
from yacs.config import CfgNode

import sltnet
from export.frame_engine import IMAGE_INPUT
from export.onnx_export import FRAME_ONNX, OPSET, TEMPORAL_ONNX, ExportedEngines, engine_io_json
from export.temporal_engine import DETECTION_OUTPUTS, memory_input_name, slot_input_name
from sltnet.atomic_io import atomic_write_text
from sltnet.errors import SltnetError

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "sltnet-engines"
FORMAT_VERSION = 2
ENGINE_NAMES = ("frame", "temporal")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_manifest(
    cfg: CfgNode, engines: ExportedEngines, classes: Sequence[str], category_ids: Sequence[int], source: Dict[str, str]
) -> Dict[str, Any]:
    """The manifest of a fresh ONNX export (``files`` filled in by :func:`write_manifest`).

    Args:
        source: where the model came from (``config_file``, ``weights``).
    """
    modules = engines.modules
    temporal = modules.temporal
    model = temporal.model
    num_frames = model.num_frames if temporal.temporal else 1
    symmetric = temporal.temporal and model.symmetric
    mode = ("symmetric" if symmetric else "sequential") if temporal.temporal else "single_frame"
    st = cfg.MODEL.SPATIOTEMPORAL
    frame_outputs = [spec.name for spec in engines.frame_io["outputs"]]
    return {
        "format": MANIFEST_FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": cfg.MODEL.META_ARCHITECTURE,
        "mode": mode,
        "classes": list(classes),
        "category_ids": [int(i) for i in category_ids],
        "input": {
            "tensor": IMAGE_INPUT,
            "shape": [1, 3, *modules.input_size],
            "dtype": "uint8",
            "channel_order": "RGB",
            "resized_size": list(modules.resized_size),
            "preprocessing_in_frame_engine": {
                "resize_short_side": cfg.INPUT.MIN_SIZE_TEST,
                "resize_max_size": cfg.INPUT.MAX_SIZE_TEST,
                "resize_mode": "bilinear, half-pixel centres, no antialiasing",
                "network_channel_order": cfg.INPUT.FORMAT,
                "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
                "pixel_std": list(cfg.MODEL.PIXEL_STD),
                "size_divisibility": cfg.DATALOADER.SIZE_DIVISIBILITY,
            },
        },
        "window": {
            "num_frames": num_frames,
            "size": temporal.window_size,
            "reference_position": temporal.reference_position,
            "latency_frames": num_frames if symmetric else 0,
            "padding": "the first frame repeats before the video start, the last after its end",
            "slot_input": slot_input_name("{slot}", "{output}"),
            "frame_outputs": frame_outputs,
        },
        "memory": {
            "long_term": temporal.long_term,
            "num_keyframes": st.NUM_KEYFRAMES if temporal.long_term else 0,
            "keyframe_interval": st.KEYFRAME_INTERVAL if temporal.long_term else 0,
            "rows_per_entry": temporal.entry_rows,
            "slot_input": memory_input_name("{slot}", "{part}"),
            "feature_dim": temporal.feature_dim if temporal.long_term else 0,
        },
        "tubelets": temporal.num_tubelets,
        "detections": {
            "slots": next(
                spec.shape[0] for spec in engines.temporal_io["outputs"] if spec.name == DETECTION_OUTPUTS[0]
            ),
            "score_thresh": model.roi_heads.score_thresh,
            "nms_thresh": model.roi_heads.nms_thresh,
        },
        "rpn": {
            "pre_nms_topk": model.rpn.pre_nms_topk,
            "post_nms_topk": model.rpn.post_nms_topk,
            "nms_thresh": model.rpn.nms_thresh,
            "min_size": model.rpn.min_size,
        },
        "engines": {
            "frame": {"onnx": FRAME_ONNX, **engine_io_json(engines.frame_io)},
            "temporal": {"onnx": TEMPORAL_ONNX, **engine_io_json(engines.temporal_io)},
        },
        "files": {},
        "versions": {
            "sltnet": sltnet.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "onnx": onnx.__version__,
            "opset": OPSET,
        },
        "source": dict(source),
    }


def write_manifest(directory: Union[str, Path], manifest: Dict[str, Any]) -> Path:
    """Checksum every engine file the manifest names and write ``directory/manifest.json`` atomically."""
    directory = Path(directory)
    names = [engine[kind] for engine in manifest["engines"].values() for kind in ("onnx", "tensorrt") if kind in engine]
    manifest["files"] = {
        name: {"sha256": sha256_file(directory / name), "bytes": (directory / name).stat().st_size} for name in names
    }
    path = directory / MANIFEST_FILE
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
    return path


def load_manifest(directory: Union[str, Path]) -> Dict[str, Any]:
    """Read ``directory/manifest.json`` and verify every engine file it lists.

    Raises:
        SltnetError: one line naming the file: manifest missing or not valid JSON, a required key
            missing, an unknown format version, an engine file missing or with another SHA-256.
    """
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise SltnetError(f"{path}: not found (export the model with sltnet-export first)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SltnetError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise SltnetError(f"{path}: not an sltnet engine manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise SltnetError(
            f"{path}: format_version {manifest.get('format_version')!r}, this sltnet reads {FORMAT_VERSION}"
        )
    engines, files = manifest.get("engines"), manifest.get("files")
    if not isinstance(engines, dict) or set(engines) != set(ENGINE_NAMES) or not isinstance(files, dict):
        raise SltnetError(f"{path}: needs 'engines' ({' and '.join(ENGINE_NAMES)}) and 'files'")
    for engine in engines.values():
        for kind in ("onnx", "tensorrt"):
            if kind in engine and engine[kind] not in files:
                raise SltnetError(f"{path}: {engine[kind]} has no checksum under 'files'")
    for name, entry in files.items():
        file_path = directory / name
        if not file_path.is_file():
            raise SltnetError(f"{file_path}: missing (listed in {MANIFEST_FILE})")
        if not isinstance(entry, dict) or sha256_file(file_path) != entry.get("sha256"):
            raise SltnetError(
                f"{file_path}: SHA-256 does not match {MANIFEST_FILE} (the file changed after the export; export again)"
            )
    return manifest
