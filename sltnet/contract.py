"""The contract between the model, the exported engines and the runtime (docs/deployment.md).

One home for what the three sides must agree on:

- the engines' tensor names and name templates;
- :class:`TensorSpec`, one engine input or output;
- :class:`Window`, which frames a reference frame's window holds (size, reference position,
  latency, indices), and the manifest's mode names;
- :class:`FrameResult`, the detections of one frame;
- :class:`Manifest`, the typed ``manifest.json`` of an export: loaded and validated with one-line
  errors, checksums verified, written atomically.

The manifest's schema is a set of pydantic models: pydantic is well kept, validates nested JSON
into typed objects and names the failing key, which hand-written checks of a dict did not.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple

import pydantic
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from sltnet.atomic_io import atomic_write_text
from sltnet.errors import SltnetError

# --------------------------------------------------------------------------------------------------
# Tensor names
# --------------------------------------------------------------------------------------------------
#: The frame engine's input: uint8 [B, 3, H_in, W_in] RGB (B: ``input.batch``, 1 unless exported with --batch).
IMAGE_INPUT = "image"
#: The frame engine's outputs, in order.
FEATURES = "features"
OBJECTNESS_LOGITS = "objectness_logits"
ANCHOR_BOXES = "boxes"
FRAME_OUTPUTS = (FEATURES, OBJECTNESS_LOGITS, ANCHOR_BOXES)
#: What a memory slot and the memory entry hold, in input/output order.
MEMORY_PARTS = ("features", "boxes", "valid")
#: The temporal engine's detection outputs, in order.
DETECTION_OUTPUTS = ("det_boxes", "det_scores", "det_classes", "det_count")
#: Name templates (``str.format`` fields) the manifest records.
SLOT_INPUT_TEMPLATE = "frame{slot}_{output}"
MEMORY_INPUT_TEMPLATE = "memory{slot}_{part}"
ENTRY_OUTPUT_TEMPLATE = "entry_{part}"


def slot_input_name(slot: int | str, frame_output: str) -> str:
    """The temporal engine's input that window slot ``slot`` binds to frame-engine output ``frame_output``."""
    return SLOT_INPUT_TEMPLATE.format(slot=slot, output=frame_output)


def memory_input_name(slot: int | str, part: str) -> str:
    """The temporal engine's input that memory slot ``slot`` binds to its ``part``."""
    return MEMORY_INPUT_TEMPLATE.format(slot=slot, part=part)


def entry_output_name(part: str) -> str:
    """The temporal engine's output that holds ``part`` of the frame's memory entry."""
    return ENTRY_OUTPUT_TEMPLATE.format(part=part)


ENTRY_OUTPUTS = tuple(entry_output_name(part) for part in MEMORY_PARTS)


