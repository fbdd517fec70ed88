"""Frames of any size through one export (docs/deployment.md#frames-of-any-size): a frame of the
export's input size takes the engines' path bit for bit, a letterboxed frame's detections are those
of the same pixels padded by hand, and a scene rendered at several resolutions gives the same boxes
once they are scaled."""

import pytest
import torch
from torchvision.ops import box_iou

import runtime.detector as detector_module
from export.cli import main as export_main
from runtime.detector import StreamingRuntime
from runtime.engines import onnxruntime_backend
from runtime.letterbox import Fit, fit, letterbox_into, pad_colour
from sltnet.contract import DETECTION_OUTPUTS, FrameResult, Manifest, slot_input_name
from sltnet.data.transforms import boxes_to_frame

from helpers import BASELINE_SCORE_THRESH, CLASS_NAMES, TINY_BASELINE, TINY_SLTNET, make_weights, stream, video

INPUT_SIZE = (128, 128)  # the tiny configs' export size
# The random tiny model scores the smooth scene below between 0.5 and 0.7, so this export keeps
# detections at 0.5 (the other tests' 0.7 would keep none).
SCENE_THRESH = 0.5
# Scaled boxes agree when every detection scoring at least SCENE_THRESH + SCORE_MARGIN in one run
# has one of the same class at IoU >= MIN_IOU in the other. Measured between the resolutions below:
# matched scores differ by at most 0.005 and matched boxes overlap at IoU >= 0.999; the margin (10x)
# leaves detections near the threshold free to fall on either side, the IoU tolerates resampling.
SCORE_MARGIN = 0.05
MIN_IOU = 0.9


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("weights"))


def export(tmp_path_factory, config, weights, name, *overrides):
    out = tmp_path_factory.mktemp(name) / "engines"
    argv = ["--config-file", config, "--weights", str(weights), "--out", str(out), "--class-names", CLASS_NAMES]
    assert export_main([*argv, *overrides]) == 0
    return out


@pytest.fixture(scope="module")
def scene_export(tmp_path_factory, weights):
    thresh = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(SCENE_THRESH)]
    return export(tmp_path_factory, TINY_SLTNET, weights["sltnet"], "scene", *thresh)


@pytest.fixture(scope="module")
def baseline_export(tmp_path_factory, weights):
    return export(tmp_path_factory, TINY_BASELINE, weights["baseline"], "baseline", *BASELINE_SCORE_THRESH)


def render_scene(size: tuple[int, int], num_frames: int = 8) -> torch.Tensor:
    """[T, 3, H, W] uint8: one scene sampled at pixel centres of any resolution (smooth colour waves
    and three soft-edged blobs, one moving right, one left), so resizing one rendering gives almost
    exactly another."""
    height, width = size
    y = torch.arange(height).add(0.5).div(height)[:, None]
    x = torch.arange(width).add(0.5).div(width)[None]
    frames = []
    for t in range(num_frames):
        image = torch.stack([60 + 30 * torch.sin(6 * x + 2 * y + c) * torch.cos(4 * y - c) for c in (0.0, 1.0, 2.0)])
        blobs = (
            (0.45, 0.2 + 0.05 * t, 0.12, 0.09, (230, 200, 40)),
            (0.2, 0.7 - 0.02 * t, 0.06, 0.08, (40, 220, 220)),
            (0.75, 0.6, 0.08, 0.15, (250, 80, 90)),
        )
        for centre_y, centre_x, radius_y, radius_x, colour in blobs:
            weight = torch.exp(-(((y - centre_y) / radius_y) ** 4 + ((x - centre_x) / radius_x) ** 4))
            image = image * (1 - weight) + torch.tensor(colour, dtype=torch.float32)[:, None, None] * weight
        frames.append(image)
    return torch.stack(frames).round().clamp(0, 255).to(torch.uint8)


def run(out, frames) -> list[FrameResult]:
    manifest = Manifest.load(out)
    return [
        result
        for result, _ in stream(StreamingRuntime(manifest, onnxruntime_backend(out, manifest, num_threads=1)), frames)
    ]


# ------------------------------------------------------------------------------------------------
# Fitting, padding, mapping back
# ------------------------------------------------------------------------------------------------
def test_fit_keeps_the_aspect_ratio_inside_the_input():
    assert fit((720, 1280), (256, 256)) == Fit((720, 1280), (144, 256))
    assert fit((1280, 720), (600, 1000)) == Fit((1280, 720), (600, 338))
    assert fit((96, 128), (128, 128)).fitted_size == (96, 128)  # fits as it is: padded only
    assert fit((48, 64), (128, 128)).fitted_size == (96, 128)  # small frames are scaled up
    assert fit((1, 5000), (128, 128)).fitted_size == (1, 128)  # never a side of zero


def test_letterbox_places_the_frame_top_left_and_pads_with_the_pixel_mean():
    pad = pad_colour([103.53, 116.28, 123.675], "BGR")
    assert pad.tolist() == [124, 116, 104]  # the mean in RGB order
    frame = torch.full((3, 200, 100), 7, dtype=torch.uint8)
    out = torch.zeros((3, 128, 128), dtype=torch.uint8)
    assert letterbox_into(frame, out, pad) == Fit((200, 100), (128, 64))
    assert (out[:, :, :64] == 7).all()  # a constant frame stays constant through the resize
    assert (out[:, :, 64:] == pad[:, None, None]).all()


