"""The static TensorRT check (``export/trt_check.py``) on small hand-built graphs, one per rule and
precision: FP16 and Q/DQ INT8 graphs TensorRT runs pass; each graph that breaks a rule fails with
the offending node named. The exported engines' graphs are checked in tests/test_export.py."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.trt_check import check_model, default_ops_table, load_ops_table

OPSET = 17  # the exports' opset


@pytest.fixture(scope="module")
def table():
    return load_ops_table(default_ops_table())


def model(nodes, inputs, outputs, initializers=(), opset: int = OPSET) -> onnx.ModelProto:
    """A model of ``nodes``; ``inputs`` / ``outputs`` are (name, element type, shape)."""
    graph = helper.make_graph(
        nodes,
        "check",
        [helper.make_tensor_value_info(*value) for value in inputs],
        [helper.make_tensor_value_info(*value) for value in outputs],
        list(initializers),
    )
    built = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(built, full_check=True)  # a valid ONNX graph: only TensorRT's rules are tested
    return built


def constant(name: str, values, dtype) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def problems_by_node(problems) -> dict[str, list[str]]:
    by_node: dict[str, list[str]] = {}
    for problem in problems:
        by_node.setdefault(problem.node, []).append(problem.message)
    return by_node


# ------------------------------------------------------------------------------------------------
# Graphs TensorRT runs
# ------------------------------------------------------------------------------------------------
def fp16_graph() -> onnx.ModelProto:
    """uint8 image -> FP16 conv, activation, pooling and top-k; an FP32 score output."""
    nodes = [
        helper.make_node("Cast", ["image"], ["image16"], name="to_fp16", to=TensorProto.FLOAT16),
        helper.make_node("Conv", ["image16", "weight", "bias"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("MaxPool", ["relu"], ["pooled"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["pooled", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("TopK", ["flat", "k"], ["top16", "indices"], name="topk", axis=-1),
        helper.make_node("Cast", ["top16"], ["top"], name="to_fp32", to=TensorProto.FLOAT),
    ]
    initializers = [
        constant("weight", np.ones((4, 3, 3, 3)), np.float16),
        constant("bias", np.zeros(4), np.float16),
        constant("flat_shape", [1, -1], np.int64),
        constant("k", [10], np.int64),
    ]
    return model(
        nodes,
        [("image", TensorProto.UINT8, [1, 3, 8, 8])],
        [("top", TensorProto.FLOAT, [1, 10]), ("indices", TensorProto.INT64, [1, 10])],
        initializers,
    )


def qdq_graph(zero_point_type=np.int8, zero_point: int = 0, quantized=TensorProto.INT8) -> onnx.ModelProto:
    """A Q/DQ-quantized activation and per-channel weights into a Conv (ONNX Runtime's QDQ format)."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"], name="quantize_x"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"], name="dequantize_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], name="dequantize_w", axis=0),
        helper.make_node("Conv", ["x_dq", "w"], ["y"], name="conv"),
    ]
    initializers = [
        constant("x_scale", 0.05, np.float32),
        constant("x_zero", zero_point, zero_point_type),
        helper.make_tensor("w_q", quantized, [2, 3, 1, 1], [1, -2, 3, 4, -5, 6]),
        constant("w_scale", [0.1, 0.2], np.float32),
        helper.make_tensor("w_zero", quantized, [2], [0, 0]),
    ]
    return model(
        nodes, [("x", TensorProto.FLOAT, [1, 3, 4, 4])], [("y", TensorProto.FLOAT, [1, 2, 4, 4])], initializers
    )


def test_an_fp16_graph_passes(table):
    assert check_model(fp16_graph(), table) == []


def test_a_symmetric_int8_qdq_graph_passes(table):
    assert check_model(qdq_graph(), table) == []


def test_a_dequantize_without_zero_point_passes(table):
    """A missing zero point is 0, and DequantizeLinear's output type follows its scale's."""
    graph = qdq_graph()
    graph.graph.node[2].input.pop()  # dequantize_w: x, x_scale
    assert check_model(graph, table) == []


# ------------------------------------------------------------------------------------------------
# Q/DQ: INT8 types, zero points all 0
# ------------------------------------------------------------------------------------------------
def test_a_qdq_pair_with_zero_point_128_fails_naming_both_nodes(table):
    """ONNX Runtime's asymmetric uint8 activations: TensorRT takes neither the type nor the zero point."""
    problems = check_model(qdq_graph(np.uint8, 128), table)
    by_node = problems_by_node(problems)
    int8_types = "['FLOAT8E4M3FN', 'INT4', 'INT8']"
    assert by_node == {
        "quantize_x": [
            f"y_zero_point 'x_zero' has type UINT8, TensorRT supports {int8_types}",
            f"y 'x_q' has type UINT8, TensorRT supports {int8_types}",
            "y_zero_point 'x_zero' must be 0 (TensorRT quantizes symmetrically), 1 values are not, e.g. 128",
        ],
        "dequantize_x": [
            f"x 'x_q' has type UINT8, TensorRT supports {int8_types}",
            f"x_zero_point 'x_zero' has type UINT8, TensorRT supports {int8_types}",
            "x_zero_point 'x_zero' must be 0 (TensorRT quantizes symmetrically), 1 values are not, e.g. 128",
        ],
    }
    assert str(problems[0]).startswith("node 'quantize_x' (QuantizeLinear): ")


