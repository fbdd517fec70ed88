"""Stage-2 training as the original SLTnet trains (docs/method.md#two-stage-training): frame groups,
support groups, temporal dropout, crowd annotations, long-term references and the FREEZE_* keys."""

import json

import numpy as np
import pytest
import torch

from sltnet.config import load_config
from sltnet.data.batching import FrameGroup, TrainingGroup
from sltnet.data.records import StCocoDataset, VideoRecord
from sltnet.data.sampling import TrainingGroupSampler, training_groups
from sltnet.data.stcoco import build_stcoco_dataset, validate_stcoco
from sltnet.data.transforms import ImagePreprocessor
from sltnet.engine.training_data import build_group_sampler
from sltnet.errors import SltnetError
from sltnet.modeling.build import build_model

from helpers import TINY_SLTNET, video


def make_video(num_frames: int, name: str = "v", tracks_of=lambda t: [1], crowd_of=lambda t: ()) -> VideoRecord:
    """A 32x24-pixel video read from ST-COCO: frame t has one box per track id of ``tracks_of(t)``,
    those of ``crowd_of(t)`` crowd annotations; image ids differ between videos of other names."""
    images, annotations = [], []
    for t in range(num_frames):
        image_id = 1000 * sum(map(ord, name)) + t
        images.append({"id": image_id, "file_name": f"{name}/{t}.jpg", "width": 32, "height": 24, "video": name})
        images[-1]["frame_number"] = t
        for track in tracks_of(t):
            crowd = int(track in crowd_of(t))
            annotation = {"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "bbox": [1, 2, 9, 10]}
            annotations.append({**annotation, "id_track": track, "iscrowd": crowd})
    data = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]}
    assert validate_stcoco(data, "x.json") == []
    (video_record,) = build_stcoco_dataset(data, "x.json", "root").videos
    return video_record


def dataset(*videos: VideoRecord) -> StCocoDataset:
    return StCocoDataset("x.json", "root", ["thing"], [1], list(videos))


def starts(groups) -> list[int]:
    return [group[0].frame_number for group in groups]


# ------------------------------------------------------------------------------------------------
# Frame groups per video
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "num_frames, window, max_groups, expected_starts",
    [
        # 20 non-overlapping groups of 3, not more than 10 x 3: all of them.
        (60, 3, 10, list(range(0, 60, 3))),
        (61, 3, 10, list(range(0, 60, 3))),  # the incomplete last group is dropped
        # 33 groups, more than 10 x 3: 10 at positions round(linspace(0, 32, 10)).
        (100, 3, 10, [3 * p for p in (0, 4, 7, 11, 14, 18, 21, 25, 28, 32)]),
        (90, 3, 10, list(range(0, 90, 3))),  # 30 groups: still all
        (12, 5, 10, [0, 5]),  # symmetric N = 2
        (30, 1, 30, list(range(30))),  # stage 1 of the synthetic configs: every frame
        (31, 1, 30, [round(x) for x in np.linspace(0, 30, 30)]),
        (300, 1, 10, [round(x) for x in np.linspace(0, 299, 10)]),  # stage 1, a long VID video
    ],
)
def test_group_counts_for_video_lengths(num_frames, window, max_groups, expected_starts):
    groups = training_groups(make_video(num_frames), window, max_groups)
    assert starts(groups) == expected_starts
    assert all(
        [f.frame_number for f in g] == list(range(g[0].frame_number, g[0].frame_number + window)) for g in groups
    )


