"""ONNX export of the frame and temporal engines.

Exporter: PyTorch's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``, torch 2.14.1) at
opset 17, which traces the fixed-shape engines into static graphs with Reduce ``axes`` as
attributes and torchvision's RoIAlign symbolic (``coordinate_transformation_mode=half_pixel``,
explicit ``sampling_ratio``). Two symbolics are adjusted while exporting: NMS (see
:mod:`sltnet.deploy.static_ops`) and ``isfinite``, whose stock symbolic casts to double, a type TensorRT
does not have.

Every input and output has a fixed shape (the traced output shapes are written into the graph,
as the exporter loses them behind the frame engine's zero padding); inside, only the NMS result of
the temporal engine varies in length, and it never reaches an output.
"""

import io
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import onnx
import torch
from torch import Tensor, nn
from yacs.config import CfgNode

from sltnet.atomic_io import atomic_output
from sltnet.contract import IMAGE_INPUT, EngineSection, TensorSpec
from sltnet.data.transforms import ImagePreprocessor
from sltnet.deploy.modules import EngineModules, build_engine_modules
from sltnet.errors import SltnetError
from sltnet.modeling.baseline import FasterRCNN
from sltnet.modeling.sltnet import SLTnet

OPSET = 17
FRAME_ONNX = "frame.onnx"
TEMPORAL_ONNX = "temporal.onnx"


class ExportedEngines(NamedTuple):
    """The exported engines: the PyTorch modules that were exported, and each graph's file and I/O."""

    modules: EngineModules
    frame: EngineSection
    temporal: EngineSection


def default_input_size(cfg: CfgNode) -> tuple[int, int]:
    """(``INPUT.MIN_SIZE_TEST``, ``INPUT.MAX_SIZE_TEST``): the largest landscape frame the test-time
    resize leaves unchanged (256 x 256 for the synthetic ``small`` configs)."""
    if cfg.INPUT.MIN_SIZE_TEST <= 0:
        raise SltnetError("INPUT.MIN_SIZE_TEST is 0 (no resize): give the frame size with --input-size H W")
    return cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST


def check_exportable(cfg: CfgNode) -> None:
    """Refuse configs whose inference the backends would compute differently."""
    if cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO <= 0:
        raise SltnetError(
            "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO is 0 (adaptive), which ONNX Runtime and TensorRT compute "
            "differently; export a model trained and evaluated with a fixed ratio such as 2"
        )


@contextmanager
def _float_isfinite() -> Iterator[None]:
    """Export ``isfinite`` as Not(Or(IsInf(x), IsNaN(x))) in x's own float type."""

    def isfinite(g, x):
        return g.op("Not", g.op("Or", g.op("IsInf", x), g.op("IsNaN", x)))

    torch.onnx.register_custom_op_symbolic("aten::isfinite", isfinite, OPSET)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::isfinite", OPSET)


def tensor_specs(values: Sequence[onnx.ValueInfoProto]) -> list[TensorSpec]:
    """Specs of graph inputs or outputs (-1 for a dimension without a fixed size)."""
    specs = []
    for value in values:
        tensor_type = value.type.tensor_type
        shape = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        specs.append(TensorSpec(name=value.name, shape=tuple(shape), dtype=dtype))
    return specs


def _declare_outputs(graph: onnx.ModelProto, outputs: Sequence[Tensor]) -> None:
    """Write the traced output types and shapes into the graph. The exporter's own inference loses
    them after the frame engine's zero padding, whose pads it computes by a chain it does not fold."""
    for value, tensor in zip(graph.graph.output, outputs):
        elem_type = onnx.helper.np_dtype_to_tensor_dtype(tensor.numpy().dtype)
        value.CopyFrom(onnx.helper.make_tensor_value_info(value.name, elem_type, list(tensor.shape)))


def export_module(
    module: nn.Module,
    example_inputs: Sequence[Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    path: Path,
) -> EngineSection:
    """Export one engine to ``path`` (written atomically) and check the graph.

    Returns:
        the graph's file name and tensor specs.
    Raises:
        SltnetError: the graph fails ``onnx.checker``.
    """
    buffer = io.BytesIO()
    with _float_isfinite(), torch.no_grad(), warnings.catch_warnings():
        # Shapes are fixed per export on purpose: sizes read while tracing are meant to be constants.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # The TorchScript exporter is chosen on purpose (module docstring), and its constant folding
        # skipping a reversed Slice only leaves a few shape computations in the graph.
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
        outputs = module(*example_inputs)
        torch.onnx.export(
            module,
            tuple(example_inputs),
            buffer,  # type: ignore[arg-type]  # torch types f as a path; its TorchScript exporter takes a file object
            input_names=list(input_names),
            output_names=list(output_names),
            opset_version=OPSET,
            dynamo=False,
        )
    graph = onnx.load_from_string(buffer.getvalue())
    _declare_outputs(graph, outputs)
    try:
        onnx.checker.check_model(graph, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise SltnetError(f"{path}: exported graph fails onnx.checker: {str(err).splitlines()[0]}") from None
    with atomic_output(path, "wb") as stream:
        stream.write(graph.SerializeToString())
    return EngineSection(
        onnx=path.name, inputs=tensor_specs(graph.graph.input), outputs=tensor_specs(graph.graph.output)
    )


def export_onnx(
    model: SLTnet | FasterRCNN, cfg: CfgNode, out_dir: Path, input_size: tuple[int, int], batch: int = 1
) -> ExportedEngines:
    """Write ``frame.onnx`` and ``temporal.onnx`` for ``model`` into ``out_dir``.

    Args:
        cfg: the model's config (preprocessing, memory size).
        input_size: (height, width) of the frames the engines will take.
        batch: frames per frame-engine run.
    Raises:
        SltnetError: a config the engines cannot reproduce, or a graph that fails its checks.
    """
    check_exportable(cfg)
    preprocessor = ImagePreprocessor.from_config(cfg)
    modules = build_engine_modules(model, preprocessor, input_size, cfg.MODEL.SPATIOTEMPORAL.NUM_KEYFRAMES, batch)
    frame, temporal = modules.frame, modules.temporal
    frame_io = export_module(frame, modules.frame_inputs, [IMAGE_INPUT], frame.output_names, out_dir / FRAME_ONNX)
    temporal_io = export_module(
        temporal, modules.temporal_inputs, temporal.input_names, temporal.output_names, out_dir / TEMPORAL_ONNX
    )
    return ExportedEngines(modules, frame_io, temporal_io)
