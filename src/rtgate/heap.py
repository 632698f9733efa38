"""Giving the memory of a burst of sessions back to the operating system.

When sessions close, CPython frees their objects, but the C allocator keeps what it freed:
glibc's malloc returns memory to the kernel only from the top of its main heap (past
``M_TRIM_THRESHOLD``) and from a thread arena's top, so one block still in use above a burst's
freed blocks holds all of them. A gateway that served 1,000 sessions then kept their RSS
after they closed, and RSS even rose a little (``docs/performance.md`` section 9, idle memory).
``malloc_trim(0)`` (glibc 2.8 and later) walks every arena and releases each whole free page
wherever it sits (``madvise(MADV_DONTNEED)``), so the memory comes back without a restart.

The decision when to trim is ``BurstTrim`` (no I/O, tested with plain numbers): once the live
count has fallen by ``drop`` sessions and to half its peak since the last trim. Steady traffic,
where sessions come and go around the same count, never trims (the freed memory is reused by
the next sessions); only a fall does, so a trim's cost (a full collection, then a walk of the
heap) is paid rarely and never per session. ``trim`` is the call itself: a no-op off Linux or
without glibc (musl and macOS return freed pages on their own terms).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import sys
from collections.abc import Callable
from functools import cache


class BurstTrim:
    """Whether to trim now, given the live-session count sampled at intervals.

    A fall is seen when the count is ``drop`` or more below the highest count since the last
    trim and at most half of it, or has reached none. The trim comes at the next sample, not at
    once: a session leaves the live count before its sockets, buffers and tasks are gone
    (teardown continues after), and a trim before those are freed returns nothing of them.

    Half, because the trim's full collection walks every live session's objects (~110 each):
    measured 9 ms with 300 idle sessions live and 58 ms with 1,000 (on a busy machine), a pause
    for every live session. At most half left, it walks no more than the fall freed.
    """

    def __init__(self, drop: int = 64) -> None:
        self.drop = drop
        self.peak = 0
        self._fell = False

    def observe(self, live: int) -> bool:
        """True at the first sample after a fall; the count then becomes the new peak (the
        next trim needs another fall)."""
        if self._fell:
            self._fell = False
            self.peak = live
            return True
        if live >= self.peak:
            self.peak = live
        elif live == 0 or (self.peak - live >= self.drop and 2 * live <= self.peak):
            self._fell = True
        return False


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        fn = libc.malloc_trim  # glibc only: musl has none
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def trimmable() -> bool:
    """Whether this process's allocator can be trimmed (Linux with glibc)."""
    return _malloc_trim() is not None


def trim() -> bool:
    """Collect the cyclic garbage, then release the allocator's free pages to the kernel; True
    if any were released. A closed session's objects are in reference cycles (tasks, legs and
    the pump hold each other), freed only by a full collection, which after a burst may not
    come for a long while (the threshold counts allocations, and an idle gateway makes few).
    The collection happens without glibc too (start-up's freeze relies on it)."""
    gc.collect()
    fn = _malloc_trim()
    return fn is not None and bool(fn(0))


async def trim_after_bursts(
    live: Callable[[], int], every: float = 1.0, policy: BurstTrim | None = None
) -> None:
    """Sample ``live()`` every ``every`` s and trim after a fall (``BurstTrim``); runs until
    cancelled. Does nothing where ``trim`` cannot."""
    if not trimmable():
        return
    policy = policy or BurstTrim()
    while True:
        await asyncio.sleep(every)
        if policy.observe(live()):
            trim()
