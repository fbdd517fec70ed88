"""The two exported engines behind one I/O-binding interface, for three backends (DESIGN B.3, B.5).

Every backend runs an engine on tensors *bound by name*: the runtime binds its preallocated ring
buffers (torch tensors on the backend's device) and calls :meth:`BoundEngine.run`; the engine reads
its inputs from, and writes its outputs into, exactly those buffers. Re-binding a name to another
buffer is how the runtime rotates its window; binding the same buffer again is free.

- ``torch``: the engines as PyTorch modules (rebuilt from the export's config and weights), CPU or
  CUDA. A module returns new tensors, so this reference backend copies them into the bound outputs.
- ``onnxruntime``: the ONNX graphs with I/O binding (``bind_input`` / ``bind_output`` with the
  buffers' addresses), CPU, or CUDA where onnxruntime-gpu is installed.
- ``tensorrt``: TensorRT 10 plans, named tensors, ``set_tensor_address`` + ``execute_async_v3`` on
  one dedicated CUDA stream, buffers from torch CUDA tensors.

:func:`open_backend` opens one by name; ``"auto"`` takes the fastest available.
"""

import importlib.util
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from sltnet.errors import SltnetError

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")


class TensorSpec(NamedTuple):
    """Static shape and torch dtype of one engine I/O tensor."""

    shape: Tuple[int, ...]
    dtype: torch.dtype


def manifest_specs(tensors: Sequence[Dict]) -> Dict[str, TensorSpec]:
    """``{name: TensorSpec}`` of a manifest's ``inputs`` or ``outputs`` list (NumPy dtype names)."""
    return {t["name"]: TensorSpec(tuple(t["shape"]), getattr(torch, t["dtype"])) for t in tensors}


