"""``sltnet-data``: check ST-COCO datasets and list the dataset catalog.

sltnet-data validate vid_val
sltnet-data validate --json ann.json --image-root frames/ --check-images
sltnet-data list
"""

import argparse
import os
import sys
from collections import Counter
from collections.abc import Sequence

from sltnet.cli import ArgumentParser, console_entry
from sltnet.data.catalog import DATA_ROOT_ENV, DEFAULT_DATA_ROOT, add_catalog_arguments, catalog_from_args
from sltnet.data.records import StCocoDataset
from sltnet.data.stcoco import build_stcoco_dataset, read_stcoco_json, validate_stcoco
from sltnet.errors import SltnetError

#: Exit status when the dataset has problems (2 stays for usage and file errors).
EXIT_INVALID = 1


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="sltnet-data", description="Check ST-COCO datasets and list the dataset catalog.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check a dataset and print a summary or every problem")
    validate.add_argument("name", nargs="?", help="catalog name of the dataset (or use --json)")
    validate.add_argument("--json", help="ST-COCO annotation file")
    validate.add_argument("--image-root", help="folder the images' file_name paths are relative to")
    validate.add_argument("--check-images", action="store_true", help="also check that every image file exists")
    validate.add_argument(
        "--max-problems", type=int, default=50, metavar="N", help="print at most N problems (0: all; default 50)"
    )
    add_catalog_arguments(validate)

    listing = commands.add_parser("list", help="print the known dataset names and whether their files exist")
    add_catalog_arguments(listing)
    return parser


def format_summary(dataset: StCocoDataset) -> str:
    """Videos, frames, annotations, tracks and per-class counts of a dataset, as a small table."""
    annotations_per_class: Counter = Counter()
    tracks_per_class: Counter = Counter()
    tracks = set()
    for video in dataset.videos:
        for frame in video.frames:
            annotations_per_class.update(frame.classes.tolist())
            for track, cls in zip(frame.track_ids.tolist(), frame.classes.tolist()):
                if (video.name, track) not in tracks:
                    tracks.add((video.name, track))
                    tracks_per_class[cls] += 1
    lines = [
        f"{dataset.json_path}: valid",
        f"  videos:      {len(dataset.videos)}",
        f"  frames:      {len(dataset)}",
        f"  annotations: {sum(annotations_per_class.values())}",
        f"  tracks:      {len(tracks)}",
        f"  classes:     {dataset.num_classes}",
        f"  {'class':>5}  {'category id':>11}  {'annotations':>11}  {'tracks':>7}  name",
    ]
    for index, (name, cat_id) in enumerate(zip(dataset.class_names, dataset.category_ids)):
        lines.append(
            f"  {index:>5}  {cat_id:>11}  {annotations_per_class[index]:>11}  {tracks_per_class[index]:>7}  {name}"
        )
    return "\n".join(lines)


def _validate(args: argparse.Namespace) -> int:
    if args.name and args.json:
        raise SltnetError("validate: give a dataset name or --json, not both")
    if args.name:
        image_root, json_path = catalog_from_args(args).get(args.name)
    elif args.json:
        json_path, image_root = args.json, args.image_root
    else:
        raise SltnetError("validate: give a dataset name or --json FILE")
    if args.check_images and image_root is None:
        raise SltnetError("--check-images needs --image-root")
    data = read_stcoco_json(json_path)
    problems = validate_stcoco(data, json_path, image_root, check_images=args.check_images)
    if problems:
        shown = problems if args.max_problems <= 0 else problems[: args.max_problems]
        for line in shown:
            print(line)
        if len(shown) < len(problems):
            print(f"... and {len(problems) - len(shown)} more problems (--max-problems 0 lists all)")
        print(f"{json_path}: {len(problems)} problem{'s' if len(problems) > 1 else ''}", file=sys.stderr)
        return EXIT_INVALID
    print(format_summary(build_stcoco_dataset(data, json_path, image_root or "")))
    return 0


def _list(args: argparse.Namespace) -> int:
    catalog = catalog_from_args(args)
    print(f"data root: {catalog.root} (from ${DATA_ROOT_ENV}, default {DEFAULT_DATA_ROOT})")
    for name in catalog.names():
        image_root, json_path = catalog.get(name)
        found = {"json": os.path.isfile(json_path), "images": os.path.isdir(image_root)}
        missing = [what for what, exists in found.items() if not exists]
        status = "missing " + " and ".join(missing) if missing else "ok"
        print(f"{name:<24} {status:<24} json={json_path}  images={image_root}")
    return 0


@console_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return _validate(args) if args.command == "validate" else _list(args)


if __name__ == "__main__":
    sys.exit(main())
