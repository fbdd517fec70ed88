"""The training loop (docs/method.md#two-stage-training).

Stage 1 trains the single-frame baseline on single frames; stage 2 trains SLTnet's spatio-temporal
head on groups of N (or 2N + 1) frames with long-term support groups, the parts that
``MODEL.SPATIOTEMPORAL.FREEZE_*`` name frozen by the model builder. Both stages run the same
loop: SGD with warm-up and step decay, optional mixed precision on CUDA, DistributedDataParallel
under ``torchrun``.

A run writes into ``OUTPUT_DIR`` (rank 0 only, every file atomically):

- ``config.yaml``: the full config of the run;
- ``metrics.jsonl``: one JSON object per logged iteration (means since the previous record; the
  running window is saved in each checkpoint, so a resumed run logs what an uninterrupted one
  would, wall time aside);
- ``model_{iteration:07d}.pt``: every ``SOLVER.CHECKPOINT_PERIOD`` iterations and at the end, the
  whole training state; ``last_checkpoint`` names the newest;
- ``model_final.pt``: the trained weights alone (what ``MODEL.WEIGHTS`` and the export load);
- ``metrics_final.json``: evaluation on ``DATASETS.TEST`` after training.

Resuming is exact: the data order is a pure function of (SEED, epoch, position), loading draws no
global random numbers, and every process's random generators are saved in the checkpoint, so a
run killed and resumed ends with the same parameters as one that was never interrupted (bit for
bit on CPU; on CUDA up to the nondeterminism of some GPU kernels).

SIGINT or SIGTERM stops a run through the main process (:mod:`sltnet.engine.interrupts`): the
file being written is removed, the DataLoader workers are shut down, and the checkpoints written so
far stay. A run removes the ``.*.tmp`` files in ``OUTPUT_DIR`` that a killed run (SIGKILL) left.
"""

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm
from yacs.config import CfgNode

