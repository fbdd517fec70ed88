"""TensorRT engines from the exported ONNX graphs (docs/deployment.md#tensorrt-and-onnx-runtime-facts),
TensorRT 10 Python API only.

Build: plugins initialised, ``create_network(0)`` (explicit batch, the only mode in TensorRT 10),
``OnnxParser.parse_from_file`` with every parser error reported, a workspace limit
(``set_memory_pool_limit(WORKSPACE, ...)``), a timing cache loaded from and saved to a file, an
optimization profile fixing the shape of any input the graph leaves dynamic (the exported graphs
have none), FP16 through the builder flag (deprecated since TensorRT 10.12 and gone in 11, hence
``tensorrt<11``), then ``build_serialized_network``; the plan is written atomically beside the ONNX.

``tensorrt`` is imported only when needed: without it, or without a CUDA GPU,
:func:`runtime.engines.tensorrt_unavailable` says why in one line.

Built engines are run by :mod:`runtime.engines` (named tensors, ``set_tensor_address`` +
``execute_async_v3`` on a dedicated CUDA stream, buffers from torch CUDA tensors).
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

from runtime.engines import tensorrt_unavailable
from sltnet.atomic_io import atomic_output
from sltnet.errors import SltnetError


def _parser_errors(parser, onnx_path: Path) -> str:
    """Every parser error on one line, with the ONNX node each one names."""
    import onnx

    nodes = onnx.load(str(onnx_path), load_external_data=False).graph.node
    messages = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        node = error.node()
        where = f"node {nodes[node].name!r} ({nodes[node].op_type}): " if 0 <= node < len(nodes) else ""
        messages.append(f"{where}{error.desc()}")
    return "; ".join(messages) or "no parser error recorded"


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    fp16: bool,
    workspace_mib: int,
    timing_cache: Path,
    input_shapes: Mapping[str, Sequence[int]],
) -> None:
    """Build and serialize one engine.

    Args:
        onnx_path: the ONNX graph.
        engine_path: where the plan is written (atomically).
        fp16: allow FP16 kernels (``BuilderFlag.FP16``).
        workspace_mib: limit of the builder's workspace memory pool.
        timing_cache: read if present, then rewritten with what this build measured.
        input_shapes: the fixed shape of every input, used for inputs the graph leaves dynamic.
    Raises:
        SltnetError: TensorRT is unavailable, cannot parse the graph, or the build fails.
    """
    reason = tensorrt_unavailable()
    if reason is not None:
        raise SltnetError(f"TensorRT engines cannot be built here: {reason}")
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise SltnetError(f"{onnx_path}: TensorRT cannot parse the graph: {_parser_errors(parser, onnx_path)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    dynamic_inputs = [
        network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)
    ]
    if dynamic_inputs:
        profile = builder.create_optimization_profile()
        for tensor in dynamic_inputs:
            shape = tuple(input_shapes[tensor.name])
            profile.set_shape(tensor.name, shape, shape, shape)
        config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise SltnetError(f"{onnx_path}: TensorRT build failed (see the TensorRT messages above)")
    with atomic_output(engine_path, "wb") as stream:
        stream.write(plan)
    with atomic_output(timing_cache, "wb") as stream:
        stream.write(config.get_timing_cache().serialize())
