"""Streaming detection over the two engines with state in preallocated rings (docs/method.md#frame-window,
docs/deployment.md#runtime).

:class:`StreamingRuntime` answers exactly like :class:`~sltnet.modeling.streaming.StreamingDetector`.
It is one :class:`StreamState` driven by an :class:`EngineRunner`; the multi-stream runtime
(:mod:`runtime.multistream`) drives several streams with the same runner. Everything is allocated
once, on the backend's device:

- per stream (:class:`StreamState`), a ring of window slots, one per window position (N sequential,
  2N + 1 symmetric); frame f's frame-engine outputs are written into slot f mod size (straight by
  the engine for a one-frame export, from the batch output otherwise);
- the temporal engine's window inputs ``frame{i}_<output>`` are bound to the slots of the frames
  ``Window.indices``: rotating the window re-binds addresses and never copies features, and
  start/end padding binds the first/last frame's slot several times;
- per stream, a :class:`MemoryRing` of K + 1 slots of P rows with a validity mask: K are bound as
  the ``memory{k}_*`` inputs and the spare one as the ``entry_*`` outputs, so the temporal engine
  writes the frame's memory entry straight into the ring; a keyframe keeps it by re-binding (the
  spare replaces the oldest slot), never by copying, and no output shares a buffer with an input
  of the same call;
- shared by the streams (:class:`EngineRunner`), the image batch and the detection buffers; on CUDA
  also pinned host buffers, so only the frame goes to the device and only the detections come back.

Frames may have any size (:mod:`runtime.letterbox`): one of the export's input size is copied into
the image as it is; any other is resized to fit on the backend's device, padded with the pixel mean,
and its boxes are mapped back to its own pixels.

Sequential mode answers frame t at once; symmetric mode answers frame t once frame t + N is pushed
and :meth:`StreamingRuntime.flush` answers the rest at the end of a video. A new video
(:meth:`StreamingRuntime.reset`, or the end of ``flush``) clears the window and the memory.

For profiling (``benchmarks/fps.py``) the runtime takes an optional ``timer``: called with a stage
name, it returns a context manager wrapped around that stage's work; the stages are
:data:`TIMED_STAGES`, and everything else in ``push``/``flush`` is the runtime's bookkeeping
(input check, slot rotation and re-binding, memory-ring updates).
"""

from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor

from runtime.engines import Backend
from runtime.letterbox import Fit, letterbox_into, pad_colour
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
from sltnet.data.transforms import boxes_to_frame
from sltnet.errors import SltnetError

# What a ``timer`` sees: image upload, the two engine runs, detections to a FrameResult.
TIMED_STAGES = ("preprocess", "frame_engine", "temporal_engine", "postprocess")
StageTimer = Callable[[str], AbstractContextManager[None]]


def _untimed(stage: str) -> AbstractContextManager[None]:
    return nullcontext()


def _empty(spec: TensorSpec, device: torch.device) -> Tensor:
    """One ring buffer (zeros, so an unwritten slot never holds NaNs)."""
    return torch.zeros(spec.shape, dtype=spec.torch_dtype, device=device)


def check_frame(image: Tensor) -> None:
    """Refuse what is not a uint8 [3, H, W] RGB frame (any H, W of at least 1).

    Raises:
        SltnetError: one line naming the frame's type and shape.
    """
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3 or min(image.shape[1:]) < 1:
        raise SltnetError(f"frame of {image.dtype} {tuple(image.shape)}: the runtime takes uint8 [3, H, W] RGB frames")


def slot_specs(frame_outputs: dict[str, TensorSpec], batch: int) -> dict[str, TensorSpec]:
    """A window slot's buffers: the frame engine's outputs for one frame (``batch`` > 1: without the
    leading batch dimension, :func:`~sltnet.deploy.frame_engine.frame_row`).

    Raises:
        SltnetError: an output of a batched frame engine does not start with the batch.
    """
    if batch == 1:
        return dict(frame_outputs)
    for name, spec in frame_outputs.items():
        if not spec.shape or spec.shape[0] != batch:
            raise SltnetError(
                f"manifest.json: frame output {name!r} {list(spec.shape)} does not start with the batch {batch} "
                "(export again)"
            )
    return {name: TensorSpec(name=name, shape=spec.shape[1:], dtype=spec.dtype) for name, spec in frame_outputs.items()}


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


