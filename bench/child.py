"""What the benchmarks share for measuring in a fresh process: run a function in a
spawned child (so its memory and CPU are its own, not the loader's) and read that
process's peak RSS."""

from __future__ import annotations

import multiprocessing as mp
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: a spawned child starts
    as a fork of the parent, and ru_maxrss survives the exec, so it would report the
    parent's size (after loading N cases) whenever that is larger."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(target: Callable[[str, Any], None], url: str) -> dict[str, Any]:
    """`target(url, queue)` in a spawned process; what it put on the queue."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(url, queue))
    proc.start()
    result: dict[str, Any] = queue.get()
    proc.join()
    return result
