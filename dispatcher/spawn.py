"""Child processes of a run (the demo's sandbox and webhook server)."""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from typing import Any


@contextlib.contextmanager
def spawned(target: Callable[..., None], args: tuple[Any, ...], *, name: str,
            grace_seconds: float = 30.0) -> Iterator[BaseProcess]:
    """Run `target(*args)` in a freshly spawned interpreter (no state inherited from this
    one: `args` are pickled) for the duration of the block; then SIGTERM, a grace period
    for a clean stop, and SIGKILL if it is still running."""
    process = multiprocessing.get_context("spawn").Process(target=_ignoring_ctrl_c, args=(target, *args), name=name,
                                                           daemon=True)
    process.start()
    try:
        yield process
    finally:
        process.terminate()
        process.join(grace_seconds)
        if process.is_alive():
            process.kill()
            process.join()


def _ignoring_ctrl_c(target: Callable[..., None], *args: Any) -> None:
    """The child's entry: Ctrl-C in a terminal reaches every process of the group, but
    only the parent decides when its children stop (SIGTERM at the end of the block)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    target(*args)
