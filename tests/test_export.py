"""Export (docs/deployment.md#the-deployment-split): frame and temporal engines in ONNX, their parity with
PyTorch streaming inference, the static TensorRT check, the manifest and the sltnet-export command line.

The tiny configs, the test video and the random weights are in ``helpers``.
"""

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torchvision.models.detection._utils import BoxCoder

from benchmarks import export_parity
from export.cli import main
from export.trt_check import check_model, default_ops_table, load_ops_table
from runtime.detector import StreamingRuntime
from runtime.engines import module_backend, onnxruntime_backend, tensorrt_unavailable
from sltnet.config import load_config
from sltnet.contract import MANIFEST_FILE, Manifest
from sltnet.data.transforms import ImagePreprocessor
from sltnet.deploy.modules import build_engine_modules
from sltnet.deploy.static_ops import (
    LevelMosaic,
    build_mosaic,
    link_tubelets_fixed,
    masked_nms,
    pool_mosaic,
    postprocess_fixed,
)
from sltnet.errors import SltnetError
from sltnet.modeling.box_head import postprocess_detections
from sltnet.modeling.build import build_model
from sltnet.modeling.poolers import MultiLevelRoIAlign
from sltnet.modeling.streaming import StreamingDetector
from sltnet.modeling.tubelets import link_tubelets
from sltnet.tools.synth import main as synth_main

from helpers import (
    BASELINE_SCORE_THRESH,
    CLASS_NAMES,
    SCORE_THRESH,
    SYMMETRIC_N,
    TINY_BASELINE,
    TINY_SLTNET,
    assert_same_results,
    make_weights,
    stream,
    video,
)


def manifest_json(folder: Path) -> dict:
    """The manifest file of an export as JSON, once :meth:`Manifest.load` has accepted it."""
    Manifest.load(folder)
    return json.loads((folder / MANIFEST_FILE).read_text())


class Export(NamedTuple):
    """An export made by the command line, and what the PyTorch reference needs."""

    out: Path
    config: str
    overrides: list[str]
    frame_size: tuple

    @property
    def score_thresh(self) -> float:
        return Manifest.load(self.out).detections.score_thresh


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    return make_weights(tmp_path_factory.mktemp("weights"))


def run_export(
    tmp_path_factory,
    name: str,
    config: str,
    weights: Path,
    args: Sequence[str],
    overrides: Sequence[str],
    frame_size: tuple,
    mode_overrides: Sequence[str] = (),
) -> Export:
    """Export with the command line; ``mode_overrides`` give the PyTorch reference the mode of ``args``."""
    out = tmp_path_factory.mktemp(name) / "engines"
    argv = [
        "--config-file",
        config,
        "--weights",
        str(weights),
        "--out",
        str(out),
        "--class-names",
        CLASS_NAMES,
        "--check-trt",
        *args,
        *overrides,
    ]
    assert main(argv) == 0
    return Export(out, config, ["MODEL.WEIGHTS", str(weights), *overrides, *mode_overrides], frame_size)


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, weights) -> Export:
    """Frames of 120x160, resized to 96x128 inside the frame engine."""
    return run_export(
        tmp_path_factory,
        "sequential",
        TINY_SLTNET,
        weights["sltnet"],
        ["--input-size", "120", "160"],
        SCORE_THRESH,
        (120, 160),
    )


@pytest.fixture(scope="module")
def symmetric(tmp_path_factory, weights) -> Export:
    """Window t-2..t+2 at the default input size (128x128)."""
    return run_export(
        tmp_path_factory,
        "symmetric",
        TINY_SLTNET,
        weights["sltnet"],
        ["--mode", "symmetric"],
        SYMMETRIC_N + SCORE_THRESH,
        (128, 128),
        ["MODEL.SPATIOTEMPORAL.FORWARD_AGGREGATION", "true"],
    )


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, weights) -> Export:
    """The single-frame detector; 100x128 frames are zero-padded to 128x128 inside."""
    return run_export(
        tmp_path_factory,
        "baseline",
        TINY_BASELINE,
        weights["baseline"],
        ["--input-size", "100", "128"],
        BASELINE_SCORE_THRESH,
        (100, 128),
    )


