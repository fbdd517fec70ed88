"""Importing detectron2 / original SLTnet checkpoints and configs, and preprocessing parity."""

import json
import pickle
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from export.cli import main as export_main
from runtime.cli import main as run_main
from sltnet.config import load_config
from sltnet.config.loader import ConfigWarning
from sltnet.d2_import.checkpoint import convert_d2_state, d2_to_sltnet, read_d2_checkpoint, sltnet_to_d2
from sltnet.d2_import.config import load_detectron2_config
from sltnet.data.transforms import ImagePreprocessor, pad_to_divisible, resized_shape
from sltnet.errors import SltnetError
from sltnet.modeling.build import build_model
from sltnet.modeling.streaming import StreamingDetector
from sltnet.tools.convert import main as convert_main

TINY_SLTNET = "configs/synthetic/tiny_sltnet.yaml"

# detectron2's configs/Base-RCNN-FPN.yaml, as the original SLTnet configs build on it (tuples written
# as text, the way detectron2 files write them).
D2_BASE_RCNN_FPN = """
MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  BACKBONE:
    NAME: "build_resnet_fpn_backbone"
  RESNETS:
    OUT_FEATURES: ["res2", "res3", "res4", "res5"]
  FPN:
    IN_FEATURES: ["res2", "res3", "res4", "res5"]
  ANCHOR_GENERATOR:
    SIZES: [[32], [64], [128], [256], [512]]
    ASPECT_RATIOS: [[0.5, 1.0, 2.0]]
  RPN:
    IN_FEATURES: ["p2", "p3", "p4", "p5", "p6"]
    PRE_NMS_TOPK_TRAIN: 2000
    PRE_NMS_TOPK_TEST: 1000
    POST_NMS_TOPK_TRAIN: 1000
    POST_NMS_TOPK_TEST: 1000
  ROI_HEADS:
    NAME: "StandardROIHeads"
    IN_FEATURES: ["p2", "p3", "p4", "p5"]
  ROI_BOX_HEAD:
    NAME: "FastRCNNConvFCHead"
    NUM_FC: 2
    POOLER_RESOLUTION: 7
  ROI_MASK_HEAD:
    NAME: "MaskRCNNConvUpsampleHead"
    NUM_CONV: 4
    POOLER_RESOLUTION: 14
DATASETS:
  TRAIN: ("coco_2017_train",)
  TEST: ("coco_2017_val",)
SOLVER:
  IMS_PER_BATCH: 16
  BASE_LR: 0.02
  STEPS: (60000, 80000)
  MAX_ITER: 90000
INPUT:
  MIN_SIZE_TRAIN: (640, 672, 704, 736, 768, 800)
VERSION: 2
"""

# An original SLTnet stage-2 config (ResNet-50 FPN, sequential, long-term attention), in its keys.
D2_SLTNET_R50 = """
_BASE_: "Base-RCNN-FPN.yaml"
MODEL:
  META_ARCHITECTURE: "GeneralizedST_RCNN"
  WEIGHTS: "/models/baseline/model_final.pth"
  MASK_ON: False
  RESNETS:
    DEPTH: 50
  ROI_HEADS:
    NAME: "StROIHeads"
    NUM_CLASSES: 30
  SPATIOTEMPORAL:
    NUM_FRAMES: 3
    FORWARD_AGGREGATION: False
    ST_CLS: True
    SPATIAL_CLS: True
    FREEZE_BACKBONE: True
    FREEZE_PROPOSAL_GENERATOR: True
    FREEZE_SPATIAL_HEAD: True
    LONG_TERM: True
    NUM_KEYFRAMES: 3
    KEYFRAME_INTERVAL: 10
    ROI_BOX_HEAD:
      NAME: "AttentionFCHead"
      REF_POST_NMS_TOP_N: 75
      RDN_RATIO: 0.2
      ATTENTION:
        ADVANCED_STAGE: 0
  TUBELET_AGGREGATION_HEAD:
    NAME: "MaxPoolAggregationHead"
DATASETS:
  TRAIN: ("vid_train_split0",)
  TEST: ("vid_val",)
INPUT:
  MIN_SIZE_TRAIN: (600,)
  MAX_SIZE_TRAIN: 1000
  MIN_SIZE_TEST: 600
  MAX_SIZE_TEST: 1000
  RANDOM_FLIP: True
DATALOADER:
  TRAIN_SUBSAMPLING: True
"""

