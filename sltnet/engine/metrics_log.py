"""Training metrics as JSON lines: one object per logged iteration, appended and flushed, and the
window of losses each record averages."""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class JsonLinesWriter:
    """Appends ``{"iteration": i, ...}`` records to ``path``; a resumed run keeps appending."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def write(self, iteration: int, values: dict[str, float]) -> None:
        record = {"iteration": iteration, **{key: float(value) for key, value in values.items()}}
        with self.path.open("a") as stream:
            stream.write(json.dumps(record, sort_keys=True) + "\n")


@dataclass
class LossWindow:
    """The losses of the iterations since the previous metrics record, summed in iteration order.

    A checkpoint carries the window (:meth:`state_dict`), so a run resumed from a checkpoint inside
    a log period logs the same means as one never interrupted (the same floats added in the same
    order); only the wall time (``seconds_per_iter``) differs.

    Attributes:
        sums: per loss name, the sum over the window.
        iterations: iterations in the window.
        seconds_before: wall time of the window's iterations run before this process took it over
            (by an interrupted run), excluding the restart.
        started: ``time.perf_counter()`` when this process took the window over.
    """

    sums: dict[str, float] = field(default_factory=dict)
    iterations: int = 0
    seconds_before: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def add(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.iterations += 1

    def means(self) -> dict[str, float]:
        return {name: total / self.iterations for name, total in self.sums.items()}

    def seconds_per_iteration(self) -> float:
        return (self.seconds_before + time.perf_counter() - self.started) / max(self.iterations, 1)

    def state_dict(self) -> dict[str, Any]:
        seconds = self.seconds_before + time.perf_counter() - self.started
        return {"sums": dict(self.sums), "iterations": self.iterations, "seconds": seconds}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> "LossWindow":
        """The window a checkpoint saved; an empty one for None (a checkpoint from before windows
        were saved: the first record after the resume then averages fewer iterations)."""
        if not state:
            return cls()
        sums = {str(name): float(value) for name, value in state["sums"].items()}
        return cls(sums, int(state["iterations"]), float(state["seconds"]))
