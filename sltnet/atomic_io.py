"""Outputs that appear complete or not at all, and never in place of an input.

A file is written under a temporary name beside the target (``.NAME.*.tmp``) and renamed once
complete; a temporary file an earlier, killed run left for the same target is removed first.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Union

from sltnet.errors import SltnetError

PathLike = Union[str, "os.PathLike[str]"]


def _default_file_mode(folder: bool = False) -> int:
    """The mode ``open()`` (or ``mkdir``) would give a new file (folder): mkstemp's and mkdtemp's are private."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


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


@contextmanager
def atomic_folder(path: PathLike, carry_over: tuple[str, ...] = ()) -> Iterator[Path]:
    """A new folder beside ``path``, filled by the block, that replaces ``path`` as a whole once the block
    finishes; removed if it does not. Until then ``path`` keeps its old content.

    Args:
        carry_over: names of files to copy from the old folder first (e.g. a cache the block updates).
    Raises:
        SltnetError: the parent folder cannot be written.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _recover_folder(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", suffix=".tmp", dir=target.parent))
    except OSError as err:
        raise SltnetError(f"{target}: cannot write ({err.strerror})") from None
    try:
        for name in carry_over:
            if (target / name).is_file():
                shutil.copy2(target / name, staging / name)
        yield staging
        os.chmod(staging, _default_file_mode(folder=True))
        if target.exists():
            # A folder cannot replace a non-empty one in one rename: move the old one aside first. A
            # run killed between the two renames is repaired by _recover_folder on the next run.
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", suffix=".tmp", dir=target.parent))
            os.replace(target, retired)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _recover_folder(target: Path) -> None:
    """Clean up after a killed :func:`atomic_folder`: unfinished new folders go; an old folder moved
    aside is put back if nothing replaced it, else removed."""
    for staging in target.parent.glob(f".{target.name}.new-*.tmp"):
        shutil.rmtree(staging, ignore_errors=True)
    for retired in target.parent.glob(f".{target.name}.old-*.tmp"):
        if target.exists():
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(retired, target)


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