# The tiny synthetic SLTnet (configs/synthetic/tiny_sltnet.yaml) written as an original SLTnet config.
D2_SLTNET_TINY = """
_BASE_: "Base-RCNN-FPN.yaml"
MODEL:
  META_ARCHITECTURE: "GeneralizedST_RCNN"
  PIXEL_STD: [57.375, 57.120, 58.395]
  BACKBONE:
    FREEZE_AT: 0
  RESNETS:
    DEPTH: 18
    RES2_OUT_CHANNELS: 64
  FPN:
    OUT_CHANNELS: 32
  ANCHOR_GENERATOR:
    SIZES: [[8], [16], [32], [64], [128]]
  RPN:
    BATCH_SIZE_PER_IMAGE: 64
    PRE_NMS_TOPK_TRAIN: 200
    PRE_NMS_TOPK_TEST: 200
    POST_NMS_TOPK_TRAIN: 100
    POST_NMS_TOPK_TEST: 50
  ROI_HEADS:
    NAME: "StROIHeads"
    NUM_CLASSES: 4
    BATCH_SIZE_PER_IMAGE: 32
  ROI_BOX_HEAD:
    FC_DIM: 64
  SPATIOTEMPORAL:
    NUM_FRAMES: 3
    LONG_TERM: True
    NUM_KEYFRAMES: 2
    KEYFRAME_INTERVAL: 3
    ROI_BOX_HEAD:
      NAME: "AttentionFCHead"
      REF_POST_NMS_TOP_N: 16
  TUBELET_AGGREGATION_HEAD:
    NAME: "MaxPoolAggregationHead"
INPUT:
  MIN_SIZE_TRAIN: (128,)
  MAX_SIZE_TRAIN: 128
  MIN_SIZE_TEST: 128
  MAX_SIZE_TEST: 128
TEST:
  DETECTIONS_PER_IMAGE: 50
SOLVER:
  LR_SCHEDULER_NAME: "WarmupMultiStepLR"
"""

BN = ("weight", "bias", "running_mean", "running_var")
D2_PIXEL_MEAN = [103.530, 116.280, 123.675]  # detectron2's default, BGR


def write_configs(folder: Path, main: str, name: str = "sltnet.yaml") -> str:
    (folder / "Base-RCNN-FPN.yaml").write_text(D2_BASE_RCNN_FPN)
    (folder / name).write_text(main)
    return str(folder / name)


def tiny_model(**overrides) -> tuple[torch.nn.Module, object]:
    """The tiny synthetic SLTnet with random weights that give detections above 0.05."""
    options = ["MODEL.WEIGHTS", ""] + [item for pair in overrides.items() for item in pair]
    cfg = load_config(TINY_SLTNET, options)
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(6)
        model.st_cls_predictor.cls_score.weight.mul_(6)
    return model, cfg


def frames(count: int = 4, size: tuple[int, int] = (128, 128)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (count, 3, *size), dtype=torch.uint8, generator=generator)


