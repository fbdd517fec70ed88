"""SIGINT and SIGTERM during training: the main process stops the run, DataLoader workers ignore them.

Ctrl-C sends SIGINT to the whole foreground process group, and a service manager may send SIGTERM
to every process of a run; a DataLoader worker killed by either makes PyTorch's main process raise
``RuntimeError: DataLoader worker ... is killed by signal`` in the middle of its own shutdown. So
the workers ignore both signals (:func:`ignore_interrupts_in_worker`, their ``worker_init_fn``)
and are started with both blocked (:func:`interrupts_deferred`), so that none reaches a worker
before it ignores them; the main process raises ``KeyboardInterrupt``
(:func:`sltnet.cli.console_entry`), removes what it was writing and stops its workers
(:func:`stop_workers`).
"""

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_Handler = Callable[[int, FrameType | None], Any] | int | None


@contextmanager
def interrupts_deferred(discard: bool = False) -> Iterator[None]:
    """Hold SIGINT and SIGTERM back during the block, then act on the first that came (as its
    handler before the block would have), or drop them with ``discard``.

    Processes started in the block begin with both signals blocked (the signal mask is inherited).
    Outside the main thread, where no handler can be set, the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def record(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous: dict[int, _Handler] = {signum: signal.signal(signum, record) for signum in INTERRUPT_SIGNALS}
    signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPT_SIGNALS)
    try:
        yield
    finally:
        # Signals that arrived while blocked are delivered here, to ``record``.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, INTERRUPT_SIGNALS)
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if received and not discard:
            signal.raise_signal(received[0])


def ignore_interrupts_in_worker(worker_id: int) -> None:
    """``worker_init_fn`` of the training DataLoader: SIGINT and SIGTERM are the main process's to
    handle; it shuts the workers down (no worker prints a traceback or dies under it)."""
    for signum in INTERRUPT_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, INTERRUPT_SIGNALS)


def stop_workers(batches: Iterator[Any]) -> None:
    """Shut down the worker processes of a DataLoader iterator now.

    They ignore SIGTERM, so they must not outlive the iterator until interpreter exit, where
    multiprocessing would terminate them with SIGTERM and wait; an iterator of the main process
    (``NUM_WORKERS 0``) has nothing to stop.
    """
    shutdown = getattr(batches, "_shutdown_workers", None)
    if callable(shutdown):
        shutdown()
