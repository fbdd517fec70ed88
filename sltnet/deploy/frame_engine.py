"""The frame engine (docs/deployment.md#frame-engine): runs once per frame.

Input ``image``: uint8 [1, 3, H_in, W_in] RGB at the export's fixed input size. Inside, exactly the
PyTorch path of :class:`~sltnet.modeling.streaming.StreamingDetector`: :class:`ImagePreprocessor`
(shortest-edge resize to ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``, bilinear without
antialiasing; channel order of ``INPUT.FORMAT``; ``(x - PIXEL_MEAN) / PIXEL_STD``; zero padding to
``SIZE_DIVISIBILITY``), then the backbone and the RPN.

Outputs: ``features`` [1, C, H_m, W_m], the box head's FPN levels (P2 .. P5) side by side in one
:class:`~sltnet.deploy.static_ops.LevelMosaic`, so the temporal engine pools every box from its level with
one RoIAlign; ``objectness_logits`` [A] and ``boxes`` [A, 4] (decoded, unclipped, in the pixels of
the resized frame before padding; the runtime scales detections back to the input size).
"""

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
        """uint8 [1, 3, H_in, W_in] RGB → (features [1, C, H_m, W_m], logits [A], boxes [A, 4])."""
        levels, rpn_outputs = self._run(image)
        return build_mosaic(levels), rpn_outputs.objectness_logits[0], rpn_outputs.boxes[0]
