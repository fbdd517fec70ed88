"""``sltnet-train``: train the single-frame baseline (stage 1) or SLTnet (stage 2).

One process::

    sltnet-train --config-file configs/synthetic/small_baseline.yaml

Several (one per GPU, or gloo processes on a CPU)::

    torchrun --nproc_per_node 4 -m sltnet.train --config-file C.yaml MODEL.DEVICE cuda
"""

import argparse
import sys
from collections.abc import Sequence

from sltnet.cli import ArgumentParser, console_entry

# The rest (torch among it: seconds) is imported inside ``main``, under console_entry's signal
# handling, so that Ctrl-C or SIGTERM while it loads ends with ``error: interrupted`` too.


def build_parser() -> argparse.ArgumentParser:
    from sltnet.data.catalog import add_catalog_arguments

    parser = ArgumentParser(
        prog="sltnet-train",
        description=(
            "Train the single-frame baseline (MODEL.META_ARCHITECTURE GeneralizedRCNN) or SLTnet's "
            "spatio-temporal head (SLTnet, on the baseline's MODEL.WEIGHTS). Outputs go to OUTPUT_DIR."
        ),
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="YAML config (may name a _BASE_)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUTPUT_DIR")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation on DATASETS.TEST at the end")
    parser.add_argument(
        "--log-period", type=int, default=20, metavar="N", help="iterations between metrics.jsonl records (default 20)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_catalog_arguments(parser)
    parser.add_argument(
        "opts", nargs="*", metavar="KEY VALUE", help="config overrides, e.g. SOLVER.MAX_ITER 100 (anywhere on the line)"
    )
    return parser


@console_entry
def main(argv: Sequence[str] | None = None) -> int:
    from sltnet.config import load_config
    from sltnet.data.catalog import catalog_from_args
    from sltnet.engine.distributed import shutdown_distributed
    from sltnet.engine.trainer import train

    args = build_parser().parse_intermixed_args(argv)
    cfg = load_config(args.config_file, args.opts)
    catalog = catalog_from_args(args, cfg.DATASETS.CATALOG)
    try:
        train(
            cfg,
            catalog,
            resume=args.resume,
            log_period=args.log_period,
            run_evaluation=not args.no_eval,
            progress=not args.no_progress,
        )
    finally:
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
