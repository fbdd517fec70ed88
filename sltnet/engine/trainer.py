"""The training loop (DESIGN A.7).

Stage 1 trains the single-frame baseline on single frames; stage 2 trains SLTnet's spatio-temporal
head on groups of N (or 2N + 1) frames with long-term support groups, the rest of the network
frozen by the model builder. Both stages run the same loop: SGD with warm-up and step decay,
optional mixed precision on CUDA, DistributedDataParallel under ``torchrun``.

A run writes into ``OUTPUT_DIR`` (rank 0 only, every file atomically):

- ``config.yaml``: the full config of the run;
- ``metrics.jsonl``: one JSON object per logged iteration (means since the previous record);
- ``model_{iteration:07d}.pt``: every ``SOLVER.CHECKPOINT_PERIOD`` iterations and at the end, the
  whole training state; ``last_checkpoint`` names the newest;
- ``model_final.pt``: the trained weights alone (what ``MODEL.WEIGHTS`` and the export load);
- ``metrics_final.json``: evaluation on ``DATASETS.TEST`` after training.

Resuming is exact: the data order is a pure function of (SEED, epoch, position), loading draws no
global random numbers, and every process's random generators are saved in the checkpoint, so a
run killed and resumed ends with the same parameters as one that was never interrupted (bit for
bit on CPU; on CUDA up to the nondeterminism of some GPU kernels).
"""

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm
from yacs.config import CfgNode

from sltnet.atomic_io import atomic_write_text
from sltnet.config import save_config
from sltnet.data.batching import FrameGroup, TrainingGroup, load_training_group
from sltnet.data.catalog import DatasetCatalog, load_dataset
from sltnet.data.records import StCocoDataset
from sltnet.data.sampling import TrainingGroupSampler, TrainingSample
from sltnet.data.stcoco import load_stcoco
from sltnet.data.transforms import ImagePreprocessor
from sltnet.engine.checkpoint import (
    atomic_torch_save,
    last_checkpoint,
    load_checkpoint,
    rng_state,
    save_training_state,
    set_rng_state,
)
from sltnet.engine.distributed import (
    gather_objects,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
    mean_over_processes,
)
from sltnet.engine.metrics_log import JsonLinesWriter
from sltnet.engine.solver import build_lr_scheduler, build_optimizer
from sltnet.errors import SltnetError
from sltnet.evaluation import evaluate, format_table, parse_detections, write_metrics
from sltnet.evaluation.inference import detect_dataset
from sltnet.modeling.build import build_model

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
FINAL_WEIGHTS_FILE = "model_final.pt"
FINAL_METRICS_FILE = "metrics_final.json"
TOTAL_LOSS = "total_loss"

# MODEL keys a resumed run may change: where it runs, and the initial weights (the checkpoint
# replaces them).
_RESUMABLE_MODEL_KEYS = ("MODEL.DEVICE", "MODEL.WEIGHTS")


def checkpoint_name(iteration: int) -> str:
    """File name of the training state after ``iteration`` completed iterations."""
    return f"model_{iteration:07d}.pt"


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def build_group_sampler(cfg: CfgNode, dataset: StCocoDataset, temporal: bool) -> TrainingGroupSampler:
    """Frame groups of one dataset: N-frame windows with support groups for SLTnet (stage 2),
    single frames without support groups for the baseline (stage 1)."""
    if not temporal:
        cfg = cfg.clone()
        cfg.defrost()
        st = cfg.MODEL.SPATIOTEMPORAL
        st.NUM_FRAMES, st.FORWARD_AGGREGATION, st.TEMPORAL_DROPOUT, st.LONG_TERM = 1, False, False, False
    return TrainingGroupSampler.from_config(dataset, cfg)


def training_preprocessor(cfg: CfgNode) -> ImagePreprocessor:
    """The image path with the training resize limit; each sample brings its own short side."""
    return ImagePreprocessor(
        short_side=cfg.INPUT.MIN_SIZE_TRAIN[0],
        max_size=cfg.INPUT.MAX_SIZE_TRAIN,
        pixel_mean=cfg.MODEL.PIXEL_MEAN,
        pixel_std=cfg.MODEL.PIXEL_STD,
        input_format=cfg.INPUT.FORMAT,
        size_divisibility=cfg.DATALOADER.SIZE_DIVISIBILITY,
    )


