"""Reduced-precision exports (docs/export.md#precision): ``sltnet-export --precision fp16|int8`` on
the tiny configs, their graphs' rules (what stays float32, Q/DQ zero points, the static TensorRT
check), their parity against the float32 export, and the lossless INT8 rewrite for onnxruntime's
CPU provider.

Tolerances. FP16 keeps 11 significant bits (relative step 2^-11 ~ 5e-4); the features pass ~20
float16 layers, so they may differ from float32 by ~1 % of their scale, and scores by ~1e-2 (the
detections are then compared one to one by class, box and score within those margins). INT8 keeps
8 bits per tensor (a step of 1/127 of each calibrated range). The tiny model's random weights give
activations with wide, outlier-dominated ranges (~20 % relative RMS error after its 20 layers,
where a trained model's ranges are tighter), so the INT8 check here is the frame engine's RMS error
within 30 % of its outputs' (a wrong scale or zero point gives ~100 %) and the same frames
answered; INT8's accuracy is measured on the trained small model by benchmarks/accuracy.py.
"""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.transformers.onnx_model import OnnxModel
from PIL import Image

from export.cli import main
from export.precision import float16_nodes
from export.trt_check import check_model, default_ops_table, load_ops_table
from runtime.cli import main as run_main
from runtime.detector import StreamingRuntime
from runtime.engines import onnxruntime_backend, torch_backend
from runtime.qdq import for_cpu_provider, has_int8_activations
from sltnet.contract import Manifest
from sltnet.data.transforms import read_image
from sltnet.errors import SltnetError
from tests.helpers import (
    CLASS_NAMES,
    SCORE_THRESH,
    TINY_BASELINE,
    TINY_SLTNET,
    make_weights,
    match_one_to_one,
    stream,
    synthetic_data,
    video,
)

