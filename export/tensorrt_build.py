"""TensorRT engines from the exported ONNX graphs, one code path for TensorRT 10 and 11
(docs/deployment.md#tensorrt-and-onnx-runtime-facts).

The network is *strongly typed*: every tensor has the type the ONNX graph gives it, so an FP16
graph builds FP16 layers and explicit Q/DQ nodes build INT8 ones; no precision builder flag or
calibrator is used (TensorRT 11 has none). TensorRT 10 builds strongly typed when asked with the
``STRONGLY_TYPED`` network creation flag; TensorRT 11 builds nothing else, and deprecates the flag.

Build: plugins initialised, the strongly typed network, ``OnnxParser.parse_from_file`` with every
parser error reported, a workspace limit (``set_memory_pool_limit(WORKSPACE, ...)``), a timing cache
loaded from and saved to a file, an optimization profile fixing the shape of any input the graph
leaves dynamic (the exported graphs have none), then ``build_serialized_network``; the plan is
written atomically beside the ONNX.

``tensorrt`` is imported only when needed: without it, or without a CUDA GPU,
:func:`runtime.engines.tensorrt_unavailable` says why in one line.

Built engines are run by :mod:`runtime.engines` (named tensors, ``set_tensor_address`` +
``execute_async_v3`` on a dedicated CUDA stream, buffers from torch CUDA tensors).
"""

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from runtime.engines import tensorrt_major, tensorrt_unavailable
from sltnet.atomic_io import atomic_output
from sltnet.errors import SltnetError

#: Every ``tensorrt`` attribute this module uses, as ``Class.member`` paths from the module
#: (checked against both majors' API references; tests/test_tensorrt_api.py checks the list against
#: this file and, where ``tensorrt`` imports, against the module).
TENSORRT_BUILD_API = (
    "__version__",
    "Logger",
    "Logger.WARNING",
    "init_libnvinfer_plugins",
    "Builder",
    "Builder.create_network",
    "Builder.create_builder_config",
    "Builder.create_optimization_profile",
    "Builder.build_serialized_network",
    "NetworkDefinitionCreationFlag.STRONGLY_TYPED",
    "INetworkDefinition.num_inputs",
    "INetworkDefinition.get_input",
    "ITensor.name",
    "ITensor.shape",
    "OnnxParser",
    "OnnxParser.parse_from_file",
    "OnnxParser.num_errors",
    "OnnxParser.get_error",
    "ParserError.node",
    "ParserError.desc",
    "MemoryPoolType.WORKSPACE",
    "IBuilderConfig.set_memory_pool_limit",
    "IBuilderConfig.add_optimization_profile",
    "IBuilderConfig.create_timing_cache",
    "IBuilderConfig.set_timing_cache",
    "IBuilderConfig.get_timing_cache",
    "IOptimizationProfile.set_shape",
    "ITimingCache.serialize",
)


def network_flags(trt) -> int:
    """``create_network`` flags of a strongly typed network: TensorRT 10's creation flag; none for
    TensorRT 11, where strong typing is the only mode and the flag is deprecated."""
    if tensorrt_major(trt.__version__) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


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


def _use_timing_cache(config, timing_cache: Path) -> None:
    """Load ``timing_cache`` into the builder config; a cache another TensorRT or GPU wrote is
    replaced by an empty one (it is rewritten after the build)."""
    previous = timing_cache.read_bytes() if timing_cache.is_file() else b""
    if config.set_timing_cache(config.create_timing_cache(previous), ignore_mismatch=False):
        return
    print(f"warning: {timing_cache}: written by another TensorRT or GPU, starting a new timing cache", file=sys.stderr)
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    workspace_mib: int,
    timing_cache: Path,
    input_shapes: Mapping[str, Sequence[int]],
) -> None:
    """Build and serialize one strongly typed engine: its precision is the ONNX graph's.

    Args:
        onnx_path: the ONNX graph.
        engine_path: where the plan is written (atomically).
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
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise SltnetError(f"{onnx_path}: TensorRT cannot parse the graph: {_parser_errors(parser, onnx_path)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    dynamic_inputs = [
        network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)
    ]
    if dynamic_inputs:
        profile = builder.create_optimization_profile()
        for tensor in dynamic_inputs:
            shape = tuple(input_shapes[tensor.name])
            profile.set_shape(tensor.name, shape, shape, shape)
        config.add_optimization_profile(profile)
    _use_timing_cache(config, timing_cache)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise SltnetError(f"{onnx_path}: TensorRT build failed (see the TensorRT messages above)")
    with atomic_output(engine_path, "wb") as stream:
        stream.write(plan)
    with atomic_output(timing_cache, "wb") as stream:
        stream.write(config.get_timing_cache().serialize())
