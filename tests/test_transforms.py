"""The shared image path: decode, resize rule, channel order, normalisation, padding, flips."""

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torchvision.io import write_png

from sltnet.config import get_cfg
from sltnet.data.records import FrameRecord
from sltnet.data.transforms import (
    ImagePreprocessor,
    boxes_to_frame,
    hflip_boxes,
    hflip_image,
    load_frame,
    pad_to_divisible,
    preprocess,
    read_image,
    resized_shape,
    scale_boxes,
)
from sltnet.errors import SltnetError


@pytest.mark.parametrize(
    "height, width, short_side, max_size, expected",
    [
        (480, 640, 600, 1000, (600, 800)),
        (100, 1000, 600, 1000, (100, 1000)),  # long side capped
        (640, 480, 600, 1000, (800, 600)),
        (375, 500, 600, 1000, (600, 800)),
        (333, 500, 600, 1000, (600, 901)),  # long side 900.9 rounds up
        (500, 333, 600, 1000, (901, 600)),
        (600, 1200, 600, 1000, (500, 1000)),  # 600x1200 shrunk to a long side of 1000
        (10, 15, 3, 1000, (3, 5)),  # 4.5 rounds half up
        (480, 640, 0, 1000, (480, 640)),  # 0 = no resize
    ],
)
def test_resized_shape(height, width, short_side, max_size, expected):
    assert resized_shape(height, width, short_side, max_size) == expected


def test_preprocess_orders_channels_and_normalises():
    image = torch.zeros(3, 2, 2, dtype=torch.uint8)
    image[0], image[1], image[2] = 10, 20, 30  # R, G, B
    mean, std = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 5.0])
    bgr = preprocess(image, 0, 1000, mean, std, "BGR")
    assert bgr.dtype == torch.float32
    torch.testing.assert_close(bgr[:, 0, 0], torch.tensor([(30 - 1) / 2, (20 - 2) / 4, (10 - 3) / 5]))
    rgb = preprocess(image, 0, 1000, mean, std, "RGB")
    torch.testing.assert_close(rgb[:, 0, 0], torch.tensor([(10 - 1) / 2, (20 - 2) / 4, (30 - 3) / 5]))


def test_preprocess_enlarges_bilinearly_with_half_pixel_centres():
    """PIL's bilinear filter widens only when shrinking: enlarging is plain bilinear interpolation."""
    image = torch.arange(4, dtype=torch.uint8).view(1, 2, 2).repeat(3, 1, 1) * 40
    out = preprocess(image, 4, 1000, torch.zeros(3), torch.ones(3), "RGB")
    assert out.shape == (3, 4, 4)
    expected = torch.nn.functional.interpolate(image[None].float(), size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected[0])
    batched = preprocess(image[None].repeat(2, 1, 1, 1), 4, 1000, torch.zeros(3), torch.ones(3), "RGB")
    assert batched.shape == (2, 3, 4, 4)


def test_preprocess_antialiases_when_shrinking():
    """A one-pixel checkerboard shrunk 3x: plain bilinear interpolation samples it at whole pixels
    and keeps its contrast; PIL's triangle, widened to 3 pixels, weights the five pixels under it
    (1, 2, 3, 2, 1) / 9, which leaves 1/9 of the contrast per axis: 100 ± 100 / 81 inside."""
    board = ((torch.arange(12)[:, None] + torch.arange(12)[None, :]) % 2 * 200).to(torch.uint8).expand(3, 12, 12)
    out = preprocess(board, 4, 1000, torch.zeros(3), torch.ones(3), "RGB")
    assert out.shape == (3, 4, 4)
    sign = torch.tensor([[-1.0, 1.0], [1.0, -1.0]])
    torch.testing.assert_close(out[:, 1:3, 1:3], (100 + sign * 100 / 81).expand(3, 2, 2))
    sampled = torch.nn.functional.interpolate(board[None].float(), size=(4, 4), mode="bilinear", align_corners=False)
    assert sampled.amax() - sampled.amin() == 200


def test_bad_input_format():
    with pytest.raises(SltnetError, match=r"^INPUT.FORMAT: expected 'BGR' or 'RGB', got 'YUV'$"):
        ImagePreprocessor(600, 1000, [0, 0, 0], [1, 1, 1], "YUV")


def test_from_config_reads_the_input_keys():
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 300, 500
    cfg.INPUT.FORMAT = "RGB"
    cfg.DATALOADER.SIZE_DIVISIBILITY = 16
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]
    pre = ImagePreprocessor.from_config(cfg)
    assert pre.output_shape(480, 640) == (300, 400)
    assert pre(torch.zeros(3, 480, 640, dtype=torch.uint8)).shape == (3, 300, 400)
    assert pre.pad(torch.zeros(3, 300, 400)).shape == (3, 304, 400)
    assert pre.input_format == "RGB"
    torch.testing.assert_close(pre.pixel_std, torch.tensor([4.0, 5.0, 6.0]))


def test_pad_to_divisible():
    x = torch.ones(2, 3, 33, 64)
    padded = pad_to_divisible(x, 32)
    assert padded.shape == (2, 3, 64, 64)
    assert padded[..., :33, :].eq(1).all() and padded[..., 33:, :].eq(0).all()
    assert pad_to_divisible(x, 0) is x


