"""Streaming speed of the exported engines and of eager PyTorch, side by side on one machine.

    python benchmarks/fps.py [--engine DIR ...] [--config-file C --weights W [--input-size H W]]
                             [--backend onnxruntime torch tensorrt eager] [--device cpu|cuda]
                             [--video V | --synthetic] [--frames 500] [--warmup 50] [--threads N]
                             [--streams N [N ...]] [--json OUT.json]

Each row streams one video through one engine folder on one backend: ``onnxruntime``, ``torch``
(the runtime's torch backend over the export's engine modules) and ``tensorrt`` run
:class:`runtime.detector.StreamingRuntime`; ``eager`` runs the PyTorch model itself
(:class:`sltnet.modeling.streaming.StreamingDetector`, rebuilt from the export's source config and
weights). ``--config-file C --weights W`` adds an eager row for a model that has no export.

The video is ``--video V`` (at the engines' input size) or, by default, a synthetic clip rendered
once at each input size and encoded to a temporary mp4, so every row decodes the same frames with
:class:`runtime.video.VideoSource`. The first ``--warmup`` frames are not measured.

Per row: throughput (frames / wall time of decode + push), per-frame latency percentiles (from
handing a decoded frame to ``push`` until its result comes back, and the delay in frames), the
mean time per frame of each stage and peak memory. ``decode`` is the time the loop waits for the
next frame from the decoding thread; ``preprocess`` (image upload), ``frame_engine``,
``temporal_engine`` and ``postprocess`` come from the runtime's ``timer`` hook; ``bookkeeping`` is
the rest of ``push`` (slot rotation, re-binding, memory-ring updates). Eager rows report decode and
the whole push only. Peak RSS is the process's peak so far (rows run in order, in one process);
peak CUDA memory is torch's allocator peak during the row. Then the ratios: SLTnet fps / single-frame
baseline fps on the same backend, onnxruntime fps / eager fps per export, and the acceptance checks
(PASS/FAIL/SKIP).

``--streams 1 2 4`` adds a second table: per export, engine backend and stream count N, N copies of
the video, each decoded by its own :class:`runtime.video.VideoSource`, pushed one frame of each in
turn through one :class:`runtime.multistream.MultiStreamRuntime` (the frame engine batched across
streams as the export's ``--batch`` allows). Per row: aggregate fps (every stream's frames after the
first ``--warmup`` rounds / wall time), fps per stream, latency percentiles of a frame over all
streams (from its push until its result comes back), and frame-engine runs per frame (1/B when
every batch is full).
"""

import json
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from export.onnx_export import default_input_size
from runtime.detector import TIMED_STAGES, StreamingRuntime
from runtime.engines import open_backend
from runtime.multistream import MultiStreamRuntime
from runtime.video import VideoSource
from sltnet.atomic_io import atomic_write_text, check_outputs
from sltnet.cli import ArgumentParser, console_entry
from sltnet.config import load_config
from sltnet.contract import FrameResult, Manifest, Window
from sltnet.data.synthetic.rendering import render_frame
from sltnet.data.synthetic.sampling import SynthOptions, sample_video
from sltnet.data.synthetic.writing import write_mp4
from sltnet.deploy.modules import streaming_detector_of
from sltnet.errors import SltnetError
from sltnet.machine import machine_info
from sltnet.modeling.build import build_model
from sltnet.modeling.streaming import StreamingDetector

DEFAULT_ENGINES = (
    "output/engines/small_sltnet_sequential",
    "output/engines/small_sltnet_symmetric",
    "output/engines/small_baseline",
)
ENGINE_BACKENDS = ("onnxruntime", "torch", "tensorrt")
EAGER = "eager"
STAGES = ("decode", *TIMED_STAGES, "bookkeeping")
SYNTHETIC_FPS = 25
# Acceptance targets of the speed issue (measured on CPU, one run).
MAX_BOOKKEEPING_SHARE = 0.05
MIN_SLTNET_VS_BASELINE = 0.6
MIN_ONNXRUNTIME_VS_EAGER = 1.2
MAX_P99_OVER_P50 = 1.5
# ... and of the precision issue (int8 against fp32 on onnxruntime's CPU provider).
MIN_INT8_FRAME_ENGINE_SPEEDUP = 1.6
MIN_INT8_VS_FP32 = 1.3


