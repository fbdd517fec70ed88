"""TensorRT engines built from the exported ONNX graphs: run only where the ``tensorrt`` package
(TensorRT 10 or 11) and a CUDA GPU exist, skipped elsewhere. The API names the build and the runtime
use are checked without a GPU in tests/test_tensorrt_api.py."""

import pytest
import torch

from export.cli import main
from runtime.detector import StreamingRuntime
from runtime.engines import (
    TENSORRT_MAJORS,
    onnxruntime_backend,
    tensorrt_backend,
    tensorrt_major,
    tensorrt_unavailable,
)
from sltnet.contract import Manifest

from helpers import CLASS_NAMES, SCORE_THRESH, TINY_SLTNET, make_weights, stream, video

pytest.importorskip("tensorrt")
pytestmark = pytest.mark.skipif(tensorrt_unavailable() is not None, reason=f"{tensorrt_unavailable()}")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("weights"))


def export_trt(out, weights_file, *extra):
    argv = [
        "--config-file",
        TINY_SLTNET,
        "--weights",
        str(weights_file),
        "--out",
        str(out),
        "--class-names",
        CLASS_NAMES,
        "--format",
        "trt",
        "--check-trt",
        *extra,
        *SCORE_THRESH,
    ]
    assert main(argv) == 0
    return Manifest.load(out)


def test_format_trt_writes_engines_with_checksums_and_a_timing_cache(tmp_path, weights):
    out = tmp_path / "engines"
    manifest = export_trt(out, weights["sltnet"], "--workspace-mib", "1024")
    assert sorted(manifest.files) == ["frame.engine", "frame.onnx", "temporal.engine", "temporal.onnx"]
    assert manifest.tensorrt.precision == "fp32" and tensorrt_major(manifest.tensorrt.version) in TENSORRT_MAJORS
    assert (out / "timing.cache").stat().st_size > 0
    # A rebuild reuses the timing cache.
    export_trt(out, weights["sltnet"], "--timing-cache", str(out / "timing.cache"))


def test_tensorrt_engines_answer_like_onnxruntime(tmp_path, weights):
    out = tmp_path / "engines"
    manifest = export_trt(out, weights["sltnet"])
    frames = video((128, 128))
    expected = stream(StreamingRuntime(manifest, onnxruntime_backend(out, manifest)), frames)
    actual = stream(StreamingRuntime(manifest, tensorrt_backend(out, manifest)), frames)
    assert [r.frame_index for r, _ in actual] == [r.frame_index for r, _ in expected]
    for (reference, _), (result, _) in zip(expected, actual):
        assert len(result.scores) == len(reference.scores)
        # TensorRT may use TF32 for FP32 layers: looser than the onnxruntime parity.
        torch.testing.assert_close(result.scores, reference.scores, rtol=0, atol=2e-3)
        torch.testing.assert_close(result.boxes, reference.boxes, rtol=0, atol=0.1)
        assert torch.equal(result.classes, reference.classes)


def test_fp16_engines_run(tmp_path, weights):
    """Strongly typed: the FP16 graph builds an FP16 engine, no builder flag involved."""
    out = tmp_path / "engines"
    manifest = export_trt(out, weights["sltnet"], "--precision", "fp16")
    assert manifest.tensorrt.precision == "fp16"
    results = stream(StreamingRuntime(manifest, tensorrt_backend(out, manifest)), video((128, 128)))
    assert len(results) == 8 and all(torch.isfinite(r.scores).all() for r, _ in results)
