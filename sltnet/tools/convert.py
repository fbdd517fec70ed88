"""``sltnet-convert``: dataset and result format conversions, one subcommand each.

    sltnet-convert vid-to-stcoco ILSVRC2015/Annotations/VID/val vid_val.json --image-set ImageSets/VID/val.txt
    sltnet-convert to-vid detections.json --gt vid_val.json vid_val_results.txt
    sltnet-convert d2-checkpoint model_final.pth sltnet_weights.pt --config-file original.yaml --config-out sltnet.yaml
    sltnet-convert half-weights output/my_run/model_final.pt my_model_fp16.pt

A subcommand is one entry of ``SUBCOMMANDS``: its name, help line, a function that adds its arguments
to its parser, a function that runs it on the parsed arguments, and which arguments name the files it
reads and writes (an output may be none of the inputs and no other output).
"""

import argparse
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from sltnet.atomic_io import check_outputs
from sltnet.cli import ArgumentParser, console_entry
from sltnet.config import load_config, save_config
from sltnet.config.loader import ConfigWarning
from sltnet.data.vid_convert import coco_results_to_vid, convert_vid_to_stcoco
from sltnet.errors import SltnetError


class Subcommand(NamedTuple):
    """One subcommand; ``inputs`` and ``outputs`` are ``(label, argparse dest)`` of its file arguments."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]


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
    print(f"wrote {args.out_json}: {summary.videos} videos, {summary.images} frames, {summary.annotations} boxes")


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


def _add_d2_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", help="detectron2 / original SLTnet checkpoint: model_final.pth, or a model-zoo .pkl"
    )
    parser.add_argument(
        "out", help="weights file to write, with this project's names (what MODEL.WEIGHTS and --weights take)"
    )
    config = parser.add_mutually_exclusive_group()
    config.add_argument(
        "--config-file",
        metavar="FILE",
        help="the detectron2 / original SLTnet YAML the checkpoint was trained with: check every name and shape "
        "against the model it describes",
    )
    config.add_argument("--sltnet-config", metavar="FILE", help="check against a config of this project instead")
    parser.add_argument(
        "--config-out",
        metavar="FILE",
        help="also write the config as this project's YAML, with MODEL.WEIGHTS set to OUT's absolute path "
        "(needs a config)",
    )
    parser.add_argument(
        "--no-strict",
        dest="strict",
        action="store_false",
        help="write the tensors that map and fit and list the rest as a warning, instead of failing",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="the checkpoint is trusted: let it unpickle any Python object (only needed if reading it fails without)",
    )


@contextmanager
def _config_warnings_on_stderr() -> Iterator[None]:
    """Print each :class:`ConfigWarning` raised in the block as one ``warning: ...`` line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigWarning)
        yield
    for warning in caught:
        if issubclass(warning.category, ConfigWarning):
            print(f"warning: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _run_d2_checkpoint(args: argparse.Namespace) -> None:
    # Imported here: the dataset conversions do not need the model stack.
    from sltnet.d2_import.checkpoint import convert_d2_state, describe_state, read_d2_checkpoint
    from sltnet.d2_import.config import load_detectron2_config
    from sltnet.engine.checkpoint import atomic_torch_save

    if args.config_out and not (args.config_file or args.sltnet_config):
        raise SltnetError("--config-out needs --config-file or --sltnet-config")
    for option, path in (("OUT", args.out), ("--config-out", args.config_out)):
        if path is not None and Path(path).is_dir():
            raise SltnetError(f"{option} {path}: is a folder, expected a file name")
    cfg = None
    if args.sltnet_config:
        cfg = load_config(args.sltnet_config)
    elif args.config_file:
        with _config_warnings_on_stderr():
            cfg = load_detectron2_config(args.config_file)
    conversion = convert_d2_state(read_d2_checkpoint(args.checkpoint, args.allow_pickle), cfg)
    for note in conversion.notes:
        print(f"note: {note}")
    if conversion.problems:
        listed = "; ".join(conversion.problems)
        count = f"{len(conversion.problems)} problem{'s' if len(conversion.problems) > 1 else ''}"
        if args.strict:
            raise SltnetError(f"{args.checkpoint}: {count} (nothing written; --no-strict writes the rest): {listed}")
        print(f"warning: {args.checkpoint}: {count}, left out: {listed}", file=sys.stderr)
    payload = {"model": conversion.state}
    if cfg is not None:
        cfg = cfg.clone()
        cfg.defrost()
        # Absolute, so the config works from any folder.
        cfg.MODEL.WEIGHTS = str(Path(args.out).resolve())
        payload["config"] = cfg.dump()
    atomic_torch_save(payload, Path(args.out))
    print(f"wrote {args.out}: {len(conversion.state)} tensors ({describe_state(conversion.state)})")
    if args.config_out:
        save_config(cfg, args.config_out)
        print(f"wrote {args.config_out}")


def _add_half_weights_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", help="trained weights (model_final.pt) or a training checkpoint")
    parser.add_argument("out", help="weights file to write (what MODEL.WEIGHTS and --weights take)")


def _run_half_weights(args: argparse.Namespace) -> None:
    # Imported here: the dataset conversions do not need the model stack.
    from sltnet.engine.checkpoint import atomic_torch_save
    from sltnet.modeling.build import read_weights

    state = read_weights(args.weights)
    # Loading casts every tensor back to the model's dtype, so only the file changes.
    half = {name: t.half() if t.is_floating_point() else t for name, t in state.items()}
    atomic_torch_save({"model": half}, Path(args.out))
    print(f"wrote {args.out}: {len(half)} tensors in float16, {Path(args.out).stat().st_size / 1e6:.1f} MB")


SUBCOMMANDS = (
    Subcommand(
        "vid-to-stcoco",
        "ImageNet VID annotation XML tree -> ST-COCO JSON",
        _add_vid_to_stcoco_arguments,
        _run_vid_to_stcoco,
        (("ANNOTATIONS_DIR", "annotations_dir"), ("--image-set", "image_set"), ("--videos-list", "videos_list")),
        (("OUT_JSON", "out_json"),),
    ),
    Subcommand(
        "to-vid",
        "COCO detection results -> ImageNet VID devkit result lines",
        _add_to_vid_arguments,
        _run_to_vid,
        (("DETECTIONS_JSON", "detections_json"), ("--gt", "gt"), ("--image-set", "image_set")),
        (("OUT_TXT", "out_txt"),),
    ),
    Subcommand(
        "d2-checkpoint",
        "detectron2 / original SLTnet checkpoint -> weights with this project's names",
        _add_d2_checkpoint_arguments,
        _run_d2_checkpoint,
        (("CHECKPOINT", "checkpoint"), ("--config-file", "config_file"), ("--sltnet-config", "sltnet_config")),
        (("OUT", "out"), ("--config-out", "config_out")),
    ),
    Subcommand(
        "half-weights",
        "weights or a training checkpoint -> the model's weights in float16 (half the file size)",
        _add_half_weights_arguments,
        _run_half_weights,
        (("WEIGHTS", "weights"),),
        (("OUT", "out"),),
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="sltnet-convert", description="Dataset and result format conversions.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for subcommand in SUBCOMMANDS:
        subparser = subparsers.add_parser(subcommand.name, help=subcommand.help, description=subcommand.help)
        subcommand.add_arguments(subparser)
        subparser.set_defaults(subcommand=subcommand)
    return parser


@console_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    subcommand: Subcommand = args.subcommand
    check_outputs(
        {label: getattr(args, dest) for label, dest in subcommand.inputs},
        {label: getattr(args, dest) for label, dest in subcommand.outputs},
    )
    subcommand.run(args)
    return 0
