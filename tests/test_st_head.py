"""ST box heads, ST classifier and double-head fusion (docs/method.md#long-term-self-guided-attention,
#double-head-and-inference)."""

import math

import pytest
import torch
import torch.nn.functional as F

from sltnet.config import get_cfg
from sltnet.modeling.attention import box_geometry, geometry_embedding
from sltnet.modeling.memory import LongTermMemory
from sltnet.modeling.st_head import (
    STAttentionBoxHead,
    STClassifier,
    STFCBoxHead,
    build_st_box_head,
    fuse_double_head_probs,
)

C, S, D, G, E, P = 4, 2, 32, 4, 16, 3  # channels, pooled side, fc_dim, groups, embed_dim, refs per frame
INPUT_SIZE = C * S * S


def make_head(seed: int = 0, **kwargs) -> STAttentionBoxHead:
    """A small head with random (not the tiny initial) weights, so attention visibly matters."""
    torch.manual_seed(seed)
    options = dict(fc_dim=D, num_stages=2, num_groups=G, embed_dim=E, num_ref_rois=P)
    head = STAttentionBoxHead(INPUT_SIZE, **{**options, **kwargs})
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.normal_(std=0.3)
    return head


def random_boxes(count: int, generator: torch.Generator) -> torch.Tensor:
    corner = torch.rand(count, 2, generator=generator) * 50
    size = torch.rand(count, 2, generator=generator) * 40 + 5
    return torch.cat((corner, corner + size), dim=1)


def inputs(num_rois: int = 5, num_refs: int = 6, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_rois, C, S, S, generator=generator)
    ref_features = torch.rand(num_refs, D, generator=generator)
    return x, random_boxes(num_rois, generator), ref_features, random_boxes(num_refs, generator)


def hand_forward_one_stage(head, x, boxes, ref_features, ref_boxes):
    """Stage 0 written per head, with the grouped 1x1 conv W_V as per-group matrix products."""
    x0 = F.relu(head.fcs[0](x.flatten(1)))
    refs = torch.cat((ref_features, x0[:P]))
    embedding = geometry_embedding(box_geometry(boxes, torch.cat((ref_boxes, boxes[:P]))), E)  # [R, M, E]
    geometric = F.relu(embedding @ head.Wgs[0].weight.view(G, E).T + head.Wgs[0].bias)  # [R, M, G]
    queries, keys = head.Wqs[0](x0), head.Wks[0](refs)
    value_weight, value_bias = head.Wvs[0].weight.view(D, D), head.Wvs[0].bias
    head_dim = D // G
    output = x0.clone()
    for g in range(G):
        channels = slice(g * head_dim, (g + 1) * head_dim)
        logits = torch.log(geometric[..., g] + 1e-6) + queries[:, channels] @ keys[:, channels].T / math.sqrt(head_dim)
        head_output = logits.softmax(dim=1) @ refs  # [R, D]: every head attends over all of d
        output[:, channels] += head_output @ value_weight[channels].T + value_bias[channels]
    return output


def test_one_stage_matches_the_formula_written_per_head():
    head = make_head(num_stages=1)
    x, boxes, ref_features, ref_boxes = inputs()
    features, _ = head(x, boxes, ref_features, ref_boxes)
    torch.testing.assert_close(features, hand_forward_one_stage(head, x, boxes, ref_features, ref_boxes))


def test_stages_are_fc_relu_plus_residual_attention():
    head = make_head()
    with torch.no_grad():
        for conv in head.Wvs:  # attention outputs 0: only the FC chain remains
            conv.weight.zero_()
            conv.bias.zero_()
    x, boxes, ref_features, ref_boxes = inputs()
    features, _ = head(x, boxes, ref_features, ref_boxes)
    torch.testing.assert_close(features, F.relu(head.fcs[1](F.relu(head.fcs[0](x.flatten(1))))))


def test_output_shapes_and_memory_entry():
    head = make_head()
    x, boxes, ref_features, ref_boxes = inputs(num_rois=5)
    features, entry = head(x, boxes, ref_features, ref_boxes)
    assert features.shape == (5, D) and entry.shape == (P, D)
    torch.testing.assert_close(entry, head.embed(x)[:P])
    # Fewer tubelets than P: the entry holds them all; no references at all is fine too.
    features, entry = head(x[:2], boxes[:2], ref_features[:0], ref_boxes[:0])
    assert features.shape == (2, D) and entry.shape == (2, D)


def test_current_frame_rows_are_references():
    head = make_head()
    x, boxes, ref_features, ref_boxes = inputs(num_rois=5)
    features, entry = head(x, boxes, ref_features, ref_boxes)
    x_changed = x.clone()
    x_changed[P:] += 1.0  # rows past P are queries only: the first P outputs stay
    changed, _ = head(x_changed, boxes, ref_features, ref_boxes)
    torch.testing.assert_close(changed[:P], features[:P])
    assert not torch.allclose(changed[P:], features[P:])
    x_changed = x.clone()
    x_changed[0] += 1.0  # row 0 is a reference: every output moves
    changed, _ = head(x_changed, boxes, ref_features, ref_boxes)
    assert not torch.allclose(changed[1:], features[1:])


