"""What several test modules share: the tiny configs, the test video, random weights that make the
scores spread out, and the comparison of streaming results across backends.

The tiny configs run with random weights whose classifier logits are scaled up, so scores spread out
and a threshold of 0.7 keeps a varying number of detections per frame; the attention's output
projection is scaled up too, so the long-term memory visibly changes the scores.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from sltnet.config import load_config
from sltnet.data.synthetic.writing import generate_split
from sltnet.modeling.build import build_model

TINY_SLTNET = "configs/synthetic/tiny_sltnet.yaml"
TINY_BASELINE = "configs/synthetic/tiny_baseline.yaml"
# Score thresholds of the exports; a candidate scoring within SCORE_TOLERANCE of one may pass on one
# backend and not on another (float rounding differs), which the comparison below allows.
SCORE_THRESH = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.7"]
BASELINE_SCORE_THRESH = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.42"]
SYMMETRIC_N = ["MODEL.SPATIOTEMPORAL.NUM_FRAMES", "2"]
CLASS_NAMES = "a,b,c,d"
NUM_FRAMES = 8  # keyframes 0, 3, 6 with 2 memory slots: the memory fills and wraps around
SCORE_TOLERANCE = 1e-4


def make_weights(folder: Path) -> dict[str, Path]:
    """Random tiny SLTnet weights (and the single-frame part of them for the baseline) in ``folder``."""
    torch.manual_seed(0)
    model = build_model(load_config(TINY_SLTNET, ["MODEL.WEIGHTS", ""]))
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(6)
        model.st_cls_predictor.cls_score.weight.mul_(6)
        for projection in model.st_box_head.Wvs:
            projection.weight.mul_(3)
        for geometry in model.st_box_head.Wgs:
            geometry.bias.fill_(1.0)
    state = model.state_dict()
    torch.save(state, folder / "sltnet.pt")
    torch.save({k: v for k, v in state.items() if not k.startswith("st_")}, folder / "baseline.pt")
    return {"sltnet": folder / "sltnet.pt", "baseline": folder / "baseline.pt"}


def video(frame_size: Sequence[int], num_frames: int = NUM_FRAMES, seed: int = 0) -> torch.Tensor:
    """[T, 3, H, W] uint8 noise with a bright square moving right."""
    generator = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 60, (num_frames, 3, *frame_size), generator=generator, dtype=torch.uint8)
    for t in range(num_frames):
        frames[t, :, 30:60, 10 + 4 * t : 40 + 4 * t] = 220
    return frames


def stream(detector, frames: torch.Tensor) -> list[tuple]:
    """(result, frames pushed when it came out) for a whole video."""
    answered = []
    for pushed, frame in enumerate(frames, start=1):
        answered += [(result, pushed) for result in detector.push(frame)]
    return answered + [(result, len(frames)) for result in detector.flush()]


def assert_same_results(expected: list[tuple], actual: list[tuple], score_thresh: float | None = None) -> None:
    """Same frames at the same time; every detection matched one to one (same class, box within
    1e-2 px, score within :data:`SCORE_TOLERANCE`), in any order among near-equal scores.

    With ``score_thresh`` (the exports' threshold) a detection scoring within the tolerance of it
    may be on one side only: which of those pass depends on the last bits of the scores.
    """
    assert [(r.frame_index, pushed) for r, pushed in actual] == [(r.frame_index, pushed) for r, pushed in expected]
    borderline = -1.0 if score_thresh is None else score_thresh + SCORE_TOLERANCE
    for (reference, _), (result, _) in zip(expected, actual):
        missing, extra = match_one_to_one(reference, result, SCORE_TOLERANCE, 1e-2)
        assert all(score < borderline for score in missing), f"frame {reference.frame_index}: no match for {missing}"
        assert all(score < borderline for score in extra), f"frame {reference.frame_index}: unmatched {extra}"


def match_one_to_one(reference, result, score_tol: float, box_tol: float) -> tuple[list[float], list[float]]:
    """Match ``reference``'s detections one to one in ``result``'s (same class, score within
    ``score_tol``, box within ``box_tol`` px): the scores of the unmatched ones on each side."""
    unmatched = list(range(len(result.scores)))
    missing = []
    for box, score, label in zip(reference.boxes, reference.scores, reference.classes):
        match = next(
            (
                j
                for j in unmatched
                if result.classes[j] == label
                and abs(float(result.scores[j] - score)) <= score_tol
                and float((result.boxes[j] - box).abs().max()) <= box_tol
            ),
            None,
        )
        if match is None:
            missing.append(float(score))
        else:
            unmatched.remove(match)
    return missing, [float(result.scores[j]) for j in unmatched]


@contextmanager
def synthetic_data(root: Path, split: str, num_videos: int, num_frames: int, image_size: int) -> Iterator[Path]:
    """A synthetic split (seed 0) under ``root``, found through $SLTNET_DATA inside the block."""
    generate_split(
        str(root / "synthetic"),
        split,
        num_videos=num_videos,
        num_frames=num_frames,
        image_size=image_size,
        seed=0,
        workers=1,
        progress=False,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLTNET_DATA", str(root))
        yield root
