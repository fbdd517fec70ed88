"""The one image path shared by training, evaluation, export and the runtime.

decode (RGB uint8) → optional horizontal flip → resize so the short side is S and the long side at
most M (detectron2's ResizeShortestEdge rule, with PIL's bilinear filter as detectron2 resizes:
antialiased when shrinking) → channel order of ``INPUT.FORMAT`` → ``(x - PIXEL_MEAN) / PIXEL_STD`` →
zero padding to a multiple of ``SIZE_DIVISIBILITY`` when batching. Every operation exports to ONNX
ops TensorRT accepts (MatMul with constant weights for the resize, Gather, Sub, Div, Pad).
"""

import functools
import os
import re
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.io import ImageReadMode, decode_image
from torchvision.ops import clip_boxes_to_image

from sltnet.data.records import FrameRecord
from sltnet.errors import SltnetError

INPUT_FORMATS = ("BGR", "RGB")


def read_image(path: str) -> Tensor:
    """Decode an image file (JPEG, PNG, WebP, GIF) to uint8 [3, H, W] RGB, pixels as stored (no EXIF rotation)."""
    if not os.path.isfile(path):
        raise SltnetError(f"{path}: image file not found")
    try:
        return decode_image(path, mode=ImageReadMode.RGB)
    except RuntimeError as err:
        # torchvision prefixes its messages with "function, source.cpp:line, "; keep only the reason.
        reason = re.sub(r"^\w+, \S+:\d+, ", "", str(err)).split("\n")[0]
        raise SltnetError(f"{path}: cannot decode image ({reason})") from None


def resized_shape(height: int, width: int, short_side: int, max_size: int) -> tuple[int, int]:
    """Output ``(h, w)`` of the shortest-edge resize.

    The short side becomes ``short_side``; if the long side then exceeds ``max_size`` the image is
    scaled down so the long side is ``max_size``; sides are rounded half up. ``short_side`` 0
    keeps the size (detectron2's "no resize" value).
    """
    if short_side <= 0:
        return height, width
    scale = short_side / min(height, width)
    if height < width:
        new_h, new_w = float(short_side), width * scale
    else:
        new_h, new_w = height * scale, float(short_side)
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


