"""Tubelet RoI pooling and aggregation over the window (docs/method.md#tubelet-features-and-aggregation)."""

import math

import pytest
import torch
from torchvision.ops import roi_align

from sltnet.modeling.aggregation import (
    TubeletAggregation,
    adaptive_aggregation,
    max_aggregation,
    pool_tubelets,
)
from sltnet.modeling.poolers import MultiLevelRoIAlign


def test_pool_tubelets_pools_each_frame_box_on_its_own_frame():
    generator = torch.Generator().manual_seed(0)
    features = torch.rand(3, 2, 16, 16, generator=generator)  # frames of the window as the batch
    tubelet_boxes = torch.tensor(
        [
            [[0.0, 0.0, 8.0, 8.0], [4.0, 4.0, 12.0, 15.0]],
            [[1.0, 2.0, 9.0, 10.0], [5.0, 3.0, 13.0, 14.0]],
            [[2.0, 3.0, 10.0, 12.0], [6.0, 2.0, 15.0, 13.0]],
        ]
    )
    pooler = MultiLevelRoIAlign(output_size=7, scales=[1.0], sampling_ratio=2)
    pooled = pool_tubelets(pooler, [features], tubelet_boxes)
    assert pooled.shape == (3, 2, 2, 7, 7)
    for frame in range(3):
        expected = roi_align(features[frame : frame + 1], [tubelet_boxes[frame]], 7, 1.0, 2, aligned=True)
        torch.testing.assert_close(pooled[frame], expected)


def test_max_aggregation_is_elementwise_over_frames():
    features = torch.tensor([[1.0, -2.0, 5.0], [3.0, -1.0, 0.0], [2.0, -4.0, 4.0]]).view(3, 1, 3, 1, 1)
    torch.testing.assert_close(max_aggregation(features), torch.tensor([3.0, -1.0, 5.0]).view(1, 3, 1, 1))


def test_adaptive_aggregation_weights_frames_by_cosine_similarity_per_cell():
    # 3 frames, 1 tubelet, 2 channels, a 1x2 grid of cells; frame 1 is the reference.
    cell_0 = torch.tensor([[0.0, 2.0], [1.0, 0.0], [3.0, 0.0]])  # similarities to frame 1: 0, 1, 1
    cell_1 = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, -2.0]])  # similarities: 1/sqrt(2), 1, -1
    features = torch.stack((cell_0, cell_1), dim=2).view(3, 1, 2, 1, 2)

    def expected_cell(vectors, similarities):
        weights = [math.exp(s) / sum(math.exp(t) for t in similarities) for s in similarities]
        return [sum(w * v[c].item() for w, v in zip(weights, vectors)) for c in range(2)]

    expected = torch.tensor(
        [expected_cell(cell_0, [0.0, 1.0, 1.0]), expected_cell(cell_1, [1 / math.sqrt(2), 1.0, -1.0])]
    ).T.reshape(1, 2, 1, 2)
    torch.testing.assert_close(adaptive_aggregation(features, reference_index=1), expected)


def test_adaptive_aggregation_of_identical_frames_is_the_frame():
    frame = torch.randn(1, 4, 8, 7, 7, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(adaptive_aggregation(frame.expand(3, -1, -1, -1, -1), 2), frame[0])


def test_tubelet_aggregation_dispatches_on_the_method():
    features = torch.randn(3, 2, 4, 7, 7, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(TubeletAggregation("max")(features, 0), max_aggregation(features))
    torch.testing.assert_close(TubeletAggregation("adaptive")(features, 0), adaptive_aggregation(features, 0))
    with pytest.raises(ValueError, match="unknown aggregation 'mean'"):
        TubeletAggregation("mean")