class TrainingSampleStream(Dataset):
    """The endless stream of training samples over all training datasets, epoch after epoch.

    Sample ``g`` of the stream is position ``g % L`` of epoch ``g // L`` (``L`` samples per epoch).
    An epoch holds every dataset's samples for that epoch (:meth:`TrainingGroupSampler.epoch`),
    shuffled together; its order is a pure function of (seed, epoch), so any position can be
    recomputed after a restart, and loading a sample draws no random numbers.

    Args:
        datasets: the training datasets, each with its own image root.
        samplers: one sampler per dataset.
        preprocessor: decode/resize/normalise (:func:`training_preprocessor`).
        seed: ``SEED``.
    """

    def __init__(
        self,
        datasets: Sequence[StCocoDataset],
        samplers: Sequence[TrainingGroupSampler],
        preprocessor: ImagePreprocessor,
        seed: int,
    ) -> None:
        self.image_roots = [dataset.image_root for dataset in datasets]
        self.samplers = list(samplers)
        self.preprocessor = preprocessor
        self.seed = seed
        self.epoch_length = sum(len(sampler) for sampler in self.samplers)
        self._cached_epoch: Tuple[int, List[Tuple[int, TrainingSample]]] = (-1, [])

    def epoch(self, epoch: int) -> List[Tuple[int, TrainingSample]]:
        """``(dataset index, sample)`` of one epoch, in training order."""
        if self._cached_epoch[0] != epoch:
            samples = [
                (index, sample) for index, sampler in enumerate(self.samplers) for sample in sampler.epoch(epoch)
            ]
            # A stream separate from the per-dataset samplers' ([seed, epoch]) mixes the datasets.
            order = np.random.default_rng([self.seed, epoch, len(self.samplers)]).permutation(len(samples))
            self._cached_epoch = (epoch, [samples[i] for i in order])
        return self._cached_epoch[1]

    def position(self, index: int) -> Tuple[int, int]:
        """``(epoch, position in the epoch)`` of stream sample ``index``."""
        return divmod(index, self.epoch_length)

    def __getitem__(self, index: int) -> TrainingGroup:
        epoch, position = self.position(index)
        dataset_index, sample = self.epoch(epoch)[position]
        return load_training_group(sample, self.image_roots[dataset_index], self.preprocessor)


class RankBatchSampler(Sampler[List[int]]):
    """Stream indices of this process's share of each iteration's batch.

    Iteration ``i`` (counted from the start of this sampler) takes the global batch
    ``[first + i * B, first + (i + 1) * B)``; process ``r`` of ``W`` takes the ``r``-th of its ``W``
    equal slices.

    Args:
        first_sample: stream index of the first sample (samples consumed before a resume).
        num_iterations: batches to yield.
        global_batch: ``SOLVER.IMS_PER_BATCH``, a multiple of ``world_size``.
        rank, world_size: this process and the number of processes.
    """

    def __init__(self, first_sample: int, num_iterations: int, global_batch: int, rank: int, world_size: int) -> None:
        self.first_sample = first_sample
        self.num_iterations = num_iterations
        self.global_batch = global_batch
        self.per_process = global_batch // world_size
        self.offset = rank * self.per_process

    def __len__(self) -> int:
        return self.num_iterations

    def __iter__(self) -> Iterator[List[int]]:
        for iteration in range(self.num_iterations):
            start = self.first_sample + iteration * self.global_batch + self.offset
            yield list(range(start, start + self.per_process))


def load_training_datasets(cfg: CfgNode, catalog: DatasetCatalog) -> List[StCocoDataset]:
    """``DATASETS.TRAIN``, each checked to have ``MODEL.ROI_HEADS.NUM_CLASSES`` classes and the same class names."""
    if not cfg.DATASETS.TRAIN:
        raise SltnetError("DATASETS.TRAIN is empty: name at least one training dataset")
    datasets = [load_dataset(name, catalog) for name in cfg.DATASETS.TRAIN]
    for dataset in datasets:
        if dataset.num_classes != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise SltnetError(
                f"{dataset.json_path}: {dataset.num_classes} classes, but MODEL.ROI_HEADS.NUM_CLASSES is "
                f"{cfg.MODEL.ROI_HEADS.NUM_CLASSES}"
            )
        if dataset.class_names != datasets[0].class_names:
            raise SltnetError(
                f"{dataset.json_path}: classes {dataset.class_names} differ from those of {datasets[0].json_path} "
                f"({datasets[0].class_names}); training datasets must share one class list"
            )
    return datasets


