"""``sltnet-export``: split a trained model into a frame engine and a temporal engine.

    sltnet-export --config-file C [--weights W] --out DIR [--format onnx|trt] [--precision fp32|fp16|int8]
                  [--calib-dataset NAME] [--calib-frames N] [--input-size H W] [--batch B]
                  [--mode sequential|symmetric] [--check-trt]
                  [--dataset NAME | --class-names A,B,...] [KEY VALUE ...]

Writes ``DIR/frame.onnx``, ``DIR/temporal.onnx`` and ``DIR/manifest.json``; with ``--format trt``
also ``DIR/frame.engine`` and ``DIR/temporal.engine`` (TensorRT 10 or 11, strongly typed) and a
timing cache. Without TensorRT or a GPU, ``--format trt`` still writes the ONNX files and the
manifest, then fails with one line (exit status 2). ``--precision`` sets the graphs' own precision
(:mod:`export.precision`): FP16 graphs, or INT8 Q/DQ graphs calibrated on ``--calib-frames`` frames
of ``--calib-dataset``; TensorRT builds them as they are.

The export is written into a new folder beside DIR that replaces DIR once the ONNX files and the
manifest are complete, so an interrupted export leaves the previous one loadable; a DIR holding
anything an export does not write is refused. An SLTnet config with stage-1 weights (no
spatio-temporal head) is refused unless ``--allow-untrained-head``.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from yacs.config import CfgNode

from export.manifest import build_manifest
from export.onnx_export import FRAME_ONNX, TEMPORAL_ONNX, check_exportable, default_input_size, export_onnx
from export.precision import Calibration, convert_engines
from export.tensorrt_build import build_engine, tensorrt_unavailable
from export.trt_check import check_model, default_ops_table, load_ops_table
from sltnet.atomic_io import atomic_folder, check_outputs
from sltnet.cli import ArgumentParser, console_entry
from sltnet.config import load_config
from sltnet.contract import MANIFEST_FILE, Manifest, TensorRTSection, Window
from sltnet.data.catalog import add_catalog_arguments, catalog_from_args, load_dataset
from sltnet.errors import SltnetError
from sltnet.modeling.build import build_model, has_temporal_weights
from sltnet.modeling.sltnet import SLTnet

ENGINE_SUFFIX = ".engine"
DEFAULT_CALIBRATION_FRAMES = 300
TIMING_CACHE = "timing.cache"
#: Everything an export folder may hold.
EXPORT_FILES = {
    MANIFEST_FILE,
    FRAME_ONNX,
    TEMPORAL_ONNX,
    f"frame{ENGINE_SUFFIX}",
    f"temporal{ENGINE_SUFFIX}",
    TIMING_CACHE,
}


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="sltnet-export",
        description="Export a trained SLTnet (or single-frame baseline) as a frame engine and a temporal engine: "
        "ONNX, optionally TensorRT, plus manifest.json.",
    )
    parser.add_argument("--config-file", metavar="FILE", required=True, help="the model's config")
    parser.add_argument("--weights", metavar="W", help="trained weights (default: the config's MODEL.WEIGHTS)")
    parser.add_argument("--out", metavar="DIR", required=True, help="output folder")
    parser.add_argument(
        "--format", choices=("onnx", "trt"), default="onnx", help="onnx, or trt = ONNX + TensorRT engines"
    )
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="frame size the engines take (default: INPUT.MIN_SIZE_TEST x INPUT.MAX_SIZE_TEST)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        metavar="B",
        help="frames per frame-engine run, for the multi-stream runtime (default 1)",
    )
    parser.add_argument(
        "--mode",
        choices=("sequential", "symmetric"),
        help="SLTnet window mode (default: the config's MODEL.SPATIOTEMPORAL.FORWARD_AGGREGATION)",
    )
    parser.add_argument(
        "--check-trt",
        action="store_true",
        help="check both graphs against the TensorRT operator table; list the offending nodes",
    )
    parser.add_argument(
        "--allow-untrained-head",
        action="store_true",
        help="export an SLTnet config with stage-1 weights anyway (its spatio-temporal head stays random)",
    )
    parser.add_argument(
        "--ops-table",
        metavar="TSV",
        help="TensorRT operator table (default: export/tensorrt_onnx_ops.tsv, shipped with the package)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default="fp32",
        help="the graphs' precision: fp32, fp16 (feature tensors and most layers), or int8 (Q/DQ, calibrated)",
    )
    parser.add_argument(
        "--calib-dataset",
        metavar="NAME",
        help="int8: calibrate on frames of this dataset (default: the config's DATASETS.TRAIN[0])",
    )
    parser.add_argument(
        "--calib-frames",
        type=int,
        default=DEFAULT_CALIBRATION_FRAMES,
        metavar="N",
        help=f"int8: calibration frames, whole videos spread over the dataset (default {DEFAULT_CALIBRATION_FRAMES})",
    )
    classes = parser.add_mutually_exclusive_group()
    classes.add_argument(
        "--dataset", metavar="NAME", help="take the class names from this dataset (default: DATASETS.TEST[0])"
    )
    classes.add_argument("--class-names", metavar="A,B,...", help="class names, comma-separated, in class order")
    trt = parser.add_argument_group("TensorRT (--format trt)")
    trt.add_argument(
        "--workspace-mib", type=int, default=4096, metavar="MIB", help="builder workspace limit in MiB (default 4096)"
    )
    trt.add_argument(
        "--timing-cache", metavar="FILE", help=f"timing cache to reuse and update (default DIR/{TIMING_CACHE})"
    )
    add_catalog_arguments(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")
    return parser


def _check_arguments(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SltnetError(f"--out {out}: exists and is not a folder")
    if out.is_dir():
        foreign = sorted(entry.name for entry in out.iterdir() if entry.name not in EXPORT_FILES)
        if foreign:
            raise SltnetError(
                f"--out {out}: holds {', '.join(foreign[:3])}, which no export writes; the folder is replaced "
                "as a whole, so choose a new or an export folder"
            )
    if args.input_size is not None and min(args.input_size) <= 0:
        raise SltnetError(f"--input-size {args.input_size[0]} {args.input_size[1]}: sides must be positive")
    if args.batch < 1:
        raise SltnetError(f"--batch {args.batch}: must be at least 1")
    if args.format != "trt" and args.timing_cache:
        raise SltnetError("--timing-cache applies to --format trt")
    if args.precision != "int8" and (args.calib_dataset is not None or args.calib_frames != DEFAULT_CALIBRATION_FRAMES):
        raise SltnetError("--calib-dataset and --calib-frames apply to --precision int8")
    if args.calib_frames <= 0:
        raise SltnetError(f"--calib-frames {args.calib_frames}: must be positive")
    if args.workspace_mib <= 0:
        raise SltnetError(f"--workspace-mib {args.workspace_mib}: must be positive")


def _check_temporal_weights(args: argparse.Namespace, weights: str) -> None:
    """Refuse (or with --allow-untrained-head, warn about) stage-1 weights for an SLTnet: its
    spatio-temporal head would keep its random initialisation."""
    if not has_temporal_weights(weights):
        problem = f"{weights}: stage-1 weights, without the SLTnet spatio-temporal head (it would be random)"
        if not args.allow_untrained_head:
            raise SltnetError(f"{problem}; export stage-2 weights, or pass --allow-untrained-head")
        print(f"warning: {problem}", file=sys.stderr)


def _load_config(args: argparse.Namespace) -> CfgNode:
    overrides = list(args.opts) + ["MODEL.DEVICE", "cpu"]
    if args.weights:
        overrides += ["MODEL.WEIGHTS", args.weights]
    cfg = load_config(args.config_file, overrides)
    check_outputs(
        {"--config-file": args.config_file, "--weights": cfg.MODEL.WEIGHTS or None, "--ops-table": args.ops_table},
        {},
        {"--out": args.out},
    )
    if args.mode is not None and cfg.MODEL.META_ARCHITECTURE != "SLTnet":
        raise SltnetError(
            f"--mode {args.mode}: only SLTnet configs have a window mode ({args.config_file} is a single-frame model)"
        )
    if not cfg.MODEL.WEIGHTS:
        raise SltnetError(f"{args.config_file}: no weights to export: pass --weights or set MODEL.WEIGHTS")
    return cfg


def _classes(args: argparse.Namespace, cfg: CfgNode) -> tuple[list[str], list[int]]:
    """Class names and dataset category ids, in class order."""
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if args.class_names is not None:
        names = [name.strip() for name in args.class_names.split(",")]
        if len(names) != num_classes or not all(names):
            raise SltnetError(f"--class-names: expected {num_classes} non-empty names, got {len(names)}")
        return names, list(range(1, num_classes + 1))
    name = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    if name is None:
        raise SltnetError("no class names: pass --class-names or --dataset")
    try:
        dataset = load_dataset(name, catalog_from_args(args, cfg.DATASETS.CATALOG))
    except SltnetError as err:
        raise SltnetError(f"class names from dataset '{name}': {err} (or pass --class-names)") from None
    if dataset.num_classes != num_classes:
        raise SltnetError(f"{dataset.json_path}: {dataset.num_classes} classes, the model has {num_classes}")
    return list(dataset.class_names), list(dataset.category_ids)


def _calibration(args: argparse.Namespace, cfg: CfgNode) -> Calibration | None:
    """The calibration frames of an int8 export (None for another precision)."""
    if args.precision != "int8":
        return None
    if args.batch != 1:
        raise SltnetError(f"--precision int8 --batch {args.batch}: int8 exports are calibrated for --batch 1 only")
    name = args.calib_dataset or (cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else None)
    if name is None:
        raise SltnetError("--precision int8: no calibration frames: pass --calib-dataset")
    dataset = load_dataset(name, catalog_from_args(args, cfg.DATASETS.CATALOG))
    return Calibration(name, dataset, args.calib_frames)


def _check_trt(args: argparse.Namespace, out: Path, names: Sequence[str]) -> None:
    table = load_ops_table(args.ops_table or default_ops_table())
    failures = 0
    for name in names:
        problems = check_model(out / name, table)
        for problem in problems:
            print(f"{out / name}: {problem}", flush=True)
        failures += len(problems)
        if not problems:
            print(f"{out / name}: static TensorRT check passed", flush=True)
    if failures:
        raise SltnetError(f"static TensorRT check: {failures} problems in {out} (listed above)")


def _build_tensorrt(args: argparse.Namespace, out: Path, manifest: Manifest) -> None:
    timing_cache = Path(args.timing_cache) if args.timing_cache else out / TIMING_CACHE
    for _, engine in manifest.engines.items():
        onnx_path = out / engine.onnx
        engine_name = Path(engine.onnx).with_suffix(ENGINE_SUFFIX).name
        print(f"building {out / engine_name} ({manifest.precision.precision}, strongly typed)", flush=True)
        shapes = {spec.name: list(spec.shape) for spec in engine.inputs}
        build_engine(
            onnx_path,
            out / engine_name,
            workspace_mib=args.workspace_mib,
            timing_cache=timing_cache,
            input_shapes=shapes,
        )
        engine.tensorrt = engine_name
    import tensorrt

    manifest.tensorrt = TensorRTSection(
        version=tensorrt.__version__,
        workspace_mib=args.workspace_mib,
        device=torch.cuda.get_device_name(),
    )


@console_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_arguments(args)
    cfg = _load_config(args)
    check_exportable(cfg)
    input_size = tuple(args.input_size) if args.input_size else default_input_size(cfg)
    classes, category_ids = _classes(args, cfg)
    calibration = _calibration(args, cfg)
    out = Path(args.out)

    print(
        f"exporting {cfg.MODEL.META_ARCHITECTURE} ({cfg.MODEL.WEIGHTS}) at {input_size[0]}x{input_size[1]} to {out}",
        flush=True,
    )
    model = build_model(cfg)
    if isinstance(model, SLTnet):
        _check_temporal_weights(args, cfg.MODEL.WEIGHTS)
    if args.mode is not None:
        assert isinstance(model, SLTnet)  # _load_config refuses --mode for single-frame configs
        model.window = Window.of_mode(args.mode, model.window.num_frames)
    # The export is written into a new folder that replaces --out once complete: an interrupted
    # export leaves the previous one as it was.
    with atomic_folder(out, carry_over=(TIMING_CACHE,)) as staging:
        engines = export_onnx(model, cfg, staging, input_size, args.batch)
        source = {"config_file": args.config_file, "weights": cfg.MODEL.WEIGHTS}
        manifest = build_manifest(cfg, engines, classes, category_ids, source)
        manifest = convert_engines(staging, manifest, args.precision, calibration)
        manifest.write(staging)
    onnx_names = [engine.onnx for _, engine in manifest.engines.items()]
    print(
        f"wrote {', '.join(onnx_names)} and manifest.json to {out} ({manifest.mode}, {manifest.precision.precision})",
        flush=True,
    )

    if args.check_trt:
        _check_trt(args, out, onnx_names)
    if args.format == "trt":
        reason = tensorrt_unavailable()
        if reason is not None:
            raise SltnetError(f"--format trt: {reason}; the ONNX engines and manifest.json are in {out}")
        _build_tensorrt(args, out, manifest)
        manifest.write(out)
        print(f"wrote TensorRT engines to {out}", flush=True)
    return 0
