"""The ledger, the spend book and the key cache against a store that stalls, refuses, or commits
late (``rtgate.store.faults.FaultyStore`` around a real SQLite store)."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from rtgate.auth.keyring import KeyRing
from rtgate.auth.policy import Spend
from rtgate.clock import ManualClock
from rtgate.errors import AuthError
from rtgate.metering.journal import to_line
from rtgate.metering.ledger import Ledger, LedgerError
from rtgate.metering.record import UsageRecord
from rtgate.metering.spend import SpendBook
from rtgate.metering.spill import REJECTED, Claim, SpillWriter, segments
from rtgate.metrics import Metrics
from rtgate.protocol.usage import Usage
from rtgate.store.connections import fetch
from rtgate.store.faults import WRITES, FaultyStore
from rtgate.store.port import SessionClose, SessionOpen, StoreError
from rtgate.store.sql import SqlStore
from tests.polling import until

DAY1 = 1_800_000_000.0  # 2027-01-15 08:00 UTC
#: The commit deadline of these tests: long enough for SQLite on a loaded machine.
DEADLINE = 0.3


@pytest.fixture
async def sql(tmp_path: Path) -> AsyncIterator[SqlStore]:
    store = SqlStore(f"sqlite:///{tmp_path / 'ledger.db'}", timeout=0.5)
    await store.init()
    await store.create_key("key_a", "alice", "p", "a" * 64, DAY1)
    await store.write([SessionOpen("rs_1", "key_a", "gpt-realtime", "openai", None, DAY1)])
    yield store
    await store.close()


@pytest.fixture
def faulty(sql: SqlStore) -> FaultyStore:
    return FaultyStore(sql)


@pytest.fixture
async def running() -> AsyncIterator[Callable[[Ledger], Ledger]]:
    """Runs ledgers' writer and drainer for the test; stops them after."""
    tasks: list[asyncio.Task[None]] = []
    ledgers: list[Ledger] = []

    def run(ledger: Ledger) -> Ledger:
        tasks.append(asyncio.create_task(ledger.run()))
        ledgers.append(ledger)
        return ledger

    yield run
    for ledger in ledgers:
        await ledger.drain()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ledger in ledgers:
        await ledger.close()


def ledger_for(store: FaultyStore | SqlStore, spill: Path | None, **kw: float) -> Ledger:
    return Ledger(
        store,
        spill_dir=spill,
        commit_timeout=kw.get("commit_timeout", DEADLINE),
        retry_seconds=0.02,
        max_batch=int(kw.get("max_batch", 512)),
        metrics=kw.get("metrics"),  # type: ignore[arg-type]
    )


def usage(n: int, charged: int = 10, t: float = DAY1) -> UsageRecord:
    return UsageRecord("rs_1", "key_a", "m", "m", Usage(text_in=n), charged, charged, t, f"r{n}")


async def refs(store: SqlStore) -> list[str]:
    """The refs of every usage row, in the order they were inserted."""
    rows = await store.db.run(fetch("SELECT ref FROM usage_records ORDER BY id"))
    return [r[0] for r in rows]


# -- deadlines and the spill ----------------------------------------------------------------


async def test_a_stalled_store_costs_one_deadline_then_records_go_straight_to_the_spill(
    faulty: FaultyStore, tmp_path: Path, running: Callable[[Ledger], Ledger]
) -> None:
    metrics = Metrics()
    deadline = 1.0  # far from the fsyncs' time, even on a loaded machine
    ledger = running(
        ledger_for(faulty, tmp_path / "spill", metrics=metrics, commit_timeout=deadline)
    )
    faulty.stall(only=WRITES)
    started = time.monotonic()
    await ledger.record(usage(1))
    assert deadline <= time.monotonic() - started < deadline + 1.0
    started = time.monotonic()
    await asyncio.gather(*(ledger.record(usage(n)) for n in range(2, 12)))
    # Spilling now: no record waits for the store's deadline again.
    assert time.monotonic() - started < deadline / 2
    assert ledger.spilling and ledger.waiting == 11
    text = metrics.render().decode()
    assert "rtgate_ledger_spilling 1.0" in text
    assert "rtgate_ledger_spilled_records 11.0" in text
    lines = [ln for seg in segments(tmp_path / "spill") for ln in seg.read_bytes().splitlines()]
    assert [orjson.loads(ln)["ref"] for ln in lines] == [f"r{n}" for n in range(1, 12)]

    faulty.heal()
    await until(lambda: not ledger.spilling)
    assert await refs(faulty.inner) == [f"r{n}" for n in range(1, 12)]  # in order, once
    assert segments(tmp_path / "spill") == []
    assert "rtgate_ledger_spilled_records 0.0" in metrics.render().decode()


