"""Static TensorRT check of an ONNX graph against ``shared/tensorrt_onnx_ops.tsv``
(docs/deployment.md#the-deployment-split).

TensorRT only runs where a GPU and the ``tensorrt`` package exist; this check needs neither. For every
node (after inlining local functions, including nodes of subgraphs) it verifies:

- the operator is in the table and marked supported (default ONNX domain only);
- its data tensors have a type the table lists: the inputs/outputs whose type constraint in the ONNX
  schema admits several types, other than index-only ones (int32/int64), e.g. ``X`` of ``Where``
  but not its bool ``condition``, or ``data`` of ``Gather`` but not its ``indices``;
- explicit quantization (QuantizeLinear / DequantizeLinear, how an INT8 graph states its precision):
  the quantized side (Q's output and zero point, DQ's input and zero point) has a type the table
  gives DequantizeLinear (INT8, FP8, INT4: not UINT8), the float side one it gives QuantizeLinear,
  and the zero point is a constant of zeros (TensorRT quantizes symmetrically);
- the table's restrictions: inputs it requires to be initializers / constant tensors (an initializer
  or a ``Constant`` node's output, which the parser imports as weights), TopK ``sorted`` = 1 with a
  constant K < 3840, Resize modes without antialiasing, MaxPool without ``Indices`` and with unit
  dilations, Constant without sparse or string values, ScatterND without reduction;
- the conditions this project relies on beyond the table: NonMaxSuppression with constant
  parameters over at most 5000 boxes (TensorRT ignores boxes past the best 5000), and RoiAlign at
  opset >= 16 with an explicit ``coordinate_transformation_mode=half_pixel`` and an explicit
  ``sampling_ratio`` > 0 (TensorRT reads a missing ratio as 1, ONNX as 0 = adaptive).

A restriction text this check cannot verify is reported for the node as well, so a pass means every
condition of the table was checked.
"""

import csv
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import onnx.inliner
from onnx import numpy_helper

from sltnet.errors import SltnetError

OPS_TABLE_NAME = "tensorrt_onnx_ops.tsv"
TOPK_LIMIT = 3840  # K must be below
NMS_BOX_LIMIT = 5000  # boxes TensorRT's NMS looks at

# ONNX element types by the names the table uses. "INF64" is the table's spelling of INT64 in one row;
# TensorRT's FP8 is E4M3.
_TABLE_TYPE_NAMES = {
    "FP32": "FLOAT",
    "FP16": "FLOAT16",
    "BF16": "BFLOAT16",
    "FP64": "DOUBLE",
    "FP8": "FLOAT8E4M3FN",
    "INF64": "INT64",
}
_INDEX_TYPES = {"tensor(int32)", "tensor(int64)"}
_CONSTANT_SENTENCE = re.compile(
    r"^`(\w+)` (?:input )?must be (?:an initializer|a constant tensor|a build-time constant)$"
)
_RESIZE_TRANSFORMS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_NEAREST_MODES = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}


@dataclass(frozen=True)
class OpSupport:
    """One row of the table: supported types (ONNX element type names) and restriction text."""

    supported: bool
    types: frozenset
    restrictions: str


class Problem(NamedTuple):
    """A node TensorRT cannot run as the graph states it."""

    node: str
    op_type: str
    message: str

    def __str__(self) -> str:
        return f"node {self.node!r} ({self.op_type}): {self.message}"


def default_ops_table() -> Path:
    """The operator table shipped with the package (a copy of the project's
    ``shared/tensorrt_onnx_ops.tsv``: TensorRT 10's ONNX operator support matrix)."""
    return Path(__file__).resolve().parent / OPS_TABLE_NAME


def load_ops_table(path: str | Path) -> dict[str, OpSupport]:
    """Read the operator table (``#`` comment lines, then a header ``op supported types restrictions``)."""
    path = Path(path)
    if not path.is_file():
        raise SltnetError(f"{path}: operator table not found")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    rows = list(csv.reader(lines, delimiter="\t"))
    if not rows or rows[0][:4] != ["op", "supported", "types", "restrictions"]:
        raise SltnetError(f"{path}: expected a header 'op<TAB>supported<TAB>types<TAB>restrictions'")
    table = {}
    for row in rows[1:]:
        op, supported, types, restrictions = (row + [""] * 4)[:4]
        names = {_TABLE_TYPE_NAMES.get(name.strip(), name.strip()) for name in types.split(",") if name.strip()}
        table[op] = OpSupport(supported.strip() == "Y", frozenset(names), restrictions.strip())
    return table