def test_spread_positions_move_to_the_next_valid_group():
    """Groups 1..19 of 3 break the track-id rule: the evenly spaced positions are those of all 40
    groups, and a position without a valid group takes the next valid one (possibly repeating it)."""
    num_frames = 40 * 3
    v = make_video(num_frames, tracks_of=lambda t: [2] if 3 <= t < 60 and t % 3 == 1 else [1])
    groups = training_groups(v, 3, 3)
    # 21 valid groups at positions 0, 20..39, more than 3 x 3: round(linspace(0, 39, 3)) = 0, 20 (19.5), 39;
    # with 5 picks (21 > 5 x 3) 0, 10, 20, 29, 39, and 10 takes group 20.
    assert [start // 3 for start in starts(groups)] == [0, 20, 39]
    assert [start // 3 for start in starts(training_groups(v, 3, 5))] == [0, 20, 20, 29, 39]


def test_synthetic_configs_keep_their_stage_one_meaning_and_stage_two_groups():
    """configs/synthetic/small_*: stage 1 takes every frame of the 30-frame videos, stage 2 the 10
    non-overlapping groups of 3 frames of each."""
    data = dataset(make_video(30, "a"), make_video(30, "b"))
    stage1 = load_config("configs/synthetic/small_baseline.yaml")
    assert len(build_group_sampler(stage1, data, temporal=False)) == 60
    for name in ("sequential", "symmetric"):
        stage2 = load_config(f"configs/synthetic/small_sltnet_{name}.yaml", ["MODEL.WEIGHTS", ""])
        sampler = build_group_sampler(stage2, data, temporal=True)
        assert len(sampler) == 20
        assert sorted(starts(s.frames for s in sampler.epoch(0))) == sorted(list(range(0, 30, 3)) * 2)


# ------------------------------------------------------------------------------------------------
# Support groups and temporal dropout
# ------------------------------------------------------------------------------------------------
def support_of(sampler: TrainingGroupSampler, epoch: int) -> dict[int, list[list[int]]]:
    """Support groups (their frame numbers) by the sample's first frame."""
    return {
        s.frames[0].image_id: [[f.frame_number for f in group] for group in s.support] for s in sampler.epoch(epoch)
    }


@pytest.mark.parametrize("draw", ["once", "per_epoch"])
def test_support_groups_drawn_once_or_every_epoch(draw):
    sampler = TrainingGroupSampler(dataset(make_video(60)), 3, False, 10, support_draw=draw, seed=4)
    epochs = [support_of(sampler, epoch) for epoch in range(3)]
    for sample in sampler.epoch(0):
        own = sample.frames[0].frame_number
        groups = [[f.frame_number for f in group] for group in sample.support]
        assert len(groups) == 2 and groups[0] != groups[1]  # 19 other groups: drawn without replacement
        assert all(g == list(range(g[0], g[0] + 3)) and g[0] % 3 == 0 and g[0] != own for g in groups)
    assert (epochs[0] == epochs[1] == epochs[2]) == (draw == "once")
    rebuilt = TrainingGroupSampler(dataset(make_video(60)), 3, False, 10, support_draw=draw, seed=4)
    assert support_of(rebuilt, 1) == epochs[1]  # a pure function of the seed (exact resume)


def test_support_draw_is_a_config_choice_defaulting_to_once():
    cfg = load_config(TINY_SLTNET, ["MODEL.WEIGHTS", ""])
    assert cfg.DATALOADER.SUPPORT_DRAW == "once"
    with pytest.raises(SltnetError, match=r": DATALOADER.SUPPORT_DRAW must be one of once, per_epoch, got 'always'$"):
        load_config(TINY_SLTNET, ["DATALOADER.SUPPORT_DRAW", "always"])


@pytest.mark.parametrize("support_dropout", [True, False])
def test_temporal_dropout_applies_to_the_support_groups(support_dropout):
    n = 2
    sampler = TrainingGroupSampler(
        dataset(make_video(50)), n, True, 10, temporal_dropout=True, support_dropout=support_dropout
    )
    for sample in sampler.epoch(0):
        assert len(sample.frames) == 3 and sample.reference == 1
        for group in sample.support:
            numbers = [f.frame_number for f in group]
            if support_dropout:
                start = numbers[1] - n  # the support group's own window, its reference in the middle
                assert len(numbers) == 3 and start % 5 == 0
                assert start <= numbers[0] < numbers[1] < numbers[2] <= start + 2 * n
            else:
                assert numbers == list(range(numbers[0], numbers[0] + 5))


# ------------------------------------------------------------------------------------------------
# Crowd annotations
# ------------------------------------------------------------------------------------------------
def test_crowd_annotations_are_removed_from_training_targets():
    """Frame 1 has an extra crowd box: left out, the group's tracks line up and its boxes are the
    non-crowd ones."""
    tracks = {0: [1, 2], 1: [1, 2, 7], 2: [1, 2]}
    (group,) = training_groups(make_video(3, tracks_of=tracks.get, crowd_of=lambda t: (7,)), 3, 10)
    assert [f.track_ids.tolist() for f in group] == [[1, 2]] * 3
    assert [len(f.boxes) for f in group] == [2, 2, 2] and not any(f.crowd.any() for f in group)
    # A frame whose only annotations are crowd ones has no training target: no group over it.
    only_crowd = make_video(3, tracks_of=lambda t: [1, 2], crowd_of=lambda t: (1, 2) if t == 1 else ())
    assert training_groups(only_crowd, 3, 10) == []


def test_iscrowd_is_read_and_checked():
    images = [{"id": 1, "file_name": "v/0.jpg", "width": 32, "height": 24, "video": "v", "frame_number": 0}]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "id_track": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9], "id_track": 1, "iscrowd": 1},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [2, 2, 5, 5], "id_track": 2, "iscrowd": 0},
    ]
    data = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]}
    assert validate_stcoco(data, "a.json") == []
    loaded = build_stcoco_dataset(json.loads(json.dumps(data)), "a.json", "root")
    assert loaded.videos[0].frames[0].crowd.tolist() == [False, True, False]
    annotations[1]["iscrowd"] = 2
    assert validate_stcoco(data, "a.json") == ["a.json: annotation 2 (image 1): 'iscrowd' must be 0 or 1, got 2"]


