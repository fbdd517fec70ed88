"""Multi-process training under ``torchrun``: process-group setup and rank helpers.

``torchrun --nproc_per_node K`` starts K processes and gives each ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Without those variables the run is a single
process and every helper answers for rank 0 of 1.
"""

import os
from typing import Any

import torch
import torch.distributed as dist

from sltnet.errors import SltnetError

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """True when the environment describes a process of a multi-process job."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_distributed(device_type: str) -> torch.device:
    """Join the process group when launched by ``torchrun``; return this process's device.

    Args:
        device_type: "cpu" or "cuda" (``MODEL.DEVICE``). CPU processes talk over gloo; CUDA
            processes over NCCL, each on GPU ``LOCAL_RANK``.
    Returns:
        ``cpu``, ``cuda`` (single process) or ``cuda:LOCAL_RANK``.
    Raises:
        SltnetError: a torchrun variable is missing or malformed, or CUDA is asked for but absent.
    """
    if device_type not in ("cpu", "cuda"):
        raise SltnetError(f"MODEL.DEVICE must be 'cpu' or 'cuda', got {device_type!r}")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise SltnetError("MODEL.DEVICE is 'cuda' but PyTorch sees no CUDA device (set MODEL.DEVICE cpu)")
    if not launched_by_torchrun() or dist.is_initialized():
        return _process_device(device_type)
    missing = [name for name in _TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise SltnetError(f"distributed launch: environment variable {missing[0]} is not set (start with torchrun)")
    try:
        local_rank = int(os.environ["LOCAL_RANK"])
    except ValueError:
        value = os.environ["LOCAL_RANK"]
        raise SltnetError(f"distributed launch: LOCAL_RANK must be an integer, got {value!r}") from None
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise SltnetError(
                f"distributed launch: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices"
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return _process_device(device_type)


def _process_device(device_type: str) -> torch.device:
    if device_type == "cuda" and dist.is_initialized():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device_type)


def shutdown_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0: the process that writes files and shows progress."""
    return get_rank() == 0


def mean_over_processes(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """The mean of each scalar over all processes, as Python floats (every rank gets the same)."""
    names = sorted(values)
    stacked = torch.stack([values[name].detach().float() for name in names])
    if dist.is_initialized():
        dist.all_reduce(stacked)
        stacked /= get_world_size()
    return dict(zip(names, stacked.tolist()))


def gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` in rank order (picklable objects; a one-item list in a single process)."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
