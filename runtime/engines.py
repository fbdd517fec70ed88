"""The two exported engines behind one I/O-binding interface, for three backends (docs/deployment.md#runtime,
#tensorrt-and-onnx-runtime-facts).

Every backend runs an engine on tensors *bound by name*: the runtime binds its preallocated ring
buffers (torch tensors on the backend's device) and calls :meth:`BoundEngine.run`; the engine reads
its inputs from, and writes its outputs into, exactly those buffers. Re-binding a name to another
buffer is how the runtime rotates its window; binding the same buffer again is free.

- ``torch``: the engines as PyTorch modules (rebuilt from the export's config and weights), CPU or
  CUDA. A module returns new tensors, so this reference backend copies them into the bound outputs.
- ``onnxruntime``: the ONNX graphs with I/O binding (``bind_input`` / ``bind_output`` with the
  buffers' addresses), CPU, or CUDA where onnxruntime-gpu is installed.
- ``tensorrt``: TensorRT 10 or 11 plans, named tensors, ``set_tensor_address`` + ``execute_async_v3``
  on one dedicated CUDA stream, buffers from torch CUDA tensors.

:func:`open_backend` opens one by name; ``"auto"`` takes the fastest available.
"""

import importlib
import importlib.util
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor, nn

from runtime.qdq import cpu_provider_graph
from sltnet.contract import MANIFEST_FILE, Manifest, TensorSpec
from sltnet.errors import SltnetError

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
#: TensorRT major versions whose Python API the build and the runtime use (docs/deployment.md).
TENSORRT_MAJORS = (10, 11)
TENSORRT_REQUIREMENT = "tensorrt>=10,<12"
#: Every ``tensorrt`` attribute the runtime's TensorRT code uses, as ``Class.member`` paths from the
#: module (checked against both majors' API references; tests/test_tensorrt_api.py checks the list
#: against this file's TensorRT code and, where ``tensorrt`` imports, against the module).
TENSORRT_RUNTIME_API = (
    "__version__",
    "Logger",
    "Logger.WARNING",
    "Runtime",
    "Runtime.deserialize_cuda_engine",
    "ICudaEngine.num_io_tensors",
    "ICudaEngine.get_tensor_name",
    "ICudaEngine.get_tensor_mode",
    "ICudaEngine.get_tensor_shape",
    "ICudaEngine.get_tensor_dtype",
    "ICudaEngine.create_execution_context",
    "IExecutionContext.set_tensor_address",
    "IExecutionContext.execute_async_v3",
    "TensorIOMode.INPUT",
    "DataType.FLOAT",
    "DataType.HALF",
    "DataType.INT8",
    "DataType.UINT8",
    "DataType.INT32",
    "DataType.INT64",
    "DataType.BOOL",
)


#: onnxruntime's element type names, as NumPy dtype names.
ONNXRUNTIME_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def check_engine_io(
    path: str | Path,
    actual: dict[str, tuple[tuple, str]],
    inputs: dict[str, TensorSpec],
    outputs: dict[str, TensorSpec],
) -> None:
    """Refuse an engine file whose real tensors (``{name: (shape, NumPy dtype name)}``) are not the
    manifest's, before the first frame reaches it.

    Raises:
        SltnetError: one line naming the file and the first tensor that differs.
    """
    expected = {**inputs, **outputs}
    for name in [*expected, *actual]:
        if name not in actual:
            raise SltnetError(f"{path}: has no tensor {name!r}, which manifest.json lists (export again)")
        if name not in expected:
            raise SltnetError(f"{path}: has a tensor {name!r} that manifest.json does not list (export again)")
        shape, dtype = actual[name]
        spec = expected[name]
        if (tuple(shape), dtype) != (spec.shape, spec.dtype):
            raise SltnetError(
                f"{path}: tensor {name!r} is {dtype} {list(shape)}, manifest.json says {spec.dtype} "
                f"{list(spec.shape)} (export again)"
            )


