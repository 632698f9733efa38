"""Lending the GIL to a worker thread that a busy event loop starves of it.

The SQLite store runs its calls in threads of its own (``store/connections.py``,
``store/sqlite_writer.py``), and a call's thread needs the GIL between SQLite's steps. A loop
that never goes idle holds the GIL nearly all the time: it releases it around each poll and
takes it straight back, and each release wakes the waiting thread and restarts the switch
interval after which CPython would make the loop hand it over (the convoy of bpo-7946). When
the process is not pinned to one core, such a thread waited seconds for a commit that a usage
record was held for (docs/performance.md 9.5 and 9.13).

``Lender`` watches one worker thread while it has calls outstanding, every ``LOOK_S``. It lends
only when the thread has a call it has not finished, finished none since the last look, and the
loop's thread was busy for most of that time (``BUSY``, its own CPU time against the clock's):
an idle loop sleeps in its poll without the GIL, so a slow call there is slow for its own
reasons and is left alone. A loan blocks the loop until the thread finishes a call, at most
``LEND_FOR_S``, which releases the GIL to the thread for as long as the call needs it. If the
thread finished nothing even then, the GIL was not what held it (another writer's lock, a
stalled disk): the next look is ``BACK_OFF_S`` later, so a stalled database costs a busy loop
one ``LEND_FOR_S`` block per ``BACK_OFF_S``, not a block per look.

"Outstanding" is the loop's view and lags the thread's: a call's future is settled, and counted
done, only when the busy loop gets to the callback the thread scheduled. Lending for a call the
thread has already finished waits the whole ``LEND_FOR_S`` for nothing; at 500 sessions that
was every loan made, a 5 ms stall of the relay each time (docs/performance.md 9.15). So the
thread counts the calls it finished, and a look lends only while that count is behind the
calls tracked. A call is counted as it is handed over (a thread starved of the GIL cannot count
its own start), and uncounted if it is cancelled before it ran, so the counts meet again
whatever the caller's deadlines do. One thread per lender: ``run`` without an executor uses a
thread of the lender's own, never a pool whose threads would count over each other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: How often a thread with calls outstanding is looked at.
LOOK_S = 0.002
#: The share of a look's interval the loop's thread must have been running for a loan.
BUSY = 0.8
#: The longest the loop blocks for one loan.
LEND_FOR_S = 0.005
#: After a loan the thread did not use, the wait before the next look.
BACK_OFF_S = 0.1


class Lender:
    """The loans to one worker thread: ``track`` each call's future from the loop, and
    ``finished`` from the thread as each call ends (``run`` does both for an executor's
    call)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outstanding = 0
        #: Calls handed to the thread (counted by the loop) and calls the thread finished
        #: (counted by the thread): it is at work while the second is behind the first.
        self._calls = self._finished = 0
        #: ``run``'s thread when it is given no executor.
        self._own: concurrent.futures.ThreadPoolExecutor | None = None
        #: Set by the thread at the end of each call; cleared by the loop at each look.
        self._progress = threading.Event()
        self._watching = False
        #: The loop thread's CPU time and the clock at the last look.
        self._cpu = self._wall = 0.0
        #: Loans made so far.
        self.loans = 0

    def track(self, loop: asyncio.AbstractEventLoop, call: asyncio.Future[Any]) -> None:
        """Watch the thread while ``call`` (its outcome in ``loop``) is outstanding."""
        if loop is not self._loop:
            # A new loop (the old one closed with calls it will never settle): its futures are
            # forgotten; the thread's counts go on (it finishes the old loop's calls too).
            self._loop, self._outstanding, self._watching = loop, 0, False
        self._outstanding += 1
        self._calls += 1
        call.add_done_callback(self._settled)
        if not self._watching:
            self._watching = True
            self._progress.clear()
            self._cpu, self._wall = time.thread_time(), time.monotonic()
            loop.call_later(LOOK_S, self._look, loop)

    def run(
        self,
        loop: asyncio.AbstractEventLoop,
        executor: concurrent.futures.Executor | None,
        fn: Callable[..., T],
        *args: Any,
    ) -> asyncio.Future[T]:
        """``fn(*args)`` in ``executor``'s one thread (None: the lender's own), watched."""

        def call() -> T:
            try:
                return fn(*args)
            finally:
                self.finished()

        if executor is None:
            if self._own is None:
                self._own = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="rtgate-lent"
                )
            executor = self._own
        handed = executor.submit(call)
        future = asyncio.wrap_future(handed, loop=loop)
        self.track(loop, future)
        # Cancelled before it ran (the caller's deadline, a queue behind a slow call): the
        # thread will never finish it. The callback runs in the cancelling (loop's) thread.
        handed.add_done_callback(self._dropped)
        return future

    def close(self) -> None:
        """Let the lender's own thread (``run`` without an executor) end once it is idle; a
        later ``run`` starts another."""
        own, self._own = self._own, None
        if own is not None:
            own.shutdown(wait=False)

    def _dropped(self, handed: concurrent.futures.Future[Any]) -> None:
        if handed.cancelled():
            self._calls -= 1

    def finished(self) -> None:
        """In the worker thread, as a call ends (before its outcome is handed to the loop)."""
        self._finished += 1
        self._progress.set()

    def _settled(self, _: asyncio.Future[Any]) -> None:
        self._outstanding -= 1

    def _look(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            return
        if self._outstanding <= 0:
            self._watching = False
            return
        cpu, wall = time.thread_time(), time.monotonic()
        busy = cpu - self._cpu >= BUSY * (wall - self._wall)
        after = LOOK_S
        at_work = self._finished < self._calls
        if busy and at_work and not self._progress.is_set():
            self.loans += 1
            if not self._progress.wait(LEND_FOR_S):
                after = BACK_OFF_S
        self._progress.clear()
        self._cpu, self._wall = time.thread_time(), time.monotonic()
        loop.call_later(after, self._look, loop)
