"""Checkpoints written atomically, and the bookkeeping that lets a killed run resume exactly."""

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sltnet.atomic_io import atomic_output, atomic_write_text
from sltnet.errors import SltnetError

#: File in the output folder naming the newest complete checkpoint.
LAST_CHECKPOINT_FILE = "last_checkpoint"


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file: readers never see half a checkpoint.

    An interrupt (SIGINT, or SIGTERM under :func:`sltnet.cli.console_entry`) during the write
    removes the temporary file and propagates as the ``KeyboardInterrupt`` it is.
    """
    with atomic_output(path, "wb") as stream:
        try:
            torch.save(obj, stream)
        except Exception as err:
            interrupt = interrupt_behind(err)
            if interrupt is None:
                raise
            raise interrupt from None


def interrupt_behind(err: BaseException) -> KeyboardInterrupt | None:
    """The ``KeyboardInterrupt`` that ``err`` was raised while handling, if any: torch's zip writer
    turns an interrupt in the middle of a write into a ``RuntimeError`` from its own clean-up."""
    seen = err.__context__
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return seen
        seen = seen.__context__
    return None


def rng_state() -> dict[str, Any]:
    """Every random generator a training run draws from."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`atomic_torch_save`; a bad file is a one-line error."""
    if not path.is_file():
        raise SltnetError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for corrupt files
        interrupt = interrupt_behind(err)
        if interrupt is not None:
            raise interrupt from None
        raise SltnetError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None


def save_training_state(output_dir: Path, name: str, state: dict[str, Any]) -> Path:
    """Save ``state`` as ``output_dir/name`` and point ``last_checkpoint`` at it (both atomic)."""
    path = output_dir / name
    atomic_torch_save(state, path)
    atomic_write_text(output_dir / LAST_CHECKPOINT_FILE, name + "\n")
    return path


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None when the run has none."""
    pointer = output_dir / LAST_CHECKPOINT_FILE
    if not pointer.is_file():
        return None
    path = output_dir / pointer.read_text().strip()
    return path if path.is_file() else None
