"""Outputs that appear complete or not at all: write to a temporary name beside the target, then rename."""

import os
import tempfile
from collections.abc import Iterator
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


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write a whole text file atomically."""
    with atomic_output(path, "w") as stream:
        stream.write(text)