def test_boxes_map_back_to_the_frame_and_boxes_on_the_padding_are_dropped():
    placed = Fit((200, 100), (128, 64))  # scale 0.64
    boxes = torch.tensor([[6.4, 12.8, 32.0, 64.0], [60.0, 100.0, 70.0, 140.0], [64.0, 0.0, 128.0, 128.0]])
    mapped, keep = boxes_to_frame(boxes, placed.fitted_size, placed.frame_size)
    torch.testing.assert_close(mapped[0], torch.tensor([10.0, 20.0, 50.0, 100.0]))
    torch.testing.assert_close(mapped[1], torch.tensor([93.75, 156.25, 100.0, 200.0]))  # clipped to the frame
    assert keep.tolist() == [True, True, False]  # the last lies on the padding alone


# ------------------------------------------------------------------------------------------------
# The runtime
# ------------------------------------------------------------------------------------------------
def test_a_frame_of_the_input_size_is_the_engines_output_bit_for_bit(baseline_export, monkeypatch):
    """Today's path: the frame is the engines' image as it is, detections only scaled from the
    resized size (and empty boxes dropped, as detectron2 does); nothing is resized or padded."""
    monkeypatch.setattr(detector_module, "letterbox_into", lambda *args: pytest.fail("the frame was letterboxed"))
    manifest = Manifest.load(baseline_export)
    frames = video(INPUT_SIZE)
    actual = run(baseline_export, frames)
    engines = onnxruntime_backend(baseline_export, manifest, num_threads=1)
    temporal_inputs = manifest.engines.temporal.input_specs()
    for frame, result in zip(frames, actual):
        outputs = engines.frame({manifest.input.tensor: frame[None]})
        feeds = {
            slot_input_name(0, name): t for name, t in outputs.items() if slot_input_name(0, name) in temporal_inputs
        }
        boxes, scores, classes, count = (engines.temporal(feeds)[name] for name in DETECTION_OUTPUTS)
        n = int(count[0])
        expected, keep = boxes_to_frame(boxes[:n], manifest.input.resized_size, INPUT_SIZE)
        assert torch.equal(result.boxes, expected[keep])
        assert torch.equal(result.scores, scores[:n][keep]) and torch.equal(result.classes, classes[:n][keep])
    assert sum(len(result.scores) for result in actual) > 0


@pytest.mark.parametrize("frame_size", [(96, 128), (128, 80)])
def test_a_letterboxed_frame_answers_as_its_pixels_padded_by_hand(scene_export, frame_size):
    """Same engine input bits, so the same detections, clipped to the frame and without the boxes
    that lie on the padding alone."""
    manifest = Manifest.load(scene_export)
    preprocessing = manifest.input.preprocessing_in_frame_engine
    frames = render_scene(frame_size)
    padded = pad_colour(preprocessing.pixel_mean, preprocessing.network_channel_order)[:, None, None]
    padded = padded.expand(len(frames), 3, *INPUT_SIZE).clone()
    padded[:, :, : frame_size[0], : frame_size[1]] = frames
    letterboxed, by_hand = run(scene_export, frames), run(scene_export, padded)
    for result, reference in zip(letterboxed, by_hand):
        boxes, keep = boxes_to_frame(reference.boxes, frame_size, frame_size)
        assert torch.equal(result.boxes, boxes[keep])
        assert torch.equal(result.scores, reference.scores[keep])
        assert torch.equal(result.classes, reference.classes[keep])
    assert sum(len(result.scores) for result in letterboxed) > 10


def unmatched(result: FrameResult, other: FrameResult, min_score: float) -> list[float]:
    """Scores of ``result``'s detections of at least ``min_score`` without a detection of the same
    class in ``other`` at IoU >= MIN_IOU."""
    if not len(result.boxes):
        return []
    overlap = box_iou(result.boxes, other.boxes) if len(other.boxes) else torch.zeros((len(result.boxes), 1))
    same_class = result.classes[:, None] == other.classes[None] if len(other.boxes) else torch.zeros_like(overlap)
    matched = ((overlap >= MIN_IOU) & same_class.bool()).any(dim=1)
    return [float(score) for score, hit in zip(result.scores, matched) if score >= min_score and not hit]


@pytest.mark.parametrize("frame_size", [(192, 256), (144, 192), (72, 96)])
def test_a_scene_at_another_resolution_gives_the_same_boxes_scaled(scene_export, frame_size):
    """The scene at 96x128 (3:4, padded into the 1:1 input) and at twice, 1.5 times and 0.75 times
    that size (resized down or up on the way in): boxes in each frame's pixels, scaled to 96x128,
    agree (SCORE_MARGIN, MIN_IOU)."""
    reference = run(scene_export, render_scene((96, 128)))
    other = run(scene_export, render_scene(frame_size))
    scale = 96 / frame_size[0]
    min_score = SCENE_THRESH + SCORE_MARGIN
    compared = 0
    for ours, theirs in zip(reference, other):
        scaled = FrameResult(theirs.frame_index, theirs.boxes * scale, theirs.scores, theirs.classes)
        assert unmatched(ours, scaled, min_score) == [], ours.frame_index
        assert unmatched(scaled, ours, min_score) == [], ours.frame_index
        assert (scaled.boxes[:, 2] <= 128 + 1e-3).all() and (scaled.boxes[:, 3] <= 96 + 1e-3).all()
        compared += int((ours.scores >= min_score).sum())
    assert compared >= 20
