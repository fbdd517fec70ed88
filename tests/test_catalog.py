"""Dataset catalog: built-in names, catalog files, command-line specs, data root."""

import argparse
import json
from pathlib import Path

import pytest
import yaml

from sltnet.data.catalog import (
    DatasetCatalog,
    add_catalog_arguments,
    catalog_from_args,
    data_root,
    load_dataset,
    parse_dataset_spec,
)
from sltnet.errors import SltnetError


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("SLTNET_DATA", str(tmp_path))
    return tmp_path


def test_data_root_defaults_to_datasets(monkeypatch):
    monkeypatch.delenv("SLTNET_DATA", raising=False)
    assert data_root() == Path("datasets")


def test_data_root_from_environment(root):
    assert data_root() == root


def test_builtin_names(root):
    catalog = DatasetCatalog()
    for split in ("vid_train_split0", "vid_train_split1", "vid_train_split2", "vid_train_split3", "vid_val"):
        assert catalog.get(split) == (
            str(root / "ILSVRC2015/Data/VID"),
            str(root / f"ILSVRC2015/annotations/{split}.json"),
        )
    assert catalog.get("det_train_subsampled") == (
        str(root / "ILSVRC2015/Data/DET"),
        str(root / "ILSVRC2015/annotations/det_train_subsampled.json"),
    )
    assert catalog.get("synth_tiny_val") == (
        str(root / "synthetic/synth_tiny_val"),
        str(root / "synthetic/annotations/synth_tiny_val.json"),
    )


def test_register_relative_and_absolute_paths(root, tmp_path):
    catalog = DatasetCatalog()
    catalog.register("mine", "frames", "/abs/ann.json")
    assert catalog.get("mine") == (str(root / "frames"), "/abs/ann.json")
    catalog.register("vid_val", "other", "other.json")  # a known name can be redirected
    assert catalog.get("vid_val") == (str(root / "other"), str(root / "other.json"))


def test_unknown_name_suggests_close_names(root):
    with pytest.raises(SltnetError) as err:
        DatasetCatalog().get("vid_trian_split0")
    assert str(err.value).startswith("unknown dataset 'vid_trian_split0'; did you mean 'vid_train_split0'")
    assert str(err.value).endswith("(add names with --dataset-spec NAME=IMAGE_ROOT,JSON or a catalog file)")


def test_unknown_name_without_close_match_lists_names(root):
    with pytest.raises(SltnetError, match=r"^unknown dataset 'zzz'; known: det_train_subsampled, synth_small_train"):
        DatasetCatalog().get("zzz")


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_catalog_file(root, tmp_path, suffix):
    entries = {"mine_train": {"image_root": "mine/frames", "json": "mine/train.json"}}
    path = tmp_path / f"catalog.{suffix}"
    path.write_text(json.dumps(entries) if suffix == "json" else yaml.safe_dump(entries))
    catalog = DatasetCatalog()
    catalog.register_file(str(path))
    assert catalog.get("mine_train") == (str(root / "mine/frames"), str(root / "mine/train.json"))
    assert "vid_val" in catalog


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: [1, 2\n", "not valid YAML or JSON"),
        ("- a\n- b\n", "expected a mapping of dataset names to {image_root, json}"),
        ("mine: frames\n", "dataset 'mine': expected a mapping with 'image_root' and 'json'"),
        ("mine:\n  image_root: frames\n", "dataset 'mine': missing or empty 'json'"),
        (
            "mine:\n  image_root: frames\n  json: a.json\n  jsn: b.json\n",
            "dataset 'mine': unknown key 'jsn' (expected image_root, json)",
        ),
    ],
)
def test_bad_catalog_file(tmp_path, text, message):
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    with pytest.raises(SltnetError) as err:
        DatasetCatalog().register_file(str(path))
    assert str(err.value).startswith(f"{path}: {message}")
    assert "\n" not in str(err.value)


def test_missing_catalog_file(tmp_path):
    with pytest.raises(SltnetError) as err:
        DatasetCatalog().register_file(str(tmp_path / "nope.yaml"))
    assert str(err.value) == f"{tmp_path / 'nope.yaml'}: catalog file not found"


def test_dataset_spec():
    assert parse_dataset_spec("x=frames,ann/x.json") == ("x", "frames", "ann/x.json")


@pytest.mark.parametrize("spec", ["x", "x=frames", "=frames,a.json", "x=,a.json", "x=frames,"])
def test_bad_dataset_spec(spec):
    with pytest.raises(SltnetError) as err:
        parse_dataset_spec(spec)
    assert str(err.value) == f"--dataset-spec '{spec}': expected NAME=IMAGE_ROOT,JSON"


def test_command_line_goes_over_config_file(root, tmp_path):
    cfg_file = tmp_path / "cfg_catalog.yaml"
    cfg_file.write_text("a:\n  image_root: cfg\n  json: cfg.json\nb:\n  image_root: cfg\n  json: cfg.json\n")
    cli_file = tmp_path / "cli_catalog.yaml"
    cli_file.write_text("b:\n  image_root: cli\n  json: cli.json\nc:\n  image_root: cli\n  json: cli.json\n")
    parser = argparse.ArgumentParser()
    add_catalog_arguments(parser)
    args = parser.parse_args(["--catalog", str(cli_file), "--dataset-spec", "c=spec,spec.json"])
    catalog = catalog_from_args(args, str(cfg_file))
    assert catalog.get("a")[0] == str(root / "cfg")
    assert catalog.get("b")[0] == str(root / "cli")
    assert catalog.get("c")[0] == str(root / "spec")


def test_load_dataset(root):
    (root / "frames").mkdir()
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 6}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2], "id_track": 0}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (root / "a.json").write_text(json.dumps(data))
    catalog = DatasetCatalog()
    catalog.register("tiny", "frames", "a.json")
    dataset = load_dataset("tiny", catalog)
    assert dataset.image_root == str(root / "frames")
    assert dataset.class_names == ["thing"]
    assert len(dataset) == 1
