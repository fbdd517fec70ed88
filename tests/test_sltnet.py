"""SLTnet meta-architecture and its streaming API (docs/method.md) on the tiny config."""

import pytest
import torch

from sltnet.config import load_config
from sltnet.data.batching import FrameGroup, TrainingGroup
from sltnet.data.transforms import ImagePreprocessor
from sltnet.modeling.build import build_model
from sltnet.modeling.streaming import StreamingDetector

FRAME_SIZE = (96, 128)  # (height, width) of the uint8 test frames; resized to a 128 short side


def tiny_cfg(*overrides: str):
    return load_config("configs/synthetic/tiny_sltnet.yaml", ["MODEL.WEIGHTS", "", *overrides])


def video(num_frames: int, seed: int = 0) -> torch.Tensor:
    """[T, 3, H, W] uint8 frames with a bright square moving right."""
    frames = torch.zeros(num_frames, 3, *FRAME_SIZE, dtype=torch.uint8)
    generator = torch.Generator().manual_seed(seed)
    frames += torch.randint(0, 40, frames.shape, generator=generator, dtype=torch.uint8)
    for t in range(num_frames):
        frames[t, :, 30:60, 10 + 4 * t : 40 + 4 * t] = 220
    return frames


def count_backbone_calls(model) -> list:
    calls = []
    model.backbone.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    return calls


def stream(detector: StreamingDetector, frames: torch.Tensor):
    """(results, number of frames pushed when each result came out)."""
    answered = []
    for pushed, frame in enumerate(frames, start=1):
        answered += [(result, pushed) for result in detector.push(frame)]
    answered += [(result, len(frames)) for result in detector.flush()]
    return answered