def test_uint8_quantization_with_zero_point_0_fails_on_the_type(table):
    by_node = problems_by_node(check_model(qdq_graph(np.uint8, 0), table))
    assert set(by_node) == {"quantize_x", "dequantize_x"}
    assert all("has type UINT8" in message for messages in by_node.values() for message in messages)


def test_an_int8_zero_point_other_than_0_fails(table):
    by_node = problems_by_node(check_model(qdq_graph(np.int8, -3), table))
    assert by_node == {
        name: [f"{side}_zero_point 'x_zero' must be 0 (TensorRT quantizes symmetrically), 1 values are not, e.g. -3"]
        for name, side in (("quantize_x", "y"), ("dequantize_x", "x"))
    }


def test_a_per_channel_zero_point_with_one_nonzero_channel_fails(table):
    graph = qdq_graph()
    zero = next(i for i in graph.graph.initializer if i.name == "w_zero")
    zero.CopyFrom(helper.make_tensor("w_zero", TensorProto.INT8, [2], [0, 7]))
    assert problems_by_node(check_model(graph, table)) == {
        "dequantize_w": ["x_zero_point 'w_zero' must be 0 (TensorRT quantizes symmetrically), 1 values are not, e.g. 7"]
    }


def test_a_quantize_without_zero_point_outputs_uint8_and_fails(table):
    graph = qdq_graph()
    graph.graph.node[0].input.pop()  # quantize_x: x, y_scale -> uint8 output (ONNX's default)
    by_node = problems_by_node(check_model(graph, table))
    assert by_node["quantize_x"] == ["y 'x_q' has type UINT8, TensorRT supports ['FLOAT8E4M3FN', 'INT4', 'INT8']"]


def test_a_zero_point_computed_at_run_time_fails(table):
    graph = qdq_graph()
    graph.graph.initializer.remove(next(i for i in graph.graph.initializer if i.name == "x_zero"))
    graph.graph.input.append(helper.make_tensor_value_info("x_zero", TensorProto.INT8, []))
    by_node = problems_by_node(check_model(graph, table))
    assert by_node["quantize_x"] == ["y_zero_point ('x_zero') must be a constant of zeros"]
    assert by_node["dequantize_x"] == ["x_zero_point ('x_zero') must be a constant of zeros"]


# ------------------------------------------------------------------------------------------------
# Types per operator, TopK's K
# ------------------------------------------------------------------------------------------------
def test_a_type_the_table_does_not_list_for_the_operator_fails(table):
    """Cast to INT8 (the table's Cast has no INT8: INT8 comes only from Q/DQ)."""
    graph = model(
        [helper.make_node("Cast", ["x"], ["x8"], name="cast_to_int8", to=TensorProto.INT8)],
        [("x", TensorProto.FLOAT, [4])],
        [("x8", TensorProto.INT8, [4])],
    )
    assert problems_by_node(check_model(graph, table)) == {
        "cast_to_int8": [
            "output 'x8' has type INT8, TensorRT supports ['BFLOAT16', 'BOOL', 'FLOAT', 'FLOAT16', 'INT32', 'INT64', "
            "'UINT8']"
        ]
    }


def topk_graph(k: int | None) -> onnx.ModelProto:
    inputs = [("scores", TensorProto.FLOAT16, [5000])]
    initializers = []
    if k is None:
        inputs.append(("k", TensorProto.INT64, [1]))
    else:
        initializers.append(constant("k", [k], np.int64))
    return model(
        [helper.make_node("TopK", ["scores", "k"], ["values", "indices"], name="topk")],
        inputs,
        [("values", TensorProto.FLOAT16, [k or "k"]), ("indices", TensorProto.INT64, [k or "k"])],
        initializers,
    )


@pytest.mark.parametrize(
    "k, messages",
    [
        (3839, []),
        (3840, ["K = 3840 must be below 3840"]),
        (4000, ["K = 4000 must be below 3840"]),
        (None, ["K ('k') must be a constant below 3840"]),
    ],
)
def test_topk_needs_a_constant_k_below_3840(table, k, messages):
    assert [problem.message for problem in check_model(topk_graph(k), table)] == messages
