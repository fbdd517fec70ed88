"""Training state: the solver, the loss module DistributedDataParallel wraps, what a run returns,
and the checks and bookkeeping of a resumed run (same model settings, seeding, metrics kept).
"""

import json
import math
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm
from yacs.config import CfgNode

from sltnet.atomic_io import atomic_write_text
from sltnet.data.batching import TrainingGroup
from sltnet.engine.distributed import is_main_process
from sltnet.errors import SltnetError
from sltnet.modeling.baseline import FasterRCNN
from sltnet.modeling.sltnet import SLTnet

# MODEL keys a resumed run may change: where it runs, and the initial weights (the checkpoint
# replaces them).
_RESUMABLE_MODEL_KEYS = ("MODEL.DEVICE", "MODEL.WEIGHTS")


class TrainingLosses(nn.Module):
    """``model.training_losses`` as ``forward``, the call DistributedDataParallel synchronises."""

    def __init__(self, model: FasterRCNN | SLTnet) -> None:
        super().__init__()
        self.model = model

    def forward(self, groups: list[TrainingGroup]) -> dict[str, torch.Tensor]:
        return self.model.training_losses(groups)


@dataclass
class Solver:
    """The optimizer, learning-rate schedule and gradient scaler of a run."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler


class TrainingResult(NamedTuple):
    """What :func:`train` leaves behind.

    Attributes:
        model: the trained model (not wrapped for distributed training), in eval mode after evaluation.
        iteration: completed iterations.
        final_weights: ``OUTPUT_DIR/model_final.pt``, or None when the run stopped early (``stop_at``).
        metrics: evaluation per ``DATASETS.TEST`` name (empty when skipped).
    """

    model: nn.Module
    iteration: int
    final_weights: Path | None
    metrics: dict[str, dict[str, Any]]


def _flat_model_keys(config_yaml: str) -> dict[str, Any]:
    """``MODEL.*`` leaves of a dumped config, by dotted path."""

    def flatten(node: CfgNode, prefix: str) -> Iterator[tuple[str, Any]]:
        for key, value in node.items():
            if isinstance(value, CfgNode):
                yield from flatten(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    return dict(flatten(CfgNode.load_cfg(config_yaml).MODEL, "MODEL."))


def check_same_model(saved_config: str, cfg: CfgNode, checkpoint: Path) -> None:
    """Refuse to resume a checkpoint whose run had other ``MODEL`` settings (device and initial
    weights aside): its parameters would not mean the same thing."""
    saved, current = _flat_model_keys(saved_config), _flat_model_keys(cfg.dump())
    for key in sorted(set(saved) | set(current)):
        if key not in _RESUMABLE_MODEL_KEYS and saved.get(key) != current.get(key):
            raise SltnetError(
                f"{checkpoint}: saved with {key} = {saved.get(key)!r} but the config now has {current.get(key)!r}; "
                "resume with the same model settings or use a new OUTPUT_DIR"
            )


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def truncate_metrics(path: Path, iteration: int) -> None:
    """Keep the records up to ``iteration``: those logged after the resumed checkpoint are
    logged again, and a record cut short by a kill is dropped."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("iteration", math.inf) <= iteration:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


def note(message: str) -> None:
    """Print a message to stderr (rank 0 only), without breaking a progress bar."""
    if is_main_process():
        tqdm.write(message, file=sys.stderr)