def baseline_export_argv(weights: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """``sltnet-export`` arguments for the tiny baseline into ``out``, plus ``extra``."""
    return [
        "--config-file",
        TINY_BASELINE,
        "--weights",
        str(weights["baseline"]),
        "--out",
        str(out),
        "--class-names",
        CLASS_NAMES,
        *extra,
    ]


@pytest.fixture(params=["sequential", "symmetric", "baseline"])
def exported(request) -> Export:
    return request.getfixturevalue(request.param)


def reference_detector(export: Export) -> StreamingDetector:
    cfg = load_config(export.config, export.overrides)
    return StreamingDetector.from_config(build_model(cfg), cfg)


# ------------------------------------------------------------------------------------------------
# Graphs
# ------------------------------------------------------------------------------------------------
def test_graphs_are_checker_clean_static_and_named_as_documented(exported):
    manifest = manifest_json(exported.out)
    for engine in ("frame", "temporal"):
        graph = onnx.load(str(exported.out / manifest["engines"][engine]["onnx"]))
        onnx.checker.check_model(graph, full_check=True)
        assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [17]
        for value in [*graph.graph.input, *graph.graph.output]:
            assert all(d.HasField("dim_value") for d in value.type.tensor_type.shape.dim), value.name
    frame, temporal = manifest["engines"]["frame"], manifest["engines"]["temporal"]
    assert frame["inputs"] == [{"name": "image", "shape": [1, 3, *exported.frame_size], "dtype": "uint8"}]
    assert [o["name"] for o in frame["outputs"]] == ["features", "objectness_logits", "boxes"]
    window, reference = manifest["window"]["size"], manifest["window"]["reference_position"]
    # Every slot takes features and boxes; only the reference slot the logits that rank its anchors.
    slot_names = [
        f"frame{i}_{name}"
        for i in range(window)
        for name in (["features", "objectness_logits", "boxes"] if i == reference else ["features", "boxes"])
    ]
    temporal_inputs = [spec["name"] for spec in temporal["inputs"]]
    assert temporal_inputs[: len(slot_names)] == slot_names
    frame_specs = {spec["name"]: (spec["shape"], spec["dtype"]) for spec in frame["outputs"]}
    for spec in temporal["inputs"][: len(slot_names)]:  # slots bind the frame engine's buffers unchanged
        assert (spec["shape"], spec["dtype"]) == frame_specs[spec["name"].split("_", 1)[1]]
    outputs = {o["name"]: (o["shape"], o["dtype"]) for o in temporal["outputs"]}
    assert outputs["det_boxes"] == ([50, 4], "float32") and outputs["det_classes"] == ([50], "int64")
    assert outputs["det_count"] == ([1], "int64")


def test_long_term_memory_tensors(sequential):
    manifest = manifest_json(sequential.out)
    memory = manifest["memory"]
    assert memory == {
        "long_term": True,
        "num_keyframes": 2,
        "keyframe_interval": 3,
        "rows_per_entry": 16,
        "slot_input": "memory{slot}_{part}",
        "feature_dim": 64,
    }
    temporal = manifest["engines"]["temporal"]
    inputs = {spec["name"]: (spec["shape"], spec["dtype"]) for spec in temporal["inputs"]}
    memory_inputs = [name for name in inputs if name.startswith("memory")]
    assert memory_inputs == [f"memory{k}_{part}" for k in range(2) for part in ("features", "boxes", "valid")]
    for k in range(2):
        assert inputs[f"memory{k}_features"] == ([16, 64], "float32")
        assert inputs[f"memory{k}_boxes"] == ([16, 4], "float32")
        assert inputs[f"memory{k}_valid"] == ([16], "bool")
    outputs = {spec["name"]: (spec["shape"], spec["dtype"]) for spec in temporal["outputs"]}
    assert outputs["entry_features"] == ([16, 64], "float32") and outputs["entry_valid"] == ([16], "bool")


def test_manifest_describes_the_export(sequential, symmetric, baseline):
    manifest = manifest_json(sequential.out)
    assert manifest["architecture"] == "SLTnet" and manifest["mode"] == "sequential"
    assert manifest["classes"] == CLASS_NAMES.split(",") and manifest["category_ids"] == [1, 2, 3, 4]
    assert manifest["input"]["shape"] == [1, 3, 120, 160] and manifest["input"]["resized_size"] == [96, 128]
    assert manifest["window"] == {
        **manifest["window"],
        "num_frames": 3,
        "size": 3,
        "reference_position": 2,
        "latency_frames": 0,
        "slot_input": "frame{slot}_{output}",
    }
    assert manifest["detections"] == {"slots": 50, "score_thresh": 0.7, "nms_thresh": 0.5}
    assert manifest["versions"]["opset"] == 17 and manifest["versions"]["torch"] == torch.__version__
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == hashlib.sha256((sequential.out / name).read_bytes()).hexdigest()

    window = manifest_json(symmetric.out)["window"]
    assert (window["num_frames"], window["size"], window["reference_position"], window["latency_frames"]) == (
        2,
        5,
        2,
        2,
    )
    single = manifest_json(baseline.out)
    assert (single["architecture"], single["mode"], single["window"]["size"]) == ("GeneralizedRCNN", "single_frame", 1)
    assert single["memory"]["long_term"] is False


# ------------------------------------------------------------------------------------------------
# Parity with PyTorch
# ------------------------------------------------------------------------------------------------
def test_frame_engine_matches_pytorch(sequential):
    detector = reference_detector(sequential)
    manifest = Manifest.load(sequential.out)
    frame_engine = onnxruntime_backend(sequential.out, manifest, num_threads=1).frame
    image = video(sequential.frame_size, num_frames=1)[0]
    with torch.no_grad():
        expected = detector.model.frame_outputs(detector.preprocessor.pad(detector.preprocessor(image))[None])
    actual = frame_engine({"image": image[None]})
    torch.testing.assert_close(actual["features"], build_mosaic(expected.features), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(actual["objectness_logits"], expected.objectness_logits, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(actual["boxes"], expected.boxes, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_streaming_over_the_engines_matches_pytorch(exported, backend):
    """Window padding at both ends, keyframe memory updates, results at the same time as PyTorch."""
    frames = video(exported.frame_size)
    cfg = load_config(exported.config, exported.overrides)
    model = build_model(cfg)
    expected = stream(StreamingDetector.from_config(model, cfg), frames)
    manifest = Manifest.load(exported.out)
    if backend == "onnxruntime":
        backend = onnxruntime_backend(exported.out, manifest, num_threads=1)
    else:
        preprocessor = ImagePreprocessor.from_config(cfg)
        modules = build_engine_modules(model, preprocessor, exported.frame_size, manifest.memory.num_keyframes)
        backend = module_backend(modules.frame, modules.temporal, manifest)
    actual = stream(StreamingRuntime(manifest, backend), frames)
    assert sum(len(r.scores) for r, _ in expected) > 0
    assert len({len(r.scores) for r, _ in expected}) > 1  # counts vary: the threshold matters
    assert_same_results(expected, actual, exported.score_thresh)


def test_long_term_memory_changes_the_detections(sequential):
    """The parity above covers the memory: without keyframe entries the engine answers differently."""
    frames = video(sequential.frame_size)
    manifest = Manifest.load(sequential.out)
    streamer = StreamingRuntime(manifest, onnxruntime_backend(sequential.out, manifest, num_threads=1))
    with_memory = stream(streamer, frames)
    interval = manifest.memory.keyframe_interval
    without_memory = []
    for t, frame in enumerate(frames):
        without_memory += streamer.push(frame)
        assert len(streamer.memory) == (t % interval == 0)  # a keyframe's entry is written after it is answered
        streamer.memory.reset()
    changed = [
        a.frame_index
        for (a, _), b in zip(with_memory, without_memory)
        if len(a.scores) != len(b.scores) or not torch.allclose(a.scores, b.scores, atol=1e-3)
    ]
    assert changed and 0 not in changed  # frame 0 has no earlier keyframe either way


def test_masked_nms_keeps_valid_boxes_by_score_and_pads():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10], [40, 40, 50, 50.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.99])
    groups = torch.tensor([0, 0, 0, 1, 0])
    valid = torch.tensor([True, True, True, True, False])
    indices, kept = masked_nms(boxes, scores, groups, valid, 0.5, k=5)
    # Box 1 overlaps box 0 of its group; box 3 is in another group; box 4 is not a candidate.
    assert indices[:3].tolist() == [3, 0, 2] and kept.tolist() == [True, True, True, False, False]


def random_boxes(generator: torch.Generator, shape: Sequence[int], size: float) -> torch.Tensor:
    """[..., 4] boxes of sides 4..36 px with corners in 0..size (some past the border)."""
    corners = torch.rand((*shape, 2), generator=generator) * size
    return torch.cat([corners, corners + 4 + 32 * torch.rand((*shape, 2), generator=generator)], dim=-1)


@pytest.mark.parametrize("num_rois, num_classes", [(60, 4), (300, 30)])  # 300 x 30 > 5000: pre-selection
def test_fixed_size_postprocessing_equals_the_model(num_rois, num_classes):
    generator = torch.Generator().manual_seed(1)
    probs = (3 * torch.randn((num_rois, num_classes + 1), generator=generator)).softmax(dim=1)
    deltas = torch.randn((num_rois, 4 * num_classes), generator=generator) * 0.1
    proposals = random_boxes(generator, [num_rois], 90)
    valid = torch.arange(num_rois) < num_rois - 7  # padding rows at the end hold boxes too
    settings = {"box_coder": BoxCoder((10.0, 10.0, 5.0, 5.0)), "score_thresh": 0.1, "nms_thresh": 0.5, "topk": 50}
    expected = postprocess_detections(probs[valid], deltas[valid], proposals[valid], (96, 128), **settings)
    fixed = postprocess_fixed(probs, deltas, proposals, valid, (96, 128), **settings)
    count = int(fixed.count)
    assert 0 < count == len(expected.scores) <= len(fixed.scores) == 50
    torch.testing.assert_close(fixed.boxes[:count], expected.boxes)
    torch.testing.assert_close(fixed.scores[:count], expected.scores)
    assert torch.equal(fixed.classes[:count], expected.classes) and (fixed.classes[count:] == -1).all()


def test_fixed_size_tubelets_and_pooling_equal_the_model():
    generator = torch.Generator().manual_seed(2)
    num_anchors_per_level = [300, 120, 30]
    boxes = random_boxes(generator, [3, sum(num_anchors_per_level)], 120)
    boxes[1, 5] = float("nan")  # anchor 5 cannot form a tubelet
    logits = torch.randn((3, sum(num_anchors_per_level)), generator=generator)
    arguments = (num_anchors_per_level, 2, (96, 128), 100, 40, 0.7, 0.0)
    expected = link_tubelets(boxes, logits, *arguments)
    fixed = link_tubelets_fixed(list(boxes), logits[arguments[1]], *arguments)
    num_tubelets = len(expected.scores)
    assert fixed.valid.tolist() == [True] * num_tubelets + [False] * (len(fixed.valid) - num_tubelets)
    torch.testing.assert_close(fixed.boxes[:, :num_tubelets], expected.boxes)
    assert (fixed.boxes[:, num_tubelets:] == 0).all()


def test_one_roi_align_over_the_level_mosaic_equals_multi_level_pooling():
    generator = torch.Generator().manual_seed(3)
    pooler = MultiLevelRoIAlign(7, [1 / 4, 1 / 8, 1 / 16], sampling_ratio=2)
    features = [torch.randn((1, 8, 24 // 2**i, 32 // 2**i), generator=generator) for i in range(3)]
    layout = LevelMosaic(tuple(tuple(level.shape[2:]) for level in features))
    mosaic = build_mosaic(features)
    assert mosaic.shape == (1, 8, 26, 34 + 18 + 10) == (1, 8, *layout.size)
    boxes = random_boxes(generator, [80], 90) * torch.linspace(0.2, 3, 80)[:, None]  # every level
    # Boxes on every image border and the whole image: sampling reaches each level's edge.
    edges = torch.tensor(
        [
            [0.0, 0.0, 128.0, 96.0],
            [0.0, 0.0, 9.0, 7.0],
            [119.0, 89.0, 128.0, 96.0],
            [0.0, 60.0, 128.0, 96.0],
            [100.0, 0.0, 128.0, 96.0],
            [0.0, 0.0, 60.0, 60.0],
        ]
    )
    boxes = torch.cat([boxes.clamp(min=0, max=96), edges])
    expected = pooler(features, [boxes])
    torch.testing.assert_close(pool_mosaic(pooler, mosaic, layout, boxes), expected, rtol=1e-4, atol=1e-5)
    # Each level's block holds that level with its border repeated, and nothing bleeds between blocks.
    for level, offset in zip(features, layout.offsets):
        height, width = level.shape[2:]
        block = mosaic[..., : height + 2, offset : offset + width + 2]
        assert torch.equal(block[..., 1:-1, 1:-1], level)
        assert torch.equal(block[..., 0, 1:-1], level[..., 0, :]) and torch.equal(block[..., 1:-1, -1], level[..., -1])


# ------------------------------------------------------------------------------------------------
# Static TensorRT check
# ------------------------------------------------------------------------------------------------
def test_static_trt_check_passes_on_both_graphs(exported):
    table = load_ops_table(default_ops_table())
    manifest = manifest_json(exported.out)
    for engine in manifest["engines"].values():
        assert check_model(exported.out / engine["onnx"], table) == []


def float_input(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def bad_graph() -> onnx.ModelProto:
    """A graph with one problem per node."""
    nodes = [
        helper.make_node("TopK", ["scores", "k"], ["values", "indices"], name="topk_k_from_input"),
        helper.make_node("TopK", ["scores", "k_large"], ["values_2", "indices_2"], name="topk_k_too_large"),
        helper.make_node("Det", ["matrix"], ["determinant"], name="determinant"),
        helper.make_node("NonZero", ["mask"], ["nonzero"], name="nonzero_of_bool"),
        helper.make_node("NonMaxSuppression", ["boxes", "box_scores", "max_out", "iou"], ["selected"], name="nms"),
        helper.make_node("RoiAlign", ["features", "rois", "batch"], ["pooled"], name="roi_align_defaults"),
    ]
    inputs = [
        float_input("scores", [5000]),
        helper.make_tensor_value_info("k", TensorProto.INT64, [1]),
        float_input("matrix", [3, 3]),
        helper.make_tensor_value_info("mask", TensorProto.BOOL, [4]),
        float_input("boxes", [1, 6000, 4]),
        float_input("box_scores", [1, 1, 6000]),
        float_input("iou", [1]),
        float_input("features", [1, 2, 8, 8]),
        float_input("rois", [3, 4]),
        helper.make_tensor_value_info("batch", TensorProto.INT64, [3]),
    ]
    initializers = [
        helper.make_tensor("k_large", TensorProto.INT64, [1], [4000]),
        helper.make_tensor("max_out", TensorProto.INT64, [1], [10]),
    ]
    outputs = [
        helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None)
        for name in ("values", "values_2", "determinant", "nonzero", "selected", "pooled")
    ]
    graph = helper.make_graph(nodes, "bad", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_static_trt_check_reports_every_offending_node():
    problems = check_model(bad_graph(), load_ops_table(default_ops_table()))
    by_node = {}
    for problem in problems:
        by_node.setdefault(problem.node, []).append(problem.message)
    assert set(by_node) == {
        "topk_k_from_input",
        "topk_k_too_large",
        "determinant",
        "nonzero_of_bool",
        "nms",
        "roi_align_defaults",
    }
    assert by_node["topk_k_from_input"] == ["K ('k') must be a constant below 3840"]
    assert by_node["topk_k_too_large"] == ["K = 4000 must be below 3840"]
    assert by_node["determinant"] == ["operator not supported by TensorRT"]
    assert by_node["nonzero_of_bool"] == ["X 'mask' has type BOOL, TensorRT supports ['FLOAT', 'FLOAT16']"]
    assert by_node["nms"] == [
        "input 'iou_threshold' ('iou') must be a constant (initializer or Constant node)",
        "6000 boxes: TensorRT's NMS considers only the best 5000",
    ]
    assert len(by_node["roi_align_defaults"]) == 2
    assert "coordinate_transformation_mode" in by_node["roi_align_defaults"][0]
    assert "sampling_ratio" in by_node["roi_align_defaults"][1]
    assert str(problems[0]).startswith("node 'topk_k_from_input' (TopK): ")


def test_check_trt_lists_offending_nodes_and_fails(tmp_path, weights, capsys):
    table = default_ops_table().read_text().replace("Conv\tY\t", "Conv\tN\t")
    (tmp_path / "ops.tsv").write_text(table)
    out = tmp_path / "engines"
    status = main(baseline_export_argv(weights, out, "--check-trt", "--ops-table", str(tmp_path / "ops.tsv")))
    captured = capsys.readouterr()
    assert status == 2
    listed = [line for line in captured.out.splitlines() if "(Conv): operator not supported by TensorRT" in line]
    assert listed and all(line.startswith(f"{out / 'frame.onnx'}: node '") for line in listed)
    assert captured.err.splitlines() == [
        f"error: static TensorRT check: {len(listed)} problems in {out} (listed above)"
    ]


# ------------------------------------------------------------------------------------------------
# Manifest
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def export_copy(tmp_path, baseline) -> Path:
    return Path(shutil.copytree(baseline.out, tmp_path / "engines"))


def test_manifest_refuses_an_engine_file_that_changed(export_copy):
    data = bytearray((export_copy / "temporal.onnx").read_bytes())
    data[-1] ^= 0xFF
    (export_copy / "temporal.onnx").write_bytes(bytes(data))
    with pytest.raises(SltnetError, match=r"temporal\.onnx: SHA-256 does not match manifest\.json") as error:
        Manifest.load(export_copy)
    assert "\n" not in str(error.value)


def test_manifest_refuses_a_missing_engine_file(export_copy):
    (export_copy / "frame.onnx").unlink()
    with pytest.raises(SltnetError, match=r"frame\.onnx: missing \(listed in manifest\.json\)"):
        Manifest.load(export_copy)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, r"manifest\.json: not found"),
        ("{not json", r"manifest\.json: not valid JSON"),
        ('{"format": "other"}', r"manifest\.json: not an sltnet engine manifest"),
        ('{"format": "sltnet-engines", "format_version": 99}', r"format_version 99, this sltnet reads 2"),
    ],
)
def test_manifest_refuses_a_bad_manifest(export_copy, content, message):
    if content is None:
        (export_copy / MANIFEST_FILE).unlink()
    else:
        (export_copy / MANIFEST_FILE).write_text(content)
    with pytest.raises(SltnetError, match=message):
        Manifest.load(export_copy)


def test_manifest_refuses_an_engine_without_checksum(export_copy):
    manifest = json.loads((export_copy / MANIFEST_FILE).read_text())
    del manifest["files"]["frame.onnx"]
    (export_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(SltnetError, match=r"frame\.onnx has no checksum under 'files'"):
        Manifest.load(export_copy)


def _without(data: dict, section: str, key: str) -> None:
    del data[section][key]


def _set(section: str, key: str, value: object) -> Callable[[dict], None]:
    return lambda data: data[section].__setitem__(key, value)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda data: data.pop("architecture"), "architecture: required key missing"),
        (lambda data: _without(data, "window", "latency_frames"), "window.latency_frames: required key missing"),
        (_set("window", "size", 3), r"window: size, reference_position, latency_frames \[3, 0, 0\] do not follow"),
        (_set("memory", "slot_input", "mem{slot}{part}"), "window.slot_input and memory.slot_input"),
        (_set("detections", "slots", "many"), "detections.slots: Input should be a valid integer"),
        (lambda data: data.__setitem__("mode", "backwards"), "mode: Input should be 'sequential', 'symmetric'"),
    ],
)
def test_manifest_validation_names_the_key_in_one_line(export_copy, edit, message):
    """The whole manifest is checked on open: a missing, mistyped or contradictory value is one line
    naming the file and the key, before any engine is touched."""
    path = export_copy / MANIFEST_FILE
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(SltnetError, match=message) as error:
        Manifest.load(export_copy)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(tensorrt_unavailable() is None, reason="TensorRT and a GPU are available here")
def test_format_trt_without_tensorrt_fails_in_one_line_after_writing_onnx(tmp_path, weights, capsys):
    out = tmp_path / "engines"
    status = main(baseline_export_argv(weights, out, "--format", "trt"))
    errors = capsys.readouterr().err.splitlines()
    assert status == 2
    assert len(errors) == 1 and errors[0].startswith("error: --format trt: ")
    assert f"the ONNX engines and manifest.json are in {out}" in errors[0]
    manifest = manifest_json(out)
    assert sorted(manifest["files"]) == ["frame.onnx", "temporal.onnx"]
    assert not list(out.glob("*.engine"))


def test_an_engine_that_differs_from_its_manifest_is_refused_before_the_first_frame(export_copy):
    """Checksums match (the manifest was re-signed), but the graph's real input is another shape."""
    path = export_copy / MANIFEST_FILE
    data = json.loads(path.read_text())
    data["engines"]["frame"]["inputs"][0]["shape"] = [1, 3, 64, 64]
    path.write_text(json.dumps(data))
    manifest = Manifest.load(export_copy)
    with pytest.raises(
        SltnetError,
        match=r"frame\.onnx: tensor 'image' is uint8 \[1, 3, 100, 128\], manifest\.json says uint8 \[1, 3, 64, 64\]",
    ):
        onnxruntime_backend(export_copy, manifest, num_threads=1)


def test_an_interrupted_export_leaves_the_previous_export_loadable(tmp_path, weights, monkeypatch, capsys):
    out = tmp_path / "engines"
    assert main(baseline_export_argv(weights, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("export.cli.build_manifest", interrupted)
    assert main(baseline_export_argv(weights, out, "--input-size", "96", "96")) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: interrupted"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    Manifest.load(out)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_an_export_replaces_an_export_folder_and_refuses_any_other(tmp_path, weights, capsys):
    out = tmp_path / "engines"
    assert main(baseline_export_argv(weights, out)) == 0
    assert main(baseline_export_argv(weights, out, "--input-size", "96", "96")) == 0
    assert Manifest.load(out).input.size == (96, 96)
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(baseline_export_argv(weights, out)) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: --out {out}: holds notes.txt") and "\n" not in error
    assert (out / "notes.txt").read_text() == "mine"


def test_an_sltnet_export_with_stage_one_weights_is_refused_unless_allowed(tmp_path, weights, capsys):
    argv = ["--config-file", TINY_SLTNET, "--weights", str(weights["baseline"]), "--class-names", CLASS_NAMES]
    assert main([*argv, "--out", str(tmp_path / "refused")]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        f"error: {weights['baseline']}: stage-1 weights, without the SLTnet spatio-temporal head (it would be "
        "random); export stage-2 weights, or pass --allow-untrained-head"
    )
    assert not (tmp_path / "refused").exists()
    assert main([*argv, "--out", str(tmp_path / "allowed"), "--allow-untrained-head"]) == 0
    assert capsys.readouterr().err.strip().startswith(f"warning: {weights['baseline']}: stage-1 weights")
    Manifest.load(tmp_path / "allowed")


SLTNET_ARGS = ["--config-file", TINY_SLTNET, "--weights", "unused.pt", "--class-names", CLASS_NAMES]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ["--config-file", TINY_SLTNET, "--class-names", CLASS_NAMES, "MODEL.WEIGHTS", ""],
            "no weights to export: pass --weights",
        ),
        (
            ["--config-file", TINY_BASELINE, "--weights", "unused.pt", "--mode", "symmetric"],
            "--mode symmetric: only SLTnet configs",
        ),
        (
            ["--config-file", TINY_SLTNET, "--weights", "unused.pt", "--class-names", "a,b"],
            "--class-names: expected 4 non-empty names, got 2",
        ),
        (
            ["--config-file", TINY_SLTNET, "--weights", "unused.pt", "--dataset", "nope"],
            "class names from dataset 'nope'",
        ),
        ([*SLTNET_ARGS, "--input-size", "0", "128"], "--input-size 0 128: sides must be positive"),
        (
            [*SLTNET_ARGS, "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", "0"],
            "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO is 0 (adaptive)",
        ),
        ([*SLTNET_ARGS, "--timing-cache", "t.cache"], "--timing-cache applies to --format trt"),
        ([*SLTNET_ARGS, "--fp16"], "unrecognized arguments: --fp16"),
        ([*SLTNET_ARGS, "--precision", "int4"], "invalid choice: 'int4'"),
        ([*SLTNET_ARGS, "--calib-frames", "0", "--precision", "int8"], "--calib-frames 0: must be positive"),
        ([*SLTNET_ARGS, "--precision", "int8", "--batch", "2"], "int8 exports are calibrated for --batch 1 only"),
        ([*SLTNET_ARGS, "--format", "tflite"], "invalid choice: 'tflite'"),
        (
            ["--config-file", TINY_SLTNET, "--weights", "missing.pt", "--class-names", CLASS_NAMES],
            "missing.pt: checkpoint not found",
        ),
    ],
)
def test_cli_mistakes_are_one_line_errors_and_write_nothing(tmp_path, capsys, arguments, message):
    out = tmp_path / "engines"
    assert main(["--out", str(out), *arguments]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0]
    assert not out.exists()