from sltnet.atomic_io import check_outputs
from sltnet.config import save_config
from sltnet.data.batching import TrainingGroup
from sltnet.data.catalog import DatasetCatalog
from sltnet.engine.checkpoint import (
    LAST_CHECKPOINT_FILE,
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
from sltnet.engine.interrupts import ignore_interrupts_in_worker, interrupts_deferred, stop_workers
from sltnet.engine.metrics_log import JsonLinesWriter, LossWindow
from sltnet.engine.solver import build_lr_scheduler, build_optimizer
from sltnet.engine.training_data import (
    RankBatchSampler,
    TrainingSampleStream,
    build_group_sampler,
    checked_batch,
    load_training_datasets,
    move_group,
    training_preprocessor,
)
from sltnet.engine.training_eval import FINAL_METRICS_FILE, evaluate_trained_model
from sltnet.engine.training_state import (
    Solver,
    TrainingLosses,
    TrainingResult,
    check_same_model,
    note,
    seed_everything,
    truncate_metrics,
)
from sltnet.errors import SltnetError
from sltnet.modeling.baseline import FasterRCNN
from sltnet.modeling.build import build_model
from sltnet.modeling.sltnet import SLTnet

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
FINAL_WEIGHTS_FILE = "model_final.pt"
TOTAL_LOSS = "total_loss"


def checkpoint_name(iteration: int) -> str:
    """File name of the training state after ``iteration`` completed iterations."""
    return f"model_{iteration:07d}.pt"


def check_initial_weights(cfg: CfgNode) -> None:
    """Refuse ``MODEL.WEIGHTS`` at a path the run writes (``OUTPUT_DIR/model_final.pt``, one of its
    checkpoints, ...): the run would replace its own input. Raises SltnetError (one line)."""
    if not cfg.MODEL.WEIGHTS:
        return
    output_dir = Path(cfg.OUTPUT_DIR)
    names = [CONFIG_FILE, METRICS_FILE, LAST_CHECKPOINT_FILE, FINAL_WEIGHTS_FILE, FINAL_METRICS_FILE]
    # Checkpoint names are checked one by one, not listed: a run may write thousands of them.
    weights_name = Path(cfg.MODEL.WEIGHTS).resolve().name
    match = re.fullmatch(r"model_(\d+)\.pt", weights_name)
    if match:
        iteration, solver = int(match[1]), cfg.SOLVER
        written = 0 < iteration <= solver.MAX_ITER and (
            iteration % solver.CHECKPOINT_PERIOD == 0 or iteration == solver.MAX_ITER
        )
        if written and checkpoint_name(iteration) == weights_name:
            names.append(weights_name)
    check_outputs({"MODEL.WEIGHTS": cfg.MODEL.WEIGHTS}, {f"OUTPUT_DIR/{name}": output_dir / name for name in names})


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
    stop_at: int | None = None,
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
        SltnetError: bad settings, missing data, nothing to resume, a non-finite loss, a
            ``MODEL.WEIGHTS`` the run would overwrite.
    """
    if log_period < 1:
        raise SltnetError(f"--log-period must be at least 1, got {log_period}")
    device = init_distributed(cfg.MODEL.DEVICE)
    rank, world_size = get_rank(), get_world_size()
    check_training_settings(cfg, world_size)
    check_initial_weights(cfg)
    for name in cfg.DATASETS.TEST:
        catalog.get(name)  # an unknown name fails now, not after training
    output_dir = Path(cfg.OUTPUT_DIR)
    checkpoint = _checkpoint_to_resume(output_dir, cfg, resume)

    datasets = load_training_datasets(cfg, catalog)
    seed_everything(cfg.SEED + rank)
    model = build_model(_config_for_build(cfg, resumed=checkpoint is not None)).to(device)
    model.train()
    samplers = [build_group_sampler(cfg, dataset, model.is_temporal) for dataset in datasets]
    stream = TrainingSampleStream(datasets, samplers, training_preprocessor(cfg), cfg.SEED)
    amp = cfg.SOLVER.AMP.ENABLED and device.type == "cuda"
    if cfg.SOLVER.AMP.ENABLED and not amp:
        note("note: SOLVER.AMP.ENABLED is ignored on CPU")
    solver = _build_solver(cfg, model, device, amp)

    start_iteration, samples_seen, rng_states, window = 0, 0, None, LossWindow()
    if checkpoint is not None:
        start_iteration, samples_seen, rng_states, window = _restore(*checkpoint, model, solver, cfg.SOLVER.MAX_ITER)
    stop = cfg.SOLVER.MAX_ITER if stop_at is None else min(stop_at, cfg.SOLVER.MAX_ITER)
    try:
        _prepare_output_dir(output_dir, cfg, start_iteration)
        loader = _build_loader(cfg, stream, samples_seen, stop - start_iteration)
        batches = None
        try:
            # Workers start with SIGINT and SIGTERM blocked, until they ignore them.
            with interrupts_deferred():
                batches = iter(loader)
            losses_module = _wrap_for_processes(model, device)
            # Last, so that nothing set up above draws from the restored generators.
            if rng_states is not None:
                _restore_rng(rng_states, cfg.SEED + start_iteration)
            loop = _TrainingLoop(cfg, losses_module, model, solver, stream, output_dir, log_period, amp, device)
            iteration = loop.run(batches, start_iteration, samples_seen, stop, window, progress and is_main_process())
        finally:
            if batches is not None:
                stop_workers(batches)
        if iteration < cfg.SOLVER.MAX_ITER:
            return TrainingResult(model, iteration, None, {})
        return _finish(model, cfg, catalog, output_dir, iteration, run_evaluation, progress)
    except BaseException:
        # atomic_output removes its temporary file, unless a second signal lands in that clean-up.
        if is_main_process():
            with interrupts_deferred(discard=True):
                remove_temporaries(output_dir)
        raise


def _finish(
    model: FasterRCNN | SLTnet,
    cfg: CfgNode,
    catalog: DatasetCatalog,
    output_dir: Path,
    iteration: int,
    run_evaluation: bool,
    progress: bool,
) -> TrainingResult:
    """Write the final weights and evaluate them (rank 0)."""
    final_weights = output_dir / FINAL_WEIGHTS_FILE
    if is_main_process():
        atomic_torch_save({"model": model.state_dict(), "iteration": iteration, "config": cfg.dump()}, final_weights)
        note(f"wrote {final_weights}")
    metrics: dict[str, dict[str, Any]] = {}
    if run_evaluation and is_main_process():
        metrics = evaluate_trained_model(model, cfg, catalog, output_dir, progress)
    return TrainingResult(model, iteration, final_weights, metrics)


def remove_temporaries(output_dir: Path) -> None:
    """Delete the ``.*.tmp`` files of ``output_dir``: a run killed by SIGKILL (or out of memory)
    leaves the file it was writing under its temporary name."""
    for stale in output_dir.glob(".*.tmp"):
        if stale.is_file():
            stale.unlink(missing_ok=True)


def _checkpoint_to_resume(output_dir: Path, cfg: CfgNode, resume: bool) -> tuple[Path, dict[str, Any]] | None:
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
    missing = [
        key
        for key in ("model", "optimizer", "scheduler", "iteration", "data_position", "rng_states", "config")
        if not isinstance(state, dict) or key not in state
    ]
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


def _build_solver(cfg: CfgNode, model: nn.Module, device: torch.device, amp: bool) -> Solver:
    if not any(param.requires_grad for param in model.parameters()):
        raise SltnetError(
            "nothing to train: every parameter is frozen "
            "(see MODEL.SPATIOTEMPORAL.FREEZE_* and MODEL.BACKBONE.FREEZE_AT)"
        )
    optimizer = build_optimizer(cfg, model)
    return Solver(optimizer, build_lr_scheduler(cfg, optimizer), torch.amp.GradScaler(device.type, enabled=amp))


def _restore(
    path: Path, checkpoint: dict[str, Any], model: nn.Module, solver: Solver, max_iter: int
) -> tuple[int, int, list[dict[str, Any]], LossWindow]:
    """Load a training checkpoint; returns (iteration, samples consumed, per-process RNG states,
    the losses since the last metrics record)."""
    iteration = int(checkpoint["iteration"])
    if iteration > max_iter:
        raise SltnetError(f"{path}: checkpoint is at iteration {iteration}, beyond SOLVER.MAX_ITER {max_iter}")
    model.load_state_dict(checkpoint["model"])
    solver.optimizer.load_state_dict(checkpoint["optimizer"])
    solver.scheduler.load_state_dict(checkpoint["scheduler"])
    if checkpoint.get("grad_scaler"):
        solver.scaler.load_state_dict(checkpoint["grad_scaler"])
    note(f"resuming from {path} at iteration {iteration}")
    window = LossWindow.from_state(checkpoint.get("metrics_window"))
    return iteration, int(checkpoint["data_position"]["samples_seen"]), checkpoint["rng_states"], window


def _restore_rng(rng_states: list[dict[str, Any]], fallback_seed: int) -> None:
    """Give every process the generators it had at the checkpoint; with another number of
    processes than the checkpointed run, reseed instead (the run continues, no longer exactly)."""
    rank, world_size = get_rank(), get_world_size()
    if len(rng_states) == world_size:
        set_rng_state(rng_states[rank])
        return
    note(
        f"note: the checkpoint was written by {len(rng_states)} processes, this run has {world_size}: "
        "random draws will differ from an uninterrupted run"
    )
    seed_everything(fallback_seed + rank)


def _build_loader(cfg: CfgNode, stream: TrainingSampleStream, samples_seen: int, num_iterations: int) -> DataLoader:
    """This process's batches of the next ``num_iterations`` iterations, from stream position ``samples_seen``."""
    return DataLoader(
        stream,
        batch_sampler=RankBatchSampler(
            samples_seen, num_iterations, cfg.SOLVER.IMS_PER_BATCH, get_rank(), get_world_size()
        ),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=list,
        worker_init_fn=ignore_interrupts_in_worker,
        # A private generator: starting the loader must not draw from the global one.
        generator=torch.Generator().manual_seed(cfg.SEED),
    )


def _wrap_for_processes(model: FasterRCNN | SLTnet, device: torch.device) -> nn.Module:
    """The loss computation, under DistributedDataParallel when there are several processes."""
    losses_module = TrainingLosses(model)
    if get_world_size() == 1:
        return losses_module
    return DistributedDataParallel(
        losses_module,
        device_ids=[device.index] if device.type == "cuda" else None,
        # SLTnet's optional branches may leave trainable parameters without a gradient.
        find_unused_parameters=model.is_temporal,
    )


def _prepare_output_dir(output_dir: Path, cfg: CfgNode, start_iteration: int) -> None:
    """Remove what a killed run left half-written, write the config; keep the metrics up to the
    resumed iteration (none for a fresh run)."""
    if not is_main_process():
        return
    remove_temporaries(output_dir)
    save_config(cfg, str(output_dir / CONFIG_FILE))
    metrics = output_dir / METRICS_FILE
    if start_iteration:
        truncate_metrics(metrics, start_iteration)
    else:
        metrics.unlink(missing_ok=True)


class _TrainingLoop:
    """Steps, logging and checkpoints of one run (see :func:`train`)."""

    def __init__(
        self,
        cfg: CfgNode,
        losses_module: nn.Module,
        model: nn.Module,
        solver: Solver,
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
        self.window = LossWindow()

    def run(
        self,
        batches: Iterator[list[Any]],
        start: int,
        samples_seen: int,
        stop: int,
        window: LossWindow,
        progress: bool,
    ) -> int:
        """Iterations ``start`` .. ``stop`` - 1, ``window`` holding the losses since the last record
        before ``start``; returns the number of completed iterations."""
        max_iter = self.cfg.SOLVER.MAX_ITER
        self.window = window
        iteration = start
        with tqdm(total=max_iter, initial=start, desc="training", unit="it", disable=not progress) as bar:
            for iteration in range(start + 1, stop + 1):
                groups = [move_group(group, self.device) for group in checked_batch(next(batches))]
                lr = self.solver.optimizer.param_groups[0]["lr"]
                values = self.step(groups, iteration)
                samples_seen += self.cfg.SOLVER.IMS_PER_BATCH
                self.window.add(values)
                bar.set_postfix(loss=f"{values[TOTAL_LOSS]:.3f}", lr=f"{lr:.2e}", refresh=False)
                bar.update(1)
                if iteration % self.log_period == 0 or iteration == max_iter:
                    self._log(iteration, self.window.means(), lr, self.window.seconds_per_iteration())
                    self.window = LossWindow()
                if iteration % self.cfg.SOLVER.CHECKPOINT_PERIOD == 0 or iteration == max_iter:
                    self.save(iteration, samples_seen)
        return iteration

    def step(self, groups: list[TrainingGroup], iteration: int) -> dict[str, float]:
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

    def _log(self, iteration: int, losses: dict[str, float], lr: float, seconds: float) -> None:
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
            "metrics_window": self.window.state_dict(),
            "config": self.cfg.dump(),
        }
        save_training_state(self.output_dir, checkpoint_name(iteration), state)