def test_box_scaling_and_flip():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    torch.testing.assert_close(scale_boxes(boxes, (100, 200), (50, 400)), torch.tensor([[20.0, 10.0, 60.0, 20.0]]))
    torch.testing.assert_close(hflip_boxes(boxes, 100), torch.tensor([[70.0, 20.0, 90.0, 40.0]]))
    image = torch.arange(6).view(1, 2, 3)
    assert hflip_image(image).tolist() == [[[2, 1, 0], [5, 4, 3]]]


def test_boxes_to_frame_scales_clips_and_flags_empty_boxes():
    """detectron2's postprocessing: scale to the frame, clip to it, keep boxes with an area."""
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [-5.0, 0.0, 0.0, 30.0], [45.0, 5.0, 60.0, 5.0], [40.0, 0, 55, 9]])
    scaled, keep = boxes_to_frame(boxes, (50, 50), (100, 200))
    torch.testing.assert_close(scaled[0], torch.tensor([40.0, 40.0, 120.0, 80.0]))
    torch.testing.assert_close(scaled[3], torch.tensor([160.0, 0.0, 200.0, 18.0]))  # clipped at the frame's width
    assert keep.tolist() == [True, False, False, True]  # zero width after clipping; zero height


def test_read_image_round_trip(tmp_path):
    image = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    write_png(image, str(tmp_path / "a.png"))
    assert torch.equal(read_image(str(tmp_path / "a.png")), image)


def test_read_image_errors(tmp_path):
    with pytest.raises(SltnetError) as err:
        read_image(str(tmp_path / "nope.jpg"))
    assert str(err.value) == f"{tmp_path / 'nope.jpg'}: image file not found"
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(SltnetError) as err:
        read_image(str(tmp_path / "bad.jpg"))
    assert str(err.value).startswith(f"{tmp_path / 'bad.jpg'}: cannot decode image (Unsupported image file")
    assert "\n" not in str(err.value)


def _frame(width, height):
    return FrameRecord(
        image_id=1,
        file_name="f.png",
        video="v",
        frame_number=0,
        width=width,
        height=height,
        boxes=np.array([[2, 1, 6, 3]], np.float32),
    )


def test_load_frame_flips_then_resizes_image_and_boxes(tmp_path):
    image = torch.zeros(3, 4, 8, dtype=torch.uint8)
    image[:, 1:3, 2:6] = 255  # the box's pixels
    write_png(image, str(tmp_path / "f.png"))
    pre = ImagePreprocessor(8, 1000, [0, 0, 0], [1, 1, 1], "RGB")
    out, boxes = load_frame(_frame(8, 4), str(tmp_path), pre, flip=True)
    assert out.shape == (3, 8, 16)
    torch.testing.assert_close(boxes, torch.tensor([[4.0, 2.0, 12.0, 6.0]]))  # flipped [2, 1, 6, 3], then x2
    # The bright patch moved with the box (bilinear upscaling blurs its one-pixel rim).
    x1, y1, x2, y2 = boxes[0].int().tolist()
    assert out[:, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].eq(255).all()
    assert out[:, :, : x1 - 1].eq(0).all() and out[:, :, x2 + 1 :].eq(0).all()
    out_small, boxes_small = load_frame(_frame(8, 4), str(tmp_path), pre, short_side=4)
    assert out_small.shape == (3, 4, 8)
    torch.testing.assert_close(boxes_small, torch.tensor([[2.0, 1.0, 6.0, 3.0]]))


def test_load_frame_checks_the_annotated_size(tmp_path):
    write_png(torch.zeros(3, 4, 8, dtype=torch.uint8), str(tmp_path / "f.png"))
    pre = ImagePreprocessor(8, 1000, [0, 0, 0], [1, 1, 1], "RGB")
    with pytest.raises(SltnetError) as err:
        load_frame(_frame(10, 4), str(tmp_path), pre)
    assert str(err.value) == f"{tmp_path / 'f.png'}: image is 8x4 but its annotation (image 1) says 10x4"


@pytest.mark.parametrize("short_side", [12, 6], ids=["enlarging", "shrinking"])
def test_preprocessor_exports_to_onnx(tmp_path, short_side):
    """The export reuses this module: it must give the same pixels through onnxruntime, with the
    resize as matrix products (TensorRT has no antialiased Resize)."""
    pre = ImagePreprocessor(short_side, 20, [100.0, 110.0, 120.0], [50.0, 60.0, 70.0], "BGR")
    image = torch.randint(0, 256, (3, 9, 16), dtype=torch.uint8)
    path = str(tmp_path / "pre.onnx")
    torch.onnx.export(
        pre, (image,), path, input_names=["image"], output_names=["input"], opset_version=17, dynamo=False
    )
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert "MatMul" in ops and "Resize" not in ops
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"image": image.numpy()})
    # float32 rounding: of the filter positions in F.interpolate and of the products (1e-3 of a grey
    # level), divided by the std of 50..70.
    np.testing.assert_allclose(onnx_out, pre(image).numpy(), rtol=0, atol=1e-4)
