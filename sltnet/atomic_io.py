"""Outputs that appear complete or not at all, and never in place of an input.

A file is written under a temporary name beside the target (``.NAME.*.tmp``) and renamed once
complete; a temporary file an earlier, killed run left for the same target is removed first.
"""

import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Union

from sltnet.errors import SltnetError

PathLike = Union[str, "os.PathLike[str]"]


def _default_file_mode() -> int:
    """The mode ``open()`` would give a new file (mkstemp's temporary files are private)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_output(path: PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file in ``path``'s folder; it replaces ``path`` only if the block finishes.

    Args:
        path: the final file.
        mode: "w" (text, UTF-8) or "wb".
    Raises:
        SltnetError: the folder cannot be created or written.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as err:
        raise SltnetError(f"{target}: cannot write ({err.strerror})") from None
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(handle, mode, encoding=encoding) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp_name, _default_file_mode())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(target: Path) -> None:
    """Delete the temporary files of ``target`` that a killed run left behind (SIGKILL skips cleanup)."""
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def check_outputs(
    inputs: Mapping[str, PathLike | None],
    outputs: Mapping[str, PathLike | None],
    output_folders: Mapping[str, PathLike | None] | None = None,
) -> None:
    """Refuse an output path that is one of the inputs or another output (links resolved), and an
    output folder (replaced as a whole) that holds an input.

    Args:
        inputs, outputs, output_folders: ``{what the user named it: path}``, e.g. ``{"--out": "a.mp4"}``;
            None entries are ignored.
    Raises:
        SltnetError: one line naming both.
    """

    def resolved(named: Mapping[str, PathLike | None] | None) -> list[tuple[str, Path]]:
        return [(name, Path(path).resolve()) for name, path in (named or {}).items() if path is not None]

    sources, targets, folders = resolved(inputs), resolved(outputs), resolved(output_folders)
    for index, (name, path) in enumerate(targets + folders):
        for source_name, source in sources:
            if path == source:
                raise SltnetError(f"{name} {path}: is also {source_name}; an output never replaces an input")
        for other_name, other in (targets + folders)[:index]:
            if path == other:
                raise SltnetError(f"{name} {path}: is also {other_name}; give each output its own path")
    for name, folder in folders:
        for source_name, source in sources:
            if folder in source.parents:
                raise SltnetError(
                    f"{name} {folder}: holds {source_name} {source}, and the folder is replaced as a whole"
                )


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write a whole text file atomically."""
    with atomic_output(path, "w") as stream:
        stream.write(text)
