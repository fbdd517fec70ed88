"""Named datasets: each name maps to an image root and an ST-COCO JSON file.

Relative paths are relative to the data root, ``$SLTNET_DATA`` (default ``./datasets``), so the
same names work on every machine. Names come from, in order of precedence (later wins):
the built-in names, a catalog file from the config (``DATASETS.CATALOG``), ``--catalog FILE`` and
``--dataset-spec NAME=IMAGE_ROOT,JSON`` on the command line.

A catalog file is YAML or JSON::

    my_videos_train:
      image_root: my_videos/frames
      json: my_videos/annotations/train.json
"""

import argparse
import difflib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from sltnet.data.records import StCocoDataset
from sltnet.data.stcoco import load_stcoco
from sltnet.errors import SltnetError

DATA_ROOT_ENV = "SLTNET_DATA"
DEFAULT_DATA_ROOT = "./datasets"


def data_root() -> Path:
    """The folder relative dataset paths start from: ``$SLTNET_DATA``, or ``./datasets``."""
    return Path(os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT).expanduser()


@dataclass(frozen=True)
class DatasetPaths:
    """Where a named dataset lives; relative paths are relative to the data root."""

    image_root: str
    json: str


def _builtin_datasets() -> dict[str, DatasetPaths]:
    datasets = {}
    for name in ("synth_tiny_train", "synth_tiny_val", "synth_small_train", "synth_small_val"):
        datasets[name] = DatasetPaths(f"synthetic/{name}", f"synthetic/annotations/{name}.json")
    for name in ("vid_train_split0", "vid_train_split1", "vid_train_split2", "vid_train_split3", "vid_val"):
        datasets[name] = DatasetPaths("ILSVRC2015/Data/VID", f"ILSVRC2015/annotations/{name}.json")
    datasets["det_train_subsampled"] = DatasetPaths(
        "ILSVRC2015/Data/DET", "ILSVRC2015/annotations/det_train_subsampled.json"
    )
    return datasets


class DatasetCatalog:
    """Dataset names → (image root, JSON), starting from the built-in names.

    Args:
        root: folder relative paths are resolved against; default :func:`data_root` at the time
            of each lookup.
    """

    def __init__(self, root: Path | None = None) -> None:
        self._root = root
        self._datasets: dict[str, DatasetPaths] = _builtin_datasets()

    @property
    def root(self) -> Path:
        return self._root if self._root is not None else data_root()

    def names(self) -> list[str]:
        return sorted(self._datasets)

    def __contains__(self, name: str) -> bool:
        return name in self._datasets

    def register(self, name: str, image_root: str, json: str) -> None:
        """Add a dataset, or replace the paths of a known name."""
        if not name:
            raise SltnetError("dataset name must not be empty")
        self._datasets[name] = DatasetPaths(str(image_root), str(json))

    def register_file(self, path: str) -> None:
        """Register every dataset of a YAML or JSON catalog file (``name: {image_root, json}``)."""
        if not os.path.isfile(path):
            raise SltnetError(f"{path}: catalog file not found")
        try:
            with open(path, encoding="utf-8") as f:
                entries = yaml.safe_load(f)  # YAML is a superset of JSON: one parser for both
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            reason = " ".join(str(err).split())
            raise SltnetError(f"{path}: not valid YAML or JSON ({reason})") from None
        if entries is None:
            return
        if not isinstance(entries, dict):
            raise SltnetError(f"{path}: expected a mapping of dataset names to {{image_root, json}}")
        for name, entry in entries.items():
            if not isinstance(entry, dict):
                raise SltnetError(f"{path}: dataset '{name}': expected a mapping with 'image_root' and 'json'")
            missing = [key for key in ("image_root", "json") if not isinstance(entry.get(key), str) or not entry[key]]
            if missing:
                raise SltnetError(f"{path}: dataset '{name}': missing or empty '{missing[0]}'")
            unknown = sorted(set(entry) - {"image_root", "json"})
            if unknown:
                raise SltnetError(f"{path}: dataset '{name}': unknown key '{unknown[0]}' (expected image_root, json)")
            self.register(str(name), entry["image_root"], entry["json"])

    def get(self, name: str) -> tuple[str, str]:
        """``(image_root, json_path)`` of a dataset, with relative paths resolved against the root.

        Raises:
            SltnetError: for an unknown name, suggesting close names.
        """
        if name not in self._datasets:
            close = difflib.get_close_matches(name, self.names(), n=3)
            if close:
                hint = f"did you mean {' or '.join(repr(c) for c in close)}?"
            else:
                hint = f"known: {', '.join(self.names())}"
            raise SltnetError(
                f"unknown dataset '{name}'; {hint} "
                "(add names with --dataset-spec NAME=IMAGE_ROOT,JSON or a catalog file)"
            )
        paths = self._datasets[name]
        return str(self.root / paths.image_root), str(self.root / paths.json)


def parse_dataset_spec(spec: str) -> tuple[str, str, str]:
    """Split ``NAME=IMAGE_ROOT,JSON`` into its three parts."""
    name, _, paths = spec.partition("=")
    image_root, _, json_path = paths.rpartition(",")
    if not name or not image_root or not json_path:
        raise SltnetError(f"--dataset-spec '{spec}': expected NAME=IMAGE_ROOT,JSON")
    return name, image_root, json_path


def add_catalog_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--catalog FILE`` and the repeatable ``--dataset-spec NAME=IMAGE_ROOT,JSON``."""
    parser.add_argument(
        "--catalog",
        metavar="FILE",
        help="YAML/JSON file of extra datasets (name: {image_root, json}); relative paths start at $SLTNET_DATA",
    )
    parser.add_argument(
        "--dataset-spec",
        metavar="NAME=IMAGE_ROOT,JSON",
        action="append",
        default=[],
        help="register a dataset (repeatable); relative paths start at $SLTNET_DATA",
    )


def build_catalog(catalog_files: Iterable[str] = (), dataset_specs: Iterable[str] = ()) -> DatasetCatalog:
    """Built-in names, then each catalog file, then each ``NAME=IMAGE_ROOT,JSON`` spec."""
    catalog = DatasetCatalog()
    for path in catalog_files:
        catalog.register_file(path)
    for spec in dataset_specs:
        catalog.register(*parse_dataset_spec(spec))
    return catalog


def catalog_from_args(args: argparse.Namespace, cfg_catalog_file: str = "") -> DatasetCatalog:
    """The catalog for a tool that called :func:`add_catalog_arguments`.

    Args:
        args: the parsed arguments.
        cfg_catalog_file: the config's ``DATASETS.CATALOG`` ("" for none); ``--catalog`` goes over it.
    """
    files = [path for path in (cfg_catalog_file, args.catalog) if path]
    return build_catalog(files, args.dataset_spec)


def load_dataset(name: str, catalog: DatasetCatalog | None = None, check_images: bool = False) -> StCocoDataset:
    """Load and validate a named dataset (built-in catalog when ``catalog`` is None)."""
    image_root, json_path = (catalog or DatasetCatalog()).get(name)
    return load_stcoco(json_path, image_root, check_images=check_images)
