"""Box geometry, its embedding and the relation attention (docs/method.md#long-term-self-guided-attention)."""

import math

import pytest
import torch

from sltnet.modeling.attention import (
    attention_bias,
    box_geometry,
    geometry_embedding,
    project_geometry_embedding,
    relation_attention,
)

# Two boxes (x1, y1, x2, y2): a is 10 wide and 20 high, b 20 wide and 10 high, centres 15 apart in x.
BOX_A = [0.0, 0.0, 9.0, 19.0]
BOX_B = [10.0, 5.0, 29.0, 14.0]


def hand_geometry(box, ref):
    """the formula of docs/method.md#long-term-self-guided-attention, written out with math for one pair."""
    w, h = box[2] - box[0] + 1, box[3] - box[1] + 1
    w_r, h_r = ref[2] - ref[0] + 1, ref[3] - ref[1] + 1
    cx, cy = box[0] + w / 2, box[1] + h / 2
    cx_r, cy_r = ref[0] + w_r / 2, ref[1] + h_r / 2
    return [
        math.log(abs(cx - cx_r) / w + 1e-3),
        math.log(abs(cy - cy_r) / h + 1e-3),
        math.log(w / w_r),
        math.log(h / h_r),
    ]


def test_box_geometry_matches_the_formula_for_two_boxes():
    boxes = torch.tensor([BOX_A, BOX_B])
    geometry = box_geometry(boxes, boxes)
    assert geometry.shape == (2, 2, 4)
    # a -> b: centres (5, 10) and (20, 10).
    expected_ab = [math.log(1.5 + 1e-3), math.log(1e-3), math.log(0.5), math.log(2.0)]
    assert hand_geometry(BOX_A, BOX_B) == pytest.approx(expected_ab)
    torch.testing.assert_close(geometry[0, 1], torch.tensor(expected_ab))
    torch.testing.assert_close(geometry[1, 0], torch.tensor(hand_geometry(BOX_B, BOX_A)))
    torch.testing.assert_close(geometry[0, 0], torch.tensor([math.log(1e-3), math.log(1e-3), 0.0, 0.0]))


def test_geometry_embedding_matches_a_hand_computed_example():
    boxes = torch.tensor([BOX_A, BOX_B])
    embedding = geometry_embedding(box_geometry(boxes, boxes), embed_dim=64)
    assert embedding.shape == (2, 2, 64)
    for i, box in enumerate((BOX_A, BOX_B)):
        for j, ref in enumerate((BOX_A, BOX_B)):
            expected = []
            for value in hand_geometry(box, ref):
                phases = [100 * value / 1000 ** (k / 8) for k in range(8)]
                expected += [math.sin(p) for p in phases] + [math.cos(p) for p in phases]
            torch.testing.assert_close(embedding[i, j], torch.tensor(expected), atol=1e-4, rtol=1e-4)


def test_geometry_embedding_needs_a_multiple_of_8():
    with pytest.raises(ValueError, match="multiple of 8"):
        geometry_embedding(torch.zeros(1, 1, 4), embed_dim=20)


def test_relation_attention_matches_a_hand_computed_example():
    # One head of size 2, one query, two references.
    query = [1.0, 2.0]
    keys = [[1.0, 0.0], [0.0, 1.0]]
    values = [[10.0, 0.0, 1.0], [0.0, 10.0, 2.0]]
    geometric = [0.5, 0.0]
    logits = [
        math.log(g + 1e-6) + sum(q * k for q, k in zip(query, key)) / math.sqrt(2) for g, key in zip(geometric, keys)
    ]
    weights = [math.exp(x) / sum(math.exp(y) for y in logits) for x in logits]
    expected = [sum(w * v[c] for w, v in zip(weights, values)) for c in range(3)]

    output = relation_attention(
        torch.tensor([query]), torch.tensor(keys), torch.tensor(values), 1, attention_bias(torch.tensor([[geometric]]))
    )
    assert output.shape == (1, 1, 3)
    torch.testing.assert_close(output[0, 0], torch.tensor(expected))


def test_heads_use_their_own_channel_slices():
    generator = torch.Generator().manual_seed(0)
    queries, keys, values = (torch.randn(n, 8, generator=generator) for n in (3, 5, 5))
    output = relation_attention(queries, keys, values, num_heads=2)
    for head in range(2):
        channels = slice(4 * head, 4 * head + 4)
        weights = (queries[:, channels] @ keys[:, channels].T / 2.0).softmax(dim=1)
        torch.testing.assert_close(output[:, head], weights @ values)


def test_masked_references_are_ignored():
    generator = torch.Generator().manual_seed(1)
    queries, keys, values = (torch.randn(n, 8, generator=generator) for n in (3, 4, 4))
    geometric = torch.rand(2, 3, 4, generator=generator)
    padding = torch.randn(3, 8, generator=generator)
    # Padding rows between and after the real ones, with arbitrary contents.
    padded = [torch.cat((x[:2], padding[:1], x[2:], padding[1:])) for x in (keys, values)]
    padded_geometric = torch.cat((geometric[..., :2], torch.rand(2, 3, 1), geometric[..., 2:], torch.rand(2, 3, 2)), 2)
    mask = torch.tensor([True, True, False, True, True, False, False])

    unpadded = relation_attention(queries, keys, values, 2, attention_bias(geometric))
    masked = relation_attention(queries, padded[0], padded[1], 2, attention_bias(padded_geometric, mask))
    torch.testing.assert_close(masked, unpadded)
    unmasked = relation_attention(queries, padded[0], padded[1], 2, attention_bias(padded_geometric))
    assert not torch.allclose(unmasked, unpadded)
    # Appearance only: the mask alone is the bias.
    torch.testing.assert_close(
        relation_attention(queries, padded[0], padded[1], 2, attention_bias(key_mask=mask)),
        relation_attention(queries, keys, values, 2),
    )


def test_projected_embedding_equals_the_embedding_times_the_weight():
    generator = torch.Generator().manual_seed(2)
    boxes = torch.rand(5, 2, generator=generator) * 50
    boxes = torch.cat((boxes, boxes + 5 + torch.rand(5, 2, generator=generator) * 30), dim=1)
    geometry = box_geometry(boxes, boxes[:3])
    weight, bias = torch.randn(6, 64, generator=generator), torch.randn(6, generator=generator)
    expected = geometry_embedding(geometry, 64) @ weight.T + bias
    torch.testing.assert_close(project_geometry_embedding(geometry, weight, bias), expected, rtol=1e-5, atol=1e-4)