def test_padded_masked_memory_equals_unpadded():
    head = make_head()
    memory = LongTermMemory(num_keyframes=3, keyframe_interval=1, rows_per_entry=P, feature_dim=D)
    generator = torch.Generator().manual_seed(2)
    for t, rows in enumerate((3, 3, 1, 2)):  # the last two overwrite full slots: stale rows remain
        memory.update(t, torch.rand(rows, D, generator=generator), random_boxes(rows, generator))
    x, boxes, _, _ = inputs(num_rois=5)
    with torch.no_grad():
        unpadded, entry = head(x, boxes, *memory.references())
        padded_features, padded_boxes, valid = memory.as_padded()
        masked, padded_entry = head(x, boxes, padded_features, padded_boxes, valid)
        unmasked, _ = head(x, boxes, padded_features, padded_boxes)
    torch.testing.assert_close(masked, unpadded)
    torch.testing.assert_close(padded_entry, entry)
    assert not torch.allclose(unmasked, unpadded)


def test_location_free_ignores_boxes():
    x, boxes, ref_features, ref_boxes = inputs()
    other_boxes, other_ref_boxes = boxes * 0.5 + 3.0, ref_boxes.flip(0)
    free = make_head(location_free=True)
    torch.testing.assert_close(
        free(x, boxes, ref_features, ref_boxes)[0], free(x, other_boxes, ref_features, other_ref_boxes)[0]
    )
    assert not any(name.startswith("Wgs") for name in free.state_dict())
    located = make_head()
    assert not torch.allclose(
        located(x, boxes, ref_features, ref_boxes)[0], located(x, other_boxes, ref_features, other_ref_boxes)[0]
    )


def test_state_dict_names_match_the_original_checkpoints():
    head = STAttentionBoxHead(INPUT_SIZE, fc_dim=D, num_stages=2, num_groups=G, embed_dim=64, num_ref_rois=P)
    shapes = {name: tuple(tensor.shape) for name, tensor in head.state_dict().items()}
    expected = {}
    for i in range(2):
        expected.update(
            {
                f"fcs.{i}.weight": (D, INPUT_SIZE if i == 0 else D),
                f"fcs.{i}.bias": (D,),
                f"Wgs.{i}.weight": (G, 64, 1, 1),
                f"Wgs.{i}.bias": (G,),
                f"Wqs.{i}.weight": (D, D),
                f"Wqs.{i}.bias": (D,),
                f"Wks.{i}.weight": (D, D),
                f"Wks.{i}.bias": (D,),
                f"Wvs.{i}.weight": (D, D, 1, 1),  # grouped: G * D inputs, D / G outputs per group
                f"Wvs.{i}.bias": (D,),
            }
        )
    assert shapes == expected
    assert head.Wvs[0].groups == G
    classifier = STClassifier(D, num_classes=10)
    assert {k: tuple(v.shape) for k, v in classifier.state_dict().items()} == {
        "cls_score.weight": (11, D),
        "cls_score.bias": (11,),
    }
    assert set(STFCBoxHead(INPUT_SIZE, D).state_dict()) == {"fcs.0.weight", "fcs.0.bias", "fcs.1.weight", "fcs.1.bias"}


def test_initialisation():
    torch.manual_seed(0)
    head = STAttentionBoxHead(256, fc_dim=128, num_stages=2, num_groups=4, embed_dim=64)
    for fc in [*head.fcs, *head.Wqs, *head.Wks]:  # Kaiming-uniform, a = 1: bound sqrt(3 / fan_in)
        bound = math.sqrt(3 / fc.in_features)
        assert 0.9 * bound < fc.weight.abs().max().item() <= bound
        assert not fc.bias.any()
    for conv in [*head.Wgs, *head.Wvs]:
        assert 0.008 < conv.weight.std().item() < 0.012
        assert not conv.bias.any()
    classifier = STClassifier(128, num_classes=30)
    assert 0.008 < classifier.cls_score.weight.std().item() < 0.012
    assert not classifier.cls_score.bias.any()


def test_plain_head_is_two_fc_relu_layers():
    head = STFCBoxHead(INPUT_SIZE, D)
    x = inputs()[0]
    torch.testing.assert_close(head(x), F.relu(head.fcs[1](F.relu(head.fcs[0](x.flatten(1))))))


def test_classifier_outputs_k_plus_one_logits():
    assert STClassifier(D, num_classes=7)(torch.randn(5, D)).shape == (5, 8)


def test_fused_probabilities():
    p_spatial = torch.tensor([[0.5, 0.2, 0.3], [0.0, 1.0, 0.0]])
    p_st = torch.tensor([[0.4, 0.4, 0.2], [0.6, 0.3, 0.1]])
    expected = torch.tensor([[0.7, 0.52, 0.44], [0.6, 1.0, 0.1]])
    torch.testing.assert_close(fuse_double_head_probs(p_spatial, p_st), expected)


def test_build_from_config():
    cfg = get_cfg()
    cfg.MODEL.FPN.OUT_CHANNELS = C
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = S
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = D
    attention = cfg.MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.ATTENTION
    attention.GROUP, attention.STAGE, attention.EMBED_DIM, attention.LOCATION_FREE = G, 3, E, True
    cfg.MODEL.SPATIOTEMPORAL.ROI_BOX_HEAD.REF_POST_NMS_TOP_N = 7
    head = build_st_box_head(cfg)
    assert isinstance(head, STAttentionBoxHead)
    assert (len(head.fcs), head.num_groups, head.embed_dim, head.num_ref_rois) == (3, G, E, 7)
    assert head.location_free and head.fcs[0].in_features == INPUT_SIZE and head.fcs[0].out_features == D
    cfg.MODEL.SPATIOTEMPORAL.LONG_TERM = False
    plain = build_st_box_head(cfg)
    assert isinstance(plain, STFCBoxHead) and len(plain.fcs) == 2


def test_fc_dim_must_split_into_groups():
    with pytest.raises(ValueError, match="multiple of num_groups"):
        STAttentionBoxHead(INPUT_SIZE, fc_dim=30, num_groups=4)
