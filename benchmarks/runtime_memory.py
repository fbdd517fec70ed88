"""Host memory of the streaming runtime in steady state.

    python benchmarks/runtime_memory.py --engine DIR [--backend onnxruntime] [--frames 2000] [--from-frame 200]
                                        [--max-growth-mb 20] [--threads N]

Streams ``--frames`` frames (a moving square on noise, at the export's input size) through
:class:`runtime.detector.StreamingRuntime` as one video and prints the process's resident set size
(RSS, from /proc/self/statm) at ``--from-frame`` and at the end. Exit status 1 when it grew by more
than ``--max-growth-mb``.
"""

import os
from collections.abc import Sequence

import torch
from tqdm import tqdm

from runtime.detector import StreamingRuntime
from runtime.engines import BACKENDS, open_backend
from sltnet.cli import ArgumentParser, console_entry
from sltnet.contract import Manifest
from sltnet.errors import SltnetError


def rss_mb() -> float:
    """Resident set size of this process in MiB."""
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def moving_square(frame_size: Sequence[int], num_variants: int = 16) -> torch.Tensor:
    """[V, 3, H, W] uint8 frames of a bright square moving over noise (cycled while streaming)."""
    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 60, (num_variants, 3, *frame_size), generator=generator, dtype=torch.uint8)
    side = min(frame_size) // 4
    for t in range(num_variants):
        x = t * (frame_size[1] - side) // num_variants
        frames[t, :, side : 2 * side, x : x + side] = 220
    return frames


@console_entry
def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="runtime_memory.py", description=__doc__.splitlines()[0])
    parser.add_argument("--engine", metavar="DIR", required=True, help="export folder")
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--from-frame", type=int, default=200, help="first RSS reading (after warm-up)")
    parser.add_argument("--max-growth-mb", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    args = parser.parse_args(argv)
    if not 0 < args.from_frame < args.frames:
        raise SltnetError(f"--from-frame {args.from_frame}: must be between 0 and --frames {args.frames}")
    torch.set_num_threads(args.threads)
    manifest = Manifest.load(args.engine)
    backend = open_backend(args.backend, args.engine, manifest, num_threads=args.threads)
    runtime = StreamingRuntime(manifest, backend)
    frames = moving_square(manifest.input.size)
    answered = 0
    for index in tqdm(range(args.frames), unit="frame", desc=backend.description):
        answered += len(runtime.push(frames[index % len(frames)]))
        if index + 1 == args.from_frame:
            start = rss_mb()
    answered += len(runtime.flush())
    end = rss_mb()
    growth = end - start
    print(
        f"{backend.description}: {answered} frames answered; RSS {start:.1f} MiB at frame {args.from_frame}, "
        f"{end:.1f} MiB at frame {args.frames}: {growth:+.1f} MiB (limit {args.max_growth_mb:+.1f})"
    )
    return 0 if growth <= args.max_growth_mb else 1


if __name__ == "__main__":
    raise SystemExit(main())