def stream(detector: StreamingDetector, video: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    results = []
    with torch.no_grad():
        for frame in video:
            results += detector.push(frame)
        results += detector.flush()
    return [(r.boxes, r.scores, r.classes) for r in results]


def assert_same_detections(expected: list[tuple[torch.Tensor, ...]], actual: list[tuple[torch.Tensor, ...]]) -> None:
    assert sum(len(scores) for _, scores, _ in expected) > 0
    assert len(actual) == len(expected)
    for mine, theirs in zip(expected, actual, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(mine, theirs, strict=True))


def save_d2_checkpoint(path: Path, state: dict[str, torch.Tensor]) -> None:
    """A detectron2 ``model_final.pth``: the model plus training entries."""
    torch.save({"model": state, "iteration": 89999, "optimizer": {"state": {}, "param_groups": []}}, path)


def convert(argv: list[str], capsys) -> tuple[int, str, str]:
    status = convert_main(["d2-checkpoint", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# ------------------------------------------------------------------------------------------------
# Name map
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("long_term", ["true", "false"])
def test_our_names_to_detectron2_and_back_is_the_identity_with_equal_outputs(long_term):
    model, cfg = tiny_model(**{"MODEL.SPATIOTEMPORAL.LONG_TERM": long_term})
    state = model.state_dict()
    d2_state, unmapped = sltnet_to_d2(state)
    assert unmapped == []
    back, unmapped = d2_to_sltnet(d2_state)
    assert unmapped == []
    assert list(back) == list(state) and all(back[name] is state[name] for name in state)

    torch.manual_seed(1)
    reloaded = build_model(cfg)
    reloaded.load_state_dict(back)
    video = frames(3)
    expected = stream(StreamingDetector.from_config(model, cfg), video)
    actual = stream(StreamingDetector.from_config(reloaded, cfg), video)
    assert_same_detections(expected, actual)


def test_detectron2_names_of_the_two_st_heads():
    attention, _ = tiny_model()
    plain, _ = tiny_model(**{"MODEL.SPATIOTEMPORAL.LONG_TERM": "false"})
    attention_names = set(sltnet_to_d2(attention.state_dict())[0])
    plain_names = set(sltnet_to_d2(plain.state_dict())[0])
    assert {"roi_heads.st_box_head.fcs.0.weight", "roi_heads.st_box_head.Wvs.1.bias"} <= attention_names
    assert {"roi_heads.st_box_head.fc1.weight", "roi_heads.st_box_head.fc2.bias"} <= plain_names
    assert not any(".fcs." in name for name in plain_names)
    common = {
        "backbone.bottom_up.stem.conv1.norm.running_var",
        "backbone.bottom_up.res3.0.shortcut.norm.weight",
        "backbone.bottom_up.res2.1.conv2.norm.bias",
        "backbone.fpn_lateral2.weight",
        "backbone.fpn_output5.bias",
        "proposal_generator.rpn_head.anchor_deltas.weight",
        "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.st_cls_predictor.cls_score.bias",
    }
    assert common <= attention_names and common <= plain_names


def detectron2_r50_fpn_sltnet_state(num_classes: int = 30) -> dict[str, torch.Tensor]:
    """Every state-dict entry detectron2 gives an R50-FPN Faster R-CNN, plus the original SLTnet's
    attention head and classifier, written from detectron2's layer naming. Weights are meta tensors
    (shapes only); the input statistics and the anchors of old checkpoints are real entries."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_with_norm(name: str, out_channels: int, in_channels: int, kernel: int) -> None:
        shapes[f"{name}.weight"] = (out_channels, in_channels, kernel, kernel)
        shapes.update({f"{name}.norm.{field}": (out_channels,) for field in BN})

    def layer(name: str, *weight_shape: int) -> None:
        shapes[f"{name}.weight"] = weight_shape
        shapes[f"{name}.bias"] = (weight_shape[0],)

    conv_with_norm("backbone.bottom_up.stem.conv1", 64, 3, 7)
    in_channels = 64
    for stage, num_blocks in zip((2, 3, 4, 5), (3, 4, 6, 3), strict=True):
        width = 64 * 2 ** (stage - 2)
        out_channels = 4 * width
        for block in range(num_blocks):
            prefix = f"backbone.bottom_up.res{stage}.{block}"
            if block == 0:
                conv_with_norm(f"{prefix}.shortcut", out_channels, in_channels, 1)
            conv_with_norm(f"{prefix}.conv1", width, in_channels, 1)
            conv_with_norm(f"{prefix}.conv2", width, width, 3)
            conv_with_norm(f"{prefix}.conv3", out_channels, width, 1)
            in_channels = out_channels
        layer(f"backbone.fpn_lateral{stage}", 256, out_channels, 1, 1)
        layer(f"backbone.fpn_output{stage}", 256, 256, 3, 3)
    layer("proposal_generator.rpn_head.conv", 256, 256, 3, 3)
    layer("proposal_generator.rpn_head.objectness_logits", 3, 256, 1, 1)
    layer("proposal_generator.rpn_head.anchor_deltas", 12, 256, 1, 1)
    layer("roi_heads.box_head.fc1", 1024, 256 * 7 * 7)
    layer("roi_heads.box_head.fc2", 1024, 1024)
    layer("roi_heads.box_predictor.cls_score", num_classes + 1, 1024)
    layer("roi_heads.box_predictor.bbox_pred", 4 * num_classes, 1024)
    layer("roi_heads.st_box_head.fcs.0", 1024, 256 * 7 * 7)
    layer("roi_heads.st_box_head.fcs.1", 1024, 1024)
    for stage in range(2):
        layer(f"roi_heads.st_box_head.Wgs.{stage}", 16, 64, 1, 1)
        layer(f"roi_heads.st_box_head.Wqs.{stage}", 1024, 1024)
        layer(f"roi_heads.st_box_head.Wks.{stage}", 1024, 1024)
        layer(f"roi_heads.st_box_head.Wvs.{stage}", 1024, 1024, 1, 1)  # 16 groups of 1024 channels
    layer("roi_heads.st_cls_predictor.cls_score", num_classes + 1, 1024)
    state = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    state["pixel_mean"] = torch.tensor([103.530, 116.280, 123.675]).view(3, 1, 1)
    state["pixel_std"] = torch.tensor([1.0, 1.0, 1.0]).view(3, 1, 1)
    state.update({f"proposal_generator.anchor_generator.cell_anchors.{i}": torch.zeros(3, 4) for i in range(5)})
    return state


def test_a_full_detectron2_r50_fpn_sltnet_state_converts_without_unmapped_or_missing_keys(tmp_path):
    d2_state = detectron2_r50_fpn_sltnet_state()
    with pytest.warns(ConfigWarning):
        cfg = load_detectron2_config(write_configs(tmp_path, D2_SLTNET_R50))
    conversion = convert_d2_state(d2_state, cfg)
    assert conversion.problems == [] and conversion.notes == []
    assert len(conversion.state) == len(d2_state) - 7  # pixel_mean, pixel_std, 5 cell anchors
    assert conversion.state["backbone.fpn.inner_blocks.3.0.weight"].shape == (256, 2048, 1, 1)
    # Names alone (no config): every name maps too.
    assert convert_d2_state(d2_state).problems == []


def test_input_statistics_stored_in_the_checkpoint_must_match_the_config(tmp_path):
    d2_state = detectron2_r50_fpn_sltnet_state()
    d2_state["pixel_std"] = torch.tensor([57.375, 57.120, 58.395]).view(3, 1, 1)
    with pytest.warns(ConfigWarning):
        cfg = load_detectron2_config(write_configs(tmp_path, D2_SLTNET_R50))
    assert convert_d2_state(d2_state, cfg).problems == [
        "pixel_std [57.375, 57.12, 58.395] in the checkpoint, MODEL.PIXEL_STD [1.0, 1.0, 1.0] in the config"
    ]


def test_location_free_leaves_out_the_unused_geometry_weights_of_the_original(tmp_path):
    """The original builds W_G also when LOCATION_FREE does not use it; this model has none."""
    text = D2_SLTNET_R50.replace("ADVANCED_STAGE: 0", "ADVANCED_STAGE: 0\n        LOCATION_FREE: True")
    with pytest.warns(ConfigWarning):
        cfg = load_detectron2_config(write_configs(tmp_path, text))
    conversion = convert_d2_state(detectron2_r50_fpn_sltnet_state(), cfg)
    assert conversion.problems == []
    assert len(conversion.notes) == 4 and conversion.notes[0] == (
        "st_box_head.Wgs.0.weight (detectron2 roi_heads.st_box_head.Wgs.0.weight): unused with LOCATION_FREE, left out"
    )


# ------------------------------------------------------------------------------------------------
# Checkpoint files and the command line
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_d2(tmp_path_factory):
    """The tiny SLTnet as a detectron2 ``model_final.pth`` plus its original-style config."""
    folder = tmp_path_factory.mktemp("d2")
    model, cfg = tiny_model()
    d2_state, _ = sltnet_to_d2(model.state_dict())
    save_d2_checkpoint(folder / "model_final.pth", d2_state)
    return {
        "model": model,
        "cfg": cfg,
        "d2_state": d2_state,
        "checkpoint": folder / "model_final.pth",
        "config": write_configs(folder, D2_SLTNET_TINY),
    }


def test_pkl_model_zoo_file_reads_as_tensors(tmp_path, tiny_d2):
    arrays = {name: tensor.numpy() for name, tensor in tiny_d2["d2_state"].items()}
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as stream:
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, stream, protocol=2)
    state = read_d2_checkpoint(path)
    assert list(state) == list(tiny_d2["d2_state"])
    assert all(torch.equal(state[name], tensor) for name, tensor in tiny_d2["d2_state"].items())


def test_pkl_with_other_objects_is_refused_without_allow_pickle(tmp_path):
    path = tmp_path / "odd.pkl"
    with open(path, "wb") as stream:
        pickle.dump({"model": {"backbone.x": Fraction(1, 3)}, "__author__": "someone"}, stream)
    with pytest.raises(SltnetError) as info:
        read_d2_checkpoint(path)
    assert str(info.value) == (
        f"{path}: holds Python objects other than tensors and arrays (fractions.Fraction); "
        "if the file comes from a source you trust, pass --allow-pickle"
    )
    with pytest.raises(SltnetError, match=r"model entry backbone.x is a Fraction, not a tensor or array$"):
        read_d2_checkpoint(path, allow_pickle=True)


def test_pth_with_python_objects_loads_only_with_allow_pickle(tmp_path, tiny_d2, capsys):
    path = tmp_path / "model_final.pth"
    torch.save({"model": tiny_d2["d2_state"], "scheduler": Fraction(1, 3)}, path)
    status, _, err = convert([str(path), str(tmp_path / "out.pt")], capsys)
    assert status == 2
    assert err.splitlines() == [
        (
            f"error: {path}: holds Python objects other than tensors and arrays (fractions.Fraction); "
            "if the file comes from a source you trust, pass --allow-pickle"
        )
    ]
    assert not (tmp_path / "out.pt").exists()
    status, _, _ = convert([str(path), str(tmp_path / "out.pt"), "--allow-pickle"], capsys)
    assert status == 0 and (tmp_path / "out.pt").is_file()


def test_a_corrupt_checkpoint_is_a_one_line_error(tmp_path):
    path = tmp_path / "model_final.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(SltnetError) as info:
        read_d2_checkpoint(path)
    assert str(info.value).startswith(f"{path}: not a readable checkpoint (") and "\n" not in str(info.value)


def test_caffe2_model_zoo_names_are_refused(tmp_path):
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as stream:
        pickle.dump({"blobs": {"res2_0_branch2a_w": np.zeros((64, 64, 1, 1), np.float32)}}, stream)
    with pytest.raises(SltnetError, match=r"Caffe2/Detectron1 names .* only detectron2-named checkpoints"):
        read_d2_checkpoint(path)


def test_checkpoint_with_module_prefix_and_old_frozen_bn(tmp_path, tiny_d2, capsys):
    state = {
        f"module.{name}": tensor
        for name, tensor in tiny_d2["d2_state"].items()
        if not name.startswith("backbone.bottom_up.stem.conv1.norm.running_")
    }
    save_d2_checkpoint(tmp_path / "model_final.pth", state)
    argv = [str(tmp_path / "model_final.pth"), str(tmp_path / "w.pt"), "--sltnet-config", TINY_SLTNET]
    status, out, err = convert(argv, capsys)
    assert status == 0, err
    assert "note: backbone.bottom_up.stem.bn1: no running statistics, set to mean 0 / variance 1" in out
    weights = torch.load(tmp_path / "w.pt", weights_only=True)["model"]
    assert torch.equal(weights["backbone.bottom_up.stem.bn1.running_var"], torch.ones(64))
    name = "backbone.bottom_up.res2.0.bn1.weight"
    assert torch.equal(weights[name], tiny_d2["model"].state_dict()[name])


def test_wrong_shape_and_unknown_key_fail_naming_each_key(tmp_path, tiny_d2, capsys):
    state = dict(tiny_d2["d2_state"])
    state["backbone.bottom_up.res3.0.conv1.norm.weight"] = torch.zeros(7)
    state["roi_heads.mask_head.mask_fcn1.weight"] = torch.zeros(3)
    del state["proposal_generator.rpn_head.conv.bias"]
    save_d2_checkpoint(tmp_path / "bad.pth", state)
    out = tmp_path / "out.pt"
    status, _, err = convert([str(tmp_path / "bad.pth"), str(out), "--config-file", tiny_d2["config"]], capsys)
    lines = err.splitlines()
    assert status == 2 and not out.exists()
    assert lines[0].startswith("warning: ") and len(lines) == 2
    assert lines[1] == (
        f"error: {tmp_path / 'bad.pth'}: 3 problems (nothing written; --no-strict writes the rest): "
        "unmapped detectron2 key roi_heads.mask_head.mask_fcn1.weight; "
        "backbone.bottom_up.res3.0.bn1.weight (detectron2 backbone.bottom_up.res3.0.conv1.norm.weight): "
        "shape (7,) in the checkpoint, (128,) in the model; "
        "missing rpn.head.conv.bias (detectron2 proposal_generator.rpn_head.conv.bias)"
    )


def test_no_strict_writes_what_fits_and_warns_about_the_rest(tmp_path, tiny_d2, capsys):
    state = dict(tiny_d2["d2_state"])
    state["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(6, 64)
    save_d2_checkpoint(tmp_path / "bad.pth", state)
    argv = [str(tmp_path / "bad.pth"), str(tmp_path / "out.pt"), "--sltnet-config", TINY_SLTNET, "--no-strict"]
    status, _, err = convert(argv, capsys)
    assert status == 0
    assert err.splitlines() == [
        (
            f"warning: {tmp_path / 'bad.pth'}: 1 problem, left out: roi_heads.box_predictor.cls_score.weight: "
            "shape (6, 64) in the checkpoint, (5, 64) in the model"
        )
    ]
    weights = torch.load(tmp_path / "out.pt", weights_only=True)["model"]
    assert "roi_heads.box_predictor.cls_score.weight" not in weights
    assert len(weights) == len(state) - 1


def test_names_only_check_without_a_config(tmp_path, tiny_d2, capsys):
    state = dict(tiny_d2["d2_state"], **{"roi_heads.keypoint_head.x.weight": torch.zeros(1)})
    save_d2_checkpoint(tmp_path / "extra.pth", state)
    status, _, err = convert([str(tmp_path / "extra.pth"), str(tmp_path / "out.pt")], capsys)
    assert status == 2
    assert err.strip().endswith(
        "1 problem (nothing written; --no-strict writes the rest): "
        "unmapped detectron2 key roi_heads.keypoint_head.x.weight"
    )
    status, out, _ = convert([str(tiny_d2["checkpoint"]), str(tmp_path / "out.pt")], capsys)
    assert status == 0
    assert out.splitlines() == [
        f"wrote {tmp_path / 'out.pt'}: 152 tensors (ResNet-18, 4 classes, ST head with attention (2 stages))"
    ]
    assert set(torch.load(tmp_path / "out.pt", weights_only=True)) == {"model"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["missing.pth", "out.pt"], "missing.pth: checkpoint not found"),
        (
            ["model_final.pth", "out.pt", "--config-out", "c.yaml"],
            "--config-out needs --config-file or --sltnet-config",
        ),
        (["model_final.pth", "."], "OUT .: is a folder, expected a file name"),
    ],
)
def test_command_line_mistakes_are_one_line_errors(tmp_path, tiny_d2, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tiny_d2["checkpoint"].parent)
    status, _, err = convert(argv, capsys)
    assert status == 2 and err.splitlines() == [f"error: {message}"]
    assert not Path("out.pt").exists()


# ------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------


def test_original_config_loads_translated_with_one_warning(tmp_path):
    with pytest.warns(ConfigWarning) as caught:
        cfg = load_detectron2_config(write_configs(tmp_path, D2_SLTNET_R50))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith(f"{tmp_path / 'sltnet.yaml'}: ignored 5 config keys this implementation does not have: ")
    assert set(message.split(": ")[-1].split(", ")) == {
        "MODEL.ROI_MASK_HEAD.NAME",
        "MODEL.ROI_MASK_HEAD.NUM_CONV",
        "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION",
        "MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.RDN_RATIO",
        "DATALOADER.TRAIN_SUBSAMPLING",
    }
    st = cfg.MODEL.SPATIOTEMPORAL
    assert cfg.MODEL.META_ARCHITECTURE == "SLTnet" and st.LONG_TERM and st.AGGREGATION == "max" and st.DOUBLE_HEAD
    assert (st.NUM_FRAMES, st.NUM_KEYFRAMES, st.KEYFRAME_INTERVAL) == (3, 3, 10)
    assert cfg.INPUT.RANDOM_FLIP == "horizontal" and cfg.INPUT.MIN_SIZE_TRAIN == (600,)
    assert cfg.DATASETS.TRAIN == ("vid_train_split0",) and cfg.SOLVER.STEPS == (60000, 80000)
    # Keys the files leave out take detectron2's default, not this project's.
    assert cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO == 0
    assert (cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, cfg.INPUT.FORMAT) == (
        [103.530, 116.280, 123.675],
        [1.0, 1.0, 1.0],
        "BGR",
    )


ST_RPN = 'MODEL:\n  PROPOSAL_GENERATOR:\n    NAME: "ST_RPN"\n'
# The three paper setups in the original's keys: the single-frame baseline, SLTnet sequential (with
# the original's ST_RPN, the RPN it runs over frame groups) and SLTnet symmetric.
ORIGINAL_SETUPS = {
    "baseline": (D2_BASE_RCNN_FPN, "GeneralizedRCNN", False),
    "sequential": (D2_SLTNET_R50.replace("MODEL:\n", ST_RPN, 1), "SLTnet", False),
    "symmetric": (
        D2_SLTNET_R50.replace("MODEL:\n", ST_RPN, 1).replace("FORWARD_AGGREGATION: False", "FORWARD_AGGREGATION: True"),
        "SLTnet",
        True,
    ),
}


@pytest.mark.parametrize("setup", list(ORIGINAL_SETUPS))
def test_the_original_configs_of_the_paper_setups_import(tmp_path, setup):
    """Every original key is mapped or named in the one warning line; ST_RPN is this project's RPN."""
    text, architecture, symmetric = ORIGINAL_SETUPS[setup]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_detectron2_config(write_configs(tmp_path, text))
    config_warnings = [w for w in caught if issubclass(w.category, ConfigWarning)]
    assert len(config_warnings) <= 1 and all("\n" not in str(w.message) for w in config_warnings)
    assert cfg.MODEL.META_ARCHITECTURE == architecture
    assert cfg.MODEL.SPATIOTEMPORAL.FORWARD_AGGREGATION is symmetric
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""  # the original's path does not exist here; the model it describes builds
    build_model(cfg)


MINIMAL_FPN = """
MODEL:
  BACKBONE: {NAME: build_resnet_fpn_backbone}
  RESNETS: {OUT_FEATURES: [res2, res3, res4, res5]}
  RPN: {IN_FEATURES: [p2, p3, p4, p5, p6]}
  ROI_HEADS: {NAME: StandardROIHeads, IN_FEATURES: [p2, p3, p4, p5]}
  ROI_BOX_HEAD: {NAME: FastRCNNConvFCHead, NUM_FC: 2, POOLER_RESOLUTION: 7}
"""


def test_detectron2_defaults_fill_what_a_file_leaves_out(tmp_path):
    path = tmp_path / "minimal.yaml"
    path.write_text(MINIMAL_FPN)
    cfg = load_detectron2_config(str(path))
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, cfg.INPUT.MIN_SIZE_TRAIN) == (800, 1333, (800,))
    assert (cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.RPN.PRE_NMS_TOPK_TEST, cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN) == (
        80,
        6000,
        2000,
    )
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[32, 64, 128, 256, 512]]
    assert (cfg.MODEL.SPATIOTEMPORAL.NUM_FRAMES, cfg.MODEL.SPATIOTEMPORAL.LONG_TERM) == (1, False)
    # detectron2's ResNet default feeds the C4 head only.
    path.write_text(MINIMAL_FPN.replace("  RESNETS: {OUT_FEATURES: [res2, res3, res4, res5]}\n", ""))
    with pytest.raises(SltnetError) as info:
        load_detectron2_config(str(path))
    assert str(info.value) == (
        f"{path}: MODEL.FPN.IN_FEATURES ['res2', 'res3', 'res5'] are not in MODEL.RESNETS.OUT_FEATURES"
    )


def test_original_default_st_head_is_the_plain_head_and_adaptive_aggregation_translates(tmp_path):
    text = (
        D2_SLTNET_R50.replace('NAME: "AttentionFCHead"', 'NAME: "FastRCNNConvFCHead"')
        .replace("MaxPoolAggregationHead", "AdaptiveWeightAggregationHead")
        .replace("SPATIAL_CLS: True", "SPATIAL_CLS: False")
    )
    with pytest.warns(ConfigWarning):
        cfg = load_detectron2_config(write_configs(tmp_path, text))
    st = cfg.MODEL.SPATIOTEMPORAL
    assert (st.LONG_TERM, st.AGGREGATION, st.DOUBLE_HEAD) == (False, "adaptive", False)


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("MASK_ON: False", "MASK_ON: True", "sltnet.yaml: MODEL.MASK_ON True is not supported (supported: False)"),
        (
            "ADVANCED_STAGE: 0",
            "ADVANCED_STAGE: 1",
            "sltnet.yaml: MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.ATTENTION.ADVANCED_STAGE 1 is not supported (supported: 0)",
        ),
        (
            "LONG_TERM: True",
            "LONG_TERM: False",
            (
                "sltnet.yaml: MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.NAME AttentionFCHead without "
                "MODEL.SPATIOTEMPORAL.LONG_TERM true (attention to the current frame only) is not supported"
            ),
        ),
        (
            "RANDOM_FLIP: True",
            "RANDOM_FLIP: vertical",
            "sltnet.yaml: INPUT.RANDOM_FLIP 'vertical' is not supported (supported: True, False, 'horizontal', 'none')",
        ),
        (
            "GeneralizedST_RCNN",
            "RetinaNet",
            (
                "sltnet.yaml: MODEL.META_ARCHITECTURE 'RetinaNet' is not supported (supported: 'GeneralizedRCNN', "
                "'GeneralizedST_RCNN')"
            ),
        ),
    ],
)
def test_values_describing_another_model_are_refused(tmp_path, old, new, message):
    path = write_configs(tmp_path, D2_SLTNET_R50.replace(old, new))
    with pytest.raises(SltnetError) as info:
        load_detectron2_config(path)
    assert str(info.value) == f"{tmp_path}/{message}"


