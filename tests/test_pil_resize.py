"""The resize is PIL's bilinear, as detectron2 resizes (docs/method.md#input-preprocessing): in PyTorch
and in the exported graph, on real-size frames, shrinking (antialiased) and enlarging."""

import io

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

from export.cli import main as export_main
from export.trt_check import check_model, default_ops_table, load_ops_table
from sltnet.config import load_config
from sltnet.contract import Manifest
from sltnet.data.transforms import ImagePreprocessor, pil_bilinear_weights, resize_with_matrices
from sltnet.deploy.frame_engine import FrameEngine
from sltnet.modeling.build import build_model

from helpers import CLASS_NAMES, TINY_BASELINE, make_weights, video

# PIL's 8-bit resampling: coefficients in fixed point with 22 fraction bits, each pass rounded
# (half up) to uint8 and clamped.
PIL_PRECISION_BITS = 22
# Real-size frames through the 600/1000 (VID) and 800/1333 (detectron2's default) rules; the
# still-image and VID 500x375 sizes enlarge.
RESIZES = [
    pytest.param((720, 1280), (600, 1000), id="1280x720-600-1000"),
    pytest.param((1280, 720), (600, 1000), id="720x1280-600-1000"),
    pytest.param((720, 1280), (800, 1333), id="1280x720-800-1333"),
    pytest.param((1280, 720), (800, 1333), id="720x1280-800-1333"),
    pytest.param((375, 500), (600, 1000), id="500x375-600-1000-enlarging"),
]
# PIL rounds after each of its two passes, by at most half a grey level each, and its filter's
# weights are non-negative and sum to 1: an unrounded resize is within 1 grey level of it. On top:
# float32 rounding, of the products (< 1e-3) and in F.interpolate of the filter positions (measured
# up to 0.03 at these sizes).
GREY_LEVEL_BOUND = 1.0 + 0.05


def textured_frame(height: int, width: int, seed: int) -> np.ndarray:
    """uint8 [H, W, 3]: smooth random structure (a coarse random image enlarged), pixel noise and
    sharp-edged 16-pixel squares, the frequencies that make resizers differ."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 24 + 2, width // 24 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int64)
    y, x = np.mgrid[0:height, 0:width]
    squares = np.where((x // 16 + y // 16) % 2 == 0, 60, -60)[..., None] * (np.arange(3) == 2)
    noise = rng.integers(-40, 41, (height, width, 3))
    return np.clip(smooth + squares + noise, 0, 255).astype(np.uint8)


def pil_resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """detectron2's resize: ``Image.resize`` with ``Image.BILINEAR`` on the uint8 frame; [3, h, w] float64."""
    resized = Image.fromarray(frame).resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float64).transpose(2, 0, 1)


