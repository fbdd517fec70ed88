"""Config loading: _BASE_ chains, overrides, type checks, error messages, saving, validation."""

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from sltnet.config import get_cfg, load_config, save_config, validate_config
from sltnet.errors import SltnetError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
SHIPPED_CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))

# Stage-2 config -> the stage-1 config whose final checkpoint it loads.
STAGE2_TO_STAGE1 = {
    "synthetic/tiny_sltnet.yaml": "synthetic/tiny_baseline.yaml",
    "synthetic/small_sltnet_sequential.yaml": "synthetic/small_baseline.yaml",
    "synthetic/small_sltnet_symmetric.yaml": "synthetic/small_baseline.yaml",
    "vid/sltnet_R_101_FPN_sequential.yaml": "vid/faster_rcnn_R_101_FPN.yaml",
    "vid/sltnet_X_101_32x8d_FPN_sequential.yaml": "vid/faster_rcnn_X_101_32x8d_FPN.yaml",
    "vid/sltnet_X_101_32x8d_FPN_symmetric.yaml": "vid/faster_rcnn_X_101_32x8d_FPN.yaml",
}


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def load_error(config_file, overrides: Sequence[str] = ()) -> str:
    """The one-line message load_config raises."""
    with pytest.raises(SltnetError) as info:
        load_config(config_file, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------
# Shipped configs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_shipped_config_loads_frozen(path):
    cfg = load_config(str(path))
    assert cfg.is_frozen()
    with pytest.raises(AttributeError):
        cfg.SEED = 1


def test_all_expected_configs_are_shipped():
    names = {str(p.relative_to(CONFIG_DIR)) for p in SHIPPED_CONFIGS}
    expected = set(STAGE2_TO_STAGE1) | set(STAGE2_TO_STAGE1.values()) | {"Base-RCNN-FPN.yaml"}
    assert expected <= names


@pytest.mark.parametrize("stage2, stage1", sorted(STAGE2_TO_STAGE1.items()))
def test_stage2_loads_stage1_final_checkpoint_with_same_architecture(stage2, stage1):
    st = load_config(str(CONFIG_DIR / stage2))
    base = load_config(str(CONFIG_DIR / stage1))
    assert st.MODEL.META_ARCHITECTURE == "SLTnet"
    assert base.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert st.MODEL.WEIGHTS == f"{base.OUTPUT_DIR}/model_final.pt"
    assert st.OUTPUT_DIR != base.OUTPUT_DIR
    for section in ("RESNETS", "FPN", "ANCHOR_GENERATOR", "ROI_HEADS", "ROI_BOX_HEAD"):
        assert st.MODEL[section] == base.MODEL[section], section
    assert (st.MODEL.PIXEL_MEAN, st.MODEL.PIXEL_STD) == (base.MODEL.PIXEL_MEAN, base.MODEL.PIXEL_STD)
    assert st.INPUT == base.INPUT


def test_paper_configs():
    x101 = load_config(str(CONFIG_DIR / "vid/faster_rcnn_X_101_32x8d_FPN.yaml"))
    assert (x101.MODEL.RESNETS.DEPTH, x101.MODEL.RESNETS.NUM_GROUPS, x101.MODEL.RESNETS.WIDTH_PER_GROUP) == (101, 32, 8)
    assert x101.MODEL.ROI_HEADS.NUM_CLASSES == 30
    assert x101.DATASETS.TRAIN == tuple(f"vid_train_split{i}" for i in range(4)) + ("det_train_subsampled",)
    assert x101.DATASETS.TEST == ("vid_val",)
    sequential = load_config(str(CONFIG_DIR / "vid/sltnet_X_101_32x8d_FPN_sequential.yaml"))
    symmetric = load_config(str(CONFIG_DIR / "vid/sltnet_X_101_32x8d_FPN_symmetric.yaml"))
    assert not sequential.MODEL.SPATIOTEMPORAL.FORWARD_AGGREGATION
    assert symmetric.MODEL.SPATIOTEMPORAL.FORWARD_AGGREGATION
    assert symmetric.MODEL.SPATIOTEMPORAL.NUM_FRAMES == 3


def test_tiny_config_is_small_and_cpu():
    cfg = load_config(str(CONFIG_DIR / "synthetic/tiny_sltnet.yaml"))
    assert cfg.MODEL.DEVICE == "cpu"
    assert cfg.MODEL.RESNETS.DEPTH == 18 and cfg.MODEL.RESNETS.RES2_OUT_CHANNELS == 64
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (128, 128)
    assert cfg.MODEL.ROI_BOX_HEAD.FC_DIM % cfg.MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.ATTENTION.GROUP == 0
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 4
    assert cfg.DATASETS.TRAIN == ("synth_tiny_train",) and cfg.DATASETS.TEST == ("synth_tiny_val",)
    assert cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO == 2


# ---------------------------------------------------------------------------------------------
# Defaults and _BASE_ chains
# ---------------------------------------------------------------------------------------------


def test_get_cfg_returns_independent_copies():
    cfg = get_cfg()
    cfg.MODEL.SPATIOTEMPORAL.NUM_FRAMES = 9
    assert get_cfg().MODEL.SPATIOTEMPORAL.NUM_FRAMES == 3
    assert not get_cfg().is_frozen()


def test_no_file_gives_defaults():
    assert load_config(None) == get_cfg()
    assert load_config("") == get_cfg()  # argparse's usual default for --config-file


def test_base_chain_is_relative_to_including_file_and_merges_sections(tmp_path, monkeypatch):
    write(tmp_path / "common/root.yaml", "MODEL:\n  RPN:\n    NMS_THRESH: 0.6\n    PRE_NMS_TOPK_TEST: 500\nSEED: 1\n")
    write(tmp_path / "common/mid.yaml", "_BASE_: root.yaml\nMODEL:\n  RPN:\n    NMS_THRESH: 0.65\nSEED: 2\n")
    child = write(tmp_path / "exp/child.yaml", "_BASE_: ../common/mid.yaml\nSEED: 3\n")
    monkeypatch.chdir(tmp_path / "common")  # bases resolve against the file, not the working folder
    cfg = load_config(child)
    assert cfg.MODEL.RPN.NMS_THRESH == 0.65  # mid overrides root
    assert cfg.MODEL.RPN.PRE_NMS_TOPK_TEST == 500  # root's sibling key survives mid's section
    assert cfg.SEED == 3  # child overrides both
    assert cfg.MODEL.RPN.POST_NMS_TOPK_TEST == get_cfg().MODEL.RPN.POST_NMS_TOPK_TEST


def test_overrides_win_over_files(tmp_path):
    path = write(tmp_path / "a.yaml", "SEED: 5\n")
    assert load_config(path, ["SEED", "6"]).SEED == 6


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path / "empty.yaml", "")) == get_cfg()