class Target(NamedTuple):
    """What a row streams through: an export folder (``manifest`` set) or a bare model config."""

    name: str
    mode: str  # "sequential", "symmetric" or "single_frame"
    num_frames: int
    input_size: tuple[int, int]
    config_file: str
    weights: str
    engine_dir: str | None = None
    manifest: Manifest | None = None
    precision: str = "fp32"


class FrameTiming(NamedTuple):
    """Seconds spent on one pushed frame."""

    wall: float  # decode + push
    push: float
    stages: dict[str, float]


class StageClock:
    """The runtime's ``timer`` hook: adds up each stage's seconds until :meth:`take`.

    Args:
        synchronize: wait for the GPU at each stage boundary, so a stage's time includes its kernels.
    """

    def __init__(self, synchronize: bool) -> None:
        self.synchronize = synchronize
        self._seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        _sync(self.synchronize)
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync(self.synchronize)
            self._seconds[stage] += time.perf_counter() - start

    def take(self) -> dict[str, float]:
        """The stage times since the last call, then start again from zero."""
        seconds = dict(self._seconds)
        self._seconds.clear()
        return seconds


def _sync(on_cuda: bool) -> None:
    if on_cuda:
        torch.cuda.synchronize()


def engine_target(directory: str) -> Target:
    """A row target from an export folder; eager rows rebuild the model from its ``source``."""
    manifest = Manifest.load(directory)
    return Target(
        name=Path(directory).name,
        mode=manifest.mode,
        num_frames=manifest.window.num_frames,
        input_size=manifest.input.size,
        config_file=manifest.source.get("config_file", ""),
        weights=manifest.source.get("weights", ""),
        engine_dir=directory,
        manifest=manifest,
        precision=manifest.precision.precision,
    )


def config_target(config_file: str, weights: str, input_size: Sequence[int] | None) -> Target:
    """An eager-only row target from a model config and its weights."""
    cfg = load_config(config_file, ["MODEL.WEIGHTS", weights])
    if cfg.MODEL.META_ARCHITECTURE == "SLTnet":
        window = Window.of_config(cfg.MODEL.SPATIOTEMPORAL)
        mode, num_frames = window.temporal_mode(), window.num_frames
    else:
        mode, num_frames = "single_frame", 1
    size = (input_size[0], input_size[1]) if input_size else default_input_size(cfg)
    return Target(f"{Path(config_file).stem} (config)", mode, num_frames, size, config_file, weights)


def eager_detector(target: Target, device: str) -> StreamingDetector:
    """The PyTorch model of ``target`` in streaming inference mode on ``device``."""
    for what, path in (("config file", target.config_file), ("weights", target.weights)):
        if not path or not Path(path).is_file():
            raise SltnetError(f"{target.name}: the eager row needs the model's {what}, {path!r} is not a file")
    cfg = load_config(target.config_file, ["MODEL.WEIGHTS", target.weights, "MODEL.DEVICE", device])
    model = build_model(cfg).to(device)
    if target.manifest is None:
        return StreamingDetector.from_config(model, cfg)
    return streaming_detector_of(model, target.manifest)


def synthetic_video(folder: str, input_size: tuple[int, int], num_frames: int, seed: int = 0) -> str:
    """Render a synthetic clip (square frames cropped to ``input_size``) to ``folder``; its mp4 path."""
    height, width = input_size
    spec = sample_video("fps", np.random.SeedSequence(seed), num_frames, max(height, width), SynthOptions())
    path = os.path.join(folder, f"synthetic_{height}x{width}.mp4")
    frames = (render_frame(spec, t)[:height, :width] for t in range(num_frames))
    write_mp4(tqdm(frames, total=num_frames, desc=f"synthetic {height}x{width}", unit="frame"), path, SYNTHETIC_FPS)
    return path


