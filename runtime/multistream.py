"""Many videos at once on one pair of engines (docs/deployment.md#many-streams).

:class:`MultiStreamRuntime` keeps one :class:`~runtime.detector.StreamState` per stream (its own
window slots, memory ring and unanswered frames) and one :class:`~runtime.detector.EngineRunner`.
A pushed frame waits in the next row of the frame engine's batch (B rows, ``sltnet-export --batch
B``); the frame engine runs once for the whole batch when

- B streams have a frame waiting, or every live stream has one (whichever is fewer), or
- a stream with a frame waiting pushes another (its frames stay in order), or
- :meth:`MultiStreamRuntime.run_ready` or :meth:`MultiStreamRuntime.flush` asks for it;

rows without a frame are padding whose outputs are not used. Then the temporal engine runs once
per stream and reference frame that became complete, on that stream's rings, so each stream
answers exactly as a :class:`~runtime.detector.StreamingRuntime` of its video alone would.

A stream is live from the start and from its next push after a :meth:`~MultiStreamRuntime.flush`
or :meth:`~MultiStreamRuntime.reset`, until the next one; a stream that has ended then no longer
holds the others' frames back.
"""

from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from torch import Tensor

from runtime.detector import EngineRunner, StageTimer, StreamState, check_frame
from runtime.engines import Backend
from sltnet.contract import FrameResult, Manifest
from sltnet.errors import SltnetError


class StreamResult(NamedTuple):
    """One frame's detections and the stream they belong to."""

    stream_id: int
    result: FrameResult


class MultiStreamRuntime:
    """Push frames of ``num_streams`` videos, in any interleaving; get each frame's result, tagged
    with its stream, once its window is complete.

    Args:
        manifest: the export's manifest (:meth:`sltnet.contract.Manifest.load`).
        backend: the engines (:func:`runtime.engines.open_backend`), shared by every stream.
        num_streams: streams 0 .. num_streams - 1.
        score_thresh, timer: as for :class:`~runtime.detector.EngineRunner` (the timer sees one
            ``preprocess`` and ``frame_engine`` stage per batch, one ``temporal_engine`` and
            ``postprocess`` stage per answered frame).
    Raises:
        SltnetError: fewer than one stream, or as :class:`~runtime.detector.EngineRunner`.
    """

    def __init__(
        self,
        manifest: Manifest,
        backend: Backend,
        num_streams: int,
        score_thresh: float | None = None,
        timer: StageTimer | None = None,
    ) -> None:
        if num_streams < 1:
            raise SltnetError(f"{num_streams} streams: need at least one")
        self.engines = EngineRunner(manifest, backend, score_thresh, timer)
        self.streams: list[StreamState] = [self.engines.new_stream() for _ in range(num_streams)]
        self._live = [True] * num_streams
        self._waiting: list[tuple[int, Tensor]] = []  # (stream id, frame) in batch-row order

    @property
    def num_streams(self) -> int:
        return len(self.streams)

    @property
    def batch(self) -> int:
        """Frames per frame-engine run (the export's ``input.batch``)."""
        return self.engines.batch

    def _check_stream(self, stream_id: int) -> None:
        if not 0 <= stream_id < self.num_streams:
            raise SltnetError(f"stream {stream_id}: the runtime has streams 0 .. {self.num_streams - 1}")

    def _is_waiting(self, stream_id: int) -> bool:
        return any(waiting == stream_id for waiting, _ in self._waiting)

    def push(self, stream_id: int, image: Tensor) -> list[StreamResult]:
        """Add the next frame of stream ``stream_id``'s video.

        The runtime holds on to ``image`` until the frame engine has run on it: do not write into
        it before (a decoder that hands out a new tensor per frame is fine).

        Args:
            image: uint8 [3, H, W] RGB of any size (each stream its own); boxes come back in its pixels.
        Returns:
            results that became complete, of any stream, each stream's in frame order (possibly none).
        Raises:
            SltnetError: an unknown stream or not a uint8 [3, H, W] frame (nothing has changed then).
        """
        self._check_stream(stream_id)
        check_frame(image)
        results = self.run_ready() if self._is_waiting(stream_id) else []
        self._waiting.append((stream_id, image))
        self._live[stream_id] = True
        return results + self._run_if_full()

    def _run_if_full(self) -> list[StreamResult]:
        """Run the batch if B streams, or all live ones, have a frame waiting."""
        if self._waiting and len(self._waiting) >= min(self.batch, sum(self._live)):
            return self.run_ready()
        return []

    def run_ready(self) -> list[StreamResult]:
        """Run the frame engine now on the frames waiting (if any), padding the batch, and answer
        what became complete (e.g. when a live source has nothing new yet)."""
        if not self._waiting:
            return []
        waiting, self._waiting = self._waiting, []
        self.engines.run_frame_engine([(self.streams[stream_id], image) for stream_id, image in waiting])
        return [
            StreamResult(stream_id, result)
            for stream_id, _ in waiting
            for result in self.engines.answer(self.streams[stream_id])
        ]

    def flush(self, stream_id: int) -> list[StreamResult]:
        """End of stream ``stream_id``'s video: run its waiting frame (with the batch it is in),
        answer all its frames, then reset it. Results of other streams come too: those in that
        batch, and those whose frames no longer wait for this stream."""
        self._check_stream(stream_id)
        results = self.run_ready() if self._is_waiting(stream_id) else []
        results += [StreamResult(stream_id, r) for r in self.engines.finish(self.streams[stream_id])]
        self._live[stream_id] = False
        return results + self._run_if_full()

    def reset(self, stream_id: int) -> list[StreamResult]:
        """Start a new video on stream ``stream_id``: drop its waiting frame, window and memory.

        Returns:
            results of other streams whose frames no longer wait for this stream.
        """
        self._check_stream(stream_id)
        self._waiting = [(waiting, image) for waiting, image in self._waiting if waiting != stream_id]
        self.streams[stream_id].reset()
        self._live[stream_id] = False
        return self._run_if_full()


def run_streams(runtime: MultiStreamRuntime, sources: Sequence[Iterable[Tensor]]) -> Iterator[StreamResult]:
    """Stream ``sources`` (source i on stream i) to their ends, taking one frame of each unfinished
    source in turn; a source that ends is flushed at once.

    Args:
        sources: at most ``runtime.num_streams`` iterables of uint8 [3, H, W] RGB frames.
    Yields:
        every frame's result once, each stream's in frame order.
    """
    if len(sources) > runtime.num_streams:
        raise SltnetError(f"{len(sources)} sources for a runtime of {runtime.num_streams} streams")
    frames = {stream_id: iter(source) for stream_id, source in enumerate(sources)}
    while frames:
        for stream_id in list(frames):
            image = next(frames[stream_id], None)
            if image is None:
                del frames[stream_id]
                yield from runtime.flush(stream_id)
            else:
                yield from runtime.push(stream_id, image)
