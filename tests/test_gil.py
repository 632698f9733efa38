"""The SQLite store's threads under an event loop that never goes idle (``rtgate/gil.py``).

Without loans, a thread needing the GIL between SQLite's steps waited seconds at a time
behind such a loop on a machine with a core to spare (docs/performance.md 9.5): each of the
loop's polls released the GIL and took it straight back. With them a call ends within a few
loans; a call the database itself holds up (a lock another connection has) costs the loop one
bounded block per back-off, not a frozen loop; and an idle loop is never blocked.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from rtgate.gil import Lender
from rtgate.metering.record import UsageRecord
from rtgate.protocol.usage import Usage
from rtgate.store.port import SessionOpen
from rtgate.store.sql import SqlStore
from tests.polling import until

T0 = 1_800_000_000.0
#: Python work each spinning callback does, as a busy relay's callbacks do; always ready again.
SPIN_S = 0.0002
SPINNERS = 4


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    s = SqlStore(f"sqlite:///{tmp_path / 'rtgate.db'}")
    await s.init()
    await s.create_key("key_a", "alice", "p", "a" * 64, T0)
    await s.write([SessionOpen("rs_1", "key_a", "m", "openai", None, T0)])
    yield s
    await s.close()


@contextmanager
def busy_loop() -> Iterator[list[float]]:
    """The running loop kept busy: callbacks always ready, so it never waits in its poll. Yields
    the gaps between one spinner's end and the next one's start (whichever spinner), which are
    how long the loop did anything else: near zero, but for a loan."""
    loop = asyncio.get_running_loop()
    stop = False
    gaps: list[float] = []
    last = time.perf_counter()

    def spin() -> None:
        nonlocal last
        now = time.perf_counter()
        gaps.append(now - last)
        until = now + SPIN_S
        while time.perf_counter() < until:
            continue
        last = time.perf_counter()
        if not stop:
            loop.call_soon(spin)

    for _ in range(SPINNERS):
        loop.call_soon(spin)
    try:
        yield gaps
    finally:
        stop = True


async def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    result = call()
    assert asyncio.isfuture(result) or asyncio.iscoroutine(result)
    await asyncio.wait_for(result, 2.0)
    return time.perf_counter() - started


def record(i: int) -> UsageRecord:
    return UsageRecord("rs_1", "key_a", "m", "m", Usage(text_in=i), 1, 1, T0 + i, f"resp_{i}")


async def test_a_busy_loop_does_not_starve_the_ledger_writer_or_the_store_thread(
    store: SqlStore,
) -> None:
    with busy_loop():
        await asyncio.sleep(0.05)
        writes = [await timed(lambda i=i: store.write([record(i)])) for i in range(20)]
        reads = [await timed(lambda: store.get_key("key_a")) for _ in range(20)]
    # Seconds at a time without loans (the first write missed the 2 s deadline); a few loans'
    # worth with them.
    assert max(writes) < 1.0, writes
    assert max(reads) < 1.0, reads
    assert [r.usage.text_in for r in await store.session_usage("rs_1")] == list(range(20))


async def run_in_thread(lender: Lender, work: Callable[[], None]) -> None:
    """``work`` in a thread of the loop's executor, watched by ``lender``."""
    await asyncio.wait_for(lender.run(asyncio.get_running_loop(), None, work), 5.0)


async def test_a_slow_call_under_an_idle_loop_is_lent_nothing() -> None:
    """The loop sleeps in its poll without the GIL: nothing to lend, so never blocked."""
    lender = Lender()
    await run_in_thread(lender, lambda: time.sleep(0.2))
    assert lender.loans == 0


async def test_a_call_held_by_the_database_is_lent_once_per_back_off() -> None:
    """Under a busy loop, a call waiting on something else (here an event, as a call waits
    for another writer's lock) gets a loan, finishes nothing during it, and the next loan
    comes a back-off later: ~1 / (BACK_OFF_S + LEND_FOR_S) loans a second, not one per look."""
    lender = Lender()
    released = threading.Event()
    with busy_loop() as gaps:
        held = asyncio.ensure_future(run_in_thread(lender, lambda: released.wait(5.0)))
        await asyncio.sleep(1.0)
        released.set()
        await held
    # ~9.5 a second with a 0.1 s back-off; a loan every look would be ~140.
    assert 1 <= lender.loans <= 12, lender.loans
    # Each loan blocked the loop at most 5 ms; the spinners ran the rest of the time.
    assert sum(g for g in gaps if g > 0.001) < 12 * 0.01


def test_a_lender_carries_on_in_a_new_loop_after_its_old_one_closed() -> None:
    """A loop that closed with a call outstanding never settles it; the lender watches the next
    loop's calls all the same (the ledger's writer outlives a loop in tests and restarts)."""
    lender = Lender()
    old = asyncio.new_event_loop()
    lender.track(old, old.create_future())
    old.close()

    def python_work() -> None:  # needs the GIL throughout, as sqlite3's bindings do
        until = time.thread_time() + 0.05
        while time.thread_time() < until:
            continue

    async def main() -> None:
        with busy_loop():
            await run_in_thread(lender, python_work)

    asyncio.run(main())
    assert lender.loans >= 1


async def test_a_call_the_thread_finished_is_lent_nothing_while_its_future_waits() -> None:
    """A busy loop settles a call's future only when it reaches the callback the thread
    scheduled, so the call stays outstanding after the thread is done with it; a loan then
    would block the loop for the whole ``LEND_FOR_S``, waiting for a thread with nothing to do
    (a 5 ms stall of the relay, docs/performance.md 9.15)."""
    lender = Lender()
    loop = asyncio.get_running_loop()
    with busy_loop():
        await asyncio.sleep(0.05)
        for _ in range(5):
            call: asyncio.Future[None] = loop.create_future()
            lender.track(loop, call)
            done = threading.Thread(target=lender.finished)
            done.start()
            done.join()
            # The outcome reaches the loop well after the thread finished: several looks.
            loop.call_later(0.03, call.set_result, None)
            await call
    assert lender.loans == 0, lender.loans


async def test_a_call_cancelled_before_it_ran_does_not_count_as_work() -> None:
    """A caller's deadline cancels a call still queued behind a slow one: the thread will never
    finish it, so counting it would make every later look see work where there is none."""
    lender = Lender()
    loop = asyncio.get_running_loop()
    release = threading.Event()
    slow = lender.run(loop, None, release.wait, 5.0)
    queued = lender.run(loop, None, time.sleep, 0)
    queued.cancel()
    # The cancel reaches the thread pool's future on the loop's next turn (asyncio chains
    # them with a callback): only then is the queued call dropped, while the slow one still
    # runs, as a deadline finds it. Releasing the slow call before that let the thread take
    # the queued one first (a flake under load).
    await until(lambda: lender._calls == 1)
    release.set()
    await slow
    await asyncio.sleep(0.01)
    assert lender._calls == lender._finished == 1


async def test_a_lenders_own_thread_ends_at_close_and_a_later_call_starts_another() -> None:
    lender = Lender()
    loop = asyncio.get_running_loop()
    assert await lender.run(loop, None, threading.current_thread) is not threading.main_thread()
    first = lender._own
    lender.close()
    assert first is not None
    with pytest.raises(RuntimeError):  # shut down: it takes no more work
        first.submit(int)
    assert await lender.run(loop, None, lambda: 7) == 7
    assert lender._own is not None and lender._own is not first
    lender.close()
