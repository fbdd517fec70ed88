"""Training metrics as JSON lines: one object per logged iteration, appended and flushed."""

import json
from pathlib import Path


class JsonLinesWriter:
    """Appends ``{"iteration": i, ...}`` records to ``path``; a resumed run keeps appending."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def write(self, iteration: int, values: dict[str, float]) -> None:
        record = {"iteration": iteration, **{key: float(value) for key, value in values.items()}}
        with self.path.open("a") as stream:
            stream.write(json.dumps(record, sort_keys=True) + "\n")