def test_scientific_notation_in_file_is_float(tmp_path):
    cfg = load_config(write(tmp_path / "lr.yaml", "SOLVER:\n  BASE_LR: 1e-4\n"))
    assert cfg.SOLVER.BASE_LR == pytest.approx(1e-4)


# ---------------------------------------------------------------------------------------------
# Override parsing and types
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, text, expected",
    [
        ("MODEL.SPATIOTEMPORAL.FORWARD_AGGREGATION", "true", True),
        ("MODEL.SPATIOTEMPORAL.FORWARD_AGGREGATION", "False", False),
        ("MODEL.SPATIOTEMPORAL.NUM_FRAMES", "5", 5),
        ("SOLVER.BASE_LR", "0.5", 0.5),
        ("SOLVER.BASE_LR", "1e-3", 0.001),
        ("SOLVER.BASE_LR", "1", 1.0),  # int accepted where float is expected
        ("SOLVER.STEPS", "[10, 20]", (10, 20)),  # list accepted for a tuple, kept a tuple
        ("INPUT.MIN_SIZE_TRAIN", "(640, 672)", (640, 672)),  # Python tuple syntax
        ("INPUT.MIN_SIZE_TRAIN", "[600]", (600,)),
        ("MODEL.PIXEL_MEAN", "[1, 2.5, 3]", [1.0, 2.5, 3.0]),
        ("MODEL.ANCHOR_GENERATOR.SIZES", "[[8], [16], [32], [64], [128]]", [[8], [16], [32], [64], [128]]),
        ("MODEL.WEIGHTS", "123", "123"),  # text keys keep the token as written
        ("MODEL.WEIGHTS", "true", "true"),
        ("OUTPUT_DIR", "./out dir/x", "./out dir/x"),
    ],
)
def test_override_values_are_parsed_and_typed(key, text, expected):
    cfg = load_config(None, [key, text])
    node = cfg
    for name in key.split("."):
        node = node[name]
    assert node == expected
    assert type(node) is type(expected)
    if isinstance(expected, float):
        assert isinstance(node, float)