@functools.lru_cache(maxsize=64)
def pil_bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """The [out_size, in_size] float64 matrix of PIL's bilinear resampling along one axis.

    ``Image.resize(size, Image.BILINEAR)`` (what detectron2 resizes with) gives output pixel i the
    triangle filter centred on input position c = (i + 0.5) · s, s = in_size / out_size, over the
    input pixels j whose centres j + 0.5 lie within the support: w(j) = max(0, 1 - |j + 0.5 - c| / f)
    with f = max(s, 1), taken over j from trunc(c - f + 0.5) to trunc(c + f + 0.5) - 1 within the
    image, and normalised to sum 1. Shrinking widens the filter by s (antialiasing); enlarging is
    plain bilinear interpolation with half-pixel centres and clamped edges. Read-only, cached per
    (in_size, out_size).
    """
    scale = in_size / out_size
    width = max(scale, 1.0)
    centres = (np.arange(out_size) + 0.5) * scale
    first = np.maximum(np.trunc(centres - width + 0.5), 0)
    stop = np.minimum(np.trunc(centres + width + 0.5), in_size)
    taps = np.arange(in_size)[None, :]
    window = (taps >= first[:, None]) & (taps < stop[:, None])
    weights = np.where(window, np.clip(1 - np.abs(taps + 0.5 - centres[:, None]) / width, 0, None), 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    weights.flags.writeable = False
    return weights


def resize_with_matrices(images: Tensor, size: tuple[int, int]) -> Tensor:
    """PIL's bilinear resize as two constant matrix products (what the exported graph computes).

    ``W_h @ images @ W_w.T`` with the weights of :func:`pil_bilinear_weights`; an axis that keeps
    its size is left alone. PIL rounds to uint8 after each of its two passes (width first); this
    result is not rounded, so it is within one grey level of PIL's (each rounding moves a value by
    at most half a level, and the filter's weights are non-negative and sum to 1). Without that
    rounding the passes commute: the cheaper order runs.

    Args:
        images: float [..., H, W].
        size: (h, w) of the output.
    Returns:
        [..., h, w], in the dtype of ``images``.
    """
    height, width = int(images.shape[-2]), int(images.shape[-1])
    new_height, new_width = size

    def resize_height(x: Tensor) -> Tensor:
        return x if height == new_height else _weights_tensor(height, new_height, x) @ x

    def resize_width(x: Tensor) -> Tensor:
        return x if width == new_width else x @ _weights_tensor(width, new_width, x).T

    # Multiply-adds per channel: height first h·W·(H + w), width first H·w·(W + h).
    if new_height * width * (height + new_width) < height * new_width * (width + new_height):
        return resize_width(resize_height(images))
    return resize_height(resize_width(images))


def _weights_tensor(in_size: int, out_size: int, like: Tensor) -> Tensor:
    return torch.from_numpy(pil_bilinear_weights(in_size, out_size).copy()).to(like.device, like.dtype)


def resize_bilinear(images: Tensor, size: tuple[int, int]) -> Tensor:
    """PIL's bilinear resize of float [B, C, H, W] images (:func:`pil_bilinear_weights`).

    In PyTorch this is ``F.interpolate(..., antialias=True)``, whose antialiased bilinear filter is
    PIL's and which runs several times faster than dense matrix products on a CPU. ONNX's Resize
    with antialiasing is not one TensorRT runs, so while exporting the same resize becomes
    :func:`resize_with_matrices`. The two differ only by float32 rounding of the filter positions
    (``F.interpolate`` computes them in float32): a few hundredths of a grey level on real-size frames.
    """
    if torch.onnx.is_in_onnx_export():
        return resize_with_matrices(images, size)
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def check_input_format(input_format: str) -> None:
    if input_format not in INPUT_FORMATS:
        raise SltnetError(f"INPUT.FORMAT: expected 'BGR' or 'RGB', got {input_format!r}")


def preprocess(
    image: Tensor, short_side: int, max_size: int, pixel_mean: Tensor, pixel_std: Tensor, input_format: str
) -> Tensor:
    """Resize, reorder channels and normalise.

    Args:
        image: uint8 [3, H, W] or [B, 3, H, W], RGB.
        short_side, max_size: the resize (:func:`resized_shape`).
        pixel_mean, pixel_std: [3] float, in the channel order of ``input_format``.
        input_format: "BGR" or "RGB", the channel order the network expects.
    Returns:
        float32 [3, h, w] (or [B, 3, h, w]).
    """
    check_input_format(input_format)
    batched = image.dim() == 4
    x = image if batched else image.unsqueeze(0)
    height, width = int(x.shape[-2]), int(x.shape[-1])
    size = resized_shape(height, width, short_side, max_size)
    x = x.float()
    if size != (height, width):
        x = resize_bilinear(x, size)
    if input_format == "BGR":
        x = x[:, [2, 1, 0]]
    x = (x - pixel_mean.view(1, 3, 1, 1)) / pixel_std.view(1, 3, 1, 1)
    return x if batched else x[0]


def pad_to_divisible(tensor: Tensor, divisor: int) -> Tensor:
    """Zero-pad the last two dims (bottom and right) up to multiples of ``divisor`` (≤ 1: unchanged)."""
    if divisor <= 1:
        return tensor
    height, width = tensor.shape[-2:]
    pad_h = (divisor - height % divisor) % divisor
    pad_w = (divisor - width % divisor) % divisor
    if pad_h == 0 and pad_w == 0:
        return tensor
    return F.pad(tensor, (0, pad_w, 0, pad_h))


def scale_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Map [n, 4] (x1, y1, x2, y2) boxes from an image of ``from_size`` (h, w) to one of ``to_size``."""
    scale_y = to_size[0] / from_size[0]
    scale_x = to_size[1] / from_size[1]
    return boxes * boxes.new_tensor([scale_x, scale_y, scale_x, scale_y])


def boxes_to_frame(boxes: Tensor, resized_size: tuple[int, int], frame_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Detection boxes from the resized image back to the frame, as detectron2's postprocessing:
    scaled, clipped to the frame, and which of them are not empty.

    Args:
        boxes: [n, 4] (x1, y1, x2, y2) in the pixels of the resized image, (h, w) ``resized_size``.
        frame_size: (h, w) of the frame.
    Returns:
        the boxes [n, 4] in frame pixels, and [n] bool: width and height above 0 (the detections to keep).
    """
    boxes = clip_boxes_to_image(scale_boxes(boxes, resized_size, frame_size), frame_size)
    return boxes, (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def hflip_image(image: Tensor) -> Tensor:
    """Mirror [..., H, W] left-right."""
    return image.flip(-1)


def hflip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Mirror [n, 4] (x1, y1, x2, y2) boxes in an image ``width`` pixels wide."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


class ImagePreprocessor(nn.Module):
    """:func:`preprocess` with its settings, as a module the exported frame engine can contain.

    Args:
        short_side, max_size: test-time resize (``INPUT.MIN_SIZE_TEST``, ``INPUT.MAX_SIZE_TEST``).
        pixel_mean, pixel_std: in ``input_format`` channel order (``MODEL.PIXEL_MEAN/STD``).
        input_format: ``INPUT.FORMAT``.
        size_divisibility: ``DATALOADER.SIZE_DIVISIBILITY``, used by :meth:`pad`.
    """

    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(
        self,
        short_side: int,
        max_size: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str = "BGR",
        size_divisibility: int = 32,
    ) -> None:
        super().__init__()
        check_input_format(input_format)
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise SltnetError("MODEL.PIXEL_MEAN and MODEL.PIXEL_STD must have 3 values each")
        if any(s <= 0 for s in pixel_std):
            raise SltnetError(f"MODEL.PIXEL_STD must be positive, got {list(pixel_std)}")
        self.short_side = short_side
        self.max_size = max_size
        self.input_format = input_format
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32), persistent=False)

    @classmethod
    def from_config(cls, cfg) -> "ImagePreprocessor":
        return cls(
            short_side=cfg.INPUT.MIN_SIZE_TEST,
            max_size=cfg.INPUT.MAX_SIZE_TEST,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            input_format=cfg.INPUT.FORMAT,
            size_divisibility=cfg.DATALOADER.SIZE_DIVISIBILITY,
        )

    def output_shape(self, height: int, width: int, short_side: int | None = None) -> tuple[int, int]:
        """``(h, w)`` after :meth:`forward`, before padding."""
        return resized_shape(height, width, self.short_side if short_side is None else short_side, self.max_size)

    def forward(self, image: Tensor, short_side: int | None = None) -> Tensor:
        """uint8 [3, H, W] or [B, 3, H, W] RGB → float32 [3, h, w] / [B, 3, h, w].

        ``short_side`` overrides the test-time short side (training picks one per frame group).
        """
        side = self.short_side if short_side is None else short_side
        return preprocess(image, side, self.max_size, self.pixel_mean, self.pixel_std, self.input_format)

    def pad(self, tensor: Tensor) -> Tensor:
        """:func:`pad_to_divisible` with ``size_divisibility``."""
        return pad_to_divisible(tensor, self.size_divisibility)


def load_frame(
    frame: FrameRecord,
    image_root: str,
    preprocessor: ImagePreprocessor,
    short_side: int | None = None,
    flip: bool = False,
) -> tuple[Tensor, Tensor]:
    """Decode and preprocess one frame and bring its boxes along.

    Returns:
        image: float32 [3, h, w] (not padded).
        boxes: float32 [n, 4] (x1, y1, x2, y2) in the coordinates of ``image``.
    """
    path = os.path.join(image_root, frame.file_name)
    image = read_image(path)
    if tuple(image.shape[1:]) != (frame.height, frame.width):
        raise SltnetError(
            f"{path}: image is {image.shape[2]}x{image.shape[1]} but its annotation (image {frame.image_id}) "
            f"says {frame.width}x{frame.height}"
        )
    boxes = torch.from_numpy(frame.boxes).float()
    if flip:
        image, boxes = hflip_image(image), hflip_boxes(boxes, frame.width)
    output = preprocessor(image, short_side)
    return output, scale_boxes(boxes, (frame.height, frame.width), tuple(output.shape[-2:]))
