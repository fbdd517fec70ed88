"""Tubelet features (docs/method.md#tubelet-features-and-aggregation): pool each frame's box on that frame's
features, then aggregate the window's RoI features into one feature map per tubelet."""

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sltnet.modeling.poolers import MultiLevelRoIAlign


def pool_tubelets(pooler: MultiLevelRoIAlign, features: list[Tensor], tubelet_boxes: Tensor) -> Tensor:
    """RoIAlign every tubelet box on the features of its own frame.

    Args:
        pooler: the box head's multi-level RoIAlign (docs/method.md#single-frame-baseline).
        features: one [N, C, H_l, W_l] tensor per FPN level; batch item f holds frame f of the window.
        tubelet_boxes: [N, R, 4] boxes (x1, y1, x2, y2), one per frame and tubelet.
    Returns:
        [N, R, C, S, S] pooled features, S = ``pooler.output_size``.
    """
    num_frames, num_tubelets = tubelet_boxes.shape[:2]
    pooled = pooler(features, list(tubelet_boxes.unbind(0)))
    return pooled.view(num_frames, num_tubelets, *pooled.shape[1:])


def max_aggregation(tubelet_features: Tensor | Sequence[Tensor]) -> Tensor:
    """Element-wise maximum over the frames.

    Args:
        tubelet_features: [N, R, C, S, S], or the N frames' [R, C, S, S] (no stacked copy is made).
    Returns:
        [R, C, S, S].
    """
    if isinstance(tubelet_features, Tensor):
        return tubelet_features.amax(dim=0)
    return functools.reduce(torch.maximum, tubelet_features)


def adaptive_aggregation(tubelet_features: Tensor, reference_index: int) -> Tensor:
    """Weighted sum over the frames, weights from the similarity to the reference frame.

    For each tubelet and spatial cell, the weight of frame f is the softmax over frames of the cosine
    similarity (over channels) between frame f's RoI feature and the reference frame's.

    Args:
        tubelet_features: [N, R, C, S, S].
        reference_index: position of the reference frame in the window.
    Returns:
        [R, C, S, S].
    """
    reference = tubelet_features[reference_index : reference_index + 1]
    similarity = F.cosine_similarity(tubelet_features, reference, dim=2)  # [N, R, S, S]
    weights = similarity.softmax(dim=0).unsqueeze(2)  # [N, R, 1, S, S]
    return (weights * tubelet_features).sum(dim=0)


AGGREGATION_METHODS = ("max", "adaptive")


class TubeletAggregation(nn.Module):
    """Aggregates a window's tubelet RoI features, the method chosen by
    ``MODEL.SPATIOTEMPORAL.AGGREGATION``.

    Args:
        method: "max" (default) or "adaptive".
    """

    def __init__(self, method: str = "max") -> None:
        super().__init__()
        if method not in AGGREGATION_METHODS:
            raise ValueError(f"unknown aggregation {method!r}, expected one of: {', '.join(AGGREGATION_METHODS)}")
        self.method = method

    def forward(self, tubelet_features: Tensor | Sequence[Tensor], reference_index: int) -> Tensor:
        """[N, R, C, S, S] pooled tubelet features (or the N frames' [R, C, S, S]) -> [R, C, S, S]."""
        if self.method == "adaptive":
            stacked = tubelet_features if isinstance(tubelet_features, Tensor) else torch.stack(list(tubelet_features))
            return adaptive_aggregation(stacked, reference_index)
        return max_aggregation(tubelet_features)

    def extra_repr(self) -> str:
        return f"method={self.method!r}"