def test_a_missing_fpn_backbone_name_means_detectron2s_c4_default(tmp_path):
    path = tmp_path / "c4.yaml"
    path.write_text("MODEL:\n  RESNETS:\n    DEPTH: 50\n")
    with pytest.raises(SltnetError) as info:
        load_detectron2_config(str(path))
    assert str(info.value) == (
        f"{path}: MODEL.BACKBONE.NAME is not set and detectron2's default 'build_resnet_backbone' is not supported "
        "(supported: 'build_resnet_fpn_backbone')"
    )


def test_lenient_loader_collects_unknown_file_keys_but_not_command_line_ones(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("MODEL:\n  MASK_ON: false\n  RPN:\n    HEAD_NAME: StandardRPNHead\nSEED: 3\n")
    with pytest.raises(SltnetError, match="unknown config key MODEL.MASK_ON"):
        load_config(str(path))
    with pytest.warns(ConfigWarning) as caught:
        cfg = load_config(str(path), allow_unknown=True)
    assert cfg.SEED == 3 and len(caught) == 1
    assert str(caught[0].message) == (
        f"{path}: ignored 2 config keys this implementation does not have: MODEL.MASK_ON, MODEL.RPN.HEAD_NAME"
    )
    with pytest.warns(ConfigWarning), pytest.raises(SltnetError) as info:
        load_config(str(path), ["MODEL.MASK_ON", "true"], allow_unknown=True)
    assert str(info.value) == "unknown config key MODEL.MASK_ON on the command line"


# ------------------------------------------------------------------------------------------------
# Preprocessing parity with detectron2
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "height, width, short_side, max_size, expected",
    [
        (375, 500, 600, 1000, (600, 800)),
        (333, 500, 600, 1000, (600, 901)),  # 900.9 rounds half up
        (720, 1280, 600, 1000, (562, 1000)),  # capped by the long side: 562.4999... in floating point
        (1280, 720, 600, 1000, (1000, 562)),
        (480, 640, 800, 1333, (800, 1067)),
        (100, 100, 0, 1000, (100, 100)),  # 0: no resize
    ],
)
def test_resize_follows_resize_shortest_edge(height, width, short_side, max_size, expected):
    assert resized_shape(height, width, short_side, max_size) == expected


