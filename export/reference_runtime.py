"""Streaming over the exported engines with the runtime's bookkeeping, in plain PyTorch (DESIGN A.2, B.3).

:class:`EngineStreamer` answers exactly like :class:`~sltnet.modeling.streaming.StreamingDetector`,
but through the two engines of an export, run by any backend given as a function from named input
tensors to named output tensors. It is the reference for the device runtime's bookkeeping:

- every frame runs the frame engine once; its outputs stay while the frame is in a window;
- a window binds slot i's inputs ``frame{i}_<output>`` to the outputs of frame ``window_indices(...)[i]``
  (padding repeats the first frame before the video start and, symmetric, the last after its end;
  the runtime binds the same buffers several times);
- the long-term memory is a :class:`~sltnet.modeling.memory.LongTermMemory` whose padded slots are
  the ``memory_*`` inputs; when the reference frame's in-video index t has t % ``keyframe_interval``
  == 0, the engine's ``entry_*`` outputs fill the next slot round-robin (the runtime has the engine
  write them straight into that slot);
- ``det_count`` detections are taken and scaled from ``resized_size`` to the input size;
- a new video (:meth:`EngineStreamer.reset`, or the end of :meth:`EngineStreamer.flush`) clears
  the window and the memory.

Backends here: :func:`onnxruntime_engines` (CPU) and :func:`module_engines` (the PyTorch modules).
"""

from collections import deque
from pathlib import Path
from typing import Callable, Deque, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from export.frame_engine import IMAGE_INPUT, FrameEngine
from export.temporal_engine import DETECTION_OUTPUTS, ENTRY_OUTPUTS, MEMORY_INPUTS, TemporalEngine
from sltnet.data.sampling import window_indices
from sltnet.data.transforms import scale_boxes
from sltnet.errors import SltnetError
from sltnet.modeling.memory import LongTermMemory
from sltnet.modeling.streaming import FrameResult

#: A backend's view of one engine: named inputs in, named outputs out.
EngineFn = Callable[[Dict[str, Tensor]], Dict[str, Tensor]]


class ModuleEngine:
    """An exported PyTorch module called with named tensors (the ``torch`` reference backend)."""

    def __init__(self, module: nn.Module, input_names: Sequence[str], output_names: Sequence[str]) -> None:
        self.module = module.eval()
        self.input_names = list(input_names)
        self.output_names = list(output_names)

    @torch.no_grad()
    def __call__(self, feeds: Dict[str, Tensor]) -> Dict[str, Tensor]:
        outputs = self.module(*(feeds[name] for name in self.input_names))
        return dict(zip(self.output_names, outputs))


class OnnxRuntimeEngine:
    """One ONNX graph in an onnxruntime CPU session, called with named tensors.

    Args:
        path: the ``.onnx`` file.
        num_threads: intra-op threads (default: onnxruntime's choice, all cores).
    """

    def __init__(self, path: Union[str, Path], num_threads: Optional[int] = None) -> None:
        import onnxruntime  # only this backend needs it

        options = onnxruntime.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [value.name for value in self.session.get_inputs()]
        self.output_names = [value.name for value in self.session.get_outputs()]

    def __call__(self, feeds: Dict[str, Tensor]) -> Dict[str, Tensor]:
        arrays = {name: feeds[name].contiguous().numpy() for name in self.input_names}
        outputs = self.session.run(self.output_names, arrays)
        return {name: torch.from_numpy(output) for name, output in zip(self.output_names, outputs)}


def module_engines(frame: FrameEngine, temporal: TemporalEngine) -> Tuple[ModuleEngine, ModuleEngine]:
    """The engines as PyTorch modules (``build_engine_modules``), called like the exported ones."""
    return (
        ModuleEngine(frame, [IMAGE_INPUT], frame.output_names),
        ModuleEngine(temporal, temporal.input_names, temporal.output_names),
    )


def onnxruntime_engines(
    directory: Union[str, Path], manifest: Dict, num_threads: Optional[int] = None
) -> Tuple[OnnxRuntimeEngine, OnnxRuntimeEngine]:
    """The frame and temporal ONNX engines of an export (``manifest`` from ``load_manifest``)."""
    engines = manifest["engines"]
    return (
        OnnxRuntimeEngine(Path(directory) / engines["frame"]["onnx"], num_threads),
        OnnxRuntimeEngine(Path(directory) / engines["temporal"]["onnx"], num_threads),
    )


