"""``sltnet-convert``: dataset and result format conversions, one subcommand each.

    sltnet-convert vid-to-stcoco ILSVRC2015/Annotations/VID/val vid_val.json --image-set ImageSets/VID/val.txt
    sltnet-convert to-vid detections.json --gt vid_val.json vid_val_results.txt

A subcommand is one entry of ``SUBCOMMANDS``: its name, help line, a function that adds its arguments
to its parser and a function that runs it on the parsed arguments.
"""

import argparse
from typing import Callable, NamedTuple, Optional, Sequence

from sltnet.cli import ArgumentParser, console_entry
from sltnet.data.vid_convert import coco_results_to_vid, convert_vid_to_stcoco


class Subcommand(NamedTuple):
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


def _add_vid_to_stcoco_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("annotations_dir", help="e.g. ILSVRC2015/Annotations/VID/val (or .../train)")
    parser.add_argument("out_json", help="ST-COCO JSON file to write")
    parser.add_argument("--split-name", help="name stored as info.split_name (default: the folder name)")
    parser.add_argument(
        "--image-set",
        metavar="FILE",
        help="devkit image set (ImageSets/VID/val.txt): keep only its frames and store their frame_index",
    )
    parser.add_argument(
        "--videos-list", metavar="FILE", help="keep only the videos named by the first field of each line"
    )
    parser.add_argument(
        "--file-prefix",
        help="prefix of every file_name (default: the annotation folder's part below Annotations/VID, e.g. 'val/')",
    )


def _run_vid_to_stcoco(args: argparse.Namespace) -> None:
    summary = convert_vid_to_stcoco(
        args.annotations_dir,
        args.out_json,
        split_name=args.split_name,
        image_set=args.image_set,
        videos_list=args.videos_list,
        file_prefix=args.file_prefix,
    )
    print(
        f"wrote {args.out_json}: {summary.videos} videos, {summary.images} frames, "
        f"{summary.annotations} boxes"
    )


def _add_to_vid_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("detections_json", help="COCO detection results (a list of image_id/category_id/bbox/score)")
    parser.add_argument("--gt", required=True, metavar="GT_JSON", help="the ST-COCO ground truth from vid-to-stcoco")
    parser.add_argument("out_txt", help="devkit result file to write")
    parser.add_argument(
        "--image-set",
        metavar="FILE",
        help="devkit image set giving the frame indices (default: the ground truth's frame_index fields)",
    )


def _run_to_vid(args: argparse.Namespace) -> None:
    count = coco_results_to_vid(args.detections_json, args.gt, args.out_txt, image_set=args.image_set)
    print(f"wrote {args.out_txt}: {count} detections")


SUBCOMMANDS = (
    Subcommand(
        "vid-to-stcoco",
        "ImageNet VID annotation XML tree -> ST-COCO JSON",
        _add_vid_to_stcoco_arguments,
        _run_vid_to_stcoco,
    ),
    Subcommand(
        "to-vid",
        "COCO detection results -> ImageNet VID devkit result lines",
        _add_to_vid_arguments,
        _run_to_vid,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="sltnet-convert", description="Dataset and result format conversions.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for subcommand in SUBCOMMANDS:
        subparser = subparsers.add_parser(subcommand.name, help=subcommand.help, description=subcommand.help)
        subcommand.add_arguments(subparser)
        subparser.set_defaults(run=subcommand.run)
    return parser


@console_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.run(args)
    return 0