def test_cli_refuses_an_output_path_that_is_a_file(tmp_path, capsys):
    (tmp_path / "engines").write_text("")
    status = main(["--config-file", TINY_SLTNET, "--weights", "w.pt", "--out", str(tmp_path / "engines")])
    assert status == 2
    assert capsys.readouterr().err.splitlines() == [f"error: --out {tmp_path / 'engines'}: exists and is not a folder"]


# ------------------------------------------------------------------------------------------------
# Accuracy script
# ------------------------------------------------------------------------------------------------
def test_export_parity_script_prints_both_maps_and_the_same_count_share(tmp_path, monkeypatch, symmetric, capsys):
    data = tmp_path / "data"
    assert (
        synth_main(
            [
                "--split",
                "synth_tiny_val",
                "--videos",
                "2",
                "--frames",
                "5",
                "--size",
                "128",
                "--seed",
                "1",
                str(data / "synthetic"),
            ]
        )
        == 0
    )
    monkeypatch.setenv("SLTNET_DATA", str(data))
    status = export_parity.main(
        [
            "--engine",
            str(symmetric.out),
            "--config-file",
            symmetric.config,
            "--dataset",
            "synth_tiny_val",
            "--threads",
            "1",
            "--json",
            str(tmp_path / "parity.json"),
            *symmetric.overrides,
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0
    assert "mAP@0.5 PyTorch" in printed and "mAP@0.5 onnxruntime" in printed
    assert "frames with the same detection count  100.00 %" in printed
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["passed"] and report["mAP50_pytorch"] == pytest.approx(report["mAP50_onnxruntime"], abs=2e-3)


def test_export_parity_script_refuses_a_different_threshold(tmp_path, symmetric, capsys):
    status = export_parity.main(
        [
            "--engine",
            str(symmetric.out),
            "--config-file",
            symmetric.config,
            "--dataset",
            "synth_tiny_val",
            *symmetric.overrides,
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            "0.5",
        ]
    )
    assert status == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: the engines use score threshold 0.7, the config 0.5: pass MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.7"
    ]


def test_packaged_ops_table_is_the_shared_one():
    """The package ships a copy of shared/tensorrt_onnx_ops.tsv; it must not drift from the original."""
    shared = Path(__file__).resolve().parent.parent.parent / "shared" / "tensorrt_onnx_ops.tsv"
    if not shared.is_file():
        pytest.skip("no shared/ folder beside this checkout")
    assert default_ops_table().read_bytes() == shared.read_bytes()
