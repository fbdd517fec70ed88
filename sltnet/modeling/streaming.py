"""Streaming inference in PyTorch: frames in, results out for the frames that are complete
(docs/method.md#frame-window).

This is the reference the exported engines and the runtime mirror: every frame goes through the
backbone and RPN exactly once; its outputs stay in a window buffer while the frame is in a window;
the first frame is repeated before the video start and, in symmetric mode, the last frame after its
end; a new video clears the buffer and the long-term memory.
"""

from collections import deque

import torch
from torch import Tensor

from sltnet.contract import FrameResult
from sltnet.data.transforms import ImagePreprocessor, boxes_to_frame
from sltnet.modeling.baseline import FasterRCNN
from sltnet.modeling.memory import LongTermMemory
from sltnet.modeling.sltnet import FrameOutputs, SLTnet


class StreamingDetector:
    """Push frames of one video at a time; get each frame's result once its window is complete.

    Sequential SLTnet and the single-frame baseline answer every frame immediately; symmetric SLTnet
    answers frame t when frame t + N arrives, and :meth:`flush` answers the rest at the end of a video.

    Args:
        model: a :class:`SLTnet` or :class:`FasterRCNN`, switched to eval mode here.
        preprocessor: the shared decode/resize/normalise path (``ImagePreprocessor.from_config``).
        num_keyframes, keyframe_interval: the long-term memory (``MODEL.SPATIOTEMPORAL``).
        score_thresh: overrides ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``.
    """

    def __init__(
        self,
        model: SLTnet | FasterRCNN,
        preprocessor: ImagePreprocessor,
        num_keyframes: int = 3,
        keyframe_interval: int = 10,
        score_thresh: float | None = None,
    ) -> None:
        self.model = model.eval()
        self.preprocessor = preprocessor
        self.score_thresh = score_thresh
        self.memory: LongTermMemory | None = None
        if isinstance(model, SLTnet) and model.long_term:
            parameter = next(model.parameters())
            self.memory = LongTermMemory(
                num_keyframes,
                keyframe_interval,
                model.num_ref_rois,
                model.st_cls_predictor.cls_score.in_features,
                device=parameter.device,
                dtype=parameter.dtype,
            )
        self.reset()

    @classmethod
    def from_config(cls, model: SLTnet | FasterRCNN, cfg, score_thresh: float | None = None) -> "StreamingDetector":
        st = cfg.MODEL.SPATIOTEMPORAL
        return cls(model, ImagePreprocessor.from_config(cfg), st.NUM_KEYFRAMES, st.KEYFRAME_INTERVAL, score_thresh)

    def reset(self) -> None:
        """Start a new video: clear the window buffer and the long-term memory."""
        self._window: dict[int, FrameOutputs] = {}
        self._pending: deque[int] = deque()  # frames pushed but not yet answered
        self._num_frames = 0
        self._sizes: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
        if self.memory is not None:
            self.memory.reset()

    @torch.no_grad()
    def push(self, image: Tensor) -> list[FrameResult]:
        """Add the next frame of the current video.

        Args:
            image: uint8 [3, H, W] RGB; every frame of a video has the same size.
        Returns:
            results of the frames that became complete, in frame order (possibly none).
        """
        original_size = (int(image.shape[1]), int(image.shape[2]))
        if self._num_frames and original_size != self._sizes[0]:
            raise ValueError(f"frame size changed within a video: {original_size} after {self._sizes[0]}")
        parameter = next(self.model.parameters())
        resized = self.preprocessor(image.to(parameter.device)).to(parameter.dtype)
        self._sizes = (original_size, (int(resized.shape[1]), int(resized.shape[2])))
        batch = self.preprocessor.pad(resized)[None]
        frame_index = self._num_frames
        self._num_frames += 1

        if not isinstance(self.model, SLTnet):
            detections = self.model(batch, [self._sizes[1]])[0]
            return [self._result(frame_index, detections["boxes"], detections["scores"], detections["classes"])]

        self._window[frame_index] = self.model.frame_outputs(batch)
        self._pending.append(frame_index)
        future = self.model.window.latency
        results = []
        while self._pending and self._pending[0] + future <= frame_index:
            results.append(self._detect(self._pending.popleft(), self._num_frames))
        return results

    @torch.no_grad()
    def flush(self) -> list[FrameResult]:
        """End of the video: answer every pending frame (the last frame fills the future), then reset."""
        results = [self._detect(index, self._num_frames) for index in self._pending]
        self.reset()
        return results

    def _detect(self, reference: int, num_frames_seen: int) -> FrameResult:
        model = self.model
        assert isinstance(model, SLTnet), "frames wait for a window only with SLTnet"
        indices = model.window.indices(reference, num_frames_seen)
        window = [self._window[i] for i in indices]
        if self.memory is not None:
            memory_features, memory_boxes = self.memory.references()
        else:
            memory_features = memory_boxes = window[0].boxes.new_zeros((0, 4))
        detections, entry = model.detect_window(
            window, model.window.reference_position, self._sizes[1], memory_features, memory_boxes, self.score_thresh
        )
        if self.memory is not None:
            self.memory.update(reference, entry.features, entry.boxes)
        # The next window starts at (reference + 1) - reference_position; older frames are done.
        oldest_needed = reference + 1 - model.window.reference_position
        for index in [i for i in self._window if i < oldest_needed]:
            del self._window[index]
        return self._result(reference, detections.boxes, detections.scores, detections.classes)

    def _result(self, frame_index: int, boxes: Tensor, scores: Tensor, classes: Tensor) -> FrameResult:
        """A frame's detections in its own pixels; those whose box is empty there are dropped."""
        original_size, resized_size = self._sizes
        boxes, keep = boxes_to_frame(boxes, resized_size, original_size)
        return FrameResult(frame_index, boxes[keep].float().cpu(), scores[keep].float().cpu(), classes[keep].cpu())