@pytest.fixture(scope="module")
def sequential():
    torch.manual_seed(0)
    cfg = tiny_cfg("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    return cfg, build_model(cfg)


@pytest.fixture(scope="module")
def symmetric():
    torch.manual_seed(0)
    cfg = tiny_cfg(
        "MODEL.SPATIOTEMPORAL.FORWARD_AGGREGATION",
        "true",
        "MODEL.SPATIOTEMPORAL.NUM_FRAMES",
        "2",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        "0.0",
    )
    return cfg, build_model(cfg)


def test_sequential_answers_every_frame_at_once_and_runs_backbone_once_per_frame(sequential):
    cfg, model = sequential
    calls = count_backbone_calls(model)
    detector = StreamingDetector.from_config(model, cfg)
    answered = stream(detector, video(7))
    assert [r.frame_index for r, _ in answered] == list(range(7))
    assert [pushed for _, pushed in answered] == list(range(1, 8))
    assert calls == [1] * 7
    first = answered[0][0]
    assert first.boxes.shape[1] == 4 and len(first.boxes) == len(first.scores) == len(first.classes)
    # Boxes come back in the pixels of the frame as given.
    assert (
        float(first.boxes[:, 2].max()) <= FRAME_SIZE[1] + 1e-3
        and float(first.boxes[:, 3].max()) <= FRAME_SIZE[0] + 1e-3
    )


@pytest.mark.parametrize("num_frames", [1, 2, 3, 8])
def test_symmetric_one_result_per_real_frame_with_n_frames_delay(symmetric, num_frames):
    cfg, model = symmetric
    n = cfg.MODEL.SPATIOTEMPORAL.NUM_FRAMES
    calls = count_backbone_calls(model)
    answered = stream(StreamingDetector.from_config(model, cfg), video(num_frames))
    assert [r.frame_index for r, _ in answered] == list(range(num_frames))
    assert [pushed for _, pushed in answered] == [min(t + n + 1, num_frames) for t in range(num_frames)]
    assert calls[-num_frames:] == [1] * num_frames


def test_padding_repeats_the_first_and_last_frames(symmetric):
    """Frame 0's window is (0, 0, 0, 1, 2) for N=2: the same as a video whose first frame is repeated."""
    cfg, model = symmetric
    frames = video(4)
    detector = StreamingDetector.from_config(model, cfg)
    with torch.no_grad():
        outputs = [model.frame_outputs(detector.preprocessor.pad(detector.preprocessor(f))[None]) for f in frames]
        size = tuple(detector.preprocessor(frames[0]).shape[-2:])
        no_memory = torch.zeros(0, cfg.MODEL.ROI_BOX_HEAD.FC_DIM), torch.zeros(0, 4)
        expected, _ = model.detect_window([outputs[i] for i in (0, 0, 0, 1, 2)], 2, size, *no_memory)
    first = stream(detector, frames)[0][0]
    assert len(expected.boxes) > 0
    scale = FRAME_SIZE[1] / size[1]
    torch.testing.assert_close(first.boxes, expected.boxes * scale)
    torch.testing.assert_close(first.scores, expected.scores)


def test_memory_written_on_keyframes_and_cleared_by_a_new_video(sequential):
    cfg, model = sequential
    detector = StreamingDetector.from_config(model, cfg)
    interval = cfg.MODEL.SPATIOTEMPORAL.KEYFRAME_INTERVAL
    sizes = []
    for frame in video(7):
        detector.push(frame)
        sizes.append(len(detector.memory))
    # Keyframes 0, 3, 6; at most NUM_KEYFRAMES entries.
    assert interval == 3
    assert sizes == [1, 1, 1, 2, 2, 2, 2]
    detector.flush()
    assert len(detector.memory) == 0


def test_same_video_twice_gives_the_same_results(sequential):
    cfg, model = sequential
    detector = StreamingDetector.from_config(model, cfg)
    first = stream(detector, video(5))
    second = stream(detector, video(5))
    for (a, _), (b, _) in zip(first, second):
        torch.testing.assert_close(a.boxes, b.boxes)


def test_detections_whose_box_is_empty_in_the_frame_are_dropped():
    """As detectron2's postprocessing: after scaling back and clipping to the frame, a box of zero
    width or height is no detection."""
    model = build_model(load_config("configs/synthetic/tiny_baseline.yaml"))
    detections = {
        "boxes": torch.tensor([[10.0, 10.0, 50.0, 40.0], [130.0, 5.0, 140.0, 20.0], [5.0, 7.0, 9.0, 7.0]]),
        "scores": torch.tensor([0.9, 0.8, 0.7]),
        "classes": torch.tensor([1, 2, 3]),
    }
    model.forward = lambda images, image_sizes: [detections]
    (result,) = StreamingDetector(model, ImagePreprocessor(128, 128, [0, 0, 0], [1, 1, 1])).push(video(1)[0])
    # 96x128 frames need no resize: box 1 lies right of the frame, box 2 has no height.
    torch.testing.assert_close(result.boxes, detections["boxes"][:1])
    assert result.scores.tolist() == [pytest.approx(0.9)] and result.classes.tolist() == [1]


def training_group(frames: torch.Tensor, reference: int, preprocessor) -> FrameGroup:
    images = torch.stack([preprocessor.pad(preprocessor(f)) for f in frames])
    scale = 128 / FRAME_SIZE[0]
    boxes = torch.tensor([[[10 + 4 * t, 30, 40 + 4 * t, 60]] for t in range(len(frames))], dtype=torch.float32)
    return FrameGroup(images, tuple(preprocessor(frames[0]).shape[-2:]), boxes * scale, torch.tensor([1]), reference)


def test_stage_two_trains_only_the_st_head():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_model(cfg).train()
    detector = StreamingDetector.from_config(model, cfg)
    model.train()
    frames = video(6)
    group = training_group(frames[:3], 2, detector.preprocessor)
    support = training_group(frames[3:], 2, detector.preprocessor)
    sample = TrainingGroup(**vars(group), support=[support])

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.05)
    for _ in range(3):
        loss = model.training_losses([sample])["loss_st_cls"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        if name.startswith(("backbone.", "rpn.", "roi_heads.")):
            assert not changed and not param.requires_grad, name
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n.startswith("st_box_head."))
    assert not torch.equal(model.st_cls_predictor.cls_score.weight, before["st_cls_predictor.cls_score.weight"])


def test_baseline_training_losses_batch_groups_of_different_sizes():
    torch.manual_seed(0)
    cfg = load_config("configs/synthetic/tiny_baseline.yaml")
    model = build_model(cfg).train()
    assert not model.is_temporal
    boxes = torch.tensor([[[10.0, 10.0, 50.0, 40.0]]])
    groups = [
        FrameGroup(torch.randn(1, 3, 128, 160), (128, 150), boxes, torch.tensor([0]), 0),
        FrameGroup(torch.randn(1, 3, 96, 128), (96, 128), boxes, torch.tensor([2]), 0),
    ]
    losses = model.training_losses(groups)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
    assert all(torch.isfinite(value) for value in losses.values())
    sum(losses.values()).backward()