def stream_video(
    push: Callable[[torch.Tensor], list[FrameResult]],
    flush: Callable[[], list[FrameResult]],
    clock: StageClock,
    video: str,
    num_frames: int,
    progress: str,
) -> tuple[list[FrameTiming], dict[int, float], dict[int, int]]:
    """Decode ``video`` and push its first ``num_frames`` frames, timing each one.

    Returns:
        per pushed frame its :class:`FrameTiming`; per frame answered by ``push`` (not by the final
        ``flush``) its latency in seconds and its delay in frames.
    """
    source = VideoSource(video, num_frames)
    timings: list[FrameTiming] = []
    pushed_at: dict[int, float] = {}
    latency: dict[int, float] = {}
    delay: dict[int, int] = {}
    frames = iter(source)
    try:
        for index in tqdm(range(num_frames), desc=progress, unit="frame"):
            start = time.perf_counter()
            frame = next(frames, None)
            if frame is None:
                break
            pushed_at[index] = decoded = time.perf_counter()
            results = push(frame.image)
            _sync(clock.synchronize)
            done = time.perf_counter()
            for result in results:
                latency[result.frame_index] = done - pushed_at[result.frame_index]
                delay[result.frame_index] = index - result.frame_index
            timings.append(FrameTiming(done - start, done - decoded, {"decode": decoded - start, **clock.take()}))
        flush()
        clock.take()
    finally:
        source.close()
    return timings, latency, delay


def summarize(
    timings: Sequence[FrameTiming], latency: dict[int, float], delay: dict[int, int], warmup: int, staged: bool
) -> dict:
    """Throughput, latency percentiles and mean stage times (ms) of the frames after ``warmup``.

    Args:
        staged: the runtime reported its stages (else only decode and the whole push are known).
    """
    measured = timings[warmup:]
    wall = np.array([t.wall for t in measured])
    push = np.array([t.push for t in measured])
    answered = [i for i in range(warmup, len(timings)) if i in latency]
    latency_ms = np.array([latency[i] for i in answered]) * 1e3
    stages: dict[str, float | None] = {}
    for stage in STAGES:
        if stage == "bookkeeping":
            known = [sum(t.stages.get(s, 0.0) for s in TIMED_STAGES) for t in measured]
            values = push - np.array(known)
        else:
            values = np.array([t.stages.get(stage, 0.0) for t in measured])
        stages[stage] = float(values.mean() * 1e3) if staged or stage == "decode" else None
    per_frame_ms = float(wall.mean() * 1e3)
    bookkeeping_ms = stages["bookkeeping"]  # None exactly when not staged
    p50, p95, p99 = (float(np.percentile(latency_ms, q)) for q in (50, 95, 99))
    return {
        "frames": len(measured),
        "fps": float(len(measured) / wall.sum()),
        "per_frame_ms": per_frame_ms,
        "push_ms": float(push.mean() * 1e3),
        "latency_ms": {"p50": p50, "p95": p95, "p99": p99},
        "delay_frames": max(delay[i] for i in answered),
        "stages_ms": stages,
        "bookkeeping_share": bookkeeping_ms / per_frame_ms if bookkeeping_ms is not None else None,
    }


def peak_memory_mib(on_cuda: bool) -> dict[str, float | None]:
    """Peak resident set size of this process so far, and peak CUDA memory of torch since the last reset."""
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    device = torch.cuda.max_memory_allocated() / 2**20 if on_cuda else None
    return {"peak_rss_mib": host, "peak_cuda_mib": device}


def run_row(target: Target, backend_name: str, video: str, args) -> dict:
    """Stream ``video`` through ``target`` on ``backend_name``; the row's settings and measurements."""
    on_cuda = args.device == "cuda" or backend_name == "tensorrt"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    clock = StageClock(on_cuda)
    streamer: StreamingDetector | StreamingRuntime
    if backend_name == EAGER:
        detector = eager_detector(target, args.device)
        streamer, description = detector, f"eager PyTorch ({args.device})"
    else:
        assert target.engine_dir is not None and target.manifest is not None  # engine rows come from exports
        backend = open_backend(backend_name, target.engine_dir, target.manifest, args.device, args.threads)
        streamer, description = StreamingRuntime(target.manifest, backend, timer=clock), backend.description
    timings, latency, delay = stream_video(
        streamer.push, streamer.flush, clock, video, args.warmup + args.frames, f"{target.name} {backend_name}"
    )
    if len(timings) <= args.warmup or not any(i >= args.warmup for i in latency):
        raise SltnetError(f"{video}: {len(timings)} frames, too few to measure after --warmup {args.warmup}")
    row = {
        "target": target.name,
        "engine_dir": target.engine_dir,
        "mode": target.mode,
        "num_frames": target.num_frames,
        "precision": target.precision,
        "backend": backend_name,
        "description": description,
        **summarize(timings, latency, delay, args.warmup, staged=backend_name != EAGER),
    }
    row.update(peak_memory_mib(on_cuda))
    return row


