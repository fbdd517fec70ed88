"""Reduced-precision engines: the float32 export's graphs rewritten as FP16 graphs or as INT8 graphs
with explicit Q/DQ nodes (docs/export.md#precision).

Both are *strongly typed* graphs: the precision of every tensor is the graph's own, which is what
TensorRT 10 (``STRONGLY_TYPED``) and 11 build, and what onnxruntime runs as it is. The rewriting
is done by onnxruntime's own, maintained tools rather than by hand:

- FP16: ``onnxruntime.transformers.float16.convert_float_to_float16`` with a node block list and
  the float32 I/O kept. Which nodes stay float32 is decided by :func:`float16_nodes`.
- INT8: ``onnxruntime.quantization.quantize_static`` in QDQ format (after onnxruntime's
  pre-processing, which folds the frozen batch norms into the convolutions), symmetric per-channel int8
  weights and symmetric int8 activations (zero point 0, TensorRT's rule), on Conv, MatMul and Gemm,
  calibrated on real frames (frame engine) and on the real windows and memory that streaming those
  frames produces (temporal engine, :mod:`export.calibration`).
"""

import logging
import os
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import onnx
import onnxruntime
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel
from tqdm import tqdm

from export.calibration import RecordedInputs, calibration_videos, recorded_inputs
from export.onnx_export import tensor_specs
from sltnet.contract import (
    FEATURES,
    CalibrationSection,
    EngineSection,
    EnginesSection,
    Manifest,
    Precision,
    PrecisionSection,
)
from sltnet.data.records import StCocoDataset

#: Module scopes whose nodes start the FP16 region of the frame engine: the backbone and the RPN
#: head's convolutions, where the time goes. (In the temporal engine it starts at the feature inputs.)
FLOAT16_SEED_SCOPES = ("/backbone/", "/rpn/head/")
#: Scopes that stay float32 whatever feeds them: the normalisation of the uint8 image, anchor
#: generation and box decoding (``/rpn/`` outside its head), and the class-score and box-delta
#: predictors whose outputs go through softmax, score fusion and box decoding.
FLOAT32_SCOPES = ("/preprocessor/", "/box_predictor/", "/st_cls_predictor/")
FLOAT32_RPN_SCOPE = "/rpn/"
#: Op types computed in float32 even inside the FP16 region (their results continue in float16):
#: RoIAlign takes boxes and features in one type, and the boxes need float32; NMS and top-k select
#: by score; softmax turns logits into the probabilities that are compared and fused.
FLOAT32_OPS = frozenset({"RoiAlign", "NonMaxSuppression", "TopK", "Softmax"})
#: The rule of :func:`float16_nodes`, as the manifest states it.
FLOAT32_RULE = (
    "float32: image normalisation, anchors and box decoding, the box and class predictors, RoiAlign, NMS, TopK, "
    "Softmax, and every node computed only from float32 tensors (the boxes' geometry embedding); float16: the "
    "backbone, the RPN head and everything computed from features"
)
#: Op types whose float32 nodes the manifest names (the others are cheap or integer shape arithmetic).
LISTED_OPS = frozenset({"Conv", "Gemm", "MatMul", "RoiAlign", "Softmax", "Sin", "Cos", "Exp", "Log"})

#: Op types that get explicit Q/DQ in an INT8 export, per engine. In the frame engine the residual
#: additions, ReLUs and max pooling between the convolutions are quantized too, so the backbone runs
#: from one integer convolution to the next without a float round trip (measured: 1.5x faster
#: than Conv alone on onnxruntime's CPU provider).
QUANTIZED_OPS = {"frame": ("Conv", "Add", "Relu", "MaxPool"), "temporal": ("MatMul", "Gemm")}
INT8_FLOAT_RULE = (
    "the quantized op types get Q/DQ except the nodes an fp16 export keeps float32 (excluded_nodes): image "
    "normalisation, anchors and box decoding, the box and class predictors, the geometry embedding; every "
    "other op computes in float32"
)
CALIBRATION_METHOD = CalibrationMethod.MinMax