def test_override_type_error_message():
    assert load_error(None, ["MODEL.SPATIOTEMPORAL.NUM_FRAMES", "abc"]) == (
        "MODEL.SPATIOTEMPORAL.NUM_FRAMES on the command line: expected int, got str 'abc'"
    )


@pytest.mark.parametrize(
    "key, text, expected",
    [
        ("MODEL.SPATIOTEMPORAL.NUM_FRAMES", "2.5", "expected int, got float 2.5"),
        ("MODEL.SPATIOTEMPORAL.NUM_FRAMES", "true", "expected int, got bool True"),
        ("MODEL.SPATIOTEMPORAL.FORWARD_AGGREGATION", "1", "expected bool, got int 1"),
        ("SOLVER.BASE_LR", "fast", "expected float, got str 'fast'"),
        ("SOLVER.STEPS", "100", "expected list, got int 100"),
    ],
)
def test_override_wrong_types(key, text, expected):
    assert load_error(None, [key, text]) == f"{key} on the command line: {expected}"


def test_wrong_element_type_names_the_element():
    assert load_error(None, ["MODEL.ANCHOR_GENERATOR.SIZES", "[[8], [x]]"]) == (
        "MODEL.ANCHOR_GENERATOR.SIZES[1][0] on the command line: expected int, got str 'x'"
    )


def test_file_type_error_names_file(tmp_path):
    path = write(tmp_path / "x.yaml", "MODEL:\n  SPATIOTEMPORAL:\n    NUM_FRAMES: abc\n")
    assert load_error(path) == f"MODEL.SPATIOTEMPORAL.NUM_FRAMES in {path}: expected int, got str 'abc'"


def test_file_value_for_a_section(tmp_path):
    path = write(tmp_path / "x.yaml", "MODEL: 3\n")
    assert load_error(path) == f"MODEL in {path}: expected a section of keys, got int 3"


def test_odd_number_of_override_tokens():
    assert load_error(None, ["SEED", "1", "OUTPUT_DIR"]) == (
        "config overrides must be KEY VALUE pairs, but OUTPUT_DIR has no value"
    )


def test_override_of_a_section():
    message = load_error(None, ["MODEL.RPN", "1"])
    assert message.startswith("MODEL.RPN on the command line: is a section; set one of its keys, e.g. MODEL.RPN.")


# ---------------------------------------------------------------------------------------------
# Unknown keys
# ---------------------------------------------------------------------------------------------


def test_unknown_key_in_file_suggests_closest(tmp_path):
    path = write(tmp_path / "x.yaml", "MODEL:\n  SPATIOTEMPORAL:\n    NUM_FRAME: 3\n")
    assert load_error(path) == (
        f"unknown config key MODEL.SPATIOTEMPORAL.NUM_FRAME in {path} (did you mean MODEL.SPATIOTEMPORAL.NUM_FRAMES?)"
    )


@pytest.mark.parametrize(
    "key, suggestion",
    [
        ("MODEL.SPATIOTEMPORAL.NUM_FRAME", "MODEL.SPATIOTEMPORAL.NUM_FRAMES"),
        ("SPATIOTEMPORAL.NUM_FRAMES", "MODEL.SPATIOTEMPORAL.NUM_FRAMES"),  # the original README's short form
        ("SOLVER.MAX_ITERS", "SOLVER.MAX_ITER"),
        ("MODEL.ROI_HEAD.NUM_CLASSES", "MODEL.ROI_HEADS.NUM_CLASSES"),
    ],
)
def test_unknown_key_on_command_line_suggests_closest(key, suggestion):
    assert load_error(None, [key, "3"]) == f"unknown config key {key} on the command line (did you mean {suggestion}?)"


def test_unknown_key_without_close_match_has_no_hint():
    assert load_error(None, ["FOO.BAR", "1"]) == "unknown config key FOO.BAR on the command line"


def test_unknown_section_in_file(tmp_path):
    path = write(tmp_path / "x.yaml", "MODEL:\n  TUBELET_AGGREGATION_HEAD:\n    NAME: MaxPool\n")
    assert load_error(path).startswith(f"unknown config key MODEL.TUBELET_AGGREGATION_HEAD in {path}")