class _Graph:
    """Types, shapes and constants of a model's values, for the node checks."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.types: dict[str, int] = {}
        self.shapes: dict[str, list[int]] = {}
        self._initializers: dict[str, onnx.TensorProto] = {}
        self._constant_nodes: dict[str, onnx.NodeProto] = {}
        for graph in _graphs(model.graph):
            for value in [*graph.input, *graph.output, *graph.value_info]:
                tensor_type = value.type.tensor_type
                self.types[value.name] = tensor_type.elem_type
                self.shapes[value.name] = [
                    d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim
                ]
            for initializer in graph.initializer:
                self.types[initializer.name] = initializer.data_type
                self._initializers[initializer.name] = initializer
            for node in graph.node:
                if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                    self._constant_nodes[node.output[0]] = node

    def type_name(self, value: str) -> str:
        elem_type = self.types.get(value, onnx.TensorProto.UNDEFINED)
        return onnx.TensorProto.DataType.Name(elem_type)

    def is_constant(self, value: str) -> bool:
        """An initializer or a Constant node's output (the parser imports both as weights)."""
        return value in self._initializers or value in self._constant_nodes

    def constant(self, value: str) -> np.ndarray:
        """The value of a constant (:meth:`is_constant`), converted only when asked for."""
        if value in self._initializers:
            return numpy_helper.to_array(self._initializers[value])
        attribute = self._constant_nodes[value].attribute[0]  # a Constant node has one value attribute
        if attribute.name == "value":
            return numpy_helper.to_array(attribute.t)
        return np.array(onnx.helper.get_attribute_value(attribute))


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and all its subgraphs (If/Loop/Scan bodies)."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graphs(subgraph)


