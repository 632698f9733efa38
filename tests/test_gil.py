"""The SQLite store's threads under an event loop that never goes idle (``rtgate/gil.py``).

Without loans, a thread needing the GIL between SQLite's steps waited seconds at a time
behind such a loop on a machine with a core to spare (docs/performance.md 9.5): each of the
loop's polls released the GIL and took it straight back. With them a call ends within a few
loans; and a call the database itself holds up (a lock another connection has) costs the loop
one bounded block per back-off, not a frozen loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from rtgate.metering.record import UsageRecord
from rtgate.protocol.usage import Usage
from rtgate.store.port import SessionOpen
from rtgate.store.sql import SqlStore

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
    # Seconds at a time without loans; a few loans' worth with them.
    assert max(writes) < 0.25, writes
    assert max(reads) < 0.25, reads
    assert [r.usage.text_in for r in await store.session_usage("rs_1")] == list(range(20))


async def test_a_call_held_by_the_database_blocks_a_busy_loop_once_per_back_off(
    store: SqlStore, tmp_path: Path
) -> None:
    other = sqlite3.connect(tmp_path / "rtgate.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the file's write lock
    try:
        with busy_loop() as gaps:
            write = asyncio.ensure_future(store.write([record(1)]))
            await asyncio.sleep(1.0)
            assert not write.done()  # still waiting for the lock (SQLite's busy timeout)
        blocked = [g for g in gaps if g > 0.001]
        # A loan, then one per back-off (~0.1 s): 5 % of the second. A loan every few ms
        # instead would block the loop for most of it.
        assert blocked, "the late call was never lent the GIL"
        assert sum(blocked) < 0.15, blocked
        assert max(gaps) < 0.02
    finally:
        other.execute("COMMIT")
        other.close()
    await asyncio.wait_for(write, 5.0)
    assert [r.usage.text_in for r in await store.session_usage("rs_1")] == [1]
