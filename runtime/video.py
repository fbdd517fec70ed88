"""Video in and out on their own threads around inference: PyAV decode (anything FFmpeg reads, or a
folder of image files) and PyAV encode to an mp4 that appears under its name only once complete.

Both threads hand their failures to the main thread (a failure is never taken for the end of the
video) and stop when the main thread stops them: an interrupted run leaves no temporary file.
"""

import os
import queue
import tempfile
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Literal, NamedTuple

import av
import numpy as np
import torch

from sltnet.atomic_io import _default_file_mode, remove_stale_temporaries
from sltnet.data.transforms import read_image
from sltnet.errors import SltnetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_END = object()  # end of a queue


class DecodedFrame(NamedTuple):
    """One decoded frame: index in the video, uint8 [3, H, W] RGB, presentation time in seconds."""

    index: int  # type: ignore[assignment]  # the field shadows tuple.index; callers read .index
    image: torch.Tensor
    timestamp: float


class VideoSource:
    """Frames of a video file or a folder of images (sorted by name), decoded on a background thread.

    Opening checks the input; iterating yields :class:`DecodedFrame` in order and raises
    :class:`SltnetError` if decoding fails part-way (a truncated or corrupt stream).

    Args:
        path: the video file or image folder.
        max_frames: stop after this many frames.
        folder_fps: frame rate of a folder of images (timestamps and output video).
    Raises:
        SltnetError: missing input, not a video, no video stream, an empty folder, a frame rate
            that is not positive.
    """

    def __init__(self, path: str, max_frames: int | None = None, folder_fps: float = 25.0, queue_size: int = 8) -> None:
        if not folder_fps > 0 or folder_fps == float("inf"):
            raise SltnetError(f"--fps {folder_fps}: must be a positive number of frames per second")
        self.path = path
        self.max_frames = max_frames
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._container = None
        self.files: list[Path] = []  # the images of a folder, in frame order
        if os.path.isdir(path):
            self.files = sorted(p for p in Path(path).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.files:
                raise SltnetError(f"{path}: folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            first = read_image(str(self.files[0]))
            self.height, self.width = int(first.shape[1]), int(first.shape[2])
            self.fps = folder_fps
            self.num_frames: int | None = len(self.files)
        elif not os.path.isfile(path):
            raise SltnetError(f"{path}: not found")
        else:
            try:
                self._container = av.open(path)
            except av.FFmpegError as err:
                raise SltnetError(f"{path}: not a video FFmpeg can read ({err.strerror or err})") from None
            if not self._container.streams.video:
                self._container.close()
                raise SltnetError(f"{path}: has no video stream, no frames")
            stream = self._container.streams.video[0]
            stream.thread_type = "AUTO"
            self.height, self.width = stream.codec_context.height, stream.codec_context.width
            self.fps = float(stream.average_rate or stream.guessed_rate or folder_fps)
            self.num_frames = stream.frames or None
        if max_frames is not None and self.num_frames is not None:
            self.num_frames = min(self.num_frames, max_frames)
        self._thread = threading.Thread(target=self._decode, name="sltnet-decode", daemon=True)
        self._thread.start()

    def _frames(self) -> Iterator[DecodedFrame]:
        if self._container is None:
            for index, file in enumerate(self.files):
                image = read_image(str(file))
                if tuple(image.shape[1:]) != (self.height, self.width):
                    raise SltnetError(
                        f"{file}: {image.shape[2]}x{image.shape[1]}, the folder's first image is "
                        f"{self.width}x{self.height}"
                    )
                yield DecodedFrame(index, image, index / self.fps)
            return
        stream = self._container.streams.video[0]
        index = 0
        try:
            for frame in self._container.decode(stream):
                image = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).contiguous()
                timestamp = float(frame.time) if frame.time is not None else index / self.fps
                yield DecodedFrame(index, image, timestamp)
                index += 1
        except av.FFmpegError as err:
            raise SltnetError(
                f"{self.path}: corrupt video stream after {index} frames ({err.strerror or err})"
            ) from None
        if stream.frames and index < stream.frames:
            raise SltnetError(
                f"{self.path}: the stream ends after {index} of its {stream.frames} frames (truncated or corrupt)"
            )

    def _decode(self) -> None:
        try:
            for frame in self._frames():
                if self._stop.is_set() or (self.max_frames is not None and frame.index >= self.max_frames):
                    break
                self._put(frame)
        except BaseException as err:  # noqa: B036  # handed to the main thread, which raises it
            self._put(err)
        finally:
            self._put(_END)

    def _put(self, item: object) -> None:
        """Queue ``item`` unless :meth:`close` stops the thread while it waits for room."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                pass

    def __iter__(self) -> Iterator[DecodedFrame]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop decoding and release the file (the decoding thread stops after the frame it is on)."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.1)
        if self._container is not None:
            self._container.close()
            self._container = None


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