def smooth_image(height: int, width: int) -> torch.Tensor:
    """uint8 [3, H, W] RGB with gradients, texture and sharp edges."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [
        127 + 100 * np.sin(x / 7.0) * np.cos(y / 11.0),
        255 * (x / width),
        np.where((x // 16 + y // 16) % 2 == 0, 230.0, 20.0),
    ]
    return torch.from_numpy(np.clip(np.stack(channels), 0, 255).round().astype(np.uint8))


def pil_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """detectron2's uint8 resize: PIL bilinear, back to uint8."""
    pil = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((size[1], size[0]), Image.BILINEAR)
    return torch.from_numpy(np.array(pil)).permute(2, 0, 1).float()


def test_channel_order_mean_and_std_and_upscaling_match_detectron2():
    """BGR, (x - mean) / std, bilinear: equal to detectron2's path up to its rounding to uint8 after
    the resize (at most one grey level) when the image is enlarged or kept."""
    preprocessor = ImagePreprocessor(120, 1000, D2_PIXEL_MEAN, [1.0, 1.0, 1.0], "BGR")
    mean = torch.tensor(D2_PIXEL_MEAN).view(3, 1, 1)
    for height, width in ((120, 160), (50, 70)):  # kept, enlarged
        image = smooth_image(height, width)
        size = preprocessor.output_shape(height, width)
        expected = pil_resize(image, size)[[2, 1, 0]] - mean
        actual = preprocessor(image)
        assert actual.shape == expected.shape
        assert (actual - expected).abs().max() <= 1.0
        if size == (height, width):
            assert torch.equal(actual, expected)