class StreamState:
    """What the runtime keeps of one video: its window slots, its memory and its unanswered frames.

    Attributes:
        slots: one ``{frame output: buffer}`` per window position; frame f's outputs are in slot
            f mod size.
        fits: per slot, where its frame went in the engines' input (None: the frame had the input size).
        memory: the long-term memory (None without long-term attention).
        pending: frames pushed and not yet answered, oldest first.
        num_frames: frames pushed since the video started.
    """

    def __init__(
        self, slot_specs: dict[str, TensorSpec], window_size: int, memory: MemoryRing | None, device: torch.device
    ) -> None:
        self.slots = [{name: _empty(spec, device) for name, spec in slot_specs.items()} for _ in range(window_size)]
        self.fits: list[Fit | None] = [None] * window_size
        self.memory = memory
        self.reset()

    def reset(self) -> None:
        """Start a new video: forget the window and the long-term memory."""
        self.pending: deque[int] = deque()
        self.num_frames = 0
        if self.memory is not None:
            self.memory.reset()

    def next_slot(self, placed: Fit | None) -> dict[str, Tensor]:
        """The slot of the next frame, which is then pending (``placed``: where it went in the input)."""
        index = self.num_frames
        self.num_frames += 1
        self.pending.append(index)
        self.fits[index % len(self.slots)] = placed
        return self.slots[index % len(self.slots)]

    def buffers(self) -> dict[str, Tensor]:
        """The stream's buffers by a unique name."""
        named = {}
        for index, slot in enumerate(self.slots):
            named.update({f"slot{index}/{n}": t for n, t in slot.items()})
        if self.memory is not None:
            for index, slot in enumerate(self.memory.slots):
                named.update({f"memory{index}/{n}": t for n, t in slot.items()})
        return named