# ------------------------------------------------------------------------------------------------
# The model in training: references and FREEZE_*
# ------------------------------------------------------------------------------------------------
FRAME_SIZE = (96, 128)


def tiny_model(*overrides: str):
    torch.manual_seed(0)
    return build_model(load_config(TINY_SLTNET, ["MODEL.WEIGHTS", "", *overrides])).train()


def frame_group(frames: torch.Tensor, preprocessor: ImagePreprocessor) -> FrameGroup:
    """The tiny test video's frames as a sequential group (reference last) with the square's box."""
    images = torch.stack([preprocessor.pad(preprocessor(f)) for f in frames])
    size = tuple(preprocessor(frames[0]).shape[-2:])
    scale = size[0] / FRAME_SIZE[0]
    boxes = torch.tensor([[[10.0 + 4 * t, 30.0, 40.0 + 4 * t, 60.0]] for t in range(len(frames))]) * scale
    return FrameGroup(images, size, boxes, torch.tensor([1]), len(frames) - 1)


def training_sample(seed: int = 0) -> TrainingGroup:
    """Frames 0-2 of a test video with frames 3-5 and 6-8 of another as support groups."""
    cfg = load_config(TINY_SLTNET, ["MODEL.WEIGHTS", ""])
    preprocessor = ImagePreprocessor.from_config(cfg)
    current, other = video(FRAME_SIZE, 9, seed=seed), video(FRAME_SIZE, 9, seed=100)
    support = [frame_group(other[3:6], preprocessor), frame_group(other[6:9], preprocessor)]
    return TrainingGroup(**vars(frame_group(current[:3], preprocessor)), support=support)


def attention_references(model, sample: TrainingGroup) -> list[torch.Tensor]:
    """The references every attention stage's keys are computed from, in one stage-2 loss call."""
    seen: list[torch.Tensor] = []
    hooks = [w.register_forward_hook(lambda _m, args, _o: seen.append(args[0].detach())) for w in model.st_box_head.Wks]
    model.training_losses([sample])
    for hook in hooks:
        hook.remove()
    return seen