class BoundEngine:
    """One engine whose inputs and outputs are tensors bound by name.

    Args:
        inputs, outputs: ``{name: TensorSpec}`` in the engine's order.
        device: where bound tensors must live.
    """

    def __init__(self, inputs: Dict[str, TensorSpec], outputs: Dict[str, TensorSpec], device: torch.device) -> None:
        self.inputs = dict(inputs)
        self.outputs = dict(outputs)
        self.device = torch.device(device)
        self._bound: Dict[str, Tensor] = {}
        self.num_runs = 0

    @property
    def input_names(self) -> List[str]:
        return list(self.inputs)

    @property
    def output_names(self) -> List[str]:
        return list(self.outputs)

    def bind(self, name: str, tensor: Tensor) -> None:
        """Bind ``name`` to ``tensor`` (contiguous, of the engine's shape and dtype, on :attr:`device`)
        for the following runs; a no-op when it is already bound there."""
        if self._bound.get(name) is tensor:
            return
        spec = self.inputs.get(name) or self.outputs[name]
        if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype or not tensor.is_contiguous():
            raise ValueError(
                f"tensor {name!r}: the engine takes contiguous {spec.dtype} {list(spec.shape)}, "
                f"got {tensor.dtype} {list(tensor.shape)}"
            )
        self._set_address(name, tensor)
        self._bound[name] = tensor

    def run(self) -> None:
        """Run once on the bound tensors (every input and output must be bound)."""
        self.num_runs += 1
        self._execute()

    def __call__(self, feeds: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Convenience for checks: run on ``feeds`` and return new output tensors (on :attr:`device`)."""
        for name in self.input_names:
            self.bind(name, feeds[name].to(self.device).contiguous())
        outputs = {
            name: torch.empty(spec.shape, dtype=spec.dtype, device=self.device) for name, spec in self.outputs.items()
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
    """An engine as a PyTorch module; its results are copied into the bound outputs."""

    def __init__(
        self, module: nn.Module, inputs: Dict[str, TensorSpec], outputs: Dict[str, TensorSpec], device: torch.device
    ) -> None:
        super().__init__(inputs, outputs, device)
        self.module = module.eval().to(self.device)

    @torch.no_grad()
    def _execute(self) -> None:
        results = self.module(*(self._bound[name] for name in self.input_names))
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
        path: Union[str, Path],
        inputs: Dict[str, TensorSpec],
        outputs: Dict[str, TensorSpec],
        device: torch.device,
        num_threads: Optional[int] = None,
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
        if self.device.type == "cuda":
            providers = [("CUDAExecutionProvider", {"device_id": self.device.index or 0})]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
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


class TensorRTEngine(BoundEngine):
    """A TensorRT 10 plan run by tensor name on ``stream``.

    Raises:
        SltnetError: a plan this TensorRT cannot deserialize, or I/O other than the manifest's.
    """

    def __init__(
        self, path: Union[str, Path], inputs: Dict[str, TensorSpec], outputs: Dict[str, TensorSpec], stream
    ) -> None:
        import tensorrt as trt

        super().__init__(inputs, outputs, torch.device("cuda", torch.cuda.current_device()))
        self.stream = stream
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise SltnetError(f"{path}: TensorRT cannot deserialize this engine (built by another TensorRT or GPU?)")
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        if names != set(inputs) | set(outputs):
            raise SltnetError(f"{path}: the engine's tensors differ from manifest.json's (export again)")
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


def _engine_specs(manifest: Dict, engine: str) -> Tuple[Dict[str, TensorSpec], Dict[str, TensorSpec]]:
    entry = manifest["engines"][engine]
    return manifest_specs(entry["inputs"]), manifest_specs(entry["outputs"])


def module_backend(
    frame: nn.Module, temporal: nn.Module, manifest: Dict, device: Union[str, torch.device] = "cpu"
) -> Backend:
    """The ``torch`` backend on engine modules (``export.onnx_export.build_engine_modules``)."""
    device = torch.device(device)
    frame_engine = TorchEngine(frame, *_engine_specs(manifest, "frame"), device)
    temporal_engine = TorchEngine(temporal, *_engine_specs(manifest, "temporal"), device)
    return Backend("torch", f"torch ({device.type})", device, frame_engine, temporal_engine)


def manifest_overrides(manifest: Dict) -> List[str]:
    """Config overrides that give a rebuilt model the engines' baked-in settings."""
    window, memory, rpn, detections = manifest["window"], manifest["memory"], manifest["rpn"], manifest["detections"]
    overrides = [
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(detections["score_thresh"]),
        "MODEL.ROI_HEADS.NMS_THRESH_TEST", str(detections["nms_thresh"]),
        "MODEL.RPN.PRE_NMS_TOPK_TEST", str(rpn["pre_nms_topk"]),
        "MODEL.RPN.POST_NMS_TOPK_TEST", str(rpn["post_nms_topk"]),
        "MODEL.RPN.NMS_THRESH", str(rpn["nms_thresh"]),
        "MODEL.PROPOSAL_GENERATOR.MIN_SIZE", str(rpn["min_size"]),
    ]  # fmt: skip
    if manifest["mode"] != "single_frame":
        overrides += [
            "MODEL.SPATIOTEMPORAL.NUM_FRAMES", str(window["num_frames"]),
            "MODEL.SPATIOTEMPORAL.FORWARD_AGGREGATION", str(manifest["mode"] == "symmetric").lower(),
        ]  # fmt: skip
    if memory["long_term"]:
        overrides += [
            "MODEL.SPATIOTEMPORAL.NUM_KEYFRAMES", str(memory["num_keyframes"]),
            "MODEL.SPATIOTEMPORAL.KEYFRAME_INTERVAL", str(memory["keyframe_interval"]),
        ]  # fmt: skip
    return overrides


def torch_backend(directory: Union[str, Path], manifest: Dict, device: Union[str, torch.device] = "cpu") -> Backend:
    """The ``torch`` backend rebuilt from the export's ``source`` config and weights.

    Raises:
        SltnetError: the source files are gone, or the rebuilt engines' tensors differ from the manifest's.
    """
    from export.onnx_export import build_engine_modules
    from sltnet.config import load_config
    from sltnet.modeling.build import build_model

    source = manifest.get("source", {})
    config_file, weights = source.get("config_file"), source.get("weights")
    for what, path in (("config_file", config_file), ("weights", weights)):
        if not path or not Path(path).is_file():
            raise SltnetError(
                f"{Path(directory) / 'manifest.json'}: the torch backend rebuilds the model from source.{what} "
                f"{path!r}, which is not a file here (use --backend onnxruntime)"
            )
    cfg = load_config(config_file, ["MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu", *manifest_overrides(manifest)])
    modules = build_engine_modules(build_model(cfg), cfg, tuple(manifest["input"]["shape"][2:]))
    names = (list(modules.frame.output_names), list(modules.temporal.input_names), list(modules.temporal.output_names))
    frame_specs, temporal_specs = _engine_specs(manifest, "frame"), _engine_specs(manifest, "temporal")
    if names != (list(frame_specs[1]), list(temporal_specs[0]), list(temporal_specs[1])):
        raise SltnetError(
            f"{Path(directory) / 'manifest.json'}: the model rebuilt from {config_file} has other engine tensors"
        )
    return module_backend(modules.frame, modules.temporal, manifest, device)


def onnxruntime_backend(
    directory: Union[str, Path],
    manifest: Dict,
    device: Union[str, torch.device] = "cpu",
    num_threads: Optional[int] = None,
) -> Backend:
    """The ``onnxruntime`` backend on the export's ONNX graphs (``device`` "cuda" needs onnxruntime-gpu)."""
    device = torch.device(device)
    engines = [
        OnnxRuntimeEngine(
            Path(directory) / manifest["engines"][name]["onnx"], *_engine_specs(manifest, name), device, num_threads
        )
        for name in ("frame", "temporal")
    ]
    provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    return Backend("onnxruntime", f"onnxruntime ({provider})", device, *engines)


def tensorrt_unavailable(manifest: Optional[Dict] = None) -> Optional[str]:
    """Why the ``tensorrt`` backend cannot run here (None when it can)."""
    from export.tensorrt_build import tensorrt_unavailable as runtime_unavailable

    reason = runtime_unavailable()
    if reason is None and manifest is not None and "tensorrt" not in manifest["engines"]["frame"]:
        reason = "the export has no TensorRT engines (sltnet-export --format trt)"
    return reason


def tensorrt_backend(directory: Union[str, Path], manifest: Dict) -> Backend:
    """The ``tensorrt`` backend: both plans on one dedicated CUDA stream.

    Raises:
        SltnetError: TensorRT, a GPU or the export's plans are missing.
    """
    reason = tensorrt_unavailable(manifest)
    if reason is not None:
        raise SltnetError(f"--backend tensorrt: {reason}")
    stream = torch.cuda.Stream()
    engines = [
        TensorRTEngine(Path(directory) / manifest["engines"][name]["tensorrt"], *_engine_specs(manifest, name), stream)
        for name in ("frame", "temporal")
    ]
    import tensorrt

    return Backend(
        "tensorrt",
        f"tensorrt {tensorrt.__version__} ({torch.cuda.get_device_name()})",
        engines[0].device,
        *engines,
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
    directory: Union[str, Path],
    manifest: Dict,
    device: Optional[str] = None,
    num_threads: Optional[int] = None,
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