FRAME_SIZE = (128, 128)  # the tiny configs' test size: the default input size
CALIBRATION_FRAMES = 12
FP16_SCORE_TOLERANCE = 2e-2
FP16_BOX_TOLERANCE = 1.0  # pixels
INT8_RELATIVE_ERROR = 0.3  # root-mean-square error relative to the float32 outputs' RMS


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    return make_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A synthetic split of 128-pixel frames for calibration, found through $SLTNET_DATA."""
    with synthetic_data(tmp_path_factory.mktemp("data"), "synth_tiny_train", 2, 8, 128) as root:
        yield root


def export(out: Path, config: str, weights: Path, precision: str, *extra: str) -> Path:
    argv = ["--config-file", config, "--weights", str(weights), "--out", str(out), "--class-names", CLASS_NAMES]
    argv += ["--check-trt", "--precision", precision, *extra, *SCORE_THRESH]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def exports(tmp_path_factory, weights, data_root) -> dict[str, Path]:
    """The tiny SLTnet (sequential) at each precision."""
    root = tmp_path_factory.mktemp("exports")
    calibration = ["--calib-dataset", "synth_tiny_train", "--calib-frames", str(CALIBRATION_FRAMES)]
    return {
        "fp32": export(root / "fp32", TINY_SLTNET, weights["sltnet"], "fp32"),
        "fp16": export(root / "fp16", TINY_SLTNET, weights["sltnet"], "fp16"),
        "int8": export(root / "int8", TINY_SLTNET, weights["sltnet"], "int8", *calibration),
    }


def detections(out: Path) -> list[tuple]:
    manifest = Manifest.load(out)
    return stream(StreamingRuntime(manifest, onnxruntime_backend(out, manifest, num_threads=1)), video(FRAME_SIZE))


def test_fp16_graphs_carry_features_in_float16_and_the_rest_in_float32(exports):
    manifest = Manifest.load(exports["fp16"])
    assert manifest.precision.precision == "fp16"
    for _, engine in manifest.engines.items():
        for spec in [*engine.inputs, *engine.outputs]:
            if spec.name == "features" or spec.name.endswith("_features"):
                assert spec.dtype == "float16", spec.name
            elif spec.dtype.startswith("float"):
                assert spec.dtype == "float32", spec.name
    assert manifest.input.dtype == "uint8"
    # Box decoding and the scores stay float32, and the manifest names them.
    temporal = manifest.precision.float32_nodes["temporal"]
    assert any("RoiAlign" in name for name in temporal) and any("Softmax" in name for name in temporal)
    assert any("/rpn/Exp" in name for name in manifest.precision.float32_nodes["frame"])


def test_float16_region_excludes_box_decoding_and_geometry():
    """Nodes computed only from boxes stay float32; nodes computed from features are float16."""
    boxes = helper.make_tensor_value_info("frame0_boxes", TensorProto.FLOAT, [4, 4])
    features = helper.make_tensor_value_info("frame0_features", TensorProto.FLOAT, [4, 8])
    nodes = [
        helper.make_node("Sin", ["frame0_boxes"], ["geometry"], name="/st_box_head/Sin"),
        helper.make_node("Relu", ["frame0_features"], ["relu"], name="/st_box_head/Relu"),
        helper.make_node("Softmax", ["relu"], ["attention"], name="/st_box_head/Softmax"),
        helper.make_node("Relu", ["attention"], ["after"], name="/st_box_head/Relu_1"),
        helper.make_node("Exp", ["relu"], ["decoded"], name="/box_predictor/Exp"),
    ]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("geometry", "after")]
    graph = helper.make_graph(nodes, "g", [boxes, features], outputs)
    assert float16_nodes(graph) == {"/st_box_head/Relu", "/st_box_head/Relu_1"}


def test_every_precision_passes_the_static_tensorrt_check(exports):
    table = load_ops_table(default_ops_table())
    for out in exports.values():
        for name in ("frame.onnx", "temporal.onnx"):
            assert check_model(out / name, table) == []


def test_int8_graphs_are_symmetric_qdq(exports):
    """Explicit Q/DQ, zero points 0, int8 types, weights in [-127, 127]: what TensorRT builds."""
    manifest = Manifest.load(exports["int8"])
    assert manifest.precision.precision == "int8"
    assert manifest.precision.calibration.frames == CALIBRATION_FRAMES
    assert manifest.precision.calibration.dataset == "synth_tiny_train"
    for _, engine in manifest.engines.items():
        graph = onnx.load(str(exports["int8"] / engine.onnx)).graph
        initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
        qdq = [node for node in graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")]
        assert qdq, engine.onnx
        for node in qdq:
            zero_point = initializers[node.input[2]]
            assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
            if node.op_type == "DequantizeLinear" and node.input[0] in initializers:
                weights = initializers[node.input[0]]
                assert weights.dtype == np.int8 and weights.min() >= -127, node.name
    quantized = {node.op_type for node in onnx.load(str(exports["int8"] / "frame.onnx")).graph.node}
    assert "QuantizeLinear" in quantized


def test_int8_convolutions_absorb_their_frozen_batch_norms(exports):
    """The float32 graph computes each frozen batch norm as a Mul and an Add after its convolution;
    the INT8 frame engine has them folded into the convolution, whose output goes straight to a
    quantizer: no float op between two integer convolutions."""
    float32 = OnnxModel(onnx.load(str(exports["fp32"] / "frame.onnx")))
    float32_consumers = float32.input_name_to_nodes()
    batch_norms = {}  # convolution -> its batch norm's Mul
    for node in float32.nodes():
        readers = float32_consumers.get(node.output[0], []) if node.op_type == "Conv" else []
        if [reader.op_type for reader in readers] == ["Mul"]:
            batch_norms[node.name] = readers[0].name
    assert batch_norms
    int8 = OnnxModel(onnx.load(str(exports["int8"] / "frame.onnx")))
    consumers = int8.input_name_to_nodes()
    nodes = {node.name: node for node in int8.nodes()}
    for convolution, multiplication in batch_norms.items():
        assert multiplication not in nodes, multiplication
        readers = consumers[nodes[convolution].output[0]]
        assert [reader.op_type for reader in readers] == ["QuantizeLinear"], convolution


def match_share(expected: list[tuple], actual: list[tuple], score_tol: float, box_tol: float) -> float:
    """The share of ``expected``'s detections that ``actual`` has (same frame and class, score and
    box within the tolerances), one to one."""
    total = sum(len(reference.scores) for reference, _ in expected)
    missing = sum(
        len(match_one_to_one(reference, result, score_tol, box_tol)[0])
        for (reference, _), (result, _) in zip(expected, actual)
    )
    return (total - missing) / max(total, 1)


def test_fp16_detections_match_fp32(exports):
    expected, actual = detections(exports["fp32"]), detections(exports["fp16"])
    assert [r.frame_index for r, _ in actual] == [r.frame_index for r, _ in expected]
    assert sum(len(r.scores) for r, _ in expected) > 0
    # Detections near the export's threshold may fall on either side of it.
    assert match_share(expected, actual, FP16_SCORE_TOLERANCE, FP16_BOX_TOLERANCE) >= 0.9


def calibration_frame(data_root: Path) -> torch.Tensor:
    """[1, 3, 128, 128] uint8: a frame of the calibration split."""
    return read_image(str(sorted((data_root / "synthetic").rglob("*.jpg"))[3]))[None]


def test_int8_frame_engine_stays_close_to_fp32(exports, data_root):
    image = calibration_frame(data_root)
    outputs = {}
    for precision in ("fp32", "int8"):
        manifest = Manifest.load(exports[precision])
        outputs[precision] = onnxruntime_backend(exports[precision], manifest, num_threads=1).frame({"image": image})
    for name in ("features", "objectness_logits"):
        expected = outputs["fp32"][name]
        error = (outputs["int8"][name] - expected).norm() / expected.norm()
        assert error <= INT8_RELATIVE_ERROR, name
    expected, actual = detections(exports["fp32"]), detections(exports["int8"])
    assert [r.frame_index for r, _ in actual] == [r.frame_index for r, _ in expected]


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_exports_run_in_sltnet_run(exports, tmp_path, precision):
    """One JSON line per real frame of the clip, from the onnxruntime backend."""
    frames = video(FRAME_SIZE, num_frames=6)
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame.permute(1, 2, 0).numpy()).save(folder / f"{index:03d}.png")
    lines = tmp_path / "dets.jsonl"
    argv = [str(folder), "--engine", str(exports[precision]), "--backend", "onnxruntime", "--jsonl", str(lines)]
    assert run_main([*argv, "--no-progress"]) == 0
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [record["frame_index"] for record in records] == list(range(len(frames)))


def qdq_graph(zero_point: np.ndarray) -> onnx.ModelProto:
    """x -> QuantizeLinear -> DequantizeLinear -> y with scale 0.05."""
    scale = numpy_helper.from_array(np.array(0.05, np.float32), "scale")
    zero = numpy_helper.from_array(zero_point, "zero")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"], name="dq"),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1000])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1000])],
        initializer=[scale, zero],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run_graph(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_uint8_rewrite_of_int8_activations_is_lossless():
    """int8 (s, 0) and uint8 (s, 128) Q/DQ give the same values, saturation included."""
    model = qdq_graph(np.array(0, np.int8))
    assert has_int8_activations(model)
    rewritten = for_cpu_provider(model)
    assert not has_int8_activations(rewritten)
    zero_points = [numpy_helper.to_array(t) for t in rewritten.graph.initializer if t.data_type == TensorProto.UINT8]
    assert zero_points and all(int(z) == 128 for z in zero_points)
    x = np.random.default_rng(0).uniform(-10, 10, 1000).astype(np.float32)  # beyond +-6.4: saturates
    np.testing.assert_array_equal(run_graph(rewritten, x), run_graph(model, x))


def test_float_graphs_are_opened_unchanged(exports):
    model = onnx.load(str(exports["fp32"] / "frame.onnx"))
    assert for_cpu_provider(model) is model


def test_calibration_options_need_int8(tmp_path, weights, capsys):
    argv = ["--config-file", TINY_BASELINE, "--weights", str(weights["baseline"]), "--out", str(tmp_path / "o")]
    assert main([*argv, "--class-names", CLASS_NAMES, "--calib-frames", "10"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --calib-dataset and --calib-frames apply to --precision int8"
    ]
    assert not (tmp_path / "o").exists()


def test_int8_refuses_a_dataset_too_small(tmp_path, weights, data_root, capsys):
    argv = ["--config-file", TINY_BASELINE, "--weights", str(weights["baseline"]), "--out", str(tmp_path / "o")]
    argv += ["--class-names", CLASS_NAMES, "--precision", "int8", "--calib-dataset", "synth_tiny_train"]
    assert main([*argv, "--calib-frames", "1000"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and "16 frames, fewer than the 1000 asked for calibration" in line
    assert not (tmp_path / "o").exists()


def test_torch_backend_runs_fp16_exports_and_refuses_int8(exports):
    """The torch backend computes in float32 with the fp16 export's float16 I/O; int8 needs a Q/DQ runtime."""
    manifest = Manifest.load(exports["fp16"])
    results = stream(StreamingRuntime(manifest, torch_backend(exports["fp16"], manifest)), video(FRAME_SIZE))
    expected = detections(exports["fp32"])
    assert match_share(expected, results, FP16_SCORE_TOLERANCE, FP16_BOX_TOLERANCE) >= 0.9
    with pytest.raises(SltnetError, match="an int8 export runs on onnxruntime or tensorrt"):
        torch_backend(exports["int8"], Manifest.load(exports["int8"]))
