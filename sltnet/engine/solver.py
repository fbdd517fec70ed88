"""SGD with linear/constant warm-up and step decay, configured by detectron2's ``SOLVER.*`` keys."""

import bisect
from collections.abc import Callable

import torch
from torch import nn
from yacs.config import CfgNode

_NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.SGD:
    """SGD over the trainable parameters; normalisation layers get ``SOLVER.WEIGHT_DECAY_NORM``."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad:
                continue
            (no_decay if isinstance(module, _NORM_TYPES) else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.SOLVER.WEIGHT_DECAY}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": cfg.SOLVER.WEIGHT_DECAY_NORM})
    return torch.optim.SGD(groups, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM)


def lr_factor(
    iteration: int, steps: list[int], gamma: float, warmup_iters: int, warmup_factor: float, warmup_method: str
) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based): warm-up times step decay."""
    decay = gamma ** bisect.bisect_right(sorted(steps), iteration)
    if iteration >= warmup_iters:
        return decay
    if warmup_method == "constant":
        return warmup_factor * decay
    if warmup_method == "linear":
        alpha = iteration / warmup_iters
        return (warmup_factor * (1 - alpha) + alpha) * decay
    raise ValueError(f"unknown SOLVER.WARMUP_METHOD {warmup_method!r}")


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule; call ``step()`` once after every optimizer step."""
    schedule: Callable[[int], float] = lambda iteration: lr_factor(  # noqa: E731
        iteration,
        list(cfg.SOLVER.STEPS),
        cfg.SOLVER.GAMMA,
        cfg.SOLVER.WARMUP_ITERS,
        cfg.SOLVER.WARMUP_FACTOR,
        cfg.SOLVER.WARMUP_METHOD,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
