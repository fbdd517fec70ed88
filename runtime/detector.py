"""Streaming detection over the two engines with state in preallocated rings (docs/method.md#frame-window,
docs/deployment.md#runtime).

:class:`StreamingRuntime` answers exactly like :class:`~sltnet.modeling.streaming.StreamingDetector`.
Its state is allocated once, on the backend's device, when it is created:

- a ring of window slots, one per window position (N sequential, 2N + 1 symmetric); frame f's
  frame-engine outputs are written by the engine straight into slot f mod size;
- the temporal engine's window inputs ``frame{i}_<output>`` are bound to the slots of the frames
  ``Window.indices``: rotating the window re-binds addresses and never copies features, and
  start/end padding binds the first/last frame's slot several times;
- a :class:`MemoryRing` of K + 1 slots of P rows with a validity mask: K are bound as the
  ``memory{k}_*`` inputs and the spare one as the ``entry_*`` outputs, so the temporal engine writes
  the frame's memory entry straight into the ring; a keyframe keeps it by re-binding (the spare
  replaces the oldest slot), never by copying, and no output shares a buffer with an input of the
  same call;
- one image buffer and the detection buffers; on CUDA also pinned host buffers, so only the image
  goes to the device and only the detections come back.

Sequential mode answers frame t at once; symmetric mode answers frame t once frame t + N is pushed
and :meth:`StreamingRuntime.flush` answers the rest at the end of a video. A new video
(:meth:`StreamingRuntime.reset`, or the end of ``flush``) clears the window and the memory.

For profiling (``benchmarks/fps.py``) the runtime takes an optional ``timer``: called with a stage
name, it returns a context manager wrapped around that stage's work; the stages are
:data:`TIMED_STAGES`, and everything else in ``push``/``flush`` is the runtime's bookkeeping
(input check, slot rotation and re-binding, memory-ring updates).
"""

from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor

from runtime.engines import Backend
from sltnet.contract import (
    DETECTION_OUTPUTS,
    MEMORY_PARTS,
    FrameResult,
    Manifest,
    MemorySection,
    TensorSpec,
    entry_output_name,
    memory_input_name,
    slot_input_name,
)
from sltnet.data.transforms import scale_boxes
from sltnet.errors import SltnetError

# What a ``timer`` sees: image upload, the two engine runs, detections to a FrameResult.
TIMED_STAGES = ("preprocess", "frame_engine", "temporal_engine", "postprocess")
StageTimer = Callable[[str], AbstractContextManager[None]]


def _untimed(stage: str) -> AbstractContextManager[None]:
    return nullcontext()


def _empty(spec: TensorSpec, device: torch.device) -> Tensor:
    """One ring buffer (zeros, so an unwritten slot never holds NaNs)."""
    return torch.zeros(spec.shape, dtype=spec.torch_dtype, device=device)


class MemoryRing:
    """The long-term memory as the temporal engine binds it: K + 1 slots of P rows.

    ``order[:K]`` are bound as the engine's memory inputs (oldest entry first; a slot never written
    holds only invalid rows) and ``order[K]``, the spare, as its ``entry_*`` outputs. When the
    reference frame is a keyframe the spare becomes the newest input and the oldest input the spare.

    Attributes:
        slots: K + 1 slots ``{part: tensor}``: features [P, d], boxes [P, 4], valid [P] bool.
        order: slot indices in binding order.
    """

    def __init__(
        self,
        specs: dict[str, TensorSpec],
        num_keyframes: int,
        keyframe_interval: int,
        device: torch.device,
    ) -> None:
        self.num_keyframes = num_keyframes
        self.keyframe_interval = keyframe_interval
        self.slots = [
            {part: _empty(specs[entry_output_name(part)], device) for part in MEMORY_PARTS}
            for _ in range(num_keyframes + 1)
        ]
        self.order = list(range(num_keyframes + 1))
        self.num_writes = 0

    def __len__(self) -> int:
        """Number of entries held."""
        return min(self.num_writes, self.num_keyframes)

    def bindings(self) -> dict[str, Tensor]:
        """``{engine tensor name: slot buffer}`` in the current order."""
        named = {}
        for position, index in enumerate(self.order):
            for part, tensor in self.slots[index].items():
                spare = position == self.num_keyframes
                named[entry_output_name(part) if spare else memory_input_name(position, part)] = tensor
        return named

    def reset(self) -> None:
        """Forget every entry (a new video starts)."""
        for slot in self.slots:
            slot["valid"].zero_()
        self.num_writes = 0

    def update(self, frame_index: int) -> bool:
        """Keep the entry the engine just wrote into the spare slot if ``frame_index`` is a keyframe."""
        if frame_index % self.keyframe_interval:
            return False
        self.order = self.order[1:] + self.order[:1]
        self.num_writes += 1
        return True


