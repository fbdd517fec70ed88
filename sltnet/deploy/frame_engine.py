"""The frame engine (docs/deployment.md#frame-engine): runs once per frame.

Input ``image``: uint8 [B, 3, H_in, W_in] RGB at the export's fixed input size, B frames per run
(``sltnet-export --batch B``, default 1). Inside, exactly the PyTorch path of
:class:`~sltnet.modeling.streaming.StreamingDetector`: :class:`ImagePreprocessor` (shortest-edge
resize to ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST`` with PIL's bilinear filter, antialiased when
shrinking, as two constant matrix products; channel order of ``INPUT.FORMAT``;
``(x - PIXEL_MEAN) / PIXEL_STD``; zero padding to ``SIZE_DIVISIBILITY``), then the backbone and the RPN.

Outputs, per frame: ``features`` [1, C, H_m, W_m], the box head's FPN levels (P2 .. P5) side by side
in one :class:`~sltnet.deploy.static_ops.LevelMosaic`, so the temporal engine pools every box from its
level with one RoIAlign; ``objectness_logits`` [A] and ``boxes`` [A, 4] (decoded, unclipped, in the
pixels of the resized frame before padding; the runtime scales detections back to the input size).
With B > 1 each output gains a leading batch dimension ([B, 1, C, H_m, W_m], [B, A], [B, A, 4]):
row b is frame b's output in the per-frame shape the temporal engine takes. B = 1 keeps the
per-frame shapes, so a one-frame export's graph is the same as before batching existed.
"""

from collections.abc import Sequence

from torch import Tensor, nn

from sltnet.contract import FRAME_OUTPUTS
from sltnet.data.transforms import ImagePreprocessor
from sltnet.deploy.static_ops import LevelMosaic, build_mosaic
from sltnet.modeling.baseline import FasterRCNN
from sltnet.modeling.rpn import RPNOutputs
from sltnet.modeling.sltnet import SLTnet


class FrameEngine(nn.Module):
    """uint8 image → the box-head FPN levels' mosaic, per-anchor objectness logits and decoded boxes.

    Args:
        model: an :class:`SLTnet` or the single-frame :class:`FasterRCNN` (both have ``backbone``,
            ``rpn`` and the level names ``rpn_in_features`` / ``roi_in_features``).
        preprocessor: the test-time image path.
    """

    def __init__(self, model: SLTnet | FasterRCNN, preprocessor: ImagePreprocessor) -> None:
        super().__init__()
        self.model = model
        self.preprocessor = preprocessor

    @property
    def output_names(self) -> list[str]:
        return list(FRAME_OUTPUTS)

    def resized_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """(height, width) of a frame of ``input_size`` after the resize, before padding."""
        return self.preprocessor.output_shape(*input_size)

    def _run(self, image: Tensor) -> tuple[list[Tensor], RPNOutputs]:
        return self.model.level_outputs(self.preprocessor.pad(self.preprocessor(image)))

    def layout(self, image: Tensor) -> tuple[list[int], LevelMosaic]:
        """A split by RPN level and the feature mosaic's layout for images of ``image``'s size."""
        levels, rpn_outputs = self._run(image)
        return rpn_outputs.num_anchors_per_level, LevelMosaic(
            tuple((level.shape[2], level.shape[3]) for level in levels)
        )

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """uint8 [B, 3, H_in, W_in] RGB → (features, logits, boxes): [1, C, H_m, W_m], [A], [A, 4] for
        B = 1, else [B, 1, C, H_m, W_m], [B, A], [B, A, 4]."""
        levels, rpn_outputs = self._run(image)
        mosaic, logits, boxes = build_mosaic(levels), rpn_outputs.objectness_logits, rpn_outputs.boxes
        if len(image) == 1:
            return mosaic, logits[0], boxes[0]
        return mosaic[:, None], logits, boxes


def frame_row(outputs: Sequence[Tensor], batch: int, row: int) -> list[Tensor]:
    """Frame ``row``'s outputs in the per-frame shapes, from the outputs of a run on ``batch`` frames."""
    return list(outputs) if batch == 1 else [output[row] for output in outputs]
