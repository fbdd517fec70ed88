"""Shared plumbing for the command-line tools: user errors become one line and a non-zero exit."""

import argparse
import functools
import sys
from collections.abc import Sequence
from typing import Protocol

from sltnet.errors import SltnetError

#: Exit status for user mistakes (bad input files, bad options).
EXIT_USER_ERROR = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage mistakes become a one-line :class:`SltnetError` (exit 2 via console_entry)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SltnetError(f"{self.prog}: {message} (see --help)")


class CommandMain(Protocol):
    """A command-line tool's ``main(argv=None) -> exit status``; ``argv`` None reads ``sys.argv``."""

    def __call__(self, argv: Sequence[str] | None = None) -> int: ...


def console_entry(main: CommandMain) -> CommandMain:
    """Wrap a ``main(argv) -> status`` so that :class:`SltnetError` prints ``error: ...`` and exits 2.

    Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(main)
    def wrapped(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except SltnetError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130

    return wrapped