class StreamingRuntime:
    """Push the frames of one video at a time; get each frame's result once its window is complete.

    Args:
        manifest: the export's manifest (:meth:`sltnet.contract.Manifest.load`).
        backend: the engines (:func:`runtime.engines.open_backend`).
        score_thresh: keep detections scoring at least this (default: the export's threshold, which
            the temporal engine applies; a lower one cannot be recovered).
        timer: profiling hook, called as ``with timer(stage):`` around each stage of
            :data:`TIMED_STAGES` (default: none). A timer on CUDA must synchronize to measure.
    Raises:
        SltnetError: the manifest's tensors do not fit together, or ``score_thresh`` is below the export's.
    """

    def __init__(
        self,
        manifest: Manifest,
        backend: Backend,
        score_thresh: float | None = None,
        timer: StageTimer | None = None,
    ) -> None:
        self.backend = backend
        self._timer = timer or _untimed
        self.window = manifest.frame_window
        self.input_size = manifest.input.size
        self.resized_size = manifest.input.resized_size
        baked_thresh = manifest.detections.score_thresh
        if score_thresh is not None and score_thresh < baked_thresh:
            raise SltnetError(
                f"--score-thresh {score_thresh}: below the threshold {baked_thresh} built into the engines "
                "(export again with MODEL.ROI_HEADS.SCORE_THRESH_TEST lower)"
            )
        self.score_thresh = score_thresh

        frame_outputs = manifest.engines.frame.output_specs()
        temporal_inputs = manifest.engines.temporal.input_specs()
        temporal_outputs = manifest.engines.temporal.output_specs()
        # Per window position, the (frame output, temporal input) pairs it binds: the engine takes
        # only the outputs it uses (the objectness logits of the reference frame alone).
        self._slot_bindings = [
            [
                (name, input_name)
                for name in frame_outputs
                if (input_name := slot_input_name(position, name)) in temporal_inputs
            ]
            for position in range(self.window.size)
        ]
        memory = manifest.memory
        _check_specs(temporal_inputs, _input_sources(frame_outputs, temporal_outputs, self._slot_bindings, memory))
        device = backend.device
        self.image_name = manifest.input.tensor
        self.image = _empty(manifest.engines.frame.input_specs()[self.image_name], device)
        self.slots: list[dict[str, Tensor]] = [
            {name: _empty(spec, device) for name, spec in frame_outputs.items()} for _ in range(self.window.size)
        ]
        self.detections = {name: _empty(temporal_outputs[name], device) for name in DETECTION_OUTPUTS}
        self.memory: MemoryRing | None = None
        if memory.long_term:
            self.memory = MemoryRing(temporal_outputs, memory.num_keyframes, memory.keyframe_interval, device)
        on_cuda = device.type == "cuda"
        # Pinned host mirrors: the image goes up and the detections come down asynchronously.
        self._host_image = torch.empty_like(self.image, device="cpu").pin_memory() if on_cuda else None
        self._host_detections = (
            {name: torch.empty_like(t, device="cpu").pin_memory() for name, t in self.detections.items()}
            if on_cuda
            else self.detections
        )
        self._upload_done = torch.cuda.Event() if on_cuda else None
        self._bind_fixed()
        self.reset()

    def _bind_fixed(self) -> None:
        """Bind the image, the detections and the memory ring in its first order."""
        frame, temporal = self.backend.frame, self.backend.temporal
        frame.bind(self.image_name, self.image)
        fixed = dict(self.detections)
        if self.memory is not None:
            fixed.update(self.memory.bindings())
        for name, tensor in fixed.items():
            temporal.bind(name, tensor)

    def buffers(self) -> dict[str, Tensor]:
        """Every buffer the runtime binds, by a unique name (for checks that nothing is reallocated)."""
        named = {"image": self.image, **{f"det/{n}": t for n, t in self.detections.items()}}
        for index, slot in enumerate(self.slots):
            named.update({f"slot{index}/{n}": t for n, t in slot.items()})
        if self.memory is not None:
            for index, slot in enumerate(self.memory.slots):
                named.update({f"memory{index}/{n}": t for n, t in slot.items()})
        return named

    def reset(self) -> None:
        """Start a new video: forget the window and the long-term memory."""
        self._pending: deque[int] = deque()  # frames pushed but not yet answered
        self._num_frames = 0
        if self.memory is not None:
            self.memory.reset()

    def _stream(self):
        return torch.cuda.stream(self.backend.stream) if self.backend.stream is not None else nullcontext()

    def push(self, image: Tensor) -> list[FrameResult]:
        """Add the next frame of the current video.

        Args:
            image: uint8 [3, H, W] RGB (CPU) at the export's input size.
        Returns:
            results of the frames that became complete, in frame order (possibly none).
        Raises:
            SltnetError: the frame is not the size the engines take.
        """
        if tuple(image.shape) != (3, *self.input_size) or image.dtype != torch.uint8:
            height, width = self.input_size
            raise SltnetError(
                f"frame of {image.dtype} {tuple(image.shape)}: the engines take uint8 [3, {height}, {width}] RGB "
                "(export with --input-size H W for other frame sizes)"
            )
        frame_index = self._num_frames
        self._num_frames += 1
        slot = self.slots[frame_index % self.window.size]
        with self._stream():
            with self._timer("preprocess"):
                self._upload(image)
            for name, tensor in slot.items():
                self.backend.frame.bind(name, tensor)
            with self._timer("frame_engine"):
                self.backend.frame.run()
            self._pending.append(frame_index)
            results = []
            while self._pending and self._pending[0] + self.window.latency <= frame_index:
                results.append(self._detect(self._pending.popleft()))
        return results

    def flush(self) -> list[FrameResult]:
        """End of the video: answer every pending frame (the last frame fills the future), then reset."""
        with self._stream():
            results = [self._detect(index) for index in self._pending]
        self.reset()
        return results

    def _upload(self, image: Tensor) -> None:
        if self._host_image is None:
            self.image.copy_(image[None])
            return
        assert self._upload_done is not None  # made with the pinned image, on CUDA
        self._upload_done.synchronize()  # the previous frame's copy has left the pinned buffer
        self._host_image.copy_(image[None])
        self.image.copy_(self._host_image, non_blocking=True)
        self._upload_done.record()

    def _detect(self, reference: int) -> FrameResult:
        temporal = self.backend.temporal
        indices = self.window.indices(reference, self._num_frames)
        for position, index in enumerate(indices):
            slot = self.slots[index % self.window.size]
            for name, input_name in self._slot_bindings[position]:
                temporal.bind(input_name, slot[name])
        with self._timer("temporal_engine"):
            temporal.run()
        if self.memory is not None and self.memory.update(reference):
            for name, tensor in self.memory.bindings().items():
                temporal.bind(name, tensor)
        with self._timer("postprocess"):
            return self._result(reference)

    def _result(self, reference: int) -> FrameResult:
        host = self._host_detections
        if host is not self.detections:
            for name, tensor in self.detections.items():
                host[name].copy_(tensor, non_blocking=True)
            torch.cuda.current_stream().synchronize()
        count = int(host["det_count"][0])
        boxes = scale_boxes(host["det_boxes"][:count].float(), self.resized_size, self.input_size)
        scores, classes = host["det_scores"][:count].float(), host["det_classes"][:count].clone()
        if self.score_thresh is not None:
            keep = scores >= self.score_thresh
            boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        return FrameResult(reference, boxes, scores.clone(), classes)