class TensorSpec(BaseModel):
    """Name, static shape and NumPy dtype name (``float32``, ``uint8``, ``int64``, ``bool``) of an
    engine I/O tensor (-1 for a dimension without a fixed size)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    shape: tuple[int, ...]
    dtype: Literal["float32", "float16", "uint8", "int8", "int32", "int64", "bool"]

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def fits(self, other: "TensorSpec") -> bool:
        """Whether a buffer made for ``other`` can be bound here (same shape and dtype)."""
        return (self.shape, self.dtype) == (other.shape, other.dtype)


# --------------------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------------------
#: The manifest's ``mode``: SLTnet's two window modes, or the single-frame baseline.
Mode = Literal["sequential", "symmetric", "single_frame"]


@dataclass(frozen=True)
class Window:
    """Which frames the window of a reference frame holds (docs/method.md#frame-window).

    Sequential mode: N frames ending at the reference (answered at once); symmetric mode
    (``MODEL.SPATIOTEMPORAL.FORWARD_AGGREGATION``): 2N + 1 frames centred on it (answered N frames
    later). The single-frame baseline is a sequential window of one frame.
    """

    num_frames: int
    symmetric: bool = False

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {self.num_frames}")

    @classmethod
    def of_config(cls, spatiotemporal: Any) -> "Window":
        """The window of a config's ``MODEL.SPATIOTEMPORAL`` node (``NUM_FRAMES``, ``FORWARD_AGGREGATION``)."""
        return cls(spatiotemporal.NUM_FRAMES, bool(spatiotemporal.FORWARD_AGGREGATION))

    @classmethod
    def of_mode(cls, mode: str, num_frames: int) -> "Window":
        """The window of a manifest's ``mode`` (``single_frame``: one frame whatever ``num_frames``)."""
        if mode == "single_frame":
            return cls(1)
        return cls(num_frames, symmetric=mode == "symmetric")

    @property
    def size(self) -> int:
        """Frames in a window: N (sequential) or 2N + 1 (symmetric)."""
        return 2 * self.num_frames + 1 if self.symmetric else self.num_frames

    @property
    def reference_position(self) -> int:
        """Index of the reference frame in the window: the newest (sequential) or the middle (symmetric)."""
        return self.num_frames if self.symmetric else self.num_frames - 1

    @property
    def latency(self) -> int:
        """Frames that must follow a frame before it can be answered."""
        return self.num_frames if self.symmetric else 0

    def temporal_mode(self) -> Mode:
        """The manifest's mode of an SLTnet with this window."""
        return "symmetric" if self.symmetric else "sequential"

    def indices(self, t: int, num_frames_in_video: int) -> list[int]:
        """Frame indices of the window whose reference is frame ``t``, oldest first.

        Positions before the video repeat the first frame, positions after it repeat the last.
        """
        if not 0 <= t < num_frames_in_video:
            raise ValueError(f"frame {t} is outside a video of {num_frames_in_video} frames")
        first = t - self.reference_position
        return [min(max(i, 0), num_frames_in_video - 1) for i in range(first, first + self.size)]


class FrameResult(NamedTuple):
    """Detections of one frame, in the pixels of the frame as given.

    Attributes:
        frame_index: position of the frame in its video (0-based).
        boxes: [n, 4] (x1, y1, x2, y2).
        scores: [n].
        classes: [n] int64 contiguous classes.
    """

    frame_index: int
    boxes: Tensor
    scores: Tensor
    classes: Tensor


# --------------------------------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------------------------------
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT: Final = "sltnet-engines"
FORMAT_VERSION = 2
ENGINE_NAMES = ("frame", "temporal")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Preprocessing(_Section):
    """What the frame engine does to the image before the backbone."""

    resize_short_side: int
    resize_max_size: int
    resize_mode: str
    network_channel_order: Literal["RGB", "BGR"]
    pixel_mean: list[float]
    pixel_std: list[float]
    size_divisibility: int


class InputSection(_Section):
    """The frame engine's image input and the frame size the detections come out in."""

    tensor: str
    shape: tuple[int, int, int, int]
    dtype: Literal["uint8"]
    channel_order: Literal["RGB"]
    resized_size: tuple[int, int]
    preprocessing_in_frame_engine: Preprocessing
    #: Frames per frame-engine run (``sltnet-export --batch``); written only when above 1, so a
    #: one-frame export's manifest is the same as before batching existed.
    batch: int = Field(default=1, ge=1, exclude_if=lambda batch: batch == 1)

    @pydantic.model_validator(mode="after")
    def _batch_is_the_first_dimension(self) -> "InputSection":
        if self.shape[0] != self.batch:
            raise ValueError(f"shape {list(self.shape)} does not start with the batch {self.batch}")
        return self

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the frames the engines take."""
        return self.shape[2], self.shape[3]


class WindowSection(_Section):
    num_frames: int = Field(ge=1)
    size: int = Field(ge=1)
    reference_position: int = Field(ge=0)
    latency_frames: int = Field(ge=0)
    padding: str
    slot_input: str
    frame_outputs: list[str]


class MemorySection(_Section):
    long_term: bool
    num_keyframes: int = Field(ge=0)
    keyframe_interval: int = Field(ge=0)
    rows_per_entry: int = Field(ge=0)
    slot_input: str
    feature_dim: int = Field(ge=0)


class DetectionSection(_Section):
    slots: int = Field(ge=1)
    score_thresh: float
    nms_thresh: float


class RpnSection(_Section):
    pre_nms_topk: int = Field(ge=1)
    post_nms_topk: int = Field(ge=1)
    nms_thresh: float
    min_size: float


class EngineSection(_Section):
    """One engine's files and its I/O tensors in the engine's order."""

    onnx: str
    tensorrt: str | None = None
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def input_specs(self) -> dict[str, TensorSpec]:
        return {spec.name: spec for spec in self.inputs}

    def output_specs(self) -> dict[str, TensorSpec]:
        return {spec.name: spec for spec in self.outputs}

    def files(self) -> list[str]:
        return [self.onnx] + ([self.tensorrt] if self.tensorrt else [])


class EnginesSection(_Section):
    frame: EngineSection
    temporal: EngineSection

    def items(self) -> list[tuple[str, EngineSection]]:
        return [(name, getattr(self, name)) for name in ENGINE_NAMES]


class FileEntry(_Section):
    sha256: str
    bytes: int


class TensorRTSection(_Section):
    version: str
    workspace_mib: int
    device: str


#: The numeric precision of an export's graphs (docs/export.md#precision).
Precision = Literal["fp32", "fp16", "int8"]


class CalibrationSection(_Section):
    """The frames an INT8 export was calibrated on."""

    dataset: str
    videos: int = Field(ge=1)
    frames: int = Field(ge=1)
    method: str


class PrecisionSection(_Section):
    """How the graphs were converted from the float32 export.

    Attributes:
        converter: the library and function that rewrote the graphs, with its version.
        float32_rule: which parts stayed float32 (fp16) or floating-point (int8), and why.
        float32_nodes: per engine, its float32 nodes of the costly op types (fp16).
        quantized_op_types: per engine, the op types given explicit Q/DQ (int8).
        excluded_nodes: per engine, the nodes of those types left floating-point (int8).
        calibration: the calibration data (int8).
    """

    precision: Precision = "fp32"
    converter: str | None = None
    float32_rule: str | None = None
    float32_nodes: dict[str, list[str]] = {}
    quantized_op_types: dict[str, list[str]] = {}
    excluded_nodes: dict[str, list[str]] = {}
    calibration: CalibrationSection | None = None


class Manifest(_Section):
    """``manifest.json``: everything the runtime needs to drive the two engines
    (docs/deployment.md#manifest), and the SHA-256 of every engine file so a loader refuses
    files that changed after the export."""

    format: Literal["sltnet-engines"] = MANIFEST_FORMAT
    format_version: int = FORMAT_VERSION
    architecture: Literal["SLTnet", "GeneralizedRCNN"]
    mode: Mode
    classes: list[str]
    category_ids: list[int]
    input: InputSection
    window: WindowSection
    memory: MemorySection
    tubelets: int = Field(ge=1)
    detections: DetectionSection
    rpn: RpnSection
    engines: EnginesSection
    files: dict[str, FileEntry] = {}
    precision: PrecisionSection = PrecisionSection()
    tensorrt: TensorRTSection | None = None
    versions: dict[str, str | int]
    source: dict[str, str]

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        rule = self.frame_window
        stated = (self.window.size, self.window.reference_position, self.window.latency_frames)
        if stated != (rule.size, rule.reference_position, rule.latency):
            raise ValueError(
                f"window: size, reference_position, latency_frames {list(stated)} do not follow the {self.mode} "
                f"window of num_frames {self.window.num_frames} ({[rule.size, rule.reference_position, rule.latency]})"
            )
        templates = (self.window.slot_input, self.memory.slot_input)
        if templates != (SLOT_INPUT_TEMPLATE, MEMORY_INPUT_TEMPLATE):
            raise ValueError(
                f"window.slot_input and memory.slot_input {list(templates)}: this sltnet names the inputs "
                f"{[SLOT_INPUT_TEMPLATE, MEMORY_INPUT_TEMPLATE]}"
            )
        if len(self.classes) != len(self.category_ids):
            raise ValueError(f"{len(self.classes)} classes but {len(self.category_ids)} category_ids")
        return self

    @property
    def frame_window(self) -> Window:
        """The window rule of this export."""
        return Window.of_mode(self.mode, self.window.num_frames)

    @property
    def symmetric(self) -> bool:
        return self.mode == "symmetric"

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=True) + "\n"

    def write(self, directory: str | Path) -> Path:
        """Checksum every engine file the manifest names and write ``directory/manifest.json`` atomically."""
        directory = Path(directory)
        names = [name for _, engine in self.engines.items() for name in engine.files()]
        self.files = {
            name: FileEntry(sha256=sha256_file(directory / name), bytes=(directory / name).stat().st_size)
            for name in names
        }
        path = directory / MANIFEST_FILE
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def parse(cls, text: str, path: str | Path) -> "Manifest":
        """A manifest from its JSON text.

        Raises:
            SltnetError: one line naming ``path`` and the first problem (not JSON, another format
                or version, a key missing or of the wrong type, values that contradict each other).
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SltnetError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise SltnetError(f"{path}: not an sltnet engine manifest")
        if data.get("format_version") != FORMAT_VERSION:
            raise SltnetError(
                f"{path}: format_version {data.get('format_version')!r}, this sltnet reads {FORMAT_VERSION}"
            )
        try:
            return cls.model_validate(data)
        except pydantic.ValidationError as err:
            raise SltnetError(f"{path}: {_first_error(err)}") from None

    @classmethod
    def load(cls, directory: str | Path) -> "Manifest":
        """Read ``directory/manifest.json`` and verify every engine file it lists.

        Raises:
            SltnetError: one line naming the file: manifest missing or invalid (:meth:`parse`), an
                engine file without a checksum, missing, or with another SHA-256.
        """
        directory = Path(directory)
        path = directory / MANIFEST_FILE
        if not path.is_file():
            raise SltnetError(f"{path}: not found (export the model with sltnet-export first)")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise SltnetError(f"{path}: not valid JSON ({err})") from None
        manifest = cls.parse(text, path)
        for _, engine in manifest.engines.items():
            for name in engine.files():
                if name not in manifest.files:
                    raise SltnetError(f"{path}: {name} has no checksum under 'files'")
        for name, entry in manifest.files.items():
            file_path = directory / name
            if not file_path.is_file():
                raise SltnetError(f"{file_path}: missing (listed in {MANIFEST_FILE})")
            if sha256_file(file_path) != entry.sha256:
                raise SltnetError(
                    f"{file_path}: SHA-256 does not match {MANIFEST_FILE} (the file changed after the export; "
                    "export again)"
                )
        return manifest


def _first_error(err: pydantic.ValidationError) -> str:
    """pydantic's first error as ``key.path: message``."""
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        message = "required key missing"
    return f"{where}: {message}" if where else message


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