class EngineStreamer:
    """Push the frames of one video at a time; get each frame's result once its window is complete.

    Args:
        manifest: the export's manifest (``load_manifest``).
        frame_engine, temporal_engine: the backend's engines.
    """

    def __init__(self, manifest: Dict, frame_engine: EngineFn, temporal_engine: EngineFn) -> None:
        self.frame_engine = frame_engine
        self.temporal_engine = temporal_engine
        window, memory = manifest["window"], manifest["memory"]
        self.num_frames = window["num_frames"]
        self.symmetric = manifest["mode"] == "symmetric"
        self.latency = window["latency_frames"]
        self.reference_position = window["reference_position"]
        self.frame_outputs: List[str] = list(window["frame_outputs"])
        self.slot_input: str = window["slot_input"]
        self.image_input = manifest["input"]["tensor"]
        self.input_size = tuple(manifest["input"]["shape"][2:])
        self.resized_size = tuple(manifest["input"]["resized_size"])
        self.memory: Optional[LongTermMemory] = None
        if memory["long_term"]:
            self.memory = LongTermMemory(
                memory["num_keyframes"], memory["keyframe_interval"], memory["rows_per_entry"], memory["feature_dim"]
            )
        self.reset()

    def reset(self) -> None:
        """Start a new video: clear the window buffer and the long-term memory."""
        self._window: Dict[int, Dict[str, Tensor]] = {}
        self._pending: Deque[int] = deque()
        self._num_frames = 0
        if self.memory is not None:
            self.memory.reset()

    def push(self, image: Tensor) -> List[FrameResult]:
        """Add the next frame of the current video.

        Args:
            image: uint8 [3, H, W] RGB at the export's input size.
        Returns:
            results of the frames that became complete, in frame order (possibly none).
        Raises:
            SltnetError: the frame is not the size the engines take.
        """
        if tuple(image.shape) != (3, *self.input_size):
            height, width = self.input_size
            raise SltnetError(
                f"frame of shape {tuple(image.shape)}: the engines take uint8 [3, {height}, {width}] RGB "
                "(export with --input-size H W for other frame sizes)"
            )
        frame_index = self._num_frames
        self._num_frames += 1
        self._window[frame_index] = self.frame_engine({self.image_input: image[None]})
        self._pending.append(frame_index)
        results = []
        while self._pending and self._pending[0] + self.latency <= frame_index:
            results.append(self._detect(self._pending.popleft()))
        return results

    def flush(self) -> List[FrameResult]:
        """End of the video: answer every pending frame (the last frame fills the future), then reset."""
        results = [self._detect(index) for index in self._pending]
        self.reset()
        return results

    def _detect(self, reference: int) -> FrameResult:
        indices = window_indices(reference, self._num_frames, self.num_frames, self.symmetric)
        feeds = {
            self.slot_input.format(slot=slot, output=name): self._window[index][name]
            for slot, index in enumerate(indices)
            for name in self.frame_outputs
        }
        if self.memory is not None:
            feeds.update(zip(MEMORY_INPUTS, self.memory.as_padded()))
        outputs = self.temporal_engine(feeds)
        if self.memory is not None:
            features, boxes, valid = (outputs[name] for name in ENTRY_OUTPUTS)
            # Valid entry rows come first; LongTermMemory marks exactly the rows it is given as valid.
            num_rows = int(valid.sum())
            self.memory.update(reference, features[:num_rows], boxes[:num_rows])
        # The next window starts at (reference + 1) - reference_position; older frames are done.
        oldest_needed = reference + 1 - self.reference_position
        for index in [i for i in self._window if i < oldest_needed]:
            del self._window[index]
        boxes, scores, classes, count = (outputs[name] for name in DETECTION_OUTPUTS)
        num_detections = int(count[0])
        boxes = scale_boxes(boxes[:num_detections], self.resized_size, self.input_size)
        return FrameResult(reference, boxes.float(), scores[:num_detections].float(), classes[:num_detections])