def stream_many(
    runtime: MultiStreamRuntime, video: str, num_rounds: int, warmup: int, synchronize: bool, progress: str
) -> tuple[int, float, list[float]]:
    """Push ``num_rounds`` frames of ``video`` into every stream of ``runtime``, one frame of each
    stream in turn, each stream decoding the video itself.

    Returns:
        frames pushed after ``warmup`` rounds, their wall time in seconds, and the latency in
        seconds of each of those frames answered by a push (the final flushes are not measured).
    """
    sources = [VideoSource(video, num_rounds) for _ in range(runtime.num_streams)]
    pushed_at: dict[tuple[int, int], float] = {}
    latency: list[float] = []
    measured, start = 0, time.perf_counter()
    try:
        frames = [iter(source) for source in sources]
        for index in tqdm(range(num_rounds), desc=progress, unit="round"):
            if index == warmup:
                start = time.perf_counter()
            decoded = [next(stream, None) for stream in frames]
            if any(frame is None for frame in decoded):
                break
            for stream_id, frame in enumerate(decoded):
                assert frame is not None  # checked above
                pushed_at[stream_id, index] = time.perf_counter()
                results = runtime.push(stream_id, frame.image)
                _sync(synchronize)
                done = time.perf_counter()
                for answered, result in results:
                    if result.frame_index >= warmup:
                        latency.append(done - pushed_at[answered, result.frame_index])
                if index >= warmup:
                    measured += 1
        wall = time.perf_counter() - start
        for stream_id in range(runtime.num_streams):
            runtime.flush(stream_id)
    finally:
        for source in sources:
            source.close()
    return measured, wall, latency


def run_stream_row(target: Target, backend_name: str, num_streams: int, video: str, args) -> dict:
    """``num_streams`` copies of ``video`` through one multi-stream runtime on ``target``'s engines."""
    assert target.engine_dir is not None and target.manifest is not None  # engine rows come from exports
    on_cuda = args.device == "cuda" or backend_name == "tensorrt"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    backend = open_backend(backend_name, target.engine_dir, target.manifest, args.device, args.threads)
    runtime = MultiStreamRuntime(target.manifest, backend, num_streams)
    progress = f"{target.name} {backend_name} x{num_streams}"
    frames, wall, latency = stream_many(runtime, video, args.warmup + args.frames, args.warmup, on_cuda, progress)
    if not latency:
        raise SltnetError(f"{video}: too few frames to measure {num_streams} streams after --warmup {args.warmup}")
    latency_ms = np.array(latency) * 1e3
    fps = frames / wall
    row = {
        "target": target.name,
        "engine_dir": target.engine_dir,
        "mode": target.mode,
        "precision": target.precision,
        "backend": backend_name,
        "description": backend.description,
        "batch": runtime.batch,
        "streams": num_streams,
        "frames": frames,
        "fps": fps,
        "fps_per_stream": fps / num_streams,
        "latency_ms": {"p50": float(np.percentile(latency_ms, 50)), "p95": float(np.percentile(latency_ms, 95))},
        # The temporal engine runs once per frame, the frame engine once per batch.
        "frame_engine_runs_per_frame": backend.frame.num_runs / backend.temporal.num_runs,
    }
    row.update(peak_memory_mib(on_cuda))
    return row


def _find(rows: Sequence[dict], **match) -> dict | None:
    return next((row for row in rows if all(row[key] == value for key, value in match.items())), None)