def _input_sources(
    frame_outputs: dict[str, TensorSpec],
    temporal_outputs: dict[str, TensorSpec],
    slot_bindings: list[list[tuple[str, str]]],
    memory: MemorySection,
) -> dict[str, tuple[str, TensorSpec]]:
    """{temporal input: (what the runtime binds to it, that buffer's spec)} for the window and memory inputs."""
    sources = {
        input_name: (f"the frame engine's {name!r}", frame_outputs[name])
        for pairs in slot_bindings
        for name, input_name in pairs
    }
    if memory.long_term:
        for slot in range(memory.num_keyframes):
            for part in MEMORY_PARTS:
                sources[memory_input_name(slot, part)] = (
                    f"a memory slot's {part!r}",
                    temporal_outputs[entry_output_name(part)],
                )
    return sources


def _check_specs(temporal_inputs: dict[str, TensorSpec], sources: dict[str, tuple[str, TensorSpec]]) -> None:
    """Every temporal input in ``sources`` takes the buffer bound to it as it is."""
    for name, (source, spec) in sources.items():
        expected = temporal_inputs.get(name)
        if expected is None or not expected.fits(spec):
            raise SltnetError(
                f"manifest.json: temporal input {name!r} does not take {source} {list(spec.shape)} (export again)"
            )