class Calibration(NamedTuple):
    """What an INT8 export is calibrated on: ``frames`` frames of the dataset called ``name``."""

    name: str
    dataset: StCocoDataset
    frames: int


def _in_scope(name: str, scopes: Iterable[str]) -> bool:
    return any(name.startswith(scope) for scope in scopes)


def _in_float32_scope(node: onnx.NodeProto) -> bool:
    rpn_outside_head = node.name.startswith(FLOAT32_RPN_SCOPE) and not node.name.startswith("/rpn/head/")
    return rpn_outside_head or _in_scope(node.name, FLOAT32_SCOPES)


def is_feature_tensor(name: str) -> bool:
    """Whether an engine I/O tensor carries features (float16 in an FP16 export): the frame engine's
    mosaic, the window slots' and memory slots' features, and the memory entry's."""
    return name == FEATURES or name.endswith(f"_{FEATURES}")


def float16_nodes(graph: onnx.GraphProto) -> set[str]:
    """Names of the nodes an FP16 export computes in float16.

    The FP16 region starts at the seed scopes (:data:`FLOAT16_SEED_SCOPES`) and the graph's feature
    inputs and takes in every node computed from it, except the float32 scopes
    (:data:`FLOAT32_SCOPES`, anchors and box decoding), which it does not cross, and the
    :data:`FLOAT32_OPS`, which it crosses (they compute in float32). Nodes computed only from
    float32 tensors, such as the geometry embedding of the boxes (whose x100 sine and cosine
    amplify rounding), stay float32.
    """
    half_tensors = {value.name for value in graph.input if is_feature_tensor(value.name)}
    half = set()
    for node in graph.node:  # ONNX graphs are topologically sorted
        if node.op_type == "Constant" or _in_float32_scope(node):
            continue
        if _in_scope(node.name, FLOAT16_SEED_SCOPES) or any(name in half_tensors for name in node.input):
            half_tensors.update(node.output)
            if node.op_type not in FLOAT32_OPS:
                half.add(node.name)
    return half


def listed_float32_nodes(graph: onnx.GraphProto, half: Collection[str]) -> list[str]:
    """The float32 nodes of the op types worth naming (:data:`LISTED_OPS`)."""
    return [node.name for node in graph.node if node.op_type in LISTED_OPS and node.name not in half]


def _float_io(model: onnx.ModelProto) -> list[str]:
    values = [*model.graph.input, *model.graph.output]
    return [value.name for value in values if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]


def convert_to_float16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """The FP16 graph of a float32 engine: feature I/O in float16, other float I/O kept float32.

    Returns:
        the converted graph and its float32 nodes of :data:`LISTED_OPS`.
    """
    half = float16_nodes(model.graph)
    blocked = [node.name for node in model.graph.node if node.name not in half]
    keep_float32_io = [name for name in _float_io(model) if not is_feature_tensor(name)]
    listed = listed_float32_nodes(model.graph, half)
    converted = convert_float_to_float16(
        model, keep_io_types=keep_float32_io, op_block_list=[], node_block_list=blocked
    )
    _fold_constant_casts(converted.graph)
    _remove_float16_round_trips(converted.graph, _float32_tensors(model))
    # The converter appends its Cast nodes out of order; ONNX wants the graph topologically sorted.
    OnnxModel(converted).topological_sort()
    return converted, listed