def _attribute(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            value = onnx.helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _has_attribute(node: onnx.NodeProto, name: str) -> bool:
    return any(attribute.name == name for attribute in node.attribute)


def _input(node: onnx.NodeProto, schema: onnx.defs.OpSchema, name: str) -> str | None:
    """The node's value for the schema's input ``name`` (None where absent)."""
    for index, formal in enumerate(schema.inputs):
        if formal.name == name:
            return node.input[index] if index < len(node.input) and node.input[index] else None
    return None


def _parameters(node: onnx.NodeProto, schema: onnx.defs.OpSchema) -> Iterator[tuple[str, str, str]]:
    """(schema name, type string, value) of each input and output the node gives."""
    for values, formals in ((node.input, schema.inputs), (node.output, schema.outputs)):
        for index, value in enumerate(values):
            if value and formals:
                formal = formals[min(index, len(formals) - 1)]  # variadic parameters come last
                yield formal.name, formal.type_str, value


def _type_problem(name: str, value: str, allowed: frozenset, graph: _Graph) -> list[str]:
    type_name = graph.type_name(value)
    return (
        [] if type_name in allowed else [f"{name} {value!r} has type {type_name}, TensorRT supports {sorted(allowed)}"]
    )


def _type_problems(node: onnx.NodeProto, schema: onnx.defs.OpSchema, support: OpSupport, graph: _Graph) -> list[str]:
    constraints = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    problems = []
    for name, type_str, value in _parameters(node, schema):
        allowed = constraints.get(type_str)
        if allowed is not None and len(allowed) >= 2 and not allowed <= _INDEX_TYPES:
            problems += _type_problem(name, value, support.types, graph)
    return problems


# The quantized side of each explicit-quantization operator (the rest is its float side) and its zero point.
_QUANTIZED = {
    "QuantizeLinear": (("y", "y_zero_point"), "y_zero_point"),
    "DequantizeLinear": (("x", "x_zero_point"), "x_zero_point"),
}
_NOT_IN_TABLE = OpSupport(False, frozenset(), "")


def _quantization_problems(
    node: onnx.NodeProto, schema: onnx.defs.OpSchema, table: dict[str, OpSupport], graph: _Graph
) -> list[str]:
    """QuantizeLinear / DequantizeLinear: types of both sides, and a constant zero point of zeros. A
    missing zero point is 0; a QuantizeLinear without one outputs uint8 (ONNX's default)."""
    quantized, zero_point_name = _QUANTIZED[node.op_type]
    problems = []
    for name, _, value in _parameters(node, schema):
        side = "DequantizeLinear" if name in quantized else "QuantizeLinear"
        problems += _type_problem(name, value, table.get(side, _NOT_IN_TABLE).types, graph)
    zero_point = _input(node, schema, zero_point_name)
    if zero_point is None:
        return problems
    if not graph.is_constant(zero_point):
        return problems + [f"{zero_point_name} ({zero_point!r}) must be a constant of zeros"]
    nonzero = np.flatnonzero(graph.constant(zero_point))
    if nonzero.size:
        first = graph.constant(zero_point).reshape(-1)[nonzero[0]]
        problems.append(
            f"{zero_point_name} {zero_point!r} must be 0 (TensorRT quantizes symmetrically), "
            f"{nonzero.size} values are not, e.g. {first}"
        )
    return problems


def _require_constant(node: onnx.NodeProto, schema: onnx.defs.OpSchema, name: str, graph: _Graph) -> list[str]:
    value = _input(node, schema, name)
    if value is not None and not graph.is_constant(value):
        return [f"input '{name}' ({value!r}) must be a constant (initializer or Constant node)"]
    return []


def _check_topk(node: onnx.NodeProto, schema: onnx.defs.OpSchema, graph: _Graph) -> list[str]:
    problems = [] if _attribute(node, "sorted", 1) == 1 else ["'sorted' must be 1"]
    k = _input(node, schema, "K")
    if k is None or not graph.is_constant(k):
        return problems + [f"K ({k!r}) must be a constant below {TOPK_LIMIT}"]
    k_value = int(np.max(graph.constant(k)))
    if k_value >= TOPK_LIMIT:
        problems.append(f"K = {k_value} must be below {TOPK_LIMIT}")
    return problems


def _check_nms(node: onnx.NodeProto, schema: onnx.defs.OpSchema, graph: _Graph) -> list[str]:
    problems = [
        problem
        for name in ("max_output_boxes_per_class", "iou_threshold", "score_threshold")
        for problem in _require_constant(node, schema, name, graph)
    ]
    shape = graph.shapes.get(node.input[0], [])
    if len(shape) != 3 or shape[1] < 0:
        problems.append(f"boxes need a static 3-D shape, got {shape}")
    elif shape[1] > NMS_BOX_LIMIT:
        problems.append(f"{shape[1]} boxes: TensorRT's NMS considers only the best {NMS_BOX_LIMIT}")
    return problems


def _check_roi_align(node: onnx.NodeProto, schema: onnx.defs.OpSchema, graph: _Graph) -> list[str]:
    problems = []
    if graph.opset < 16:
        problems.append(f"opset {graph.opset}: aligned RoIAlign (half_pixel) needs opset >= 16")
    if _attribute(node, "coordinate_transformation_mode") != "half_pixel":
        problems.append("coordinate_transformation_mode must be written as 'half_pixel'")
    if not _has_attribute(node, "sampling_ratio") or _attribute(node, "sampling_ratio") <= 0:
        problems.append(
            "sampling_ratio must be written explicitly and > 0 (backends disagree on 0 and on a missing value)"
        )
    return problems


def _check_resize(node: onnx.NodeProto, schema: onnx.defs.OpSchema, graph: _Graph) -> list[str]:
    problems = []
    transform = _attribute(node, "coordinate_transformation_mode", "half_pixel")
    if transform not in _RESIZE_TRANSFORMS:
        problems.append(f"coordinate_transformation_mode {transform!r} is not supported")
    mode = _attribute(node, "mode", "nearest")
    if mode not in ("nearest", "linear"):
        problems.append(f"mode {mode!r} is not supported")
    nearest_mode = _attribute(node, "nearest_mode", "round_prefer_floor")
    if mode == "nearest" and nearest_mode not in _RESIZE_NEAREST_MODES:
        problems.append(f"nearest_mode {nearest_mode!r} is not supported")
    if _attribute(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        problems.append("keep_aspect_ratio_policy must be 'stretch'")
    if _attribute(node, "antialias", 0):
        problems.append("antialiasing is not supported")
    axes = _attribute(node, "axes")
    rank = len(graph.shapes.get(node.input[0], []))
    if axes is not None and list(axes) != list(range(rank)):
        problems.append(f"axes {list(axes)} must be 0..rank-1")
    return problems


def _check_pool(node: onnx.NodeProto, schema: onnx.defs.OpSchema, graph: _Graph) -> list[str]:
    problems = []
    if len(_attribute(node, "kernel_shape", [])) not in (2, 3):
        problems.append("only 2-D or 3-D pooling is supported")
    if any(d != 1 for d in _attribute(node, "dilations", [])):
        problems.append("dilations must be empty or all ones")
    if len(node.output) > 1 and node.output[1]:
        problems.append("the Indices output is not supported")
    return problems


def _check_constant(node: onnx.NodeProto, schema: onnx.defs.OpSchema, graph: _Graph) -> list[str]:
    unsupported = [name for name in ("sparse_value", "value_string", "value_strings") if _has_attribute(node, name)]
    return [f"attribute {name!r} is not supported" for name in unsupported]


def _check_scatter_nd(node: onnx.NodeProto, schema: onnx.defs.OpSchema, graph: _Graph) -> list[str]:
    return [] if _attribute(node, "reduction", "none") == "none" else ["'reduction' is not supported"]


_NodeCheck = Callable[[onnx.NodeProto, onnx.defs.OpSchema, _Graph], list[str]]
_OP_CHECKS: dict[str, _NodeCheck] = {
    "TopK": _check_topk,
    "NonMaxSuppression": _check_nms,
    "RoiAlign": _check_roi_align,
    "Resize": _check_resize,
    "MaxPool": _check_pool,
    "AveragePool": _check_pool,
    "LpPool": _check_pool,
    "Constant": _check_constant,
    "ScatterND": _check_scatter_nd,
}


def _restriction_problems(
    node: onnx.NodeProto, schema: onnx.defs.OpSchema, support: OpSupport, graph: _Graph
) -> list[str]:
    if node.op_type in _OP_CHECKS:
        return _OP_CHECKS[node.op_type](node, schema, graph)
    problems = []
    for sentence in filter(None, (s.strip() for s in support.restrictions.rstrip(".").split(". "))):
        match = _CONSTANT_SENTENCE.match(sentence)
        if match is None:
            problems.append(f"restriction not verified by this check: {sentence}")
        else:
            problems += _require_constant(node, schema, match.group(1), graph)
    return problems


def check_model(model: onnx.ModelProto | str | Path, table: dict[str, OpSupport]) -> list[Problem]:
    """Every problem TensorRT would have with the graph's nodes (empty: the graph passes).

    Args:
        model: an ONNX model or its file.
        table: :func:`load_ops_table`.
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    model = onnx.shape_inference.infer_shapes(onnx.inliner.inline_local_functions(model))
    graph = _Graph(model)
    problems = []
    for subgraph in _graphs(model.graph):
        for index, node in enumerate(subgraph.node):
            name = node.name or f"#{index}"
            for message in _node_problems(node, table, graph):
                problems.append(Problem(name, node.op_type, message))
    return problems


def _node_problems(node: onnx.NodeProto, table: dict[str, OpSupport], graph: _Graph) -> list[str]:
    if node.domain not in ("", "ai.onnx"):
        return [f"custom domain {node.domain!r}: TensorRT's ONNX parser has no such operator"]
    support = table.get(node.op_type)
    if support is None:
        return ["operator not in the TensorRT operator table"]
    if not support.supported:
        return ["operator not supported by TensorRT"]
    schema = onnx.defs.get_schema(node.op_type, graph.opset, node.domain)
    if node.op_type in _QUANTIZED:
        return _quantization_problems(node, schema, table, graph)
    return _type_problems(node, schema, support, graph) + _restriction_problems(node, schema, support, graph)
