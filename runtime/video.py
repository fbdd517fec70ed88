"""Video in and out on their own threads around inference: PyAV decode of a file, a folder of image
files, a camera or a network stream (anything FFmpeg opens), and PyAV encode to an mp4 that appears
under its name only once complete.

Reading never waits forever: FFmpeg gives up on an open or a read that gets no data for the
timeout (PyAV's interrupt callback), and the consumer gives up on a source that produces no frame
for twice that while it is being read (a driver that ignores the callback). A live source (camera,
network stream) that is lost is reopened with exponential backoff; a recording served over the
network resumes after the last frame it gave (docs/runtime.md#sources).

Both threads hand their failures to the main thread (a failure is never taken for the end of the
video) and stop when the main thread stops them: an interrupted run leaves no temporary file.
"""

import os
import queue
import re
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal, NamedTuple, TypeVar

import av
import numpy as np
import torch
from av.container import InputContainer

from sltnet.atomic_io import _default_file_mode, remove_stale_temporaries
from sltnet.data.transforms import read_image
from sltnet.errors import SltnetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_TIMEOUT = 10.0  # seconds an open or a read may go without data
MAX_RECONNECT_DELAY = 30.0  # the backoff doubles up to this many seconds
STALL_GRACE = 1.0  # seconds past twice the timeout before the consumer gives a silent source up
CLOSE_WAIT = 2.0  # seconds close() waits for the reading thread before leaving it to end on its own
POLL_INTERVAL = 0.1  # seconds between the consumer's checks for a stalled source
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")
_END = object()  # end of a queue
T = TypeVar("T")


class DecodedFrame(NamedTuple):
    """One decoded frame: index in the video, uint8 [3, H, W] RGB, presentation time in seconds."""

    index: int  # type: ignore[assignment]  # the field shadows tuple.index; callers read .index
    image: torch.Tensor
    timestamp: float


@dataclass(frozen=True)
class SourceOptions:
    """How a source is opened and read (docs/runtime.md#sources).

    Attributes:
        timeout: seconds an open or a read may get no data before FFmpeg gives up.
        reconnect: attempts in a row to reopen a lost camera or network stream (0: give up at once);
            the count starts again once a frame arrives.
        reconnect_delay: seconds before the first attempt, doubled for each next one (at most
            :data:`MAX_RECONNECT_DELAY`).
        realtime: never fall behind the source: a frame the consumer has not taken when the next one
            is decoded is dropped (see :attr:`VideoSource.dropped`), and a recording (file, folder,
            stream declaring its frame count) is read at the pace of its timestamps.
        input_format: FFmpeg input format (``v4l2``, ``avfoundation``, ``mpegts``, ...); a character
            device under /dev is opened as ``v4l2`` without it.
        input_options: FFmpeg options of the input (``video_size``, ``framerate``, ``rtsp_transport``, ...).
    """

    timeout: float = DEFAULT_TIMEOUT
    reconnect: int = 0
    reconnect_delay: float = 1.0
    realtime: bool = False
    input_format: str | None = None
    input_options: Mapping[str, str] = field(default_factory=dict)


class _Lost(Exception):
    """A camera or network stream stopped giving frames; the message says why."""


def is_url(source: str) -> bool:
    """``scheme://...``: a stream FFmpeg opens by protocol (rtsp, http, https, hls, udp, srt, ...)."""
    return _URL.match(source) is not None


def is_device(source: str) -> bool:
    """A character device under /dev (a V4L2 camera such as /dev/video0)."""
    try:
        return source.startswith("/dev/") and stat.S_ISCHR(os.stat(source).st_mode)
    except OSError:
        return False


def _is_input_format(name: str) -> bool:
    try:
        return av.ContainerFormat(name).is_input
    except ValueError:
        return False


def _reason(err: av.FFmpegError, timeout: float) -> str:
    if isinstance(err, av.ExitError):  # the interrupt callback fired
        return f"no data for {timeout:g} s"
    return str(err.strerror or err)


