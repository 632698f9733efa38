"""A Python heap snapshot on demand: what a process holds per idle session, by where it was made.

Put this directory first on ``PYTHONPATH`` with ``HEAP_SNAPSHOT=PREFIX`` set, and every Python
process started so traces its allocations (``tracemalloc``, ``HEAP_SNAPSHOT_FRAMES`` frames,
default 14) and writes ``PREFIX.N`` (the snapshot) and ``PREFIX.N.status`` (its
``/proc/self/status``) at its N-th ``SIGUSR2``. ``compare.py`` reads two of them
(docs/performance.md 9.17). Tracing slows the process and costs memory of its own: compare
snapshots, not the RSS it shows.
"""

from __future__ import annotations

import os
import signal
import tracemalloc
from types import FrameType

PREFIX = os.environ.get("HEAP_SNAPSHOT")

if PREFIX:
    tracemalloc.start(int(os.environ.get("HEAP_SNAPSHOT_FRAMES", "14")))
    _taken = [0]

    def _snapshot(_signum: int, _frame: FrameType | None) -> None:
        _taken[0] += 1
        where = f"{PREFIX}.{_taken[0]}"
        tracemalloc.take_snapshot().dump(where)
        with open("/proc/self/status") as src, open(f"{where}.status", "w") as out:
            out.write(src.read())

    signal.signal(signal.SIGUSR2, _snapshot)