def test_references_in_training_are_the_support_groups_only():
    """The references do not depend on the current sample (its images changed, they stay), and
    there are P = REF_POST_NMS_TOP_N of them per support group (its first P - #GT tubelets and its
    ground-truth tubelets)."""
    model = tiny_model()
    first, second = attention_references(model, training_sample(0)), attention_references(model, training_sample(1))
    assert len(first) == len(model.st_box_head.Wks) == 2
    assert [len(refs) for refs in first] == [2 * model.num_ref_rois] * 2
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_current_references_are_an_option():
    """TRAIN_REFERENCES support_and_current also attends to the sample's own first P rows, as at test
    time: the references then change with the current sample."""
    model = tiny_model("MODEL.SPATIOTEMPORAL.TRAIN_REFERENCES", "support_and_current")
    first, second = attention_references(model, training_sample(0)), attention_references(model, training_sample(1))
    assert [len(refs) for refs in first] == [3 * model.num_ref_rois] * 2
    torch.testing.assert_close(first[0][: 2 * model.num_ref_rois], second[0][: 2 * model.num_ref_rois])
    assert not torch.equal(first[0][2 * model.num_ref_rois :], second[0][2 * model.num_ref_rois :])


def test_long_term_training_needs_support_groups():
    cfg = load_config(TINY_SLTNET, ["MODEL.WEIGHTS", "", "MODEL.SPATIOTEMPORAL.TRAIN_SUPPORT_GROUPS", "0"])
    with pytest.raises(SltnetError, match=r"^MODEL.SPATIOTEMPORAL.TRAIN_SUPPORT_GROUPS must be at least 1"):
        TrainingGroupSampler.from_config(dataset(make_video(9)), cfg)


PARTS = {"backbone.": "FREEZE_BACKBONE", "rpn.": "FREEZE_PROPOSAL_GENERATOR", "roi_heads.": "FREEZE_SPATIAL_HEAD"}


def gradients(model) -> dict[str, bool]:
    """Which parameters got a non-zero gradient from one backward pass of the stage-2 losses."""
    losses = model.training_losses([training_sample()])
    sum(losses.values()).backward()
    return {name: p.grad is not None and bool(p.grad.abs().sum() > 0) for name, p in model.named_parameters()}


@pytest.mark.parametrize(
    "unfrozen, expected_losses",
    [
        ((), {"loss_st_cls"}),
        (("FREEZE_PROPOSAL_GENERATOR",), {"loss_st_cls", "loss_rpn_cls", "loss_rpn_loc"}),
        (("FREEZE_SPATIAL_HEAD",), {"loss_st_cls", "loss_box_reg"}),
        (("FREEZE_BACKBONE",), {"loss_st_cls", "loss_rpn_cls", "loss_rpn_loc", "loss_box_reg"}),
    ],
)
def test_freeze_keys_decide_which_parts_train_and_with_which_losses(unfrozen, expected_losses):
    overrides = [item for key in unfrozen for item in (f"MODEL.SPATIOTEMPORAL.{key}", "false")]
    model = tiny_model(*overrides)
    assert set(model.training_losses([training_sample()])) == expected_losses
    got_gradient = gradients(tiny_model(*overrides))
    for prefix, key in PARTS.items():
        part = {name: got for name, got in got_gradient.items() if name.startswith(prefix)}
        params = [p for name, p in model.named_parameters() if name.startswith(prefix)]
        if key in unfrozen:
            assert all(p.requires_grad for p in params), key
            # Everything learns but the spatial classifier, which no default loss reaches (the original's).
            learning = {name for name, got in part.items() if got}
            assert learning == {name for name in part if not name.startswith("roi_heads.box_predictor.cls_score")}
        else:
            assert not any(p.requires_grad for p in params) and not any(part.values()), key
    assert all(got for name, got in got_gradient.items() if name.startswith(("st_box_head.", "st_cls_predictor.")))


def test_spatial_classifier_loss_is_an_option():
    model = tiny_model(
        "MODEL.SPATIOTEMPORAL.FREEZE_SPATIAL_HEAD", "false", "MODEL.SPATIOTEMPORAL.SPATIAL_CLS_LOSS", "true"
    )
    assert set(model.training_losses([training_sample()])) == {"loss_st_cls", "loss_box_reg", "loss_cls"}
    got_gradient = gradients(model)
    assert all(got for name, got in got_gradient.items() if name.startswith("roi_heads."))
