"""Shared plumbing for the command-line tools: user errors become one line and a non-zero exit."""

import argparse
import functools
import signal
import sys
import threading
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
    """Wrap a ``main(argv) -> status`` so that :class:`SltnetError` prints ``error: ...`` and exits 2,
    and SIGINT or SIGTERM (what a service manager sends) stops it the same way: outputs in progress are
    removed, ``error: interrupted`` is printed and the status is 130 (143 for SIGTERM).

    Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(main)
    def wrapped(argv: Sequence[str] | None = None) -> int:
        received: list[int] = []

        def interrupt(signum: int, frame: object) -> None:
            received.append(signum)
            raise KeyboardInterrupt

        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, interrupt) if in_main_thread else None
        try:
            return main(argv)
        except SltnetError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 128 + (received[0] if received else signal.SIGINT)
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)

    return wrapped
