"""``sltnet-convert half-weights``: a float16 weights file that loads back into the float32 model."""

import torch

from sltnet.config import load_config
from sltnet.modeling.build import build_model
from sltnet.modeling.streaming import StreamingDetector
from sltnet.tools.convert import main

from helpers import TINY_SLTNET, make_weights, video


def test_half_weights_halve_the_file_and_load_into_the_float_model(tmp_path, capsys):
    weights = make_weights(tmp_path)["sltnet"]
    half = tmp_path / "half.pt"
    assert main(["half-weights", str(weights), str(half)]) == 0
    assert "in float16" in capsys.readouterr().out
    assert half.stat().st_size < 0.55 * weights.stat().st_size
    stored = torch.load(half, weights_only=True)["model"]
    assert {t.dtype for t in stored.values() if t.is_floating_point()} == {torch.float16}

    models = [build_model(load_config(TINY_SLTNET, ["MODEL.WEIGHTS", str(path)])) for path in (weights, half)]
    assert all(p.dtype == torch.float32 for p in models[1].parameters())
    for full, rounded in zip(models[0].state_dict().values(), models[1].state_dict().values()):
        torch.testing.assert_close(rounded, full.half().to(full.dtype), rtol=0, atol=0)
    frames = video((128, 128), num_frames=4)
    cfg = load_config(TINY_SLTNET, ["MODEL.WEIGHTS", ""])
    first, second = (StreamingDetector.from_config(model, cfg) for model in models)
    for frame in frames:
        for expected, actual in zip(first.push(frame), second.push(frame)):
            assert expected.frame_index == actual.frame_index
            torch.testing.assert_close(actual.scores, expected.scores, rtol=0, atol=2e-2)


def test_half_weights_of_a_missing_file_is_one_line(tmp_path, capsys):
    assert main(["half-weights", str(tmp_path / "none.pt"), str(tmp_path / "out.pt")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'none.pt'}: checkpoint not found"
    assert not (tmp_path / "out.pt").exists()
