"""Calibration data for INT8 exports (docs/export.md#precision): real frames of a dataset, streamed
through the float32 engines by the runtime, so the frame engine is calibrated on the images it
will see and the temporal engine on the windows and memory that streaming produces, not on
random tensors.

Each engine is calibrated in its own pass over the same videos: onnxruntime's calibrator pulls
inputs one at a time (:class:`RecordedInputs`), and the runtime is advanced lazily to produce them,
so no more than one frame's engine inputs are held at once.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader
from tqdm import tqdm

from runtime.detector import StreamingRuntime
from runtime.engines import BoundEngine, open_backend
from sltnet.contract import Manifest
from sltnet.data.records import StCocoDataset
from sltnet.data.transforms import read_image
from sltnet.errors import SltnetError


def calibration_videos(dataset: StCocoDataset, num_frames: int) -> list[list[str]]:
    """Image paths of whole videos, spread evenly over ``dataset``, ``num_frames`` frames in all
    (the last video cut short): consecutive frames, as the temporal engine's windows need.

    Raises:
        SltnetError: the dataset holds fewer frames than asked for.
    """
    total = sum(len(video.frames) for video in dataset.videos)
    if total < num_frames:
        raise SltnetError(f"{dataset.json_path}: {total} frames, fewer than the {num_frames} asked for calibration")
    mean_length = total / len(dataset.videos)
    wanted = min(len(dataset.videos), max(1, round(num_frames / mean_length)))
    # Evenly spaced videos first, then the rest in order should those be short.
    spread = np.linspace(0, len(dataset.videos) - 1, wanted).round().astype(int).tolist()
    order = list(dict.fromkeys(spread + list(range(len(dataset.videos)))))
    videos, left = [], num_frames
    for index in order:
        if left == 0:
            break
        frames = dataset.videos[index].frames[:left]
        videos.append([os.path.join(dataset.image_root, frame.file_name) for frame in frames])
        left -= len(frames)
    return videos


class RecordingEngine(BoundEngine):
    """Runs ``engine`` and keeps a host copy of its inputs at every run."""

    def __init__(self, engine: BoundEngine) -> None:
        super().__init__(engine.inputs, engine.outputs, engine.device)
        self.engine = engine
        self.records: list[dict[str, np.ndarray]] = []

    def _set_address(self, name: str, tensor: torch.Tensor) -> None:
        self.engine.bind(name, tensor)

    def _execute(self) -> None:
        self.records.append({name: self._bound[name].cpu().numpy().copy() for name in self.input_names})
        self.engine.run()

    def take(self) -> list[dict[str, np.ndarray]]:
        records, self.records = self.records, []
        return records


def recorded_inputs(
    directory: Path, manifest: Manifest, videos: list[list[str]], engine: str, progress: tqdm
) -> Iterator[dict[str, np.ndarray]]:
    """The inputs of the float32 export's ``engine`` ("frame" or "temporal") at every run while the
    runtime streams ``videos``, as onnxruntime feeds."""
    backend = open_backend("onnxruntime", directory, manifest, device="cpu")
    recorder = RecordingEngine(getattr(backend, engine))
    if engine == "frame":
        backend = backend._replace(frame=recorder)
    else:
        backend = backend._replace(temporal=recorder)
    runtime = StreamingRuntime(manifest, backend)
    for paths in videos:
        runtime.reset()
        for path in paths:
            runtime.push(read_image(path))
            progress.update(1)
            yield from recorder.take()
        runtime.flush()
        yield from recorder.take()


class RecordedInputs(CalibrationDataReader):
    """onnxruntime's calibration reader over :func:`recorded_inputs`."""

    def __init__(self, inputs: Iterator[dict[str, np.ndarray]]) -> None:
        self.inputs = inputs

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.inputs, None)