def test_padding_is_zero_after_normalisation_to_a_multiple_of_32():
    preprocessor = ImagePreprocessor(100, 1000, D2_PIXEL_MEAN, [1.0, 1.0, 1.0])
    image = torch.full((3, 100, 130), 255, dtype=torch.uint8)
    padded = preprocessor.pad(preprocessor(image))
    assert padded.shape == (3, 128, 160)
    assert torch.all(padded[:, 100:] == 0) and torch.all(padded[:, :, 130:] == 0)
    assert torch.allclose(padded[:, :100, :130], torch.tensor([151.47, 138.72, 131.325]).view(3, 1, 1))
    assert torch.equal(pad_to_divisible(padded, 32), padded)


# ------------------------------------------------------------------------------------------------
# End to end: model_final.pth + original config -> weights + config -> ONNX export
# ------------------------------------------------------------------------------------------------


def test_original_checkpoint_to_onnx_export_end_to_end(tmp_path, tiny_d2, capsys):
    weights, config = tmp_path / "sltnet_weights.pt", tmp_path / "sltnet.yaml"
    status, out, err = convert(
        [str(tiny_d2["checkpoint"]), str(weights), "--config-file", tiny_d2["config"], "--config-out", str(config)],
        capsys,
    )
    assert status == 0, err
    assert err.splitlines() == [
        (
            f"warning: {tiny_d2['config']}: ignored 4 config keys this implementation does not have: "
            "MODEL.ROI_MASK_HEAD.NAME, MODEL.ROI_MASK_HEAD.NUM_CONV, MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION, "
            "SOLVER.LR_SCHEDULER_NAME"
        )
    ]
    assert out.splitlines() == [
        f"wrote {weights}: 152 tensors (ResNet-18, 4 classes, ST head with attention (2 stages))",
        f"wrote {config}",
    ]
    saved = torch.load(weights, weights_only=True)
    assert set(saved) == {"model", "config"}
    assert yaml.safe_load(saved["config"])["MODEL"]["WEIGHTS"] == str(weights.resolve())
    assert load_config(str(config)).MODEL.WEIGHTS == str(weights.resolve())

    # The converted config and weights give exactly the original model's detections (the detectron2
    # config keeps detectron2's adaptive RoIAlign sampling; the tiny reference config uses 2).
    converted_cfg = load_config(str(config), ["MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", "2"])
    converted = build_model(converted_cfg)
    video = frames(4)
    expected = stream(StreamingDetector.from_config(tiny_d2["model"], tiny_d2["cfg"]), video)
    actual = stream(StreamingDetector.from_config(converted, converted_cfg), video)
    assert_same_detections(expected, actual)

    engines = tmp_path / "engines"
    assert (
        export_main(
            [
                "--config-file",
                str(config),
                "--out",
                str(engines),
                "--format",
                "onnx",
                "--input-size",
                "128",
                "128",
                "--class-names",
                "a,b,c,d",
                "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO",
                "2",
            ]
        )
        == 0
    )
    assert {"frame.onnx", "temporal.onnx", "manifest.json"} <= {p.name for p in engines.iterdir()}

    # Last step of the README's path: sltnet-run over the exported engines, here on a folder of frames.
    folder = tmp_path / "clip"
    folder.mkdir()
    for index, frame in enumerate(video):
        Image.fromarray(frame.permute(1, 2, 0).numpy()).save(folder / f"{index:06d}.png")
    detections = tmp_path / "detections.json"
    assert (
        run_main(
            [
                str(folder),
                "--engine",
                str(engines),
                "--backend",
                "onnxruntime",
                "--json",
                str(detections),
                "--no-progress",
            ]
        )
        == 0
    )
    results = json.loads(detections.read_text())
    per_frame = [[r for r in results if r["frame_index"] == index] for index in range(len(video))]
    for (boxes, scores, _), found in zip(actual, per_frame, strict=True):
        assert len(found) == len(scores)
        if found:
            xywh = torch.tensor([r["bbox"] for r in found])
            torch.testing.assert_close(xywh[:, :2], boxes[:, :2], atol=1e-2, rtol=0)
