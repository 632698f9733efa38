"""Lending the GIL to a worker thread that a busy event loop starves of it.

The SQLite store runs its calls in threads of its own (``store/connections.py``,
``store/sqlite_writer.py``), and a call's thread needs the GIL between SQLite's steps. A loop
that never goes idle holds the GIL nearly all the time: it releases it around each poll and
takes it straight back, and each release wakes the waiting thread and restarts the switch
interval after which CPython would make the loop hand it over (the convoy of bpo-7946). When
the process is not pinned to one core, such a thread waited seconds for a commit that a usage
record was held for (docs/performance.md 9.5 and 9.13).

``Lender`` watches one worker thread while it has calls outstanding. If the thread finished
nothing in ``LEND_AFTER_S``, the loop blocks until it finishes a call, at most ``LEND_FOR_S``:
that releases the GIL to the thread for as long as the call needs it. If the thread finished
nothing even then, the GIL was not what held it (a lock another writer has, a stalled disk):
the next loan waits ``BACK_OFF_S``, so a stalled database costs the loop at most one
``LEND_FOR_S`` block per ``BACK_OFF_S``, not a block per call. A loop with idle moments lets
its threads run then; their calls end before any loan.
"""

from __future__ import annotations

import asyncio
import threading

#: A thread with calls outstanding that finished none for this long is lent the GIL.
LEND_AFTER_S = 0.002
#: The longest the loop blocks for one loan.
LEND_FOR_S = 0.005
#: After a loan the thread did not use, the wait before the next.
BACK_OFF_S = 0.1


class Lender:
    """The loans to one worker thread: ``queued`` and ``settled`` from the loop around each
    call it is given, ``finished`` from the thread as each call ends."""

    def __init__(self) -> None:
        self._outstanding = 0
        #: Set by the thread at the end of each call; cleared by the loop at each look.
        self._progress = threading.Event()
        self._watching = False

    def queued(self, loop: asyncio.AbstractEventLoop) -> None:
        self._outstanding += 1
        if not self._watching:
            self._watching = True
            self._progress.clear()
            loop.call_later(LEND_AFTER_S, self._look, loop)

    def settled(self) -> None:
        self._outstanding -= 1

    def finished(self) -> None:
        """In the worker thread, as a call ends (before its outcome is handed to the loop)."""
        self._progress.set()

    def _look(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._outstanding <= 0:
            self._watching = False
            return
        after = LEND_AFTER_S
        if not self._progress.is_set() and not self._progress.wait(LEND_FOR_S):
            after = BACK_OFF_S
        self._progress.clear()
        loop.call_later(after, self._look, loop)