def ratios(rows: Sequence[dict]) -> dict[str, list[dict]]:
    """SLTnet vs baseline fps per backend and precision, onnxruntime vs eager fps per target, int8 vs
    fp32 per mode and backend (whole row and frame engine), bookkeeping shares."""
    vs_baseline, vs_eager, bookkeeping, int8 = [], [], [], []
    for row in rows:
        if row["precision"] == "int8":
            fp32 = _find(rows, mode=row["mode"], num_frames=row["num_frames"], backend=row["backend"], precision="fp32")
            if fp32 is not None:
                int8.append(_int8_ratios(row, fp32))
        if row["mode"] != "single_frame":
            baseline = _find(rows, mode="single_frame", backend=row["backend"], precision=row["precision"])
            if baseline is not None:
                vs_baseline.append(
                    {
                        "sltnet": row["target"],
                        "baseline": baseline["target"],
                        "backend": row["backend"],
                        "ratio": row["fps"] / baseline["fps"],
                    }
                )
        if row["backend"] == "onnxruntime":
            eager = _find(rows, target=row["target"], backend=EAGER)
            if eager is not None:
                vs_eager.append({"target": row["target"], "ratio": row["fps"] / eager["fps"]})
        if row["bookkeeping_share"] is not None:
            bookkeeping.append({"target": row["target"], "backend": row["backend"], "share": row["bookkeeping_share"]})
    return {
        "sltnet_vs_baseline_fps": vs_baseline,
        "onnxruntime_vs_eager_fps": vs_eager,
        "bookkeeping_share": bookkeeping,
        "int8_vs_fp32": int8,
    }


def _int8_ratios(int8: dict, fp32: dict) -> dict:
    """How much faster an int8 row is than its fp32 row: fps, and the time of each engine stage."""

    def speedup(stage: str) -> float | None:
        slow, fast = fp32["stages_ms"].get(stage), int8["stages_ms"].get(stage)
        return slow / fast if slow and fast else None

    return {
        "int8": int8["target"],
        "fp32": fp32["target"],
        "mode": int8["mode"],
        "backend": int8["backend"],
        "fps": int8["fps"] / fp32["fps"],
        "frame_engine": speedup("frame_engine"),
        "temporal_engine": speedup("temporal_engine"),
    }