class BoundEngine:
    """One engine whose inputs and outputs are tensors bound by name.

    Args:
        inputs, outputs: ``{name: TensorSpec}`` in the engine's order.
        device: where bound tensors must live.
    """

    def __init__(self, inputs: dict[str, TensorSpec], outputs: dict[str, TensorSpec], device: torch.device) -> None:
        self.inputs = dict(inputs)
        self.outputs = dict(outputs)
        self.device = torch.device(device)
        self._bound: dict[str, Tensor] = {}
        self.num_runs = 0

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self.outputs)

    def bind(self, name: str, tensor: Tensor) -> None:
        """Bind ``name`` to ``tensor`` (contiguous, of the engine's shape and dtype, on :attr:`device`)
        for the following runs; a no-op when it is already bound there."""
        if self._bound.get(name) is tensor:
            return
        spec = self.inputs.get(name) or self.outputs[name]
        if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.torch_dtype or not tensor.is_contiguous():
            raise ValueError(
                f"tensor {name!r}: the engine takes contiguous {spec.torch_dtype} {list(spec.shape)}, "
                f"got {tensor.dtype} {list(tensor.shape)}"
            )
        self._set_address(name, tensor)
        self._bound[name] = tensor

    def run(self) -> None:
        """Run once on the bound tensors (every input and output must be bound)."""
        self.num_runs += 1
        self._execute()

    def __call__(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        """Convenience for checks: run on ``feeds`` and return new output tensors (on :attr:`device`)."""
        for name in self.input_names:
            self.bind(name, feeds[name].to(self.device).contiguous())
        outputs = {
            name: torch.empty(spec.shape, dtype=spec.torch_dtype, device=self.device)
            for name, spec in self.outputs.items()
        }
        for name, tensor in outputs.items():
            self.bind(name, tensor)
        self.run()
        return outputs

    def _set_address(self, name: str, tensor: Tensor) -> None:
        """Backend hook: make the engine use ``tensor``'s memory for ``name``."""

    def _execute(self) -> None:
        raise NotImplementedError


class TorchEngine(BoundEngine):
    """An engine as a PyTorch module; its results are copied into the bound outputs.

    The module computes in float32. For an fp16 export it takes the float16 feature tensors the
    manifest names, converted to float32 on the way in, and its results are rounded into the
    float16 outputs on the way out: the precision of the engines' I/O, computed at the reference's.
    """

    def __init__(
        self, module: nn.Module, inputs: dict[str, TensorSpec], outputs: dict[str, TensorSpec], device: torch.device
    ) -> None:
        super().__init__(inputs, outputs, device)
        self.module = module.eval().to(self.device)

    @torch.no_grad()
    def _execute(self) -> None:
        inputs = (self._bound[name] for name in self.input_names)
        results = self.module(*(t.float() if t.dtype == torch.float16 else t for t in inputs))
        for name, result in zip(self.output_names, results):
            self._bound[name].copy_(result)


class OnnxRuntimeEngine(BoundEngine):
    """An ONNX graph in an onnxruntime session, run with I/O binding on the buffers' addresses.

    Args:
        path: the ``.onnx`` file.
        inputs, outputs: the graph's tensors (from the manifest).
        device: ``cpu``, or ``cuda`` (needs onnxruntime-gpu's CUDAExecutionProvider).
        num_threads: intra-op threads (default: onnxruntime's choice).
    """

    def __init__(
        self,
        path: str | Path,
        inputs: dict[str, TensorSpec],
        outputs: dict[str, TensorSpec],
        device: torch.device,
        num_threads: int | None = None,
    ) -> None:
        import onnxruntime

        super().__init__(inputs, outputs, device)
        options = onnxruntime.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        # The two engines' sessions run one after the other for every frame, each with its own
        # threads: threads that spin waiting for work would take the cores from the other session
        # (measured on 2 cores: 1.5x the throughput without spinning, and a p99 latency near p50).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list[str | tuple[str, dict[str, int]]]
        if self.device.type == "cuda":
            providers = [("CUDAExecutionProvider", {"device_id": self.device.index or 0})]
        else:
            providers = ["CPUExecutionProvider"]
        # An INT8 graph is opened in the form the CPU provider's integer kernels run fast (runtime.qdq).
        graph = cpu_provider_graph(path) if self.device.type == "cpu" else str(path)
        self.session = onnxruntime.InferenceSession(graph, options, providers=providers)
        graph_io = {
            value.name: (tuple(value.shape), ONNXRUNTIME_TYPES.get(value.type, value.type))
            for value in [*self.session.get_inputs(), *self.session.get_outputs()]
        }
        check_engine_io(path, graph_io, self.inputs, self.outputs)
        self.binding = self.session.io_binding()
        self._device_type = "cuda" if self.device.type == "cuda" else "cpu"

    def _set_address(self, name: str, tensor: Tensor) -> None:
        element_type = np.dtype(str(tensor.dtype).replace("torch.", ""))
        args = (name, self._device_type, self.device.index or 0, element_type, list(tensor.shape), tensor.data_ptr())
        if name in self.inputs:
            self.binding.bind_input(*args)
        else:
            self.binding.bind_output(*args)

    def _execute(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # inputs written by torch are complete
        self.session.run_with_iobinding(self.binding)


def _tensorrt_dtype_names(trt) -> dict:
    """TensorRT's data types of the engines' tensors, as NumPy dtype names (the manifest's)."""
    return {
        trt.DataType.FLOAT: "float32",
        trt.DataType.HALF: "float16",
        trt.DataType.INT8: "int8",
        trt.DataType.UINT8: "uint8",
        trt.DataType.INT32: "int32",
        trt.DataType.INT64: "int64",
        trt.DataType.BOOL: "bool",
    }


class TensorRTEngine(BoundEngine):
    """A TensorRT 10 or 11 plan run by tensor name on ``stream``.

    Args:
        path: the plan.
        inputs, outputs: the engine's tensors (from the manifest).
        stream: the ``torch.cuda.Stream`` it runs on.
        built_by: the TensorRT version and GPU that built the plan, for the error message.
    Raises:
        SltnetError: a plan this TensorRT cannot deserialize, or I/O other than the manifest's.
    """

    def __init__(
        self,
        path: str | Path,
        inputs: dict[str, TensorSpec],
        outputs: dict[str, TensorSpec],
        stream,
        built_by: str = "another TensorRT or GPU",
    ) -> None:
        import tensorrt as trt

        super().__init__(inputs, outputs, torch.device("cuda", torch.cuda.current_device()))
        self.stream = stream
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise SltnetError(
                f"{path}: TensorRT {trt.__version__} cannot deserialize this plan, built by {built_by} "
                "(plans run only on the TensorRT version and GPU that built them: export again here)"
            )
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        dtype_names = _tensorrt_dtype_names(trt)
        plan_io = {
            name: (
                tuple(self.engine.get_tensor_shape(name)),
                dtype_names.get(self.engine.get_tensor_dtype(name), str(self.engine.get_tensor_dtype(name))),
            )
            for name in names
        }
        check_engine_io(path, plan_io, self.inputs, self.outputs)
        for name in names:
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            if is_input != (name in self.inputs):
                role = "an input" if is_input else "an output"
                raise SltnetError(f"{path}: tensor {name!r} is {role} of the plan, not of manifest.json (export again)")
        self.context = self.engine.create_execution_context()

    def _set_address(self, name: str, tensor: Tensor) -> None:
        if not self.context.set_tensor_address(name, tensor.data_ptr()):
            raise RuntimeError(f"TensorRT refused the address of tensor {name!r}")

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")


class Backend(NamedTuple):
    """A frame engine and a temporal engine that run on one device.

    Attributes:
        name: "torch", "onnxruntime" or "tensorrt".
        description: the name with its device or provider, for messages.
        device: where the runtime allocates the buffers it binds.
        frame, temporal: the engines.
        stream: the CUDA stream the engines run on (None: they run synchronously on the caller's).
    """

    name: str
    description: str
    device: torch.device
    frame: BoundEngine
    temporal: BoundEngine
    stream: Optional["torch.cuda.Stream"] = None


def module_backend(
    frame: nn.Module, temporal: nn.Module, manifest: Manifest, device: str | torch.device = "cpu"
) -> Backend:
    """The ``torch`` backend on engine modules (:func:`sltnet.deploy.modules.build_engine_modules`)."""
    device = torch.device(device)
    frame_engine = TorchEngine(
        frame, manifest.engines.frame.input_specs(), manifest.engines.frame.output_specs(), device
    )
    temporal_engine = TorchEngine(
        temporal, manifest.engines.temporal.input_specs(), manifest.engines.temporal.output_specs(), device
    )
    return Backend("torch", f"torch ({device.type})", device, frame_engine, temporal_engine)


def torch_backend(directory: str | Path, manifest: Manifest, device: str | torch.device = "cpu") -> Backend:
    """The ``torch`` backend: the engines as PyTorch modules of the model in the export's ``source``
    config and weights, with the settings the manifest states.

    Raises:
        SltnetError: the source files are gone, or the rebuilt engines' tensors differ from the manifest's.
    """
    from sltnet.config import load_config
    from sltnet.deploy.modules import engine_modules_of
    from sltnet.modeling.build import build_model

    if manifest.precision.precision == "int8":
        raise SltnetError(
            f"{Path(directory) / MANIFEST_FILE}: an int8 export runs on onnxruntime or tensorrt; the torch backend "
            "computes in float (use --backend onnxruntime)"
        )
    config_file, weights = manifest.source.get("config_file"), manifest.source.get("weights")
    for what, path in (("config_file", config_file), ("weights", weights)):
        if not path or not Path(path).is_file():
            raise SltnetError(
                f"{Path(directory) / MANIFEST_FILE}: the torch backend rebuilds the model from source.{what} "
                f"{path!r}, which is not a file here (use --backend onnxruntime)"
            )
    assert weights is not None  # a file, checked above
    cfg = load_config(config_file, ["MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu"])
    modules = engine_modules_of(build_model(cfg), manifest)
    names = (modules.frame.output_names, modules.temporal.input_names, modules.temporal.output_names)
    frame, temporal = manifest.engines.frame, manifest.engines.temporal
    if names != (
        [s.name for s in frame.outputs],
        [s.name for s in temporal.inputs],
        [s.name for s in temporal.outputs],
    ):
        raise SltnetError(
            f"{Path(directory) / MANIFEST_FILE}: the model rebuilt from {config_file} has other engine tensors"
        )
    return module_backend(modules.frame, modules.temporal, manifest, device)


def onnxruntime_backend(
    directory: str | Path,
    manifest: Manifest,
    device: str | torch.device = "cpu",
    num_threads: int | None = None,
) -> Backend:
    """The ``onnxruntime`` backend on the export's ONNX graphs (``device`` "cuda" needs onnxruntime-gpu)."""
    device = torch.device(device)
    frame_engine, temporal_engine = (
        OnnxRuntimeEngine(
            Path(directory) / engine.onnx, engine.input_specs(), engine.output_specs(), device, num_threads
        )
        for _, engine in manifest.engines.items()
    )
    provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    return Backend("onnxruntime", f"onnxruntime ({provider})", device, frame_engine, temporal_engine)


def tensorrt_major(version: str) -> int:
    """The major version of a TensorRT version string ("10.16.1.11" -> 10)."""
    return int(version.split(".")[0])


def tensorrt_unavailable(manifest: Manifest | None = None) -> str | None:
    """Why TensorRT engines cannot be built or run here, or (given ``manifest``) why this export
    cannot run on the ``tensorrt`` backend; None when they can."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as err:
        return f"the tensorrt package is not installed ({err}); install '{TENSORRT_REQUIREMENT}'"
    if tensorrt_major(trt.__version__) not in TENSORRT_MAJORS:
        supported = " and ".join(str(major) for major in TENSORRT_MAJORS)
        return (
            f"tensorrt {trt.__version__} is installed, sltnet uses the TensorRT {supported} API "
            f"('{TENSORRT_REQUIREMENT}')"
        )
    if not torch.cuda.is_available():
        return "no CUDA GPU is available to torch"
    if manifest is None:
        return None
    if manifest.engines.frame.tensorrt is None or manifest.tensorrt is None:
        return "the export has no TensorRT engines (sltnet-export --format trt)"
    if tensorrt_major(manifest.tensorrt.version) != tensorrt_major(trt.__version__):
        return (
            f"the export's plans were built by TensorRT {manifest.tensorrt.version}, this is TensorRT "
            f"{trt.__version__}: plans do not move between TensorRT versions (export again with --format trt here)"
        )
    return None


def tensorrt_backend(directory: str | Path, manifest: Manifest) -> Backend:
    """The ``tensorrt`` backend: both plans on one dedicated CUDA stream.

    Raises:
        SltnetError: TensorRT, a GPU or the export's plans are missing, or the plans are another
            TensorRT major version's.
    """
    reason = tensorrt_unavailable(manifest)
    if reason is not None:
        raise SltnetError(f"--backend tensorrt: {reason}")
    assert manifest.tensorrt is not None  # tensorrt_unavailable checked it
    built_by = f"TensorRT {manifest.tensorrt.version} on {manifest.tensorrt.device}"
    stream = torch.cuda.Stream()
    frame_engine, temporal_engine = (
        TensorRTEngine(
            Path(directory) / str(engine.tensorrt), engine.input_specs(), engine.output_specs(), stream, built_by
        )
        for _, engine in manifest.engines.items()
    )
    import tensorrt as trt

    return Backend(
        "tensorrt",
        f"tensorrt {trt.__version__} ({torch.cuda.get_device_name()})",
        frame_engine.device,
        frame_engine,
        temporal_engine,
        stream,
    )


def onnxruntime_cuda_available() -> bool:
    """Whether onnxruntime has the CUDA provider and torch sees a GPU."""
    if importlib.util.find_spec("onnxruntime") is None:
        return False
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers() and torch.cuda.is_available()


def open_backend(
    name: str,
    directory: str | Path,
    manifest: Manifest,
    device: str | None = None,
    num_threads: int | None = None,
) -> Backend:
    """Open the backend ``name`` (one of :data:`BACKENDS`) on an export.

    ``auto``: tensorrt where it can run and the export has plans, else onnxruntime (CUDA provider
    where available, else CPU), else torch. ``device`` ("cpu" / "cuda") overrides the default of
    onnxruntime and torch (CUDA when available for torch, as for onnxruntime).
    """
    if name not in BACKENDS:
        raise SltnetError(f"--backend {name}: expected one of {', '.join(BACKENDS)}")
    if name == "auto":
        if tensorrt_unavailable(manifest) is None:
            name = "tensorrt"
        elif importlib.util.find_spec("onnxruntime") is not None:
            name = "onnxruntime"
        else:
            name = "torch"
    if name == "tensorrt":
        return tensorrt_backend(directory, manifest)
    if name == "onnxruntime":
        return onnxruntime_backend(
            directory, manifest, device or ("cuda" if onnxruntime_cuda_available() else "cpu"), num_threads
        )
    return torch_backend(directory, manifest, device or ("cuda" if torch.cuda.is_available() else "cpu"))
