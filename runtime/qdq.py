"""INT8 Q/DQ graphs for onnxruntime's CPU provider (docs/export.md#precision).

An INT8 export is TensorRT's kind of Q/DQ graph: symmetric int8 activations (zero point 0) and
float biases. onnxruntime's x86 integer kernels want uint8 activations and int32 biases, and fall
back to slow paths otherwise, so the onnxruntime backend opens such a graph for its CPU provider
after two rewrites:

- every activation Q/DQ pair (int8, scale s, zero point 0) becomes the uint8 pair (scale s, zero
  point 128): Q gives round(x / s) clamped to [-128, 127] plus 128, DQ subtracts 128 again, so the
  values the graph computes with are exactly the same;
- the float bias of a quantized Conv or Gemm becomes an int32 tensor with its own
  DequantizeLinear (scale = input scale x weight scale per output channel), the form onnxruntime
  fuses into QLinearConv / QGemm; the bias is rounded to a step of that scale, far below the
  rounding the int8 weights and activations already bring.

The graph on disk is left as exported.
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

QUANTIZE = "QuantizeLinear"
DEQUANTIZE = "DequantizeLinear"
#: Quantized ops whose third input is a bias.
BIASED_OPS = ("Conv", "Gemm")


def has_int8_activations(model: onnx.ModelProto) -> bool:
    """Whether ``model`` holds an activation QuantizeLinear with an int8 zero point."""
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    return any(
        node.op_type == QUANTIZE
        and len(node.input) > 2
        and node.input[2] in initializers
        and initializers[node.input[2]].data_type == onnx.TensorProto.INT8
        for node in model.graph.node
    )


def _scalar(initializers: dict[str, onnx.TensorProto], name: str) -> np.ndarray:
    return numpy_helper.to_array(initializers[name])


def _uint8_activations(graph: onnx.GraphProto, initializers: dict[str, onnx.TensorProto]) -> None:
    """Rewrite every activation Q and the DQ nodes it feeds to uint8 with zero point 128."""
    quantized = {node.output[0] for node in graph.node if node.op_type == QUANTIZE}
    for node in graph.node:
        activation = (node.op_type == QUANTIZE and node.input[0] not in initializers) or (
            node.op_type == DEQUANTIZE and node.input[0] in quantized
        )
        if not activation or len(node.input) < 3:
            continue
        zero_point = _scalar(initializers, node.input[2])
        if zero_point.dtype != np.int8:
            continue
        name = f"{node.name}_zero_point_uint8"
        shifted = (zero_point.astype(np.int16) + 128).astype(np.uint8)
        graph.initializer.append(numpy_helper.from_array(shifted, name))
        initializers[name] = graph.initializer[-1]
        node.input[2] = name


def _int32_biases(graph: onnx.GraphProto, initializers: dict[str, onnx.TensorProto]) -> None:
    """Give each quantized Conv / Gemm with a float bias an int32 bias behind a DequantizeLinear."""
    producers = {output: node for node in graph.node for output in node.output}
    added = []
    for node in graph.node:
        if node.op_type not in BIASED_OPS or len(node.input) < 3 or node.input[2] not in initializers:
            continue
        source, weight = (producers.get(name) for name in node.input[:2])
        if source is None or weight is None or source.op_type != DEQUANTIZE or weight.op_type != DEQUANTIZE:
            continue
        bias = _scalar(initializers, node.input[2]).astype(np.float64)
        scale = _scalar(initializers, source.input[1]).astype(np.float64) * _scalar(
            initializers, weight.input[1]
        ).astype(np.float64)
        scale = np.broadcast_to(scale, bias.shape)
        quantized = np.round(bias / scale).clip(np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
        names = [f"{node.name}_bias_{part}" for part in ("int32", "scale", "zero_point", "dequantized")]
        graph.initializer.extend(
            [
                numpy_helper.from_array(quantized, names[0]),
                numpy_helper.from_array(scale.astype(np.float32), names[1]),
                numpy_helper.from_array(np.zeros(bias.shape, np.int32), names[2]),
            ]
        )
        added.append(onnx.helper.make_node(DEQUANTIZE, names[:3], [names[3]], name=names[3], axis=0))
        node.input[2] = names[3]
    # The bias DequantizeLinear nodes depend on initializers only: first in topological order.
    for dequantize in reversed(added):
        graph.node.insert(0, dequantize)


def for_cpu_provider(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the INT8 export's graph ``model`` rewritten for onnxruntime's CPU kernels (module
    docstring); other graphs are returned unchanged."""
    if not has_int8_activations(model):
        return model
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    graph = rewritten.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    _uint8_activations(graph, initializers)
    _int32_biases(graph, initializers)
    # The replaced zero points and float biases (onnxruntime would warn about each one).
    used = {name for node in graph.node for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return rewritten


def cpu_provider_graph(path: str | Path) -> str | bytes:
    """What the onnxruntime CPU provider opens for the graph at ``path``: the rewritten INT8 graph
    (serialized), or the path itself."""
    model = onnx.load(str(path))
    rewritten = for_cpu_provider(model)
    return str(path) if rewritten is model else rewritten.SerializeToString()