def fixed_point_resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL's integer arithmetic on :func:`pil_bilinear_weights`: width pass, then height pass. The
    float64 sums of integer products stay below 2**53, so they are exact."""
    one = 2**PIL_PRECISION_BITS

    def fixed(weights: np.ndarray) -> np.ndarray:
        return np.floor(0.5 + weights * one)

    def rounded(sums: np.ndarray) -> np.ndarray:
        return np.clip(np.floor((sums + one // 2) / one), 0, 255)

    x = frame.astype(np.float64).transpose(2, 0, 1)
    x = rounded(x @ fixed(pil_bilinear_weights(frame.shape[1], size[1])).T)
    return rounded(fixed(pil_bilinear_weights(frame.shape[0], size[0])) @ x)


def output_size(frame_size: tuple[int, int], rule: tuple[int, int]) -> tuple[int, int]:
    return ImagePreprocessor(*rule, [0.0] * 3, [1.0] * 3, "RGB").output_shape(*frame_size)


@pytest.mark.parametrize("frame_size, rule", RESIZES)
def test_weights_are_pils_filter(frame_size, rule):
    """With PIL's fixed-point rounding applied, the weights give PIL's pixels exactly."""
    frame = textured_frame(*frame_size, seed=0)
    size = output_size(frame_size, rule)
    np.testing.assert_array_equal(fixed_point_resize(frame, size), pil_resize(frame, size))


@pytest.mark.parametrize("frame_size, rule", RESIZES)
def test_pytorch_resize_is_within_one_grey_level_of_pil(frame_size, rule):
    """The preprocessing of training, evaluation and the streaming PyTorch path."""
    frame = textured_frame(*frame_size, seed=1)
    preprocessor = ImagePreprocessor(*rule, [0.0] * 3, [1.0] * 3, "RGB")
    resized = preprocessor(torch.from_numpy(frame).permute(2, 0, 1)).double().numpy()
    expected = pil_resize(frame, preprocessor.output_shape(*frame_size))
    assert resized.shape == expected.shape
    assert np.abs(resized - expected).max() <= GREY_LEVEL_BOUND


@pytest.mark.parametrize("frame_size, rule", [RESIZES[0], RESIZES[3]])
def test_exported_resize_is_within_one_grey_level_of_pil_and_passes_the_tensorrt_check(frame_size, rule):
    """The frame engine's preprocessing as ONNX: matrix products TensorRT runs, PIL's pixels."""
    frame = textured_frame(*frame_size, seed=2)
    preprocessor = ImagePreprocessor(*rule, [0.0] * 3, [1.0] * 3, "RGB")
    image = torch.from_numpy(frame).permute(2, 0, 1)[None].contiguous()
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(preprocessor, (image,), buffer, input_names=["image"], opset_version=17, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue())
    assert {"MatMul"} <= {node.op_type for node in graph.graph.node} and "Resize" not in {
        node.op_type for node in graph.graph.node
    }
    assert check_model(graph, load_ops_table(default_ops_table())) == []
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (resized,) = session.run(None, {"image": image.numpy()})
    expected = pil_resize(frame, preprocessor.output_shape(*frame_size))
    assert np.abs(resized[0] - expected).max() <= GREY_LEVEL_BOUND
    # And the same pixels as PyTorch, to the float32 rounding above.
    assert np.abs(resized - preprocessor(image).numpy()).max() <= GREY_LEVEL_BOUND - 1


def test_matrix_resize_equals_the_pytorch_resize_when_enlarging_shrinking_or_keeping_a_side():
    images = torch.randint(0, 256, (2, 3, 30, 40)).float()
    for size in ((30, 25), (45, 40), (12, 100), (30, 40)):
        expected = torch.nn.functional.interpolate(
            images, size=size, mode="bilinear", align_corners=False, antialias=True
        )
        torch.testing.assert_close(resize_with_matrices(images, size), expected, rtol=0, atol=1e-3)


def test_weights_are_computed_once_per_size_pair():
    assert pil_bilinear_weights(720, 563) is pil_bilinear_weights(720, 563)
    weights = pil_bilinear_weights(720, 563)
    assert weights.shape == (563, 720) and not weights.flags.writeable
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)


def test_exported_frame_engine_equals_the_pytorch_one_on_a_shrinking_input(tmp_path):
    """170x230 frames shrink to 95x128 (factors 1.79 and 1.80) inside the exported frame engine;
    its outputs equal the PyTorch frame engine's (F.interpolate) within the export parity
    tolerances of tests/test_export.py."""
    weights = make_weights(tmp_path)["baseline"]
    out = tmp_path / "engines"
    argv = ["--config-file", TINY_BASELINE, "--weights", str(weights), "--out", str(out), "--class-names", CLASS_NAMES]
    assert export_main([*argv, "--input-size", "170", "230", "--check-trt"]) == 0
    manifest = Manifest.load(out)
    assert tuple(manifest.input.resized_size) == (95, 128)
    cfg = load_config(TINY_BASELINE, ["MODEL.WEIGHTS", str(weights)])
    engine = FrameEngine(build_model(cfg).eval(), ImagePreprocessor.from_config(cfg))
    image = video((170, 230), num_frames=1)[0][None]
    with torch.no_grad():
        expected = engine(image)
    session = onnxruntime.InferenceSession(str(out / manifest.engines.frame.onnx), providers=["CPUExecutionProvider"])
    actual = session.run(None, {"image": image.numpy()})
    assert len(actual) == len(expected) == 3
    for got, want in zip(actual, expected):
        torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-3)