def test_unknown_key_reports_the_file_that_has_it(tmp_path):
    base = write(tmp_path / "base.yaml", "SOLVER:\n  MAX_ITERS: 10\n")
    child = write(tmp_path / "child.yaml", "_BASE_: base.yaml\n")
    assert load_error(child) == (f"unknown config key SOLVER.MAX_ITERS in {base} (did you mean SOLVER.MAX_ITER?)")


# ---------------------------------------------------------------------------------------------
# File errors
# ---------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.yaml")
    assert load_error(path) == f"{path}: no such config file"


def test_missing_base(tmp_path):
    child = write(tmp_path / "child.yaml", "_BASE_: gone.yaml\n")
    assert load_error(child) == f"{tmp_path / 'gone.yaml'}: no such config file (_BASE_ of {child})"


def test_base_must_be_a_path(tmp_path):
    child = write(tmp_path / "child.yaml", "_BASE_: [a.yaml, b.yaml]\n")
    assert load_error(child) == f"{child}: _BASE_ must be a file path, got list ['a.yaml', 'b.yaml']"


def test_base_cycle(tmp_path):
    a = write(tmp_path / "a.yaml", "_BASE_: b.yaml\n")
    write(tmp_path / "b.yaml", "_BASE_: a.yaml\n")
    message = load_error(a)
    assert message.startswith(f"{a}: _BASE_ cycle: ")
    assert message.endswith("a.yaml -> " + os.path.relpath(tmp_path / "b.yaml") + " -> " + os.path.relpath(a))


def test_self_base_is_a_cycle(tmp_path):
    a = write(tmp_path / "a.yaml", "_BASE_: a.yaml\n")
    assert "_BASE_ cycle" in load_error(a)


def test_yaml_syntax_error_has_line_number(tmp_path):
    path = write(tmp_path / "bad.yaml", "MODEL:\n  RPN:\n    NMS_THRESH: [0.5\nSEED: 1\n")
    message = load_error(path)
    assert message.startswith(f"{path}:4: YAML syntax error: ")


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path / "list.yaml", "- 1\n- 2\n")
    assert load_error(path) == f"{path}: expected a mapping of config keys at the top level, got list [1, 2]"


def test_directory_is_not_a_config(tmp_path):
    assert load_error(str(tmp_path)).startswith(f"{tmp_path}: cannot read config file: ")


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def test_save_config_round_trips(tmp_path):
    cfg = load_config(
        str(CONFIG_DIR / "vid/sltnet_X_101_32x8d_FPN_symmetric.yaml"),
        ["SOLVER.BASE_LR", "1e-5", "INPUT.MIN_SIZE_TRAIN", "[480, 512]"],
    )
    path = tmp_path / "run" / "config.yaml"  # missing folders are created
    save_config(cfg, str(path))
    assert "_BASE_" not in path.read_text()
    again = load_config(str(path))
    assert again == cfg
    assert again.INPUT.MIN_SIZE_TRAIN == (480, 512)
    assert os.listdir(path.parent) == ["config.yaml"]


def test_save_config_leaves_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text("SEED: 1\n")

    def fail_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(OSError):
        save_config(get_cfg(), str(path))
    assert path.read_text() == "SEED: 1\n"
    assert os.listdir(tmp_path) == ["config.yaml"]


