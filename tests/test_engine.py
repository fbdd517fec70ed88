"""Solver schedule and atomic checkpoints."""

import pytest
import torch
from torch import nn

from sltnet.config.defaults import _C
from sltnet.engine.checkpoint import (
    atomic_torch_save,
    last_checkpoint,
    load_checkpoint,
    rng_state,
    save_training_state,
    set_rng_state,
)
from sltnet.engine.solver import build_lr_scheduler, build_optimizer, lr_factor
from sltnet.errors import SltnetError


def test_linear_warmup_then_steps():
    args = dict(steps=[10, 20], gamma=0.1, warmup_iters=4, warmup_factor=0.001, warmup_method="linear")
    assert lr_factor(0, **args) == pytest.approx(0.001)
    assert lr_factor(2, **args) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(4, **args) == pytest.approx(1.0)
    assert lr_factor(9, **args) == pytest.approx(1.0)
    assert lr_factor(10, **args) == pytest.approx(0.1)
    assert lr_factor(25, **args) == pytest.approx(0.01)


def test_constant_warmup_and_unknown_method():
    assert lr_factor(1, [], 0.1, 5, 0.25, "constant") == pytest.approx(0.25)
    with pytest.raises(ValueError, match="WARMUP_METHOD"):
        lr_factor(1, [], 0.1, 5, 0.25, "cosine")


def test_optimizer_groups_norm_decay_and_scheduler():
    cfg = _C.clone()
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.WARMUP_FACTOR = 0.5
    cfg.SOLVER.STEPS = (3,)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1))
    model[2].weight.requires_grad_(False)
    optimizer = build_optimizer(cfg, model)
    decayed, not_decayed = optimizer.param_groups
    assert len(decayed["params"]) == 3  # conv0 weight+bias, conv2 bias (conv2 weight frozen)
    assert len(not_decayed["params"]) == 2 and not_decayed["weight_decay"] == cfg.SOLVER.WEIGHT_DECAY_NORM
    scheduler = build_lr_scheduler(cfg, optimizer)
    seen = []
    for _ in range(5):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.05, 0.075, 0.1, 0.01, 0.01])


def test_save_points_last_checkpoint_and_leaves_no_temp(tmp_path):
    assert last_checkpoint(tmp_path) is None
    save_training_state(tmp_path, "model_0000005.pt", {"iteration": 5})
    save_training_state(tmp_path, "model_0000010.pt", {"iteration": 10})
    assert last_checkpoint(tmp_path) == tmp_path / "model_0000010.pt"
    assert load_checkpoint(last_checkpoint(tmp_path))["iteration"] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000005.pt", "model_0000010.pt"]


def test_failed_save_keeps_previous_file(tmp_path):
    path = tmp_path / "model.pt"
    atomic_torch_save({"ok": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"bad": Unpicklable()}, path)
    assert load_checkpoint(path) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_corrupt_or_missing_checkpoint_is_one_line_error(tmp_path):
    with pytest.raises(SltnetError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SltnetError, match="bad.pt: not a readable checkpoint"):
        load_checkpoint(bad)


def test_rng_state_round_trip():
    state = rng_state()
    first = torch.rand(3)
    set_rng_state(state)
    assert torch.equal(torch.rand(3), first)


def test_atomic_outputs_get_ordinary_file_permissions(tmp_path):
    import os
    import stat

    from sltnet.atomic_io import atomic_write_text

    atomic_write_text(tmp_path / "out.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o666 & ~umask
