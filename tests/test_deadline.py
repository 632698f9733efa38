"""``Deadlines.run``: a call's outcome within its deadline, and what happens to a call past it
(a coroutine cancelled and left to wind down; a future cancelled, its work going on)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path

import pytest

from rtgate.deadline import Deadlines
from rtgate.store.port import SessionOpen, StoreError
from rtgate.store.sql import SqlStore

DAY1 = 1_800_000_000.0


async def test_a_future_answers_with_its_outcome_within_the_deadline() -> None:
    loop = asyncio.get_running_loop()
    ok: asyncio.Future[int] = loop.create_future()
    loop.call_later(0.01, ok.set_result, 7)
    assert await Deadlines().run(ok, 1.0) == 7
    bad: asyncio.Future[int] = loop.create_future()
    loop.call_later(0.01, bad.set_exception, ValueError("refused"))
    with pytest.raises(ValueError, match="refused"):
        await Deadlines().run(bad, 1.0)


async def test_a_future_past_its_deadline_is_cancelled_and_the_wait_ends_at_once() -> None:
    deadlines = Deadlines()
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await deadlines.run(never, 0.05)
    assert time.monotonic() - started < 0.5
    assert never.cancelled()
    assert deadlines.late == 0  # nothing winds down on the loop


async def test_a_caller_cancelled_while_it_waits_on_a_future_is_cancelled_not_timed_out() -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiting = asyncio.ensure_future(Deadlines().run(never, 5.0))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert never.cancelled()


async def test_a_coroutine_past_its_deadline_winds_down_on_its_own_and_is_waited_for_at_close() -> (
    None
):
    deadlines = Deadlines()
    wound_down = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            # A driver closing its connection on the way out: the caller does not wait for it.
            await asyncio.sleep(0.2)
            wound_down.set()

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await deadlines.run(stubborn(), 0.05)
    assert time.monotonic() - started < 0.15
    assert deadlines.late == 1 and not wound_down.is_set()
    await deadlines.close()
    assert wound_down.is_set() and deadlines.late == 0


async def test_a_sqlite_write_past_its_callers_deadline_still_commits(tmp_path: Path) -> None:
    """The SQLite store's write is the writer thread's future: a caller that stops waiting
    (the ledger, which spills the batch then) leaves the write to commit late."""
    path = tmp_path / "late.db"
    store = SqlStore(f"sqlite+aiosqlite:///{path}", timeout=2.0)
    await store.init()
    await store.create_key("key_a", "alice", "p", "a" * 64, DAY1)
    other = sqlite3.connect(path)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock for a moment
    try:
        with pytest.raises(TimeoutError):
            await Deadlines().run(
                store.write([SessionOpen("rs_1", "key_a", "m", "openai", None, DAY1)]), 0.05
            )
    finally:
        other.rollback()
        other.close()
    await store.close()  # after the batches queued before it
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT id FROM sessions").fetchall() == [("rs_1",)]


async def test_a_sqlite_write_the_database_refuses_fails_with_the_stores_error(
    tmp_path: Path,
) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'refused.db'}", timeout=0.5)
    await store.init()
    with pytest.raises(StoreError) as refused:  # no such key: a foreign key refuses the row
        await store.write([SessionOpen("rs_1", "key_nobody", "m", "openai", None, DAY1)])
    assert refused.value.bad_data
    await store.close()