# ---------------------------------------------------------------------------------------------
# Cross-key validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            ["MODEL.SPATIOTEMPORAL.TEMPORAL_DROPOUT", "true"],
            "MODEL.SPATIOTEMPORAL.TEMPORAL_DROPOUT requires MODEL.SPATIOTEMPORAL.FORWARD_AGGREGATION",
        ),
        (
            ["MODEL.META_ARCHITECTURE", "SLTnet", "MODEL.ROI_BOX_HEAD.FC_DIM", "100"],
            "MODEL.ROI_BOX_HEAD.FC_DIM (100) must be divisible by "
            "MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.ATTENTION.GROUP (16)",
        ),
        (
            ["MODEL.META_ARCHITECTURE", "SLTnet", "MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.ATTENTION.EMBED_DIM", "60"],
            "MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.ATTENTION.EMBED_DIM must be a multiple of 8, got 60",
        ),
        (
            ["MODEL.META_ARCHITECTURE", "SLTnet", "MODEL.RPN.POST_NMS_TOPK_TEST", "50"],
            "MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.REF_POST_NMS_TOP_N (75) must not exceed "
            "MODEL.RPN.POST_NMS_TOPK_TEST (50)",
        ),
        (["INPUT.FORMAT", "YUV"], "INPUT.FORMAT must be one of BGR, RGB, got 'YUV'"),
        (["MODEL.META_ARCHITECTURE", "RetinaNet"], "MODEL.META_ARCHITECTURE must be one of GeneralizedRCNN, SLTnet"),
        (["MODEL.SPATIOTEMPORAL.AGGREGATION", "mean"], "MODEL.SPATIOTEMPORAL.AGGREGATION must be one of max, adaptive"),
        (["MODEL.PIXEL_MEAN", "[1, 2]"], "MODEL.PIXEL_MEAN must have 3 values (one per channel), got [1.0, 2.0]"),
        (["MODEL.PIXEL_STD", "[1, 2, 3, 4]"], "MODEL.PIXEL_STD must have 3 values (one per channel)"),
        (["MODEL.PIXEL_STD", "[1, 0, 1]"], "MODEL.PIXEL_STD must be positive, got [1.0, 0.0, 1.0]"),
        (["MODEL.RESNETS.DEPTH", "152"], "MODEL.RESNETS.DEPTH must be one of 18, 34, 50, 101, got 152"),
        (
            ["MODEL.RESNETS.DEPTH", "18"],
            "MODEL.RESNETS.RES2_OUT_CHANNELS must equal MODEL.RESNETS.STEM_OUT_CHANNELS (64) "
            "for MODEL.RESNETS.DEPTH 18, got 256",
        ),
        (
            ["MODEL.RESNETS.DEPTH", "34", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.RESNETS.NUM_GROUPS", "32"],
            "MODEL.RESNETS.NUM_GROUPS must be 1 for MODEL.RESNETS.DEPTH 34",
        ),
        (["MODEL.SPATIOTEMPORAL.NUM_FRAMES", "0"], "MODEL.SPATIOTEMPORAL.NUM_FRAMES must be positive, got 0"),
        (["MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", "-1"], "must be non-negative, got -1"),
        (["MODEL.BACKBONE.FREEZE_AT", "6"], "MODEL.BACKBONE.FREEZE_AT must be in 0..5, got 6"),
        (
            ["MODEL.FPN.IN_FEATURES", "[res2, res6]"],
            "MODEL.FPN.IN_FEATURES ['res6'] are not in MODEL.RESNETS.OUT_FEATURES",
        ),
        (
            ["MODEL.ANCHOR_GENERATOR.SIZES", "[[32], [64]]"],
            "MODEL.ANCHOR_GENERATOR.SIZES needs 1 or 5 entries (one per MODEL.RPN.IN_FEATURES level), got 2",
        ),
        (
            ["INPUT.MIN_SIZE_TRAIN_SAMPLING", "range", "INPUT.MIN_SIZE_TRAIN", "[600]"],
            "INPUT.MIN_SIZE_TRAIN must be [low, high] with sampling 'range', got [600]",
        ),
        (["SOLVER.STEPS", "[300, 200]"], "SOLVER.STEPS must be strictly increasing, got [300, 200]"),
    ],
)
def test_validation_rules(overrides, expected):
    message = load_error(None, overrides)
    assert message.startswith("command line: ")
    assert expected in message


def test_attention_rules_apply_to_sltnet_only():
    cfg = load_config(None, ["MODEL.ROI_BOX_HEAD.FC_DIM", "100"])
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"


def test_validation_error_names_the_file(tmp_path):
    path = write(tmp_path / "x.yaml", "INPUT:\n  FORMAT: YUV\n")
    assert load_error(path) == f"{path}: INPUT.FORMAT must be one of BGR, RGB, got 'YUV'"
    assert load_error(path, ["SEED", "1"]).startswith(f"{path} + command line: INPUT.FORMAT")


def test_validate_config_directly():
    cfg = get_cfg()
    validate_config(cfg)
    cfg.MODEL.SPATIOTEMPORAL.TEMPORAL_DROPOUT = True
    with pytest.raises(SltnetError, match="requires MODEL.SPATIOTEMPORAL.FORWARD_AGGREGATION"):
        validate_config(cfg)
    cfg.MODEL.SPATIOTEMPORAL.FORWARD_AGGREGATION = True
    validate_config(cfg)