def move_group(group: TrainingGroup, device: torch.device) -> TrainingGroup:
    """A training group and its support groups with their tensors on ``device``."""
    support = [replace(frames, **_frame_group_tensors(frames, device)) for frames in group.support]
    return replace(group, **_frame_group_tensors(group, device), support=support)


def _frame_group_tensors(group: FrameGroup, device: torch.device) -> Dict[str, torch.Tensor]:
    return {
        "images": group.images.to(device, non_blocking=True),
        "boxes": group.boxes.to(device, non_blocking=True),
        "classes": group.classes.to(device, non_blocking=True),
    }


# ---------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------


class _TrainingLosses(nn.Module):
    """``model.training_losses`` as ``forward``, the call DistributedDataParallel synchronises."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, groups: List[TrainingGroup]) -> Dict[str, torch.Tensor]:
        return self.model.training_losses(groups)


@dataclass
class _Solver:
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
    final_weights: Optional[Path]
    metrics: Dict[str, Dict[str, Any]]


def _flat_model_keys(config_yaml: str) -> Dict[str, Any]:
    """``MODEL.*`` leaves of a dumped config, by dotted path."""
    def flatten(node: CfgNode, prefix: str) -> Iterator[Tuple[str, Any]]:
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


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _truncate_metrics(path: Path, iteration: int) -> None:
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


def _note(message: str) -> None:
    if is_main_process():
        tqdm.write(message, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def check_training_settings(cfg: CfgNode, world_size: int) -> None:
    """Settings the config loader cannot judge alone: they depend on the number of processes or
    only matter for training. Raises SltnetError."""
    if cfg.SEED < 0:
        raise SltnetError(f"SEED must be non-negative, got {cfg.SEED}")
    if cfg.SOLVER.CHECKPOINT_PERIOD <= 0:
        raise SltnetError(f"SOLVER.CHECKPOINT_PERIOD must be positive, got {cfg.SOLVER.CHECKPOINT_PERIOD}")
    if cfg.SOLVER.IMS_PER_BATCH % world_size:
        raise SltnetError(
            f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) must be a multiple of the number of "
            f"processes ({world_size}): it is the global batch, split evenly"
        )


def train(
    cfg: CfgNode,
    catalog: DatasetCatalog,
    resume: bool = False,
    log_period: int = 20,
    run_evaluation: bool = True,
    progress: bool = True,
    stop_at: Optional[int] = None,
) -> TrainingResult:
    """Train the model ``cfg`` describes (stage 1 or 2 by ``MODEL.META_ARCHITECTURE``).

    Under ``torchrun`` every process calls this; the process group is set up here
    (:func:`~sltnet.engine.distributed.init_distributed`) and left for the caller to shut down.

    Args:
        cfg: the frozen run config.
        catalog: where the dataset names of ``DATASETS.TRAIN`` / ``DATASETS.TEST`` live.
        resume: continue from ``OUTPUT_DIR``'s last checkpoint.
        log_period: iterations between ``metrics.jsonl`` records (the last iteration is always logged).
        run_evaluation: evaluate on ``DATASETS.TEST`` at the end (rank 0).
        progress: show a progress bar (rank 0).
        stop_at: stop after this many iterations as an interrupted run would (no final weights, no
            evaluation); the checkpoints written so far stay.
    Raises:
        SltnetError: bad settings, missing data, nothing to resume, a non-finite loss.
    """
    if log_period < 1:
        raise SltnetError(f"--log-period must be at least 1, got {log_period}")
    device = init_distributed(cfg.MODEL.DEVICE)
    rank, world_size = get_rank(), get_world_size()
    check_training_settings(cfg, world_size)
    for name in cfg.DATASETS.TEST:
        catalog.get(name)  # an unknown name fails now, not after training
    output_dir = Path(cfg.OUTPUT_DIR)
    checkpoint = _checkpoint_to_resume(output_dir, cfg, resume)

    datasets = load_training_datasets(cfg, catalog)
    _seed_everything(cfg.SEED + rank)
    model = build_model(_config_for_build(cfg, resumed=checkpoint is not None)).to(device)
    model.train()
    samplers = [build_group_sampler(cfg, dataset, model.is_temporal) for dataset in datasets]
    stream = TrainingSampleStream(datasets, samplers, training_preprocessor(cfg), cfg.SEED)
    amp = cfg.SOLVER.AMP.ENABLED and device.type == "cuda"
    if cfg.SOLVER.AMP.ENABLED and not amp:
        _note("note: SOLVER.AMP.ENABLED is ignored on CPU")
    solver = _build_solver(cfg, model, device, amp)

    start_iteration, samples_seen, rng_states = 0, 0, None
    if checkpoint is not None:
        start_iteration, samples_seen, rng_states = _restore(*checkpoint, model, solver, cfg.SOLVER.MAX_ITER)
    _prepare_output_dir(output_dir, cfg, start_iteration)
    stop = cfg.SOLVER.MAX_ITER if stop_at is None else min(stop_at, cfg.SOLVER.MAX_ITER)
    batches = iter(_build_loader(cfg, stream, samples_seen, stop - start_iteration))
    losses_module = _wrap_for_processes(model, device)
    # Last, so that nothing set up above draws from the restored generators.
    if rng_states is not None:
        _restore_rng(rng_states, cfg.SEED + start_iteration)

    loop = _TrainingLoop(cfg, losses_module, model, solver, stream, output_dir, log_period, amp, device)
    iteration = loop.run(batches, start_iteration, samples_seen, stop, progress and is_main_process())
    if iteration < cfg.SOLVER.MAX_ITER:
        return TrainingResult(model, iteration, None, {})

    final_weights = output_dir / FINAL_WEIGHTS_FILE
    if is_main_process():
        atomic_torch_save({"model": model.state_dict(), "iteration": iteration, "config": cfg.dump()}, final_weights)
        _note(f"wrote {final_weights}")
    metrics: Dict[str, Dict[str, Any]] = {}
    if run_evaluation and is_main_process():
        metrics = evaluate_trained_model(model, cfg, catalog, output_dir, progress)
    return TrainingResult(model, iteration, final_weights, metrics)


def _checkpoint_to_resume(output_dir: Path, cfg: CfgNode, resume: bool) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """``(path, state)`` of the checkpoint ``--resume`` continues from (None for a fresh run), its
    config checked."""
    path = last_checkpoint(output_dir)
    if not resume:
        if path is not None:
            raise SltnetError(
                f"{output_dir}: holds a training run (last checkpoint {path.name}); pass --resume to continue it "
                "or set OUTPUT_DIR to a new folder"
            )
        return None
    if path is None:
        raise SltnetError(f"{output_dir}: no checkpoint to resume from (run without --resume to start training)")
    state = load_checkpoint(path)
    missing = [key for key in ("model", "optimizer", "scheduler", "iteration", "data_position", "rng_states", "config")
               if not isinstance(state, dict) or key not in state]
    if missing:
        raise SltnetError(f"{path}: not a training checkpoint (no '{missing[0]}' entry)")
    check_same_model(state["config"], cfg, path)
    return path, state


def _config_for_build(cfg: CfgNode, resumed: bool) -> CfgNode:
    """A resumed run takes every weight from its checkpoint, so it does not read ``MODEL.WEIGHTS``."""
    if not resumed or not cfg.MODEL.WEIGHTS:
        return cfg
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    return cfg


def _build_solver(cfg: CfgNode, model: nn.Module, device: torch.device, amp: bool) -> _Solver:
    if not any(param.requires_grad for param in model.parameters()):
        raise SltnetError(
            "nothing to train: every parameter is frozen "
            "(see MODEL.SPATIOTEMPORAL.FREEZE_* and MODEL.BACKBONE.FREEZE_AT)"
        )
    optimizer = build_optimizer(cfg, model)
    return _Solver(optimizer, build_lr_scheduler(cfg, optimizer), torch.amp.GradScaler(device.type, enabled=amp))


def _restore(
    path: Path, checkpoint: Dict[str, Any], model: nn.Module, solver: _Solver, max_iter: int
) -> Tuple[int, int, List[Dict[str, Any]]]:
    """Load a training checkpoint; returns (iteration, samples consumed, per-process RNG states)."""
    iteration = int(checkpoint["iteration"])
    if iteration > max_iter:
        raise SltnetError(f"{path}: checkpoint is at iteration {iteration}, beyond SOLVER.MAX_ITER {max_iter}")
    model.load_state_dict(checkpoint["model"])
    solver.optimizer.load_state_dict(checkpoint["optimizer"])
    solver.scheduler.load_state_dict(checkpoint["scheduler"])
    if checkpoint.get("grad_scaler"):
        solver.scaler.load_state_dict(checkpoint["grad_scaler"])
    _note(f"resuming from {path} at iteration {iteration}")
    return iteration, int(checkpoint["data_position"]["samples_seen"]), checkpoint["rng_states"]


def _restore_rng(rng_states: List[Dict[str, Any]], fallback_seed: int) -> None:
    """Give every process the generators it had at the checkpoint; with another number of
    processes than the checkpointed run, reseed instead (the run continues, no longer exactly)."""
    rank, world_size = get_rank(), get_world_size()
    if len(rng_states) == world_size:
        set_rng_state(rng_states[rank])
        return
    _note(
        f"note: the checkpoint was written by {len(rng_states)} processes, this run has {world_size}: "
        "random draws will differ from an uninterrupted run"
    )
    _seed_everything(fallback_seed + rank)


def _build_loader(cfg: CfgNode, stream: TrainingSampleStream, samples_seen: int, num_iterations: int) -> DataLoader:
    """This process's batches of the next ``num_iterations`` iterations, from stream position ``samples_seen``."""
    return DataLoader(
        stream,
        batch_sampler=RankBatchSampler(
            samples_seen, num_iterations, cfg.SOLVER.IMS_PER_BATCH, get_rank(), get_world_size()
        ),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=list,
        # A private generator: starting the loader must not draw from the global one.
        generator=torch.Generator().manual_seed(cfg.SEED),
    )


