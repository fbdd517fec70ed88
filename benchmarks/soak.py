"""Soak test of ``sltnet-run``: host memory per frame over a long stream, with and without outputs.

    python benchmarks/soak.py [--engine DIR] [--backend onnxruntime] [--frames 3000] [--every 20]
                              [--video CLIP.mp4] [--max-slope-kib 1.0] [--json OUT.json]

Renders a synthetic clip of ``--frames`` frames at the export's input size (or takes ``--video``)
and runs ``runtime.cli.main`` over it twice, each time in a fresh process: without outputs, and
with ``--out`` and ``--json``. Each process records its resident set size (RSS, /proc/self/statm)
every ``--every`` frames; the slope of RSS over frames, by least squares over the samples from
10 % to 95 % of the run (warm-up and the final flush left out), is printed in KiB/frame. Exit
status 1 when a slope exceeds ``--max-slope-kib``.
"""

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sltnet.atomic_io import atomic_write_text
from sltnet.cli import ArgumentParser, console_entry
from sltnet.contract import FrameResult, Manifest
from sltnet.data.synthetic.rendering import render_frame
from sltnet.data.synthetic.sampling import SynthOptions, sample_video
from sltnet.data.synthetic.writing import write_mp4
from sltnet.errors import SltnetError

SAMPLE_WINDOW = (0.10, 0.95)  # fraction of the run the slope is fitted over
SYNTHETIC_FPS = 25
CHILD_FLAG = "--child-samples"


def rss_kib() -> float:
    """Resident set size of this process in KiB."""
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 1024


def rss_slope(
    samples: Sequence[tuple[int, float]], num_frames: int, window: tuple[float, float] = SAMPLE_WINDOW
) -> float:
    """Least-squares slope of RSS (KiB) over frames, from the samples taken inside ``window`` of the run.

    Args:
        samples: (frames pushed so far, RSS in KiB).
        num_frames: frames in the whole run.
        window: first and last fraction of the run to fit.
    Returns:
        KiB per frame.
    Raises:
        ValueError: fewer than two samples inside the window.
    """
    low, high = window[0] * num_frames, window[1] * num_frames
    inside = [(frame, rss) for frame, rss in samples if low <= frame <= high]
    if len(inside) < 2 or len({frame for frame, _ in inside}) < 2:
        raise ValueError(f"{len(inside)} samples between frames {low:.0f} and {high:.0f}: too few to fit a slope")
    frames = np.array([frame for frame, _ in inside], dtype=np.float64)
    rss = np.array([value for _, value in inside], dtype=np.float64)
    centred = frames - frames.mean()
    return float((centred * (rss - rss.mean())).sum() / (centred**2).sum())


def synthetic_clip(path: str, input_size: Sequence[int], num_frames: int, seed: int = 0) -> str:
    """Render a synthetic clip (the benchmark's objects moving on their backgrounds) to ``path``."""
    height, width = input_size
    spec = sample_video("soak", np.random.SeedSequence(seed), num_frames, max(height, width), SynthOptions())
    write_mp4((render_frame(spec, t)[:height, :width] for t in range(num_frames)), path, SYNTHETIC_FPS)
    return path


def _child(samples_path: str, every: int, cli_argv: list[str]) -> int:
    """Run ``sltnet-run`` in this process, recording (frames pushed, RSS) every ``every`` frames."""
    import runtime.cli as cli

    samples: list[tuple[int, float]] = []

    class SampledRuntime(cli.StreamingRuntime):
        pushed = 0

        def push(self, image: torch.Tensor) -> list[FrameResult]:
            results = super().push(image)
            SampledRuntime.pushed += 1
            if SampledRuntime.pushed % every == 0:
                samples.append((SampledRuntime.pushed, rss_kib()))
            return results

    cli.StreamingRuntime = SampledRuntime  # type: ignore[misc]
    status = cli.main(cli_argv)
    Path(samples_path).write_text(json.dumps({"frames": SampledRuntime.pushed, "samples": samples}))
    return status


def soak(name: str, cli_argv: list[str], every: int, folder: str) -> dict:
    """One configuration in a fresh process: its frames, samples, RSS at both ends and slope."""
    samples_path = os.path.join(folder, f"{name}.samples.json")
    command = [sys.executable, os.path.abspath(__file__), CHILD_FLAG, samples_path, str(every), *cli_argv]
    print(f"== {name}: sltnet-run {' '.join(cli_argv)}", flush=True)
    subprocess.run(command, check=True)
    record = json.loads(Path(samples_path).read_text())
    samples = [(int(frame), float(rss)) for frame, rss in record["samples"]]
    slope = rss_slope(samples, record["frames"])
    return {
        "name": name,
        "frames": record["frames"],
        "rss_start_mib": samples[0][1] / 1024,
        "rss_end_mib": samples[-1][1] / 1024,
        "slope_kib_per_frame": slope,
    }


@console_entry
def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="soak.py", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--engine", metavar="DIR", default="./output/engines/small_sltnet_sequential")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--frames", type=int, default=3000, help="length of the rendered clip (default 3000)")
    parser.add_argument("--every", type=int, default=20, help="frames between RSS samples (default 20)")
    parser.add_argument("--video", metavar="CLIP.mp4", help="stream this video instead of a rendered clip")
    parser.add_argument("--max-slope-kib", type=float, default=1.0, help="limit in KiB/frame (default 1.0)")
    parser.add_argument("--json", metavar="OUT.json", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.frames < 100 or args.every < 1:
        raise SltnetError("--frames must be at least 100 and --every at least 1")
    manifest = Manifest.load(args.engine)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sltnet-soak-") as folder:
        video = args.video or synthetic_clip(os.path.join(folder, "clip.mp4"), manifest.input.size, args.frames)
        base = [video, "--engine", args.engine, "--backend", args.backend, "--no-progress"]
        outputs = ["--out", os.path.join(folder, "out.mp4"), "--json", os.path.join(folder, "dets.json")]
        rows.append(soak("no outputs", base, args.every, folder))
        rows.append(soak("--out --json", base + outputs, args.every, folder))
    print(
        f"RSS slope from {SAMPLE_WINDOW[0]:.0%} to {SAMPLE_WINDOW[1]:.0%} of the run ({args.engine}, {args.backend}):"
    )
    for row in rows:
        print(
            f"  {row['name']:<14} {row['frames']} frames: {row['slope_kib_per_frame']:+.3f} KiB/frame "
            f"(RSS {row['rss_start_mib']:.1f} -> {row['rss_end_mib']:.1f} MiB; limit {args.max_slope_kib} KiB/frame)"
        )
    if args.json:
        atomic_write_text(
            args.json, json.dumps({"engine": args.engine, "backend": args.backend, "rows": rows}, indent=2)
        )
    return 0 if all(row["slope_kib_per_frame"] <= args.max_slope_kib for row in rows) else 1


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == CHILD_FLAG:
        raise SystemExit(_child(sys.argv[2], int(sys.argv[3]), sys.argv[4:]))
    raise SystemExit(main())