def acceptance_checks(rows: Sequence[dict]) -> list[dict]:
    """The speed issue's targets on the sequential N=3 onnxruntime row: PASS, FAIL or SKIP each."""
    checks: list[dict] = []
    sltnet = _find(rows, mode="sequential", num_frames=3, backend="onnxruntime", precision="fp32")

    def check(name: str, value: float | None, limit: float, at_most: bool, missing: str) -> None:
        target = f"{'<=' if at_most else '>='} {limit}"
        if value is None:
            checks.append({"check": name, "status": "SKIP", "value": None, "target": target, "why": missing})
            return
        passed = value <= limit if at_most else value >= limit
        checks.append({"check": name, "status": "PASS" if passed else "FAIL", "value": value, "target": target})

    no_row = "no sequential N=3 onnxruntime row"
    baseline = _find(rows, mode="single_frame", backend="onnxruntime", precision="fp32")
    eager = _find(rows, target=sltnet["target"], backend=EAGER) if sltnet is not None else None
    check(
        "bookkeeping share of per-frame time",
        sltnet["bookkeeping_share"] if sltnet is not None else None,
        MAX_BOOKKEEPING_SHARE,
        True,
        no_row,
    )
    check(
        "SLTnet fps / baseline fps (onnxruntime)",
        sltnet["fps"] / baseline["fps"] if sltnet is not None and baseline is not None else None,
        MIN_SLTNET_VS_BASELINE,
        False,
        f"{no_row} or no single-frame onnxruntime row",
    )
    check(
        "onnxruntime fps / eager fps (SLTnet)",
        sltnet["fps"] / eager["fps"] if sltnet is not None and eager is not None else None,
        MIN_ONNXRUNTIME_VS_EAGER,
        False,
        f"{no_row} or no eager row for it",
    )
    latency = sltnet["latency_ms"] if sltnet is not None else None
    check(
        "p99 / p50 latency",
        latency["p99"] / latency["p50"] if latency is not None else None,
        MAX_P99_OVER_P50,
        True,
        no_row,
    )
    int8 = _find(rows, mode="sequential", num_frames=3, backend="onnxruntime", precision="int8")
    speedups = _int8_ratios(int8, sltnet) if int8 is not None and sltnet is not None else None
    no_int8 = "no int8 and fp32 sequential N=3 onnxruntime rows"
    check(
        "int8 frame engine speed-up over fp32 (onnxruntime)",
        speedups["frame_engine"] if speedups is not None else None,
        MIN_INT8_FRAME_ENGINE_SPEEDUP,
        False,
        no_int8,
    )
    check(
        "int8 SLTnet fps / fp32 SLTnet fps (onnxruntime)",
        speedups["fps"] if speedups is not None else None,
        MIN_INT8_VS_FP32,
        False,
        no_int8,
    )
    return checks


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def streams_table(stream_rows: Sequence[dict]) -> list[str]:
    """The multi-stream rows as markdown table lines (none without rows)."""
    if not stream_rows:
        return []
    header = ["target", "mode", "precision", "backend", "batch", "streams", "fps (all streams)", "fps per stream"]
    header += ["p50 ms"]
    header += ["p95 ms", "frame-engine runs / frame"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in stream_rows:
        cells = [row["target"], row["mode"], row["precision"], row["description"], str(row["batch"])]
        cells += [str(row["streams"])]
        cells += [f"{row['fps']:.1f}", f"{row['fps_per_stream']:.1f}"]
        cells += [_ms(row["latency_ms"][q]) for q in ("p50", "p95")] + [f"{row['frame_engine_runs_per_frame']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def markdown_report(
    rows: Sequence[dict], ratio_lists: dict[str, list[dict]], checks: Sequence[dict], stream_rows: Sequence[dict] = ()
) -> str:
    """The table, the multi-stream table, the ratio lines and the check lines."""
    cuda = any(row["peak_cuda_mib"] is not None for row in rows)
    header = ["target", "mode", "precision", "backend", "fps", "ms/frame", "p50 ms", "p95 ms", "p99 ms"]
    header += ["delay (frames)"]
    header += [f"{stage} ms" for stage in STAGES] + ["bookkeeping %", "peak RSS MiB"]
    header += ["peak CUDA MiB"] if cuda else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        latency, share = row["latency_ms"], row["bookkeeping_share"]
        cells = [row["target"], row["mode"], row["precision"], row["description"], f"{row['fps']:.1f}"]
        cells += [_ms(row["per_frame_ms"])]
        cells += [_ms(latency[q]) for q in ("p50", "p95", "p99")] + [str(row["delay_frames"])]
        cells += [_ms(row["stages_ms"][stage]) for stage in STAGES]
        cells += ["–" if share is None else f"{100 * share:.1f}", f"{row['peak_rss_mib']:.0f}"]
        cells += [_ms(row["peak_cuda_mib"])] if cuda else []
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += streams_table(stream_rows)
    for entry in ratio_lists["sltnet_vs_baseline_fps"]:
        compared = f"{entry['sltnet']} / {entry['baseline']}"
        lines.append(f"- SLTnet/baseline fps ({entry['backend']}): {compared} = {entry['ratio']:.2f}")
    for entry in ratio_lists["onnxruntime_vs_eager_fps"]:
        lines.append(f"- onnxruntime/eager fps: {entry['target']} = {entry['ratio']:.2f}")
    for entry in ratio_lists["int8_vs_fp32"]:
        engines = ", ".join(
            f"{stage.replace('_', ' ')} {entry[stage]:.2f}x"
            for stage in ("frame_engine", "temporal_engine")
            if entry[stage]
        )
        lines.append(
            f"- int8/fp32 fps ({entry['backend']}): {entry['int8']} / {entry['fp32']} = {entry['fps']:.2f} ({engines})"
        )
    for entry in ratio_lists["bookkeeping_share"]:
        lines.append(f"- bookkeeping share ({entry['backend']}): {entry['target']} = {100 * entry['share']:.1f} %")
    lines.append("")
    for entry in checks:
        if entry["status"] == "SKIP":
            lines.append(f"SKIP {entry['check']} ({entry['why']})")
        else:
            lines.append(f"{entry['status']} {entry['check']}: {entry['value']:.3f} (target {entry['target']})")
    return "\n".join(lines) + "\n"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="fps.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--engine", metavar="DIR", action="append", help="export folder, repeatable (default: the small exports here)"
    )
    parser.add_argument("--config-file", metavar="C", help="add an eager row for this model config (with --weights)")
    parser.add_argument("--weights", metavar="W", help="weights of --config-file")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="frame size of --config-file's row")
    parser.add_argument(
        "--backend",
        nargs="+",
        choices=(*ENGINE_BACKENDS, EAGER),
        default=["onnxruntime", EAGER],
        help="backends to compare (default: onnxruntime eager)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device of onnxruntime, torch, eager")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--video", metavar="V", help="video (or image folder) at the engines' input size")
    source.add_argument("--synthetic", action="store_true", help="a rendered synthetic clip (the default)")
    parser.add_argument("--frames", type=int, default=500, help="measured frames per row (default 500)")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured frames first (default 50)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads (default: all cores)")
    parser.add_argument(
        "--streams",
        type=int,
        nargs="+",
        metavar="N",
        help="also run N concurrent streams through the multi-stream runtime, per N (e.g. 1 2 4)",
    )
    parser.add_argument("--json", metavar="OUT", help="write rows, ratios, checks and machine info as JSON")
    return parser