def _float32_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of the float32 tensors of a graph (by ONNX shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {value.name for value in values if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}


def _remove_float16_round_trips(graph: onnx.GraphProto, float32_tensors: set[str]) -> None:
    """Connect float32 nodes directly where the converter went through float16 between them.

    The converter casts every input of a blocked node to float32 and every output to float16, so
    two float32 nodes in a row exchange their tensor through a float16 Cast and back, which rounds
    it: each Cast-to-float32 of a Cast-to-float16 of a float32 tensor is replaced by that tensor.
    """
    producers = {output: node for node in graph.node for output in node.output}
    replaced = {}
    for node in graph.node:
        if node.op_type != "Cast" or onnx.helper.get_attribute_value(node.attribute[0]) != onnx.TensorProto.FLOAT:
            continue
        source = producers.get(node.input[0])
        # The converter renames the float32 producer's output and gives its original (float32)
        # name to the Cast to float16.
        if source is None or source.op_type != "Cast" or source.output[0] not in float32_tensors:
            continue
        if onnx.helper.get_attribute_value(source.attribute[0]) == onnx.TensorProto.FLOAT16:
            replaced[node.output[0]] = source.input[0]
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in replaced:
                node.input[index] = replaced[name]
    _remove_unused_casts(graph)


def _remove_unused_casts(graph: onnx.GraphProto) -> None:
    """Remove Cast nodes whose output nothing reads, and then those that only they read."""
    while True:
        used = {name for node in graph.node for name in node.input} | {value.name for value in graph.output}
        unused = [node for node in graph.node if node.op_type == "Cast" and node.output[0] not in used]
        if not unused:
            return
        for node in unused:
            graph.node.remove(node)


def _fold_constant_casts(graph: onnx.GraphProto) -> None:
    """Replace each Cast of a constant by the cast constant. The converter makes float16 copies of
    shared constants and casts them back for float32 nodes; TensorRT needs some of those inputs
    (NMS thresholds) to be constants, not computed."""
    constants = {tensor.name: tensor for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    folded = True
    while folded:  # a constant may be cast twice (to float16 and back), and the graph is not sorted yet
        folded = False
        for node in list(graph.node):
            if node.op_type != "Cast" or node.input[0] not in constants:
                continue
            to = onnx.helper.get_attribute_value(node.attribute[0])
            value = numpy_helper.to_array(constants[node.input[0]]).astype(onnx.helper.tensor_dtype_to_np_dtype(to))
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            constants[node.output[0]] = graph.initializer[-1]
            graph.node.remove(node)
            folded = True


def int8_excluded_nodes(model: onnx.ModelProto, op_types: Collection[str]) -> list[str]:
    """The nodes of ``op_types`` an INT8 export leaves floating-point: those an FP16 export keeps
    float32 (box decoding, the predictors, the geometry embedding), by the same rule."""
    half = float16_nodes(model.graph)
    return [node.name for node in model.graph.node if node.op_type in op_types and node.name not in half]


def float16_converter() -> str:
    return f"onnxruntime.transformers.float16.convert_float_to_float16 (onnxruntime {onnxruntime.__version__})"


def int8_converter() -> str:
    return (
        f"onnxruntime.quantization.quantize_static after quant_pre_process, QDQ, {CALIBRATION_METHOD.name} calibration "
        f"(onnxruntime {onnxruntime.__version__})"
    )


def prepare_for_quantization(float32_path: Path) -> Path:
    """Write the graph at ``float32_path`` as the quantizer should see it, beside it, and return its path.

    onnxruntime's pre-processing (``quant_pre_process``: its basic graph optimizations) folds each
    frozen batch norm (a Mul and an Add after its convolution) into the convolution's weights and
    bias, so that one quantized convolution replaces what would otherwise be a convolution, a
    float round trip and two float ops (measured: the frame engine's float Mul/Add and Q/DQ time).
    The result is plain ONNX with the node names kept.
    """
    prepared = float32_path.with_name(f".{float32_path.stem}.prepared.onnx")
    with _quiet_root_logger():
        quant_pre_process(str(float32_path), str(prepared), skip_symbolic_shape=True)
    return prepared


def quantize_to_int8(
    float32_path: Path,
    out_path: Path,
    calibration: CalibrationDataReader,
    op_types: Collection[str],
    excluded_nodes: Collection[str],
) -> None:
    """Write the INT8 Q/DQ graph of a float32 engine to ``out_path`` (inside an export's staging
    folder: the export replaces its folder as a whole).

    Weights: per-channel symmetric int8 in [-127, 127]; activations: per-tensor symmetric int8, zero
    point 0; the nodes of ``op_types`` quantized except ``excluded_nodes``.
    """
    with _quiet_root_logger():
        quantize_static(
            str(float32_path),
            str(out_path),
            calibration,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(excluded_nodes),
            calibrate_method=CALIBRATION_METHOD,
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                # TensorRT dequantizes int8 only: biases stay float (runtime.qdq gives onnxruntime's
                # CPU kernels the int32 biases they want).
                "QuantizeBias": False,
                # Bounded memory: ranges are merged every 64 calibration inputs (the same result).
                "CalibMaxIntermediateOutputs": 64,
            },
        )


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """The quantizer logs its advice through the root logger, once per engine: not for our users."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _engine_section(directory: Path, engine: EngineSection) -> EngineSection:
    """``engine`` with the tensors of its (rewritten) graph."""
    graph = onnx.load(str(directory / engine.onnx), load_external_data=False).graph
    return engine.model_copy(update={"inputs": tensor_specs(graph.input), "outputs": tensor_specs(graph.output)})


def _to_float16(directory: Path, manifest: Manifest) -> PrecisionSection:
    listed = {}
    for name, engine in manifest.engines.items():
        path = directory / engine.onnx
        converted, listed[name] = convert_to_float16(onnx.load(str(path)))
        onnx.save(converted, str(path))
    return PrecisionSection(
        precision="fp16", converter=float16_converter(), float32_rule=FLOAT32_RULE, float32_nodes=listed
    )


def _to_int8(directory: Path, manifest: Manifest, calibration: Calibration) -> PrecisionSection:
    videos = calibration_videos(calibration.dataset, calibration.frames)
    excluded, quantized = {}, {}
    # Both engines are calibrated on the float32 graphs, which are replaced only at the end.
    for name, engine in manifest.engines.items():
        path = directory / engine.onnx
        prepared = prepare_for_quantization(path)
        excluded[name] = int8_excluded_nodes(onnx.load(str(prepared)), QUANTIZED_OPS[name])
        quantized[name] = path.with_name(f".{path.stem}.int8.onnx")
        with tqdm(total=calibration.frames, desc=f"calibrating the {name} engine", unit="frame") as progress:
            inputs = recorded_inputs(directory, manifest, videos, name, progress)
            quantize_to_int8(prepared, quantized[name], RecordedInputs(inputs), QUANTIZED_OPS[name], excluded[name])
        prepared.unlink()
    for name, engine in manifest.engines.items():
        os.replace(quantized[name], directory / engine.onnx)
    return PrecisionSection(
        precision="int8",
        converter=int8_converter(),
        float32_rule=INT8_FLOAT_RULE,
        quantized_op_types={name: list(ops) for name, ops in QUANTIZED_OPS.items()},
        excluded_nodes=excluded,
        calibration=CalibrationSection(
            dataset=calibration.name, videos=len(videos), frames=calibration.frames, method=CALIBRATION_METHOD.name
        ),
    )


def convert_engines(
    directory: Path, manifest: Manifest, precision: Precision, calibration: Calibration | None = None
) -> Manifest:
    """Rewrite the float32 graphs of a fresh export in ``directory`` in ``precision``.

    Args:
        calibration: the frames to calibrate an int8 export on.
    Returns:
        the manifest of the rewritten export (tensor dtypes and the precision section).
    """
    if precision == "fp32":
        return manifest
    if precision == "fp16":
        section = _to_float16(directory, manifest)
    else:
        if calibration is None:
            raise ValueError("an int8 export needs calibration frames")
        section = _to_int8(directory, manifest, calibration)
    frame, temporal = (_engine_section(directory, engine) for _, engine in manifest.engines.items())
    return manifest.model_copy(update={"engines": EnginesSection(frame=frame, temporal=temporal), "precision": section})