def _wrap_for_processes(model: nn.Module, device: torch.device) -> nn.Module:
    """The loss computation, under DistributedDataParallel when there are several processes."""
    losses_module = _TrainingLosses(model)
    if get_world_size() == 1:
        return losses_module
    return DistributedDataParallel(
        losses_module,
        device_ids=[device.index] if device.type == "cuda" else None,
        # SLTnet's optional branches may leave trainable parameters without a gradient.
        find_unused_parameters=model.is_temporal,
    )


def _prepare_output_dir(output_dir: Path, cfg: CfgNode, start_iteration: int) -> None:
    """Write the config; keep the metrics up to the resumed iteration (none for a fresh run)."""
    if not is_main_process():
        return
    save_config(cfg, str(output_dir / CONFIG_FILE))
    metrics = output_dir / METRICS_FILE
    if start_iteration:
        _truncate_metrics(metrics, start_iteration)
    else:
        metrics.unlink(missing_ok=True)


class _TrainingLoop:
    """Steps, logging and checkpoints of one run (see :func:`train`)."""

    def __init__(
        self,
        cfg: CfgNode,
        losses_module: nn.Module,
        model: nn.Module,
        solver: _Solver,
        stream: TrainingSampleStream,
        output_dir: Path,
        log_period: int,
        amp: bool,
        device: torch.device,
    ) -> None:
        self.cfg = cfg
        self.losses_module = losses_module
        self.model = model
        self.solver = solver
        self.stream = stream
        self.output_dir = output_dir
        self.log_period = log_period
        self.amp = amp
        self.device = device
        self.metrics = JsonLinesWriter(output_dir / METRICS_FILE) if is_main_process() else None

    def run(
        self, batches: Iterator[List[TrainingGroup]], start: int, samples_seen: int, stop: int, progress: bool
    ) -> int:
        """Iterations ``start`` .. ``stop`` - 1; returns the number of completed iterations."""
        max_iter = self.cfg.SOLVER.MAX_ITER
        window: Dict[str, float] = {}
        window_size, window_start = 0, time.perf_counter()
        iteration = start
        with tqdm(total=max_iter, initial=start, desc="training", unit="it", disable=not progress) as bar:
            for iteration in range(start + 1, stop + 1):
                groups = [move_group(group, self.device) for group in next(batches)]
                lr = self.solver.optimizer.param_groups[0]["lr"]
                values = self.step(groups, iteration)
                samples_seen += self.cfg.SOLVER.IMS_PER_BATCH
                for name, value in values.items():
                    window[name] = window.get(name, 0.0) + value
                window_size += 1
                bar.set_postfix(loss=f"{values[TOTAL_LOSS]:.3f}", lr=f"{lr:.2e}", refresh=False)
                bar.update(1)
                if iteration % self.log_period == 0 or iteration == max_iter:
                    seconds = (time.perf_counter() - window_start) / window_size
                    self._log(iteration, {name: total / window_size for name, total in window.items()}, lr, seconds)
                    window, window_size, window_start = {}, 0, time.perf_counter()
                if iteration % self.cfg.SOLVER.CHECKPOINT_PERIOD == 0 or iteration == max_iter:
                    self.save(iteration, samples_seen)
        return iteration

    def step(self, groups: List[TrainingGroup], iteration: int) -> Dict[str, float]:
        """One SGD step; returns the losses (means over processes) as floats."""
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            losses = self.losses_module(groups)
        total = sum(losses.values())
        values = mean_over_processes({**losses, TOTAL_LOSS: total})
        if not math.isfinite(values[TOTAL_LOSS]):
            shown = ", ".join(f"{name} {value:.4g}" for name, value in values.items() if name != TOTAL_LOSS)
            raise SltnetError(
                f"iteration {iteration}: loss is not finite ({shown}); training stopped, lower SOLVER.BASE_LR "
                "or check the training data"
            )
        optimizer, scaler = self.solver.optimizer, self.solver.scaler
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        self.solver.scheduler.step()
        return values

    def _log(self, iteration: int, losses: Dict[str, float], lr: float, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.write(iteration, {**losses, "lr": lr, "seconds_per_iter": seconds})

    def save(self, iteration: int, samples_seen: int) -> None:
        """The whole training state after ``iteration`` (collective: every process sends its RNG state)."""
        rng_states = gather_objects(rng_state())
        if not is_main_process():
            return
        epoch, position = self.stream.position(samples_seen)
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.solver.optimizer.state_dict(),
            "scheduler": self.solver.scheduler.state_dict(),
            "grad_scaler": self.solver.scaler.state_dict(),
            "iteration": iteration,
            "data_position": {"samples_seen": samples_seen, "epoch": epoch, "position": position},
            "rng_states": rng_states,
            "config": self.cfg.dump(),
        }
        save_training_state(self.output_dir, checkpoint_name(iteration), state)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def evaluate_trained_model(
    model: nn.Module, cfg: CfgNode, catalog: DatasetCatalog, output_dir: Path, progress: bool = True
) -> Dict[str, Dict[str, Any]]:
    """Detect and score every ``DATASETS.TEST`` dataset whose annotation file exists; print the
    tables and write ``OUTPUT_DIR/metrics_final.json`` (``{dataset name: metrics}``).

    Returns:
        The metrics per dataset name (empty when no test dataset is available).
    """
    results: Dict[str, Dict[str, Any]] = {}
    for name in cfg.DATASETS.TEST:
        image_root, json_path = catalog.get(name)
        if not os.path.isfile(json_path):
            _note(f"note: skipping evaluation on {name}: {json_path} not found")
            continue
        dataset = load_stcoco(json_path, image_root)
        if dataset.num_classes != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise SltnetError(
                f"{json_path}: {dataset.num_classes} classes, but the model has MODEL.ROI_HEADS.NUM_CLASSES "
                f"{cfg.MODEL.ROI_HEADS.NUM_CLASSES}; evaluation skipped (the trained weights are saved)"
            )
        detections = detect_dataset(model, cfg, dataset, progress=progress)
        results[name] = evaluate(dataset, parse_detections(detections, dataset, name))
        print(f"evaluation on {name}:\n{format_table(results[name])}\n")
    if results:
        write_metrics(results, str(output_dir / FINAL_METRICS_FILE))
    elif cfg.DATASETS.TEST:
        _note("note: no test dataset available, nothing evaluated")
    return results