def _print_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class VideoSource:
    """Frames of a video file, a folder of images (sorted by name), a camera or a network stream,
    decoded on a background thread.

    Opening checks the input; iterating yields :class:`DecodedFrame` in order and raises
    :class:`SltnetError` if a file or folder fails part-way (a truncated or corrupt stream). A camera
    or network stream that fails part-way is reopened up to ``options.reconnect`` times in a row
    (one ``log`` line per attempt); frame indices go on from where they were: a recording resumes
    after the last frame it gave, a live stream goes on with the frames it gives now, its
    timestamps shifted to follow the last one. If it cannot be reopened, iteration ends and
    :attr:`lost` says why.

    Args:
        path: the video file, image folder, device (/dev/video0) or URL.
        max_frames: stop after this many frames of the source.
        folder_fps: frame rate of a folder of images (timestamps and output video), and of a stream
            that declares none.
        queue_size: decoded frames held for the consumer (1 with ``options.realtime``).
        options: timeouts, reconnection, realtime, FFmpeg input format and options.
        log: where the reconnection lines go (default: stderr).
        wake: set by the reading thread whenever it hands over a frame, an error or the end, so a
            consumer of several sources can wait for any of them (:meth:`poll`).
    Attributes:
        width, height, fps: of the first frame / the stream.
        num_frames: frames the source declares (None: unknown, e.g. a live stream), at most ``max_frames``.
        live: a camera or a network stream (it can be lost and reconnected).
        recording: the frames are fixed in advance: a file, a folder, or a network stream declaring
            its frame count.
        dropped: frames dropped so far with ``options.realtime``.
        reconnections: successful reopenings so far.
        lost: why a live source was given up (None while it is read, or when it ended).
        ended: the consumer has had the last frame (the source ended, or was lost).
    Raises:
        SltnetError: missing input, not a video, a source that cannot be opened or does not answer
            within the timeout, no video stream, an empty folder, a frame rate that is not positive.
    """

    def __init__(
        self,
        path: str,
        max_frames: int | None = None,
        folder_fps: float = 25.0,
        queue_size: int = 8,
        options: SourceOptions | None = None,
        log: Callable[[str], None] = _print_stderr,
        wake: threading.Event | None = None,
    ) -> None:
        if not folder_fps > 0 or folder_fps == float("inf"):
            raise SltnetError(f"--fps {folder_fps}: must be a positive number of frames per second")
        self.path = path
        self.max_frames = max_frames
        self.options = options or SourceOptions()
        if self.options.input_format is not None and not _is_input_format(self.options.input_format):
            raise SltnetError(f"--input-format {self.options.input_format}: not an input format FFmpeg has")
        self._log = log
        self._wake = wake
        self._queue: queue.Queue = queue.Queue(maxsize=1 if self.options.realtime else queue_size)
        self._stop = threading.Event()
        self._container: InputContainer | None = None
        self._reading_since: float | None = None  # when the reading thread began waiting for a frame
        self._stalled = False  # the consumer gave up waiting for the reading thread
        self._stall_limit = 2 * self.options.timeout + STALL_GRACE
        self.dropped = self.reconnections = 0
        self.lost: str | None = None
        self.ended = False
        self._next_index = 0  # index of the next new frame
        self._last_timestamp = 0.0
        self._pace_origin: tuple[float, float] | None = None  # (wall clock, timestamp) of the pacing
        self.files: list[Path] = []  # the images of a folder, in frame order
        named_device = self.options.input_format is not None and not os.path.exists(path)  # e.g. avfoundation "0"
        self.live = is_url(path) or is_device(path) or named_device
        if os.path.isdir(path):
            self.files = sorted(p for p in Path(path).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.files:
                raise SltnetError(f"{path}: folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            first = read_image(str(self.files[0]))
            self.height, self.width = int(first.shape[1]), int(first.shape[2])
            self.fps = folder_fps
            self.num_frames: int | None = len(self.files)
        elif not self.live and not os.path.isfile(path):
            raise SltnetError(f"{path}: not found")
        else:
            self._container = self._open_first()
            stream = self._container.streams.video[0]
            self.height, self.width = stream.codec_context.height, stream.codec_context.width
            self.fps = float(stream.average_rate or stream.guessed_rate or folder_fps)
            self.num_frames = stream.frames or None
        self.recording = not self.live or self.num_frames is not None
        if max_frames is not None and self.num_frames is not None:
            self.num_frames = min(self.num_frames, max_frames)
        self._thread = threading.Thread(target=self._read, name="sltnet-decode", daemon=True)
        self._thread.start()

    # -- opening -------------------------------------------------------------------------------
    def _open(self) -> InputContainer:
        """Open the input and check it has a video stream.

        Raises:
            av.FFmpegError: FFmpeg cannot open it, or it does not answer within the timeout.
            SltnetError: it has no video stream.
        """
        input_format = self.options.input_format or ("v4l2" if is_device(self.path) else None)
        options = dict(self.options.input_options)
        container = av.open(self.path, format=input_format, options=options, timeout=self.options.timeout)
        if not container.streams.video:
            container.close()
            raise SltnetError(f"{self.path}: has no video stream, no frames")
        container.streams.video[0].thread_type = "AUTO"
        return container

    def _open_first(self) -> InputContainer:
        try:
            return self._open()
        except av.ExitError:
            raise SltnetError(f"{self.path}: no answer within --timeout {self.options.timeout:g} s") from None
        except av.FFmpegError as err:
            problem = "cannot open" if self.live else "not a video FFmpeg can read"
            raise SltnetError(f"{self.path}: {problem} ({err.strerror or err})") from None

    def _close_container(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    # -- the reading thread --------------------------------------------------------------------
    def _connection(self) -> Iterator[tuple[torch.Tensor, float | None]]:
        """(image, timestamp or None) of every frame the source gives, from the start of the file or
        connection; a lost connection is reopened first.

        Raises:
            _Lost: a live source failed (or cannot be reopened).
            SltnetError: a file is corrupt or truncated.
        """
        if self.files:
            for file in self.files:
                yield read_image(str(file)), None
            return
        if self._container is None:  # reconnecting
            try:
                self._container = self._open()
            except av.FFmpegError as err:
                raise _Lost(_reason(err, self.options.timeout)) from None
            except SltnetError:
                raise _Lost("no video stream") from None
            self.reconnections += 1
        stream = self._container.streams.video[0]
        count = 0
        try:
            for frame in self._container.decode(stream):
                image = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).contiguous()
                yield image, (float(frame.time) if frame.time is not None else None)
                count += 1
        except av.FFmpegError as err:
            if self.live:
                raise _Lost(_reason(err, self.options.timeout)) from None
            raise SltnetError(
                f"{self.path}: corrupt video stream after {count} frames ({err.strerror or err})"
            ) from None
        if stream.frames and count < stream.frames:
            if self.live:
                raise _Lost(f"the stream ended after {count} of its {stream.frames} frames")
            raise SltnetError(
                f"{self.path}: the stream ends after {count} of its {stream.frames} frames (truncated or corrupt)"
            )

    def _timed(self, frames: Iterator[T]) -> Generator[T, None, None]:
        """``frames``, with the time each one is waited for exposed to the consumer's stall check."""
        while True:
            self._reading_since = time.monotonic()
            try:
                item = next(frames, _END)
            finally:
                self._reading_since = None
            if item is _END:
                return
            yield item  # type: ignore[misc]

    def _read(self) -> None:
        try:
            attempts = 0
            while not self._stop.is_set():
                try:
                    for frame in self._frames():
                        attempts = 0
                        if self._stop.is_set() or (self.max_frames is not None and frame.index >= self.max_frames):
                            return
                        self._deliver(frame)
                    return
                except _Lost as lost:
                    reason = str(lost)
                self._close_container()
                if attempts == self.options.reconnect:
                    failed = f"; {attempts} reconnection attempts failed" if attempts else ""
                    self.lost = f"{reason}{failed}"
                    return
                attempts += 1
                delay = min(self.options.reconnect_delay * 2 ** (attempts - 1), MAX_RECONNECT_DELAY)
                self._log(
                    f"{self.path}: {reason} after {self._next_index} frames; reconnecting in {delay:g} s "
                    f"(attempt {attempts} of {self.options.reconnect})"
                )
                self._stop.wait(delay)
        except BaseException as err:  # noqa: B036  # handed to the main thread, which raises it
            self._put(err)
        finally:
            self._close_container()
            self._put(_END)

    def _frames(self) -> Iterator[DecodedFrame]:
        """The new frames of one file or connection, indexed and timed as one video."""
        skip = self._next_index if self.recording else 0  # a recording starts again from its first frame
        shift = not self.recording and self._next_index > 0  # a live stream's clock may start again
        offset = 0.0
        self._pace_origin = None
        frames = self._timed(self._connection())
        try:
            for image, stream_time in frames:
                if skip:
                    skip -= 1
                    continue
                timestamp = stream_time if stream_time is not None else self._next_index / self.fps
                if shift:
                    offset, shift = self._last_timestamp + 1 / self.fps - timestamp, False
                frame = DecodedFrame(self._next_index, image, timestamp + offset)
                self._next_index += 1
                self._last_timestamp = frame.timestamp
                yield frame
        finally:
            frames.close()

    def _deliver(self, frame: DecodedFrame) -> None:
        """Hand ``frame`` to the consumer: waiting for room, or (realtime) at its time, replacing a
        frame not taken yet."""
        if not self.options.realtime:
            self._put(frame)
            return
        if self.recording:  # paced by its timestamps, as a camera would give it
            now = time.monotonic()
            if self._pace_origin is None:
                self._pace_origin = (now, frame.timestamp)
            start, origin = self._pace_origin
            self._stop.wait(max(0.0, start + frame.timestamp - origin - now))
        while not self._stop.is_set():  # the newest frame replaces one the consumer has not taken
            try:
                self._queue.put_nowait(frame)
                self._woken()
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _put(self, item: object) -> None:
        """Queue ``item`` unless :meth:`close` stops the thread while it waits for room."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                self._woken()
                return
            except queue.Full:
                pass

    def _woken(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- the consumer --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[DecodedFrame]:
        while not self.ended:
            frame = self.poll(POLL_INTERVAL)
            if frame is not None:
                yield frame

    def poll(self, timeout: float = 0.0) -> DecodedFrame | None:
        """The next frame if there is one within ``timeout`` seconds, else None (:attr:`ended` then
        says whether more can come). A source that has been reading one frame for more than twice
        the timeout is given up here (:attr:`lost` says so).

        Raises:
            SltnetError (or what the reading thread failed with): a file or folder failed part-way.
        """
        if self.ended:
            return None
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            since = self._reading_since
            if since is not None and time.monotonic() - since > self._stall_limit:
                self._stalled = True  # the thread is stuck in a read that ignores the timeout
                self.lost = f"no frame for {self._stall_limit:g} s (the source stalled)"
                self.ended = True
            return None
        if item is _END:
            self.ended = True
            return None
        if isinstance(item, BaseException):
            self.ended = True
            raise item
        return item

    def close(self) -> None:
        """Stop reading; the reading thread closes the input after the frame it is on. A thread
        stuck in a read (stalled, or waiting up to the timeout) is left to end on its own."""
        self._stop.set()
        deadline = time.monotonic() + CLOSE_WAIT
        while self._thread.is_alive() and not self._stalled and time.monotonic() < deadline:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.1)


def _codec() -> Literal["libx264", "mpeg4"]:
    """H.264 where FFmpeg has an encoder for it (playable everywhere), MPEG-4 part 2 otherwise."""
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except (av.FFmpegError, ValueError):
        return "mpeg4"


class VideoWriter:
    """Encode RGB frames to ``path`` (mp4) on a background thread.

    The frames go to a temporary file ``.NAME.*.tmp`` in the same folder (one an earlier, killed run
    left is removed first), renamed to ``path`` by :meth:`close` with the mode a new file gets under
    the umask; :meth:`abort` (an interruption, an error anywhere) or an encoder error deletes it, so
    no truncated video is ever left.

    Raises:
        SltnetError: the folder cannot be written.
    """

    def __init__(self, path: str, width: int, height: int, fps: float, queue_size: int = 8) -> None:
        self.path = Path(path)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._error: BaseException | None = None
        self._stop = threading.Event()  # set by abort: drop the queued frames, finish nothing
        self._closed = False  # close() gave the file its name
        folder = self.path.parent
        try:
            remove_stale_temporaries(self.path)
            handle, self._temp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
        except OSError as err:
            raise SltnetError(f"{path}: cannot write ({err.strerror})") from None
        os.close(handle)
        try:
            self._container = av.open(self._temp, "w", format="mp4")
            stream = self._container.add_stream(_codec(), rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        except BaseException as err:
            Path(self._temp).unlink(missing_ok=True)
            if isinstance(err, av.FFmpegError):
                raise SltnetError(f"{path}: cannot write the video ({err})") from None
            raise
        self._stream = stream
        self._thread = threading.Thread(target=self._encode, name="sltnet-encode", daemon=True)
        self._thread.start()

    def _encode(self) -> None:
        ended = False
        try:
            while not ended:
                image = self._queue.get()
                ended = image is _END
                if not ended and not self._stop.is_set():
                    self._container.mux(self._stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            if not self._stop.is_set():
                self._container.mux(self._stream.encode())
        except BaseException as err:  # noqa: B036  # raised in the main thread by write or close
            self._error = err
            while not ended:  # let the producer finish
                ended = self._queue.get() is _END
        finally:
            self._container.close()

    def write(self, image: np.ndarray) -> None:
        """Queue one uint8 [H, W, 3] RGB frame.

        Raises:
            SltnetError: the encoder failed.
        """
        self._raise_encoder_error()
        self._queue.put(image)

    def _raise_encoder_error(self) -> None:
        if self._error is None:
            return
        self.abort()
        if isinstance(self._error, (av.FFmpegError, OSError)):
            raise SltnetError(f"{self.path}: cannot write the video ({self._error})")
        raise self._error

    def close(self) -> None:
        """Finish the file and give it its name.

        Raises:
            SltnetError: the encoder failed (the temporary file is removed).
        """
        try:
            self._end()
            self._raise_encoder_error()
            os.chmod(self._temp, _default_file_mode())
            os.replace(self._temp, self.path)
            self._closed = True
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Stop encoding, drop the queued frames and delete the temporary file (safe to call again;
        nothing to do after :meth:`close`)."""
        if self._closed:
            return
        self._stop.set()
        Path(self._temp).unlink(missing_ok=True)  # first: a second interruption cannot leave it
        self._end()

    def _end(self) -> None:
        """Queue the end of the video once, and wait for the encoding thread."""
        while self._thread.is_alive():
            try:
                self._queue.put(_END, timeout=0.1)
                break
            except queue.Full:
                pass
        self._thread.join()
