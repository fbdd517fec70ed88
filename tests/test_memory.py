"""Long-term keyframe memory (docs/method.md#long-term-self-guided-attention)."""

import pytest
import torch

from sltnet.modeling.memory import LongTermMemory

P, D = 3, 4


def entry(value: float, rows: int = P):
    """An entry whose features and boxes all hold ``value`` (boxes shifted to stay distinct)."""
    return torch.full((rows, D), value), torch.full((rows, 4), value + 0.5)


def make_memory(num_keyframes: int = 2, interval: int = 10) -> LongTermMemory:
    return LongTermMemory(num_keyframes, interval, rows_per_entry=P, feature_dim=D)


def test_written_only_on_keyframes():
    memory = make_memory(interval=10)
    assert [memory.update(t, *entry(t)) for t in (0, 5, 10, 19, 20)] == [True, False, True, False, True]
    features, boxes = memory.references()
    assert features[:, 0].tolist() == [10.0] * P + [20.0] * P
    assert boxes[:, 0].tolist() == [10.5] * P + [20.5] * P


def test_holds_at_most_num_keyframes_entries_of_p_rows_oldest_first():
    memory = make_memory(num_keyframes=2, interval=1)
    for t in range(5):
        memory.update(t, *entry(t))
        assert len(memory) == min(t + 1, 2)
        features, _ = memory.references()
        assert features.shape == (P * len(memory), D)
        assert features[::P, 0].tolist() == [float(i) for i in range(max(0, t - 1), t + 1)]


def test_new_video_clears_the_memory():
    memory = make_memory(interval=1)
    memory.update(0, *entry(1.0))
    memory.update(1, *entry(2.0))
    memory.reset()
    assert len(memory) == 0
    features, boxes = memory.references()
    assert features.shape == (0, D) and boxes.shape == (0, 4)
    assert not memory.as_padded()[2].any()
    memory.update(0, *entry(3.0))
    assert memory.references()[0][:, 0].tolist() == [3.0] * P


def test_short_entries_are_padded_and_masked():
    memory = make_memory(num_keyframes=2, interval=1)
    memory.update(0, *entry(1.0))
    memory.update(1, *entry(2.0, rows=1))
    memory.update(2, *entry(3.0, rows=2))  # overwrites the full entry 1.0: its third row is stale
    features, boxes, valid = memory.as_padded()
    assert features.shape == (2 * P, D) and boxes.shape == (2 * P, 4) and valid.shape == (2 * P,)
    assert valid.tolist() == [True, True, False, True, False, False]
    assert memory.references()[0][:, 0].tolist() == [2.0, 3.0, 3.0]
    assert features[valid][:, 0].tolist() == [3.0, 3.0, 2.0]  # slot order


def test_entries_are_copied_and_detached():
    memory = make_memory(interval=1)
    features = torch.ones(P, D, requires_grad=True)
    memory.update(0, features * 2, torch.zeros(P, 4))
    stored, _ = memory.references()
    assert not stored.requires_grad
    torch.testing.assert_close(stored, torch.full((P, D), 2.0))


def test_entry_larger_than_p_rows_is_rejected():
    memory = make_memory(interval=1)
    with pytest.raises(ValueError, match="at most 3 rows"):
        memory.update(0, *entry(1.0, rows=P + 1))