def _check_arguments(args) -> None:
    if args.frames < 1 or args.warmup < 0:
        raise SltnetError(
            f"--frames {args.frames} --warmup {args.warmup}: need at least 1 frame and no negative warm-up"
        )
    if args.threads < 1:
        raise SltnetError(f"--threads {args.threads}: must be at least 1")
    if args.streams is not None and min(args.streams) < 1:
        raise SltnetError(f"--streams {min(args.streams)}: must be at least 1")
    if (args.config_file is None) != (args.weights is None):
        raise SltnetError("--config-file and --weights: give both or neither")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SltnetError("--device cuda: torch sees no CUDA device here")
    check_outputs({"--video": args.video}, {"--json": args.json})
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise SltnetError(f"--json {args.json}: folder {Path(args.json).parent} does not exist")


def _check_video_size(video: str, target: Target) -> None:
    source = VideoSource(video, 1)
    source.close()
    if (source.height, source.width) != target.input_size:
        height, width = target.input_size
        raise SltnetError(
            f"--video {video}: frames are {source.width}x{source.height}, {target.name} takes {width}x{height}"
        )


def targets_from_args(args) -> list[Target]:
    engines = args.engine
    if engines is None and args.config_file is None:
        engines = [d for d in DEFAULT_ENGINES if Path(d, "manifest.json").is_file()]
        if not engines:
            raise SltnetError(
                f"no --engine given and none of {', '.join(DEFAULT_ENGINES)} exists (sltnet-export first)"
            )
    targets = [engine_target(directory) for directory in engines or ()]
    if args.config_file is not None:
        targets.append(config_target(args.config_file, args.weights, args.input_size))
    return targets


@console_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_arguments(args)
    torch.set_num_threads(args.threads)
    targets = targets_from_args(args)
    with tempfile.TemporaryDirectory(prefix="sltnet-fps-") as scratch:
        videos: dict[tuple[int, int], str] = {}
        rows, stream_rows = [], []
        for target in targets:
            if args.video is not None:
                _check_video_size(args.video, target)
            elif target.input_size not in videos:
                videos[target.input_size] = synthetic_video(scratch, target.input_size, args.warmup + args.frames)
            video = args.video or videos[target.input_size]
            backends = args.backend if target.manifest is not None else [EAGER]
            if target.precision != "fp32":  # eager PyTorch computes in float32: the fp32 export's eager row
                backends = [name for name in backends if name != EAGER]
            rows += [run_row(target, name, video, args) for name in backends]
            if target.manifest is not None:
                stream_rows += [
                    run_stream_row(target, name, num_streams, video, args)
                    for name in backends
                    if name != EAGER
                    for num_streams in args.streams or ()
                ]
    ratio_lists, checks = ratios(rows), acceptance_checks(rows)
    report = markdown_report(rows, ratio_lists, checks, stream_rows)
    print(report, end="")
    if args.json:
        command = sys.argv if argv is None else ["benchmarks/fps.py", *argv]
        result = {
            "machine": machine_info(args.threads, command),
            "settings": {
                "frames": args.frames,
                "warmup": args.warmup,
                "device": args.device,
                "video": args.video or "synthetic",
                "streams": args.streams or [],
            },
            "rows": rows,
            "stream_rows": stream_rows,
            "ratios": ratio_lists,
            "checks": checks,
            "markdown": report,
        }
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