async def test_the_operator_hears_of_an_outage_once_as_it_starts_and_once_as_it_ends(
    faulty: FaultyStore,
    tmp_path: Path,
    running: Callable[[Ledger], Ledger],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rtgate.ledger")
    ledger = running(ledger_for(faulty, tmp_path / "spill"))
    faulty.fail(only=WRITES)
    for n in range(20):
        await ledger.record(usage(n))
    await asyncio.sleep(0.1)  # several failed drains
    faulty.heal()
    await until(lambda: not ledger.spilling)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, said
    assert "unavailable" in said[0] and "answers again; 20 spilled entries" in said[1]


async def test_a_late_commit_of_a_spilled_batch_is_counted_once(
    faulty: FaultyStore, tmp_path: Path, running: Callable[[Ledger], Ledger]
) -> None:
    ledger = running(ledger_for(faulty, tmp_path / "spill"))
    faulty.stall(late=True, only=WRITES)
    await ledger.record(usage(1))  # past its deadline: spilled, and its write still on its way
    await ledger.record(usage(2))
    assert faulty.late_writes
    faulty.heal()
    await until(lambda: not ledger.spilling and not faulty.late_writes)
    assert sorted(await refs(faulty.inner)) == ["r1", "r2"]


async def test_a_drain_cut_short_runs_again_and_writes_nothing_twice(
    faulty: FaultyStore, tmp_path: Path, running: Callable[[Ledger], Ledger]
) -> None:
    ledger = running(ledger_for(faulty, tmp_path / "spill", max_batch=3))
    faulty.fail(only=WRITES)
    await asyncio.gather(*(ledger.record(usage(n)) for n in range(10)))
    real = faulty.inner.write
    writes = 0

    async def cut_after_one(entries: object) -> None:
        # The drain's first chunk goes in; the second finds the store gone again.
        nonlocal writes
        writes += 1
        if writes == 2:
            raise StoreError("cannot write: ConnectionResetError")
        await real(entries)  # type: ignore[arg-type]

    faulty.inner.write = cut_after_one  # type: ignore[method-assign]
    faulty.heal()
    await until(lambda: not ledger.spilling)
    assert writes > 2
    assert sorted(await refs(faulty.inner)) == sorted(f"r{n}" for n in range(10))


async def test_ledgers_sharing_a_spill_directory_write_each_entry_once(
    sql: SqlStore, tmp_path: Path, running: Callable[[Ledger], Ledger]
) -> None:
    # Two workers of one gateway: one database, one data directory.
    a_store, b_store = FaultyStore(sql), FaultyStore(sql)
    a = running(ledger_for(a_store, tmp_path / "spill"))
    b = running(ledger_for(b_store, tmp_path / "spill"))
    a_store.fail(only=WRITES)
    b_store.fail(only=WRITES)
    await asyncio.gather(*(ledger.record(usage(n)) for n in range(6) for ledger in (a, b)))
    assert a.spilling and b.spilling
    # A third starting now (a restart of one worker) drains only what no one is writing.
    third = ledger_for(sql, tmp_path / "spill")
    await third.recover()
    a_store.heal()
    b_store.heal()
    await until(lambda: not a.spilling and not b.spilling)
    # Both wrote the same records (refs repeat across the two); each was stored once.
    assert len(await refs(sql)) == 12
    assert segments(tmp_path / "spill") == []
    await third.close()


def test_a_drainer_never_takes_a_segment_its_writer_has_not_locked_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another worker's drainer looks at the directory between a new segment's creation and
    # its writer's lock (seen under load: the append failed, and its session was ended).
    spill = tmp_path / "spill"
    writer = SpillWriter(spill)
    taken: list[Claim] = []
    lock = fcntl.flock

    def drainer_first(fd: int, op: int) -> None:
        # The drainer's own Claim.take locks through the real flock.
        monkeypatch.setattr(fcntl, "flock", lock)
        taken.extend(c for seg in segments(spill) if (c := Claim.take(seg)) is not None)
        lock(fd, op)

    monkeypatch.setattr(fcntl, "flock", drainer_first)
    line = to_line(usage(1))
    path = writer.append([line])
    assert taken == []
    assert segments(spill) == [path] and path.read_bytes() == line
    # Still the writer's until sealed, then anyone's.
    assert Claim.take(path) is None
    writer.seal()
    claim = Claim.take(path)
    assert claim is not None and claim.lines() == [line.strip()]
    claim.release()


async def test_a_drain_never_passes_a_segment_its_owner_still_holds(
    sql: SqlStore, tmp_path: Path
) -> None:
    # Another worker spilled a session's start, then its usage, into two segments; it is
    # draining the first one right now.
    spill = tmp_path / "spill"
    other = SpillWriter(spill)
    other.append([to_line(SessionOpen("rs_2", "key_a", "m", "openai", None, DAY1))])
    other.seal()
    other.append(
        [to_line(UsageRecord("rs_2", "key_a", "m", "m", Usage(text_in=1), 1, 1, DAY1, "u"))]
    )
    other.seal()
    first, second = segments(spill)
    draining = Claim.take(first)
    assert draining is not None
    ledger = ledger_for(sql, spill)
    assert await ledger.recover() == 0  # the usage would reach the store before its session
    assert await refs(sql) == [] and second.exists()
    draining.release()
    assert await ledger.recover() == 2
    assert await refs(sql) == ["u"]
    assert not (spill / REJECTED).exists()
    await ledger.close()


async def test_recover_writes_what_an_earlier_run_left(
    sql: SqlStore, tmp_path: Path, running: Callable[[Ledger], Ledger]
) -> None:
    crashed = FaultyStore(sql)
    earlier = ledger_for(crashed, tmp_path / "spill")
    task = asyncio.create_task(earlier.run())
    crashed.fail(only=WRITES)
    await earlier.record(usage(1))
    await earlier.close_session(SessionClose("rs_1", DAY1 + 9, 1000, "bye", "client"))
    task.cancel()  # killed: its segment stays, unlocked once its file is closed
    await earlier.close()
    # And a spill file from before segments existed (a bare usage line, no record id).
    legacy = usage(2).to_json()
    del legacy["record_id"]
    (tmp_path / "spill.jsonl").write_bytes(orjson.dumps(legacy) + b"\n")

    later = ledger_for(sql, tmp_path / "spill")
    assert await later.recover() == 3
    assert await later.recover() == 0
    assert sorted(await refs(sql)) == ["r1", "r2"]
    (row,) = await sql.recent_sessions()
    assert (row.close_code, row.close_reason, row.ended_at) == (1000, "bye", DAY1 + 9)
    await later.close()


async def test_entries_that_can_be_kept_nowhere_fail_their_callers(
    faulty: FaultyStore,
    tmp_path: Path,
    running: Callable[[Ledger], Ledger],
    caplog: pytest.LogCaptureFixture,
) -> None:
    blocker = tmp_path / "full"
    blocker.write_text("a file where the spill directory would go")
    ledger = running(ledger_for(faulty, blocker))
    faulty.fail(only=WRITES)
    results = await asyncio.gather(
        *(ledger.record(usage(n)) for n in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, LedgerError) for r in results)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "neither stored" in errors[0].getMessage()


async def test_a_submitted_record_is_a_future_done_once_durable_with_no_task_of_its_own(
    sql: SqlStore, tmp_path: Path, running: Callable[[Ledger], Ledger]
) -> None:
    ledger = running(ledger_for(sql, tmp_path / "spill"))
    await asyncio.sleep(0)
    tasks = len(asyncio.all_tasks())
    durable = [ledger.submit(usage(n)) for n in range(3)]
    # The relay's path per record: queued with a future, no task started for it.
    assert len(asyncio.all_tasks()) == tasks
    assert not any(f.done() for f in durable)
    assert await asyncio.gather(*durable) == [True, True, True]
    assert await refs(sql) == ["r0", "r1", "r2"]
    # After the drain (shutdown) a record is written at once, and its future says so too.
    await ledger.drain()
    assert await ledger.submit(usage(3)) is True
    assert await refs(sql) == ["r0", "r1", "r2", "r3"]


async def test_a_submitted_record_that_can_be_kept_nowhere_says_so_in_its_future(
    faulty: FaultyStore, tmp_path: Path, running: Callable[[Ledger], Ledger]
) -> None:
    blocker = tmp_path / "full"
    blocker.write_text("a file where the spill directory would go")
    ledger = running(ledger_for(faulty, blocker))
    faulty.fail(only=WRITES)
    assert await ledger.submit(usage(1)) is False
    with pytest.raises(LedgerError):
        await ledger.record(usage(2))


async def test_a_record_the_store_refuses_for_its_data_is_set_aside(
    sql: SqlStore, tmp_path: Path, running: Callable[[Ledger], Ledger]
) -> None:
    ledger = running(ledger_for(sql, tmp_path / "spill"))
    bad = UsageRecord("rs_1", "key_a", "m", "m", Usage(text_in=1), 2**70, 1, DAY1, "bad")
    await asyncio.gather(ledger.record(usage(1)), ledger.record(bad), ledger.record(usage(2)))
    assert sorted(await refs(sql)) == ["r1", "r2"]
    (line,) = (tmp_path / "spill" / REJECTED).read_bytes().splitlines()
    assert orjson.loads(line)["ref"] == "bad"
    assert not ledger.spilling


async def test_a_batch_written_one_by_one_takes_one_commit_timeout_in_all(
    sql: SqlStore, tmp_path: Path, running: Callable[[Ledger], Ledger]
) -> None:
    """An audit's suspicion: a batch the store refused for one entry's data was written entry
    by entry, each with a commit timeout of its own, so a store answering each just in time held
    every frame behind it for the batch's length times the timeout. One timeout in all now;
    what is left is spilled, then drained."""
    ledger = running(ledger_for(sql, tmp_path / "spill", commit_timeout=0.3))
    write = sql.write
    writes: list[int] = []

    async def slow(entries: Any) -> None:
        writes.append(len(entries))
        if len(entries) == 1:
            await asyncio.sleep(0.12)  # each answered well within the timeout
        await write(entries)

    sql.write = slow  # type: ignore[method-assign]
    bad = UsageRecord("rs_1", "key_a", "m", "m", Usage(text_in=1), 2**70, 1, DAY1, "bad")
    started = time.monotonic()
    await asyncio.gather(ledger.record(bad), *(ledger.record(usage(n)) for n in range(1, 9)))
    assert time.monotonic() - started < 0.3 + 0.12 + 0.25  # not nine times 0.12 s
    sql.write = write  # type: ignore[method-assign]
    await until(lambda: not ledger.spilling)
    assert sorted(await refs(sql)) == sorted(f"r{n}" for n in range(1, 9))
    (line,) = (tmp_path / "spill" / REJECTED).read_bytes().splitlines()
    assert orjson.loads(line)["ref"] == "bad"


# -- budget checks -----------------------------------------------------------------------------


async def test_budget_checks_of_one_key_share_the_read_that_begins_after_the_one_under_way(
    faulty: FaultyStore, tmp_path: Path, running: Callable[[Ledger], Ledger]
) -> None:
    ledger = running(ledger_for(faulty, tmp_path / "spill"))
    book = SpendBook(faulty, ledger, ManualClock(start=DAY1), timeout=5.0)
    await ledger.record(usage(1, charged=100))
    faulty.stall(only=frozenset({"spend"}))
    first = book.check("key_a")
    await until(lambda: faulty.calls.get("spend") == 1)  # its read is under way
    await ledger.record(usage(2, charged=20))
    second, third = book.check("key_a"), book.check("key_a")
    other = book.check("key_b")  # another key's checks do not wait for key_a's
    assert second is third and second is not first
    faulty.heal()
    assert await first == Spend(120, 120, 120)
    assert await second == await third == Spend(120, 120, 120)
    assert await other == Spend(0, 0, 0)
    # One read each for key_a's first check and for the two that came while it ran.
    assert faulty.calls["spend"] == 3
    later = book.check("key_a")  # nothing under way: a read of its own
    assert later is not first and later is not second
    assert await later == Spend(120, 120, 120)
    assert faulty.calls["spend"] == 4


# -- budgets while the store is away ----------------------------------------------------------


async def test_spend_while_the_store_is_away_is_the_last_read_plus_what_was_metered_since(
    faulty: FaultyStore, tmp_path: Path, running: Callable[[Ledger], Ledger]
) -> None:
    clock = ManualClock(start=DAY1)
    ledger = running(ledger_for(faulty, tmp_path / "spill"))
    book = SpendBook(faulty, ledger, clock, timeout=DEADLINE)
    await ledger.record(usage(1, charged=100))
    assert await book.spend("key_a") == Spend(100, 100, 100)
    faulty.stall()  # reads and writes
    await ledger.record(usage(2, charged=20))  # spilled, past its deadline
    await ledger.record(usage(3, charged=3))
    started = time.monotonic()
    assert await book.spend("key_a") == Spend(123, 123, 123)
    assert time.monotonic() - started < 0.1  # the spilling ledger's book does not ask
    clock.advance(86_400)  # the next UTC day: only what was metered on it counts for it
    await ledger.record(usage(4, charged=4, t=clock.now()))
    assert await book.spend("key_a") == Spend(4, 127, 127)
    faulty.heal()
    await until(lambda: not ledger.spilling)
    assert await book.spend("key_a") == Spend(4, 127, 127)


async def test_a_read_while_records_wait_in_the_spill_counts_them(
    faulty: FaultyStore, tmp_path: Path, running: Callable[[Ledger], Ledger]
) -> None:
    ledger = running(ledger_for(faulty, tmp_path / "spill"))
    book = SpendBook(faulty, ledger, ManualClock(start=DAY1), timeout=DEADLINE)
    faulty.fail(only=WRITES)  # the store reads, but takes no writes
    await ledger.record(usage(1, charged=50))
    assert ledger.waiting == 1
    assert await book.spend("key_a") == Spend(50, 50, 50)


async def test_a_key_never_read_has_no_spend_while_the_store_is_away(
    faulty: FaultyStore, tmp_path: Path
) -> None:
    ledger = ledger_for(faulty, tmp_path / "spill")
    book = SpendBook(faulty, ledger, ManualClock(start=DAY1), timeout=DEADLINE)
    faulty.fail()
    with pytest.raises(StoreError):
        await book.spend("key_a")


# -- admission while the store is away --------------------------------------------------------


async def test_a_key_seen_recently_is_admitted_from_memory_while_the_store_is_away(
    faulty: FaultyStore,
) -> None:
    clock = ManualClock(start=DAY1)
    ring = KeyRing(faulty, clock, cache_seconds=60)
    _, secret = await ring.create("bob")
    _, unseen = await ring.create("carol")
    key, _ = await ring.authenticate(secret)
    faulty.fail()
    again, _ = await ring.authenticate(secret)
    assert again == key
    with pytest.raises(StoreError):
        await ring.authenticate(unseen)  # never looked up here: no answer to give
    with pytest.raises(StoreError):
        await ring.authenticate("rtg_" + "x" * 40)  # nor for a wrong key
    clock.advance(61)
    with pytest.raises(StoreError):
        await ring.authenticate(secret)  # the window is over
    faulty.heal()
    await ring.revoke(key.id)
    with pytest.raises(AuthError):
        await ring.authenticate(secret)  # the store answers: revoked
    faulty.fail()
    with pytest.raises(StoreError):
        await ring.authenticate(secret)  # and a revoked key is not remembered


async def test_after_a_failed_lookup_a_key_seen_lately_is_not_kept_waiting_again(
    faulty: FaultyStore,
) -> None:
    """A newcomer's find: in an outage, every new session of a key seen lately waited out the
    store's deadline (3 s) before it was admitted from memory. The store is asked again once
    ``STORE_QUIET_S`` have passed, and at once for a key it was not asked about."""
    from rtgate.auth.keyring import STORE_QUIET_S

    clock = ManualClock(start=DAY1)
    ring = KeyRing(faulty, clock, cache_seconds=60)
    _, secret = await ring.create("bob")
    _, unseen = await ring.create("carol")
    await ring.authenticate(secret)
    faulty.fail()
    asked = faulty.calls["key_by_hash"]
    await ring.authenticate(secret)  # asked, failed: from memory
    await ring.authenticate(secret)  # not asked again
    assert faulty.calls["key_by_hash"] == asked + 1
    with pytest.raises(StoreError):
        await ring.authenticate(unseen)  # nothing to answer from: asked
    assert faulty.calls["key_by_hash"] == asked + 2
    clock.advance(STORE_QUIET_S + 0.1)
    await ring.authenticate(secret)  # asked again
    assert faulty.calls["key_by_hash"] == asked + 3
    faulty.heal()
    clock.advance(STORE_QUIET_S + 0.1)
    await ring.authenticate(secret)
    await ring.authenticate(secret)  # the store answers: asked each time, as ever
    assert faulty.calls["key_by_hash"] == asked + 5
    # A key changed here is not answered from memory in the quiet after a failure (a
    # review's find: revoked, it was admitted for 5 s).
    key, _ = await ring.authenticate(secret)
    faulty.fail(only=frozenset({"key_by_hash"}))
    await ring.authenticate(secret)  # failed: the quiet begins
    await ring.revoke(key.id)
    with pytest.raises(StoreError):
        await ring.authenticate(secret)  # nothing remembered of it: asked, and no answer


# -- the store's own deadline -----------------------------------------------------------------


async def test_a_store_call_answers_within_its_deadline_when_the_database_is_locked(
    tmp_path: Path,
) -> None:
    path = tmp_path / "locked.db"
    store = SqlStore(f"sqlite:///{path}", timeout=0.3)
    await store.init()
    await store.create_key("key_a", "alice", "p", "a" * 64, DAY1)
    other = sqlite3.connect(path)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        started = time.monotonic()
        with pytest.raises(StoreError) as refused:
            await store.write([SessionOpen("rs_9", "key_a", "m", "openai", None, DAY1)])
        assert time.monotonic() - started < 1.5
        assert not refused.value.bad_data
    finally:
        other.rollback()
        other.close()
    await store.write([SessionOpen("rs_9", "key_a", "m", "openai", None, DAY1)])
    await store.close()


async def test_a_busy_loop_does_not_starve_the_spills_appends(
    faulty: FaultyStore, tmp_path: Path, running: Callable[[Ledger], Ledger]
) -> None:
    """While the store is away each record is appended to the spill in a thread; a loop that
    never goes idle lends it the GIL (``rtgate/gil.py``), as it does the store's threads."""
    from tests.test_gil import busy_loop

    ledger = running(ledger_for(faulty, tmp_path / "spill"))
    faulty.fail(only=WRITES)
    await ledger.record(usage(0))  # the deadline passes once; then straight to the spill
    assert ledger.spilling
    took = []
    with busy_loop():
        await asyncio.sleep(0.05)
        for n in range(1, 21):
            started = time.perf_counter()
            await asyncio.wait_for(ledger.record(usage(n)), 2.0)
            took.append(time.perf_counter() - started)
    # The appends were lent the GIL (each took 50-80 ms here without loans, ~10 with them:
    # too close to a disk's fsync to assert on).
    assert ledger._spill_lender.loans > 0
    assert max(took) < 1.0, took
    faulty.heal()
    await until(lambda: not ledger.spilling)
    assert sorted(await refs(faulty.inner)) == sorted(f"r{n}" for n in range(21))


async def test_a_ledger_spills_on_while_a_segment_of_its_own_is_drained_elsewhere(
    faulty: FaultyStore, tmp_path: Path, running: Callable[[Ledger], Ledger]
) -> None:
    """An audit's find: with ``--workers N`` sharing the spill directory, a worker whose sealed
    segment (holding a session's start) another worker was draining went back to the store
    at once; the session's next record reached the store before its start, was refused for
    its data and set aside, unbilled."""
    spill = tmp_path / "spill"
    a = running(ledger_for(faulty, spill))
    faulty.fail(only=WRITES)
    await a.open_session(SessionOpen("rs_2", "key_a", "m", "openai", None, DAY1))
    await a.record(UsageRecord("rs_2", "key_a", "m", "m", Usage(text_in=1), 7, 7, DAY1, "u1"))
    assert a.spilling

    def sealed() -> bool:
        found = segments(spill)
        return bool(found) and found[0] != a._writer_path()

    await until(sealed)
    # A sibling's drainer takes the sealed segment, the session's start in it, and holds it.
    sibling = Claim.take(segments(spill)[0])
    assert sibling is not None
    faulty.heal()
    await asyncio.sleep(0.2)  # several of its drain passes
    assert a.spilling  # its own segment is not in the store yet: what follows spills behind it
    await a.record(UsageRecord("rs_2", "key_a", "m", "m", Usage(text_in=2), 7, 7, DAY1, "u2"))
    sibling.release()  # the sibling let go (or drained it): this ledger drains all in order
    await until(lambda: not a.spilling)
    assert await refs(faulty.inner) == ["u1", "u2"]
    assert not (spill / REJECTED).exists()
