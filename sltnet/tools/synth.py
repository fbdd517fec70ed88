"""``sltnet-synth``: generate a split of the synthetic video benchmark (docs/data.md#synthetic-video-benchmark).

    sltnet-synth datasets/synthetic --split synth_tiny_train --videos 100 --frames 30 --size 256 --seed 0

writes ``OUT_DIR/<split>/<video>/<frame>.jpg`` and ``OUT_DIR/annotations/<split>.json`` (ST-COCO),
and with ``--mp4`` also ``OUT_DIR/<split>_mp4/<video>.mp4``. The same arguments give the same bytes.
"""

import argparse
import os
from collections.abc import Sequence

from sltnet.cli import ArgumentParser, console_entry
from sltnet.data.synthetic.sampling import HIDE_TYPES, MAX_CLASSES, SynthOptions
from sltnet.data.synthetic.writing import MIN_IMAGE_SIZE, generate_split


def build_parser() -> argparse.ArgumentParser:
    defaults = SynthOptions()
    parser = ArgumentParser(
        prog="sltnet-synth",
        description="Generate a split of the synthetic video benchmark: JPEG frames and an ST-COCO JSON.",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="output folder (e.g. datasets/synthetic)")
    parser.add_argument("--split", required=True, metavar="NAME", help="split name, e.g. synth_tiny_train")
    parser.add_argument("--videos", type=int, default=100, metavar="V", help="number of videos (default 100)")
    parser.add_argument("--frames", type=int, default=30, metavar="F", help="frames per video (default 30)")
    parser.add_argument(
        "--size", type=int, default=256, metavar="S", help=f"frame side in pixels, >= {MIN_IMAGE_SIZE} (default 256)"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="X", help="random seed (default 0)")

    knobs = parser.add_argument_group("difficulty")
    knobs.add_argument(
        "--classes",
        type=int,
        default=defaults.num_classes,
        metavar="K",
        help=f"number of classes, 1..{MAX_CLASSES} (default {defaults.num_classes})",
    )
    knobs.add_argument(
        "--max-objects",
        type=int,
        default=defaults.max_objects,
        metavar="M",
        help=f"each video has 1..M objects (default {defaults.max_objects})",
    )
    knobs.add_argument(
        "--hide-prob",
        type=float,
        default=defaults.hide_prob,
        metavar="P",
        help=f"fraction of each track's frames whose class evidence is hidden (default {defaults.hide_prob})",
    )
    knobs.add_argument(
        "--max-hidden-run",
        type=int,
        default=defaults.max_hidden_run,
        metavar="R",
        help=f"longest run of consecutive hidden frames (default {defaults.max_hidden_run})",
    )
    knobs.add_argument(
        "--hide-types",
        default=",".join(defaults.hide_types),
        metavar="LIST",
        help=f"comma-separated degradations of hidden frames (default {','.join(HIDE_TYPES)})",
    )
    knobs.add_argument(
        "--min-object-size",
        type=float,
        default=defaults.min_object_size,
        metavar="FRACTION",
        help=f"smallest object side, fraction of the frame side (default {defaults.min_object_size})",
    )
    knobs.add_argument(
        "--max-object-size",
        type=float,
        default=defaults.max_object_size,
        metavar="FRACTION",
        help=f"largest object side, fraction of the frame side (default {defaults.max_object_size})",
    )
    knobs.add_argument(
        "--max-speed",
        type=float,
        default=defaults.max_speed,
        metavar="FRACTION",
        help=f"fastest motion in frame sides per frame (default {defaults.max_speed})",
    )
    knobs.add_argument(
        "--noise",
        type=float,
        default=defaults.noise,
        metavar="STD",
        help=f"sensor noise standard deviation, intensities in [0, 1] (default {defaults.noise})",
    )

    output = parser.add_argument_group("output")
    output.add_argument("--mp4", action="store_true", help="also write OUT_DIR/<split>_mp4/<video>.mp4")
    output.add_argument("--fps", type=int, default=10, help="frame rate of the mp4 files (default 10)")
    output.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="parallel processes; the output does not depend on it (default: min(2, CPU count))",
    )
    return parser


@console_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = SynthOptions(
        num_classes=args.classes,
        max_objects=args.max_objects,
        hide_prob=args.hide_prob,
        max_hidden_run=args.max_hidden_run,
        hide_types=tuple(name.strip() for name in args.hide_types.split(",") if name.strip()),
        min_object_size=args.min_object_size,
        max_object_size=args.max_object_size,
        max_speed=args.max_speed,
        noise=args.noise,
    )
    summary = generate_split(
        args.out_dir,
        args.split,
        num_videos=args.videos,
        num_frames=args.frames,
        image_size=args.size,
        seed=args.seed,
        options=options,
        workers=args.workers,
        mp4=args.mp4,
        fps=args.fps,
    )
    print(
        f"wrote {summary.json_path}: {summary.videos} videos, {summary.frames} frames, {summary.boxes} boxes "
        f"({summary.hidden_boxes} hidden); frames under {summary.image_dir}"
        + (f", mp4 under {summary.mp4_dir}" if summary.mp4_dir else "")
    )
    return 0