class EngineRunner:
    """The two engines and what every stream shares: the image batch and the detection buffers.

    Runs the frame engine once on the frames of up to B streams (B: the export's ``input.batch``)
    and the temporal engine once per stream and reference frame, binding that stream's window
    slots and memory ring first (re-binding a buffer already bound is free).

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
        self.batch = manifest.input.batch
        baked_thresh = manifest.detections.score_thresh
        if score_thresh is not None and score_thresh < baked_thresh:
            raise SltnetError(
                f"--score-thresh {score_thresh}: below the threshold {baked_thresh} built into the engines "
                "(export again with MODEL.ROI_HEADS.SCORE_THRESH_TEST lower)"
            )
        self.score_thresh = score_thresh

        frame_outputs = manifest.engines.frame.output_specs()
        self.slot_specs = slot_specs(frame_outputs, self.batch)
        temporal_inputs = manifest.engines.temporal.input_specs()
        self._temporal_outputs = temporal_outputs = manifest.engines.temporal.output_specs()
        # Per window position, the (frame output, temporal input) pairs it binds: the engine takes
        # only the outputs it uses (the objectness logits of the reference frame alone).
        self._slot_bindings = [
            [
                (name, input_name)
                for name in self.slot_specs
                if (input_name := slot_input_name(position, name)) in temporal_inputs
            ]
            for position in range(self.window.size)
        ]
        self._memory = manifest.memory
        sources = _input_sources(self.slot_specs, temporal_outputs, self._slot_bindings, self._memory)
        _check_specs(temporal_inputs, sources)
        device = backend.device
        self.image_name = manifest.input.tensor
        self.image = _empty(manifest.engines.frame.input_specs()[self.image_name], device)  # [B, 3, H, W]
        # A one-frame engine writes straight into a stream's slot; a batched one into these, whose
        # rows are then copied into the slots of the streams in the batch.
        self._batch_outputs = (
            {name: _empty(spec, device) for name, spec in frame_outputs.items()} if self.batch > 1 else None
        )
        self.detections = {name: _empty(temporal_outputs[name], device) for name in DETECTION_OUTPUTS}
        preprocessing = manifest.input.preprocessing_in_frame_engine
        self.pad_value = pad_colour(preprocessing.pixel_mean, preprocessing.network_channel_order).to(device)
        on_cuda = device.type == "cuda"
        # Pinned host mirrors: the image goes up and the detections come down asynchronously.
        self._host_image = torch.empty_like(self.image, device="cpu").pin_memory() if on_cuda else None
        self._host_detections = (
            {name: torch.empty_like(t, device="cpu").pin_memory() for name, t in self.detections.items()}
            if on_cuda
            else self.detections
        )
        # Per image row, a pinned and a device buffer for a frame of another size (reallocated when
        # the size changes): such a frame goes up as it is and is resized on the device.
        self._staging: dict[int, tuple[Tensor, Tensor]] = {}
        self._upload_done = torch.cuda.Event() if on_cuda else None
        self._bind_fixed()

    def _bind_fixed(self) -> None:
        """Bind the image, the batch outputs and the detections."""
        frame, temporal = self.backend.frame, self.backend.temporal
        frame.bind(self.image_name, self.image)
        for name, tensor in (self._batch_outputs or {}).items():
            frame.bind(name, tensor)
        for name, tensor in self.detections.items():
            temporal.bind(name, tensor)

    def new_stream(self) -> StreamState:
        """The state of one more stream (its rings, allocated now on the backend's device)."""
        device = self.backend.device
        memory = None
        if self._memory.long_term:
            memory = MemoryRing(
                self._temporal_outputs, self._memory.num_keyframes, self._memory.keyframe_interval, device
            )
        return StreamState(self.slot_specs, self.window.size, memory, device)

    def buffers(self) -> dict[str, Tensor]:
        """The shared buffers the runtime binds, by a unique name."""
        named = {"image": self.image, **{f"det/{n}": t for n, t in self.detections.items()}}
        named.update({f"batch/{n}": t for n, t in (self._batch_outputs or {}).items()})
        return named

    def _stream(self):
        return torch.cuda.stream(self.backend.stream) if self.backend.stream is not None else nullcontext()

    def run_frame_engine(self, frames: Sequence[tuple[StreamState, Tensor]]) -> None:
        """Run the frame engine once on one frame each of up to B streams; each frame becomes its
        stream's next (pending) frame. Rows of the batch without a frame keep the image they held:
        their outputs are not used, and a row's outputs depend on its own image only.

        Args:
            frames: (stream, uint8 [3, H, W] RGB frame of any size, on the CPU or the backend's device).
        Raises:
            SltnetError: a frame that is not uint8 [3, H, W] (nothing has changed then).
        """
        if not 1 <= len(frames) <= self.batch or len({id(state) for state, _ in frames}) < len(frames):
            # Two frames of one stream in one run could overwrite a slot a pending window still needs.
            raise ValueError(f"{len(frames)} frames for a frame engine of batch {self.batch}, one per stream")
        for _, image in frames:
            check_frame(image)
        with self._stream():
            with self._timer("preprocess"):
                placed = self._upload([image for _, image in frames])
            slots = [state.next_slot(fit) for (state, _), fit in zip(frames, placed)]
            if self._batch_outputs is None:
                for name, tensor in slots[0].items():
                    self.backend.frame.bind(name, tensor)
            with self._timer("frame_engine"):
                self.backend.frame.run()
                if self._batch_outputs is not None:
                    for row, slot in enumerate(slots):  # row b of each output is frame b's (frame_row)
                        for name, buffer in slot.items():
                            buffer.copy_(self._batch_outputs[name][row])

    def _upload(self, images: Sequence[Tensor]) -> list[Fit | None]:
        """Frame i into row i of the image (resized and padded unless it has the input size)."""
        if self._upload_done is not None:
            self._upload_done.synchronize()  # the previous copies have left the pinned buffers
        placed = [self._place(row, image) for row, image in enumerate(images)]
        if self._upload_done is not None:
            self._upload_done.record()
        return placed

    def _place(self, row: int, image: Tensor) -> Fit | None:
        target = self.image[row]
        size = (int(image.shape[1]), int(image.shape[2]))
        same_size = size == self.input_size
        if self._host_image is not None and image.device.type == "cpu":
            host = self._host_image[row] if same_size else self._staging_for(row, size)[0]
            host.copy_(image)
            if same_size:
                target.copy_(host, non_blocking=True)
                return None
            image = self._staging[row][1]
            image.copy_(host, non_blocking=True)
        elif image.device != target.device:
            image = image.to(target.device)
        if same_size:
            target.copy_(image)
            return None
        return letterbox_into(image, target, self.pad_value)

    def _staging_for(self, row: int, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """The pinned and device buffers of image row ``row`` for a frame of ``size``."""
        staged = self._staging.get(row)
        if staged is None or tuple(staged[0].shape[1:]) != size:
            host = torch.empty((3, *size), dtype=torch.uint8).pin_memory()
            staged = self._staging[row] = (host, torch.empty_like(host, device=self.image.device))
        return staged

    def answer(self, state: StreamState) -> list[FrameResult]:
        """Results of the stream's pending frames whose window is complete, in frame order."""
        results = []
        with self._stream():
            while state.pending and state.pending[0] + self.window.latency < state.num_frames:
                results.append(self._detect(state, state.pending.popleft()))
        return results

    def finish(self, state: StreamState) -> list[FrameResult]:
        """End of the stream's video: answer every pending frame (the last frame fills the future), then reset."""
        with self._stream():
            results = [self._detect(state, index) for index in state.pending]
        state.reset()
        return results

    def _detect(self, state: StreamState, reference: int) -> FrameResult:
        temporal = self.backend.temporal
        indices = self.window.indices(reference, state.num_frames)
        for position, index in enumerate(indices):
            slot = state.slots[index % self.window.size]
            for name, input_name in self._slot_bindings[position]:
                temporal.bind(input_name, slot[name])
        if state.memory is not None:
            for name, tensor in state.memory.bindings().items():
                temporal.bind(name, tensor)
        with self._timer("temporal_engine"):
            temporal.run()
        if state.memory is not None:
            state.memory.update(reference)
        with self._timer("postprocess"):
            return self._result(reference, state.fits[reference % self.window.size])

    def _result(self, reference: int, placed: Fit | None) -> FrameResult:
        host = self._host_detections
        if host is not self.detections:
            for name, tensor in self.detections.items():
                host[name].copy_(tensor, non_blocking=True)
            torch.cuda.current_stream().synchronize()
        count = int(host["det_count"][0])
        scores, classes = host["det_scores"][:count].float(), host["det_classes"][:count].clone()
        # As detectron2's postprocessing: scaled back, clipped, and boxes left empty dropped.
        boxes, keep = boxes_to_frame(host["det_boxes"][:count].float(), self.resized_size, self.input_size)
        if placed is not None:
            boxes, on_frame = boxes_to_frame(boxes, placed.fitted_size, placed.frame_size)
            keep &= on_frame
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        if self.score_thresh is not None:
            keep = scores >= self.score_thresh
            boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        return FrameResult(reference, boxes, scores.clone(), classes)


class StreamingRuntime:
    """Push the frames of one video at a time; get each frame's result once its window is complete.

    Args:
        manifest, backend, score_thresh, timer: as for :class:`EngineRunner`.
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
        self.engines = EngineRunner(manifest, backend, score_thresh, timer)
        self.state = self.engines.new_stream()

    @property
    def backend(self) -> Backend:
        return self.engines.backend

    @property
    def slots(self) -> list[dict[str, Tensor]]:
        """The window slots (:attr:`StreamState.slots`)."""
        return self.state.slots

    @property
    def memory(self) -> MemoryRing | None:
        """The long-term memory ring (None without long-term attention)."""
        return self.state.memory

    def buffers(self) -> dict[str, Tensor]:
        """Every buffer the runtime binds, by a unique name (for checks that nothing is reallocated)."""
        return {**self.engines.buffers(), **self.state.buffers()}

    def reset(self) -> None:
        """Start a new video: forget the window and the long-term memory."""
        self.state.reset()

    def push(self, image: Tensor) -> list[FrameResult]:
        """Add the next frame of the current video.

        Args:
            image: uint8 [3, H, W] RGB of any size, on the CPU (or the backend's device); boxes come
                back in its pixels.
        Returns:
            results of the frames that became complete, in frame order (possibly none).
        Raises:
            SltnetError: not a uint8 [3, H, W] frame.
        """
        self.engines.run_frame_engine([(self.state, image)])
        return self.engines.answer(self.state)

    def flush(self) -> list[FrameResult]:
        """End of the video: answer every pending frame (the last frame fills the future), then reset."""
        return self.engines.finish(self.state)


def _input_sources(
    slot_specs: dict[str, TensorSpec],
    temporal_outputs: dict[str, TensorSpec],
    slot_bindings: list[list[tuple[str, str]]],
    memory: MemorySection,
) -> dict[str, tuple[str, TensorSpec]]:
    """{temporal input: (what the runtime binds to it, that buffer's spec)} for the window and memory inputs."""
    sources = {
        input_name: (f"the frame engine's {name!r}", slot_specs[name])
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
