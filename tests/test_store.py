"""The Store contract, run against SQLite by default and PostgreSQL in its suite."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from rtgate.clock import ManualClock
from rtgate.lost_sessions import sweep
from rtgate.metering.journal import from_line, to_line
from rtgate.metering.ledger import Ledger
from rtgate.metering.record import UsageRecord, utc_day
from rtgate.protocol.transcript import TranscriptEntry
from rtgate.protocol.usage import Usage
from rtgate.store.connections import Query, Statement, fetch
from rtgate.store.migrate import columns
from rtgate.store.port import (
    SessionClose,
    SessionOpen,
    StoredCall,
    StoredClientSecret,
    StoreError,
)
from rtgate.store.rows import LOST_REASON, close_rows
from rtgate.store.sql import SqlStore, database_place

DAY1 = 1_800_000_000.0  # 2027-01-15 08:00 UTC
DAY2 = DAY1 + 86_400


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SqlStore]:
    s = SqlStore(db_url)
    await s.init()
    await s.init()  # idempotent
    yield s
    await s.close()


async def reopened(store: SqlStore, as_before: Query[None], url: str) -> SqlStore:
    """``store``'s database made as an earlier rtgate left it (``as_before``), then opened
    again, as a newer rtgate starting on it would: migrated."""
    await store.db.run(as_before, write=True)
    await store.close()
    again = SqlStore(url)
    await again.init()
    return again


async def sqlite_indexes(store: SqlStore, table: str) -> set[str]:
    """The indexes ``table`` has, by name (SQLite's own for UNIQUE constraints left out)."""
    rows = await store.db.run(
        fetch(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = :table"
            " AND name NOT LIKE 'sqlite_autoindex%'",
            table=table,
        )
    )
    return {r[0] for r in rows}


def rec(key: str, model: str, t: float, n: int, session: str = "rs_1") -> UsageRecord:
    return UsageRecord(
        session,
        key,
        model,
        model,
        Usage(text_in=n, audio_out=2 * n),
        n * 10,
        n * 12,
        t,
        f"resp_{n}_{t}",
    )


async def test_keys_round_trip(store: SqlStore) -> None:
    k = await store.create_key("key_a", "alice", "rtg_abcd1234", "h" * 64, DAY1)
    assert (await store.get_key("key_a")) == k
    found = await store.key_by_hash("h" * 64)
    assert found is not None and found[0].id == "key_a" and found[1] == "h" * 64
    assert await store.key_by_hash("x" * 64) is None
    revoked = await store.revoke_key("key_a", DAY2)
    assert revoked is not None and revoked.revoked_at == DAY2 and not revoked.active
    again = await store.revoke_key("key_a", DAY2 + 5)
    assert again is not None and again.revoked_at == DAY2
    assert await store.list_keys(include_revoked=False) == []
    assert await store.revoke_key("key_missing", DAY2) is None
    await store.create_key("key_b", "bob", "rtg_efgh5678", "b" * 64, DAY1)
    # Which keys of live sessions are revoked (api/live.py asks now and then).
    assert await store.revoked_keys({"key_a", "key_b", "key_missing"}) == {"key_a"}
    assert await store.revoked_keys(["key_b"]) == set()
    assert await store.revoked_keys(()) == set()


async def test_usage_groups_by_key_model_and_utc_day(store: SqlStore) -> None:
    await store.create_key("key_a", "alice", "p", "a" * 64, DAY1)
    await store.create_key("key_b", "bob", "p", "b" * 64, DAY1)
    await store.write(
        [
            SessionOpen("rs_1", "key_a", "gpt-realtime", "openai", None, DAY1),
            SessionOpen("rs_2", "key_b", "gpt-realtime", "openai", None, DAY1),
            rec("key_a", "gpt-realtime", DAY1, 5),
            rec("key_a", "gpt-realtime", DAY1 + 60, 7),
            rec("key_a", "gpt-realtime-mini", DAY1, 1),
            rec("key_a", "gpt-realtime", DAY2, 3),
            rec("key_b", "gpt-realtime", DAY1, 100, session="rs_2"),
        ]
    )
    rows = await store.usage_summary()
    got = {
        (r.key_name, r.model, r.day): (
            r.records,
            r.usage.text_in,
            r.usage.audio_out,
            r.charged_nanos,
        )
        for r in rows
    }
    assert got == {
        ("alice", "gpt-realtime", "2027-01-15"): (2, 12, 24, 144),
        ("alice", "gpt-realtime-mini", "2027-01-15"): (1, 1, 2, 12),
        ("alice", "gpt-realtime", "2027-01-16"): (1, 3, 6, 36),
        ("bob", "gpt-realtime", "2027-01-15"): (1, 100, 200, 1200),
    }
    only_b = await store.usage_summary(key_id="key_b")
    assert [r.key_name for r in only_b] == ["bob"]
    assert len(await store.usage_summary(since_day="2027-01-16")) == 1

    await store.write([SessionClose("rs_1", DAY1 + 30, 4004, "x" * 500, "upstream")])
    sessions = await store.recent_sessions()
    by_id = {s.id: s for s in sessions}
    assert by_id["rs_1"].usage.text_in == 16 and by_id["rs_1"].close_code == 4004
    assert len(by_id["rs_1"].close_reason or "") == 300
    assert by_id["rs_2"].ended_at is None and by_id["rs_2"].charged_nanos == 1200
    assert [s.id for s in await store.recent_sessions(key_id="key_b")] == ["rs_2"]


async def test_records_for_review_are_counted_in_the_usage_report(store: SqlStore) -> None:
    await store.create_key("key_a", "alice", "p", "a" * 64, DAY1)
    await store.write([SessionOpen("rs_1", "key_a", "gpt-realtime", "openai", None, DAY1)])
    unreadable = replace(rec("key_a", "gpt-realtime", DAY1 + 1, 4), review="unreadable_usage")
    unparseable = UsageRecord(
        "rs_1",
        "key_a",
        "gpt-realtime",
        "gpt-realtime",
        Usage(),
        0,
        0,
        DAY1 + 2,
        review="unparseable_frame",
    )
    await store.write([rec("key_a", "gpt-realtime", DAY1, 5), unreadable, unparseable])
    await store.write([replace(rec("key_a", "gpt-realtime", DAY2, 1), review="unreadable_usage")])
    by_day = {r.day: r for r in await store.usage_summary()}
    assert {d: (r.records, r.needs_review) for d, r in by_day.items()} == {
        "2027-01-15": (3, 2),
        "2027-01-16": (1, 1),
    }
    # What a record for review did count is billed with the rest.
    assert by_day["2027-01-15"].usage.text_in == 9 and by_day["2027-01-15"].charged_nanos == 108
    # The spill keeps the flag (a record spilled, or set aside, is written back flagged).
    assert from_line(to_line(unparseable)) == unparseable


async def test_a_usage_table_from_before_review_is_migrated(db_url: str) -> None:
    store = SqlStore(db_url)
    await store.init()
    await store.create_key("key_a", "alice", "p", "a" * 64, DAY1)
    await store.write([SessionOpen("rs_1", "key_a", "gpt-realtime", "openai", None, DAY1)])

    def as_before() -> Query[None]:
        # As a database made before usage could be flagged for review, with a row in it.
        yield Statement("ALTER TABLE usage_records DROP COLUMN review")
        yield Statement(
            "INSERT INTO usage_records (session_id, key_id, model, price_key, kind, day,"
            " created_at, text_in, text_in_cached, audio_in, audio_in_cached, image_in,"
            " image_in_cached, text_out, audio_out, audio_ms, provider_nanos, charged_nanos)"
            " VALUES ('rs_1', 'key_a', 'gpt-realtime', 'gpt-realtime', 'response', '2027-01-15',"
            f" {DAY1}, 5, 0, 0, 0, 0, 0, 0, 0, 0, 50, 60)"
        )

    store = await reopened(store, as_before(), db_url)
    await store.write([replace(rec("key_a", "gpt-realtime", DAY1, 1), review="unreadable_usage")])
    (row,) = await store.usage_summary()
    await store.close()
    assert (row.records, row.needs_review, row.usage.text_in) == (2, 1, 6)


async def test_usage_is_reported_by_the_unit_it_was_priced_in(store: SqlStore) -> None:
    await store.create_key("key_a", "alice", "p", "a" * 64, DAY1)
    await store.write([SessionOpen("rs_1", "key_a", "gpt-realtime", "openai", None, DAY1)])
    minutes = [
        UsageRecord(
            "rs_1",
            "key_a",
            "gpt-live-transcribe",
            "gpt-live-transcribe",
            Usage(kind="transcription", audio_ms=ms),
            nanos,
            nanos,
            DAY1 + ms,
            unit="minute",
        )
        for ms, nanos in ((3400, 963_333), (1600, 453_333))
    ]
    tokens = replace(rec("key_a", "gpt-live-transcribe", DAY1, 7), unit="token")
    await store.write([*minutes, tokens])
    rows = {r.unit: r for r in await store.usage_summary()}
    assert set(rows) == {"minute", "token"}
    assert (rows["minute"].records, rows["minute"].usage.audio_ms) == (2, 5000)
    assert (rows["minute"].usage.total_tokens, rows["minute"].charged_nanos) == (0, 1_416_666)
    assert (rows["token"].usage.audio_ms, rows["token"].usage.text_in) == (0, 7)
    (session,) = await store.recent_sessions()
    assert (session.usage.audio_ms, session.usage.text_in) == (5000, 7)
    # The spill keeps the unit; a line spilled before records had one gets the old rule's.
    assert from_line(to_line(minutes[0])) == minutes[0]
    legacy = {**minutes[0].to_json(), "entry": "usage"}
    del legacy["unit"]
    assert from_line(orjson.dumps(legacy)).unit == "minute"  # type: ignore[union-attr]


async def test_a_usage_table_from_before_units_is_migrated(db_url: str) -> None:
    store = SqlStore(db_url)
    await store.init()
    await store.create_key("key_a", "alice", "p", "a" * 64, DAY1)
    await store.write([SessionOpen("rs_1", "key_a", "gpt-realtime", "openai", None, DAY1)])

    def as_before() -> Query[None]:
        # As a database made before prices had units: a token row and a whisper-1 minute.
        yield Statement("ALTER TABLE usage_records DROP COLUMN unit")
        for model, kind, text_in, audio_ms in (
            ("gpt-realtime", "response", 5, 0),
            ("whisper-1", "transcription", 0, 60_000),
        ):
            yield Statement(
                "INSERT INTO usage_records (session_id, key_id, model, price_key, kind, day,"
                " created_at, text_in, text_in_cached, audio_in, audio_in_cached, image_in,"
                " image_in_cached, text_out, audio_out, audio_ms, provider_nanos, charged_nanos)"
                f" VALUES ('rs_1', 'key_a', '{model}', '{model}', '{kind}', '2027-01-15',"
                f" {DAY1}, {text_in}, 0, 0, 0, 0, 0, 0, 0, {audio_ms}, 6000000, 6000000)"
            )

    store = await reopened(store, as_before(), db_url)
    await store.write([replace(rec("key_a", "gpt-realtime", DAY1, 1), unit="token")])
    rows = {(r.model, r.unit): r.records for r in await store.usage_summary()}
    await store.close()
    assert rows == {("gpt-realtime", "token"): 2, ("whisper-1", "minute"): 1}


async def test_who_metered_a_record_is_kept_and_old_rows_were_the_provider(db_url: str) -> None:
    store = SqlStore(db_url)
    await store.init()
    await store.create_key("key_a", "alice", "p", "a" * 64, DAY1)
    await store.write([SessionOpen("rs_1", "key_a", "gpt-realtime", "openai", None, DAY1)])

    def as_before() -> Query[None]:
        # As a database made before records said who metered them.
        yield Statement("ALTER TABLE usage_records DROP COLUMN metered_by")
        yield Statement(
            "INSERT INTO usage_records (session_id, key_id, model, price_key, kind, day,"
            " created_at, text_in, text_in_cached, audio_in, audio_in_cached, image_in,"
            " image_in_cached, text_out, audio_out, audio_ms, provider_nanos, charged_nanos,"
            " unit) VALUES ('rs_1', 'key_a', 'gpt-realtime', 'gpt-realtime', 'response',"
            f" '2027-01-15', {DAY1}, 5, 0, 0, 0, 0, 0, 0, 0, 0, 20000, 20000, 'token')"
        )

    store = await reopened(store, as_before(), db_url)
    counted = UsageRecord(
        "rs_1",
        "key_a",
        "gpt-realtime-translate",
        "gpt-realtime-translate",
        Usage(kind="translation", audio_ms=10_000),
        5_666_667,
        5_666_667,
        DAY1 + 1,
        unit="minute",
        metered_by="gateway",
    )
    await store.write([counted])
    got = await store.session_usage("rs_1")
    await store.close()
    assert [(r.usage.kind, r.metered_by) for r in got] == [
        ("response", "provider"),
        ("translation", "gateway"),
    ]
    assert got[1] == counted
    # A spilled line keeps it; one spilled before the field was the provider's.
    assert from_line(to_line(counted)) == counted
    legacy = orjson.loads(to_line(counted))
    del legacy["metered_by"]
    assert from_line(orjson.dumps(legacy)).metered_by == "provider"  # type: ignore[union-attr]


async def test_ledger_group_commits_concurrent_records(store: SqlStore) -> None:
    await store.create_key("key_a", "alice", "p", "a" * 64, DAY1)
    await store.write([SessionOpen("rs_1", "key_a", "gpt-realtime", "openai", None, DAY1)])
    commits: list[int] = []
    real = store.write

    async def counting(records: list[UsageRecord]) -> None:  # type: ignore[override]
        commits.append(len(records))
        await real(records)

    store.write = counting  # type: ignore[method-assign]
    ledger = Ledger(store)
    writer = asyncio.create_task(ledger.run())
    await asyncio.gather(
        *(ledger.record(rec("key_a", "gpt-realtime", DAY1, i + 1)) for i in range(200))
    )
    await ledger.drain()
    writer.cancel()
    assert sum(commits) == 200
    assert len(commits) < 200  # batched, not one transaction per record
    (row,) = await store.usage_summary()
    assert row.records == 200 and row.usage.text_in == sum(range(1, 201))


async def test_ledger_reports_a_failed_commit_to_every_waiter(store: SqlStore) -> None:
    ledger = Ledger(store)
    writer = asyncio.create_task(ledger.run())
    # No such key or session: the foreign keys refuse the batch.
    results = await asyncio.gather(
        *(ledger.record(rec("key_none", "m", DAY1, i, session="rs_none")) for i in range(3)),
        return_exceptions=True,
    )
    writer.cancel()
    assert all(isinstance(r, Exception) for r in results)


async def test_a_batch_refused_for_its_data_is_written_not_at_all_and_the_next_one_is(
    store: SqlStore,
) -> None:
    await store.create_key("key_a", "alice", "p", "a" * 64, DAY1)
    opened = SessionOpen("rs_2", "key_a", "m", "openai", None, DAY1)
    orphan = rec("key_a", "m", DAY1, 1, session="rs_none")
    with pytest.raises(StoreError) as refused:
        # The session's start and a record of a session that does not exist, in one batch.
        await store.write([opened, orphan])
    assert refused.value.bad_data
    assert await store.recent_sessions() == []
    await store.write([opened, rec("key_a", "m", DAY1, 2, session="rs_2")])
    (session,) = await store.recent_sessions()
    assert session.id == "rs_2" and session.usage.text_in == 2


async def test_spend_by_day_month_and_total(store: SqlStore) -> None:
    await store.create_key("key_a", "alice", "p", "a" * 64, DAY1, '{"max_sessions": 2}')
    assert (await store.get_key("key_a")).policy_json == '{"max_sessions": 2}'  # type: ignore[union-attr]
    await store.write(
        [
            SessionOpen("rs_1", "key_a", "gpt-realtime", "openai", None, DAY1),
            rec("key_a", "m", DAY1 - 40 * 86_400, 1),  # an earlier month
            rec("key_a", "m", DAY1 - 86_400, 2),  # yesterday, same month
            rec("key_a", "m", DAY1, 3),
            rec("key_a", "m", DAY1 + 60, 4),
        ]
    )
    assert await store.spend("key_a", "2027-01-15", "2027-01-01") == (84, 108, 120)
    assert await store.spend("key_none", "2027-01-15", "2027-01-01") == (0, 0, 0)
    updated = await store.set_key_policy("key_a", None)
    assert updated is not None and updated.policy_json is None


async def test_batches_of_opposite_key_orders_written_at_once_do_not_deadlock(db_url: str) -> None:
    """Each usage row adds to its key's day in ``spend_days``, locking that row until the batch
    commits (PostgreSQL; SQLite has one writer). Two instances' batches holding the same keys
    in opposite orders would each wait for the other's row: the rows are written in key order,
    so they queue instead."""
    stores = [SqlStore(db_url), SqlStore(db_url)]
    await stores[0].init()
    await stores[1].init()
    keys = [f"key_{i}" for i in range(8)]
    for k in keys:
        await stores[0].create_key(k, k, "p", k.ljust(64, "x"), DAY1)
    await stores[0].write([SessionOpen(f"rs_{k}", k, "m", "openai", None, DAY1) for k in keys])
    for round_ in range(15):
        batches = [
            [rec(k, "m", DAY1 + round_, 1, session=f"rs_{k}") for k in order for _ in range(5)]
            for order in (keys, keys[::-1])
        ]
        await asyncio.gather(*(s.write(b) for s, b in zip(stores, batches, strict=True)))
    assert await stores[0].spend("key_0", "2027-01-15", "2027-01-01") == (1800, 1800, 1800)
    for s in stores:
        await s.close()


async def test_spend_is_kept_per_day_counts_a_replay_once_and_is_filled_in_on_upgrade(
    store: SqlStore, db_url: str
) -> None:
    """A key's spend is read from ``spend_days`` (a row per day the key was used), which the
    database keeps as usage rows are inserted; a database made before it gets it filled in from
    the rows already there."""
    await store.create_key("key_a", "alice", "p", "a" * 64, DAY1)
    first = [
        SessionOpen("rs_1", "key_a", "gpt-realtime", "openai", None, DAY1),
        *(rec("key_a", "m", DAY1 + i, 1) for i in range(5)),  # 12 each
        rec("key_a", "m", DAY1 - 86_400, 2),
    ]
    await store.write(first)
    await store.write(first)  # a replay (a drained spill): nothing is added twice
    assert await store.spend("key_a", "2027-01-15", "2027-01-01") == (60, 84, 84)

    def spend_days() -> Query[list[tuple[str, int, int]]]:
        rows = yield from fetch(
            "SELECT day, provider_nanos, charged_nanos FROM spend_days"
            " WHERE key_id = :key ORDER BY day",
            key="key_a",
        )
        return [(r[0], int(r[1]), int(r[2])) for r in rows]

    assert await store.db.run(spend_days()) == [("2027-01-14", 20, 24), ("2027-01-15", 50, 60)]

    # A database from before spend_days: no table, no trigger, and rows written meanwhile.
    on = " ON usage_records" if store.db.dialect == "postgresql" else ""

    def downgrade() -> Query[None]:
        yield Statement(f"DROP TRIGGER IF EXISTS usage_adds_spend{on}")
        yield Statement("DROP TABLE spend_days")

    await store.db.run(downgrade(), write=True)
    meanwhile = rec("key_a", "m", DAY1 + 60, 3)
    await store.write([meanwhile])
    await store.init()
    assert await store.db.run(spend_days()) == [("2027-01-14", 20, 24), ("2027-01-15", 80, 96)]
    await store.write([rec("key_a", "m", DAY1 + 61, 4), meanwhile])
    assert await store.spend("key_a", "2027-01-15", "2027-01-01") == (144, 168, 168)
    await store.init()  # opening it again adds nothing
    assert await store.spend("key_a", "2027-01-15", "2027-01-01") == (144, 168, 168)

    # Two instances opening it at once, before spend_days: both open, each row counted once.
    await store.db.run(downgrade(), write=True)
    others = [SqlStore(db_url), SqlStore(db_url)]
    await asyncio.gather(*(other.init() for other in others))
    for other in others:
        assert await other.spend("key_a", "2027-01-15", "2027-01-01") == (144, 168, 168)
        await other.close()


async def test_a_database_from_before_key_policies_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE api_keys (id VARCHAR(40) PRIMARY KEY, name VARCHAR(200) NOT NULL,"
        " display_prefix VARCHAR(40) NOT NULL, key_hash VARCHAR(64) NOT NULL UNIQUE,"
        " created_at FLOAT NOT NULL, revoked_at FLOAT)"
    )
    db.execute("INSERT INTO api_keys VALUES ('key_old', 'old', 'rtg_x', 'h', 1.0, NULL)")
    db.commit()
    db.close()
    # The URL the default database had before SQLite ran in a thread of the store's own: a
    # config that names it still opens the same file.
    s = SqlStore(f"sqlite+aiosqlite:///{path}")
    await s.init()
    old = await s.get_key("key_old")
    assert old is not None and old.policy_json is None
    assert (await s.set_key_policy("key_old", '{"max_sessions": 1}')) is not None
    await s.close()


async def test_parallel_revocations_of_one_client_secret_keep_the_first_time(
    store: SqlStore,
) -> None:
    await store.create_key("key_a", "alice", "rtg_abcd1234", "h" * 64, DAY1)
    secret_hash = "ab" * 32
    await store.add_client_secret(
        StoredClientSecret(secret_hash, "key_a", "gpt-realtime", "{}", DAY1, DAY1 + 600)
    )
    prefix = secret_hash[:20]
    revoked = await asyncio.gather(
        *(store.revoke_client_secret(prefix, DAY1 + i) for i in range(1, 9))
    )
    times = {r.revoked_at for r in revoked if r is not None}
    found = await store.client_secret_by_id(prefix)
    assert found is not None
    # However the revocations interleave, every caller is told the one time that was kept.
    assert times == {found.revoked_at}
    assert await store.client_secret_by_id("cd" * 10) is None


async def test_the_secrets_revoked_since_a_time_are_named_by_hash(store: SqlStore) -> None:
    await store.create_key("key_a", "alice", "rtg_abcd1234", "h" * 64, DAY1)
    for h in ("aa", "bb", "cc"):
        await store.add_client_secret(
            StoredClientSecret(h * 32, "key_a", "gpt-realtime", "{}", DAY1, DAY1 + 600)
        )
    await store.revoke_client_secret("aa" * 10, DAY1 + 10)
    await store.revoke_client_secret("bb" * 10, DAY1 + 100)
    assert await store.revoked_client_secrets(DAY1) == {"aa" * 32, "bb" * 32}
    assert await store.revoked_client_secrets(DAY1 + 50) == {"bb" * 32}
    assert await store.revoked_client_secrets(DAY1 + 101) == set()


async def test_an_existing_database_gets_the_client_secrets_key_index(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = SqlStore(url)
    await store.init()

    def as_before() -> Query[None]:
        # As a database made before client secrets could be listed by key.
        yield Statement("DROP INDEX ix_client_secrets_key_id")

    store = await reopened(store, as_before(), url)
    names = await sqlite_indexes(store, "client_secrets")
    await store.close()
    assert "ix_client_secrets_key_id" in names


async def test_calls_stored_before_accepted_at_read_as_accepted(tmp_path: Path) -> None:
    """Every call of an earlier database had its sideband started (or was hung up): none is
    taken for a SIP claim still waiting on its accept."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = SqlStore(url)
    await store.init()
    await store.create_key("key_a", "alice", "p", "a" * 64, DAY1)

    def as_before() -> Query[None]:
        yield Statement("ALTER TABLE calls DROP COLUMN accepted_at")
        yield Statement(
            "INSERT INTO calls (call_id, key_id, model, upstream, created_at)"
            " VALUES ('rtc_old', 'key_a', 'gpt-realtime', 'openai', :at)",
            {"at": DAY1},
        )

    store = await reopened(store, as_before(), url)
    try:
        old = await store.call_owner("rtc_old")
        assert old is not None and old.accepted_at == DAY1
        await store.claim_call(StoredCall("rtc_new", "key_a", None, "m", "openai", DAY1, None))
        new = await store.call_owner("rtc_new")
        assert new is not None and new.accepted_at is None
        await store.accept_call("rtc_new", DAY1 + 5)
        await store.accept_call("rtc_new", DAY1 + 9)  # the first time stays
        new = await store.call_owner("rtc_new")
        assert new is not None and new.accepted_at == DAY1 + 5
        # A running call keeps its owner: only a claim never accepted is released.
        await store.release_call("rtc_new", "key_a")
        assert await store.call_owner("rtc_new") is not None
    finally:
        await store.close()


async def test_a_database_from_before_revocation_is_migrated(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    with sqlite3.connect(tmp_path / "old.db") as db:
        db.execute(
            "CREATE TABLE client_secrets (secret_hash VARCHAR(64) PRIMARY KEY, key_id VARCHAR(32)"
            " NOT NULL, model VARCHAR(100), session TEXT NOT NULL, created_at FLOAT NOT NULL,"
            " expires_at FLOAT NOT NULL)"
        )
        db.execute("CREATE INDEX ix_client_secrets_expires_at ON client_secrets (expires_at)")
    db.close()

    store = SqlStore(url)
    await store.init()
    have = await store.db.run(columns("sqlite", "client_secrets"))
    indexes = await sqlite_indexes(store, "client_secrets")
    assert "revoked_at" in have
    assert {"ix_client_secrets_key_id", "ix_client_secrets_revoked_at"} <= set(indexes)
    assert await store.list_client_secrets(None, 0.0) == []
    await store.close()


async def test_writes_are_idempotent_so_a_replay_counts_nothing_twice(store: SqlStore) -> None:
    await store.create_key("key_a", "alice", "p", "a" * 64, DAY1)
    entries = [
        SessionOpen("rs_1", "key_a", "gpt-realtime", "openai", None, DAY1),
        rec("key_a", "gpt-realtime", DAY1, 5),
        rec("key_a", "gpt-realtime", DAY1, 7),
        TranscriptEntry("rs_1", "key_a", 1, DAY1, "user", "text", "hi"),
        SessionClose("rs_1", DAY1 + 30, 1000, "bye", "client"),
    ]
    await store.write(entries)
    # A drained spill, or a late commit whose batch was spilled as well, writes them again.
    await store.write(entries)
    await store.write(entries[1:3])
    (row,) = await store.usage_summary()
    assert (row.records, row.usage.text_in) == (2, 12)
    assert len(await store.session_transcript("rs_1")) == 1
    (session,) = await store.recent_sessions()
    assert (session.close_code, session.close_reason, session.ended_at) == (1000, "bye", DAY1 + 30)
    # The same usage under another id is another record.
    await store.write([replace(entries[1], record_id="ur_other")])
    (row,) = await store.usage_summary()
    assert row.records == 3


async def test_a_database_from_before_record_ids_is_migrated(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = SqlStore(url)
    await store.init()

    def as_before() -> Query[None]:
        # As a database made before usage records had ids and transcripts a unique index.
        yield Statement("DROP INDEX ux_usage_record_id")
        yield Statement("ALTER TABLE usage_records DROP COLUMN record_id")
        yield Statement("DROP INDEX ux_transcript_session_seq")
        yield Statement(
            "CREATE INDEX ix_transcript_session ON transcript_entries (session_id, seq)"
        )

    store = await reopened(store, as_before(), url)
    have = await store.db.run(columns("sqlite", "usage_records"))
    indexes = await sqlite_indexes(store, "transcript_entries")
    assert "record_id" in have
    assert indexes == {"ux_transcript_session_seq"}
    await store.create_key("key_a", "alice", "p", "a" * 64, DAY1)
    entries = [SessionOpen("rs_1", "key_a", "m", "openai", None, DAY1), rec("key_a", "m", DAY1, 1)]
    await store.write(entries)
    await store.write(entries)
    (row,) = await store.usage_summary()
    assert row.records == 1
    await store.close()


async def test_a_call_is_claimed_once_whoever_claims_it_at_the_same_time(store: SqlStore) -> None:
    keys = [f"key_{i}" for i in range(8)]
    for i, key_id in enumerate(keys):
        await store.create_key(key_id, key_id, "rtg_x", f"{i:064d}", DAY1)
    assert await store.call_owner("rtc_1") is None
    claims = [StoredCall("rtc_1", k, None, "gpt-realtime", "openai", DAY1 + 1) for k in keys]
    owners = await asyncio.gather(*(store.claim_call(c) for c in claims))
    # One claim was stored, and every claimant was told the same owner.
    assert len(set(owners)) == 1 and owners[0] in claims
    assert await store.call_owner("rtc_1") == owners[0]
    placed = StoredCall("rtc_2", "key_1", "cs_" + "a" * 20, "gpt-realtime-mini", "azure", DAY2)
    assert await store.claim_call(placed) == placed
    later = StoredCall("rtc_2", "key_2", None, "gpt-realtime", "openai", DAY2 + 1)
    assert await store.claim_call(later) == placed


async def test_an_existing_database_gets_the_calls_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = SqlStore(url)
    await store.init()

    def as_before() -> Query[None]:
        # As a database made before calls had owners.
        yield Statement("DROP TABLE calls")

    store = await reopened(store, as_before(), url)
    await store.create_key("key_a", "alice", "rtg_abcd1234", "h" * 64, DAY1)
    call = StoredCall("rtc_1", "key_a", None, "gpt-realtime", "openai", DAY1)
    assert await store.claim_call(call) == call
    await store.close()


async def test_the_overview_counts_a_session_on_the_utc_day_it_started(store: SqlStore) -> None:
    # Either side of a UTC midnight by less than half a second: PostgreSQL's integer cast
    # rounds where SQLite's truncates, and the day must be the floor in both.
    midnight = DAY2 - DAY2 % 86_400
    await store.create_key("key_a", "alice", "p", "a" * 64, DAY1)
    await store.write(
        [
            SessionOpen(f"rs_{i}", "key_a", "m", "openai", None, midnight + offset)
            for i, offset in enumerate((-0.7, -0.3, 0.0, 0.3))
        ]
    )
    overview = await store.overview("2000-01-01", 0.0)
    assert {d.day: d.sessions for d in overview.days} == {
        utc_day(midnight - 1): 2,
        utc_day(midnight): 2,
    }


#: A database the store made while it was built on SQLAlchemy Core (a row in every table).
BEFORE_NOSA = Path(__file__).with_name("store_before_nosa.sql")


def sqlite_schema(path: Path) -> dict[str, object]:
    """What a SQLite file's tables are: columns (name, type, not null, default, primary key),
    indexes (name, unique, columns) and foreign keys, by table."""
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        schema: dict[str, object] = {}
        for t in tables:
            indexes = {
                (name, unique, tuple(c[2] for c in db.execute(f"PRAGMA index_info('{name}')")))
                for _, name, unique, *_ in db.execute(f"PRAGMA index_list('{t}')")
            }
            schema[t] = (
                [r[1:] for r in db.execute(f"PRAGMA table_info('{t}')")],
                indexes,
                {r[2:5] for r in db.execute(f"PRAGMA foreign_key_list('{t}')")},
            )
    db.close()
    return schema


async def test_a_database_made_on_sqlalchemy_opens_as_it_was_and_as_a_new_one_is(
    tmp_path: Path,
) -> None:
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as db:
        db.executescript(BEFORE_NOSA.read_text())
    db.close()
    store = SqlStore(f"sqlite:///{old}")
    await store.init()
    key = await store.get_key("key_a")
    assert key is not None and key.policy_json == '{"max_sessions": 2}'
    (session,) = await store.recent_sessions()
    assert (session.usage.text_in, session.usage.audio_out, session.charged_nanos) == (5, 7, 60)
    assert (session.close_code, session.ended_at) == (1000, DAY1 + 30)
    (said,) = await store.session_transcript("rs_1")
    assert said.text == "hello"
    found = await store.client_secret_by_hash("b" * 64)
    assert found is not None and found[1] == key
    owner = await store.call_owner("rtc_1")
    assert owner is not None and owner.key_id == "key_a"
    assert await store.console_session("c" * 64, DAY1 + 1)
    # The old row's id still keeps a replay of its record out; new rows number on from it.
    (old_record,) = await store.session_usage("rs_1")
    assert (await store.spend("key_a", "2027-01-15", "2027-01-01"))[2] == 60  # filled in
    await store.write([old_record, rec("key_a", "gpt-realtime", DAY1 + 2, 3)])
    assert [r.usage.text_in for r in await store.session_usage("rs_1")] == [5, 3]
    assert (await store.spend("key_a", "2027-01-15", "2027-01-01"))[2] == 60 + 36
    await store.close()

    new = tmp_path / "new.db"
    store = SqlStore(f"sqlite:///{new}")
    await store.init()
    await store.close()
    assert sqlite_schema(old) == sqlite_schema(new)


def test_a_database_is_named_by_its_place_never_its_credentials() -> None:
    url = "postgresql+asyncpg://rtgate:s3cret-pw@db.internal:5433/gateway"
    assert database_place(url) == "postgresql+asyncpg://db.internal:5433/gateway"
    assert database_place("sqlite:////var/lib/rtgate/rtgate.db") == "/var/lib/rtgate/rtgate.db"
    assert database_place("sqlite:///rtgate.db") == "rtgate.db"


async def test_a_database_that_cannot_be_opened_is_named_in_the_error(tmp_path: Path) -> None:
    # A file inside a file: SQLite cannot create it.
    (tmp_path / "plain").write_text("")
    store = SqlStore(f"sqlite:///{tmp_path / 'plain' / 'rtgate.db'}")
    with pytest.raises(StoreError) as raised:
        await store.init()
    assert raised.value.message.startswith("cannot open the database: ")
    assert raised.value.message.endswith(f"({tmp_path / 'plain' / 'rtgate.db'})")
    await store.close()


def opened(sid: str, t: float, instance: str | None) -> SessionOpen:
    return SessionOpen(sid, "key_a", "gpt-realtime", "openai", None, t, instance)


async def test_the_open_sessions_of_an_instance_gone_silent_end_as_lost(store: SqlStore) -> None:
    """An instance killed with sessions open never writes their ends: once it has not beaten
    for four beats, another's sweep ends them (1006, gateway_instance_lost) at the last moment
    each is known to have been relayed, and forgets the instance (rtgate.lost_sessions)."""
    clock = ManualClock(DAY1)
    await store.create_key("key_a", "alice", "p", "a" * 64, DAY1)
    await store.beat("inst_dead", DAY1)
    await store.beat("inst_alive", DAY1)
    await store.write(
        [
            opened("rs_used", DAY1 - 50, "inst_dead"),
            rec("key_a", "gpt-realtime", DAY1 + 7, 5, session="rs_used"),  # after its last beat
            opened("rs_quiet", DAY1 - 50, "inst_dead"),
            opened("rs_after_beat", DAY1 + 3, "inst_dead"),
            opened("rs_closed", DAY1 - 40, "inst_dead"),
            SessionClose("rs_closed", DAY1 - 20, 1000, "", "client"),
            opened("rs_alive", DAY1 - 30, "inst_alive"),
            opened("rs_unknown", DAY1 - 10, "inst_never_beat"),
            opened("rs_legacy_old", DAY1 - 4000, None),
            opened("rs_legacy_young", DAY1 - 100, None),
        ]
    )
    clock.advance(3 * 20)  # three beats missed: not yet gone
    await store.beat("inst_alive", clock.now())
    # Only legacy_old: an unknown instance's session is given four beats from its start too
    # (its instance may have been forgotten while cut off, and beat again since).
    assert await sweep(store, clock, every=20, longest=3600) == 1
    clock.advance(2 * 20 + 1)
    await store.beat("inst_alive", clock.now())
    assert await sweep(store, clock, every=20, longest=3600) == 4
    assert await sweep(store, clock, every=20, longest=3600) == 0

    by_id = {s.id: s for s in await store.recent_sessions()}
    lost = {
        sid: s.ended_at
        for sid, s in by_id.items()
        if (s.close_code, s.close_reason, s.closed_by) == (1006, LOST_REASON, "gateway")
    }
    assert lost == {
        "rs_used": DAY1 + 7,  # its last usage record
        "rs_quiet": DAY1,  # its instance's last beat
        "rs_after_beat": DAY1 + 3,  # opened after that beat: its start
        "rs_unknown": DAY1 - 10,
        "rs_legacy_old": DAY1 - 4000,
    }
    assert by_id["rs_closed"].close_code == 1000 and by_id["rs_closed"].ended_at == DAY1 - 20
    assert by_id["rs_alive"].ended_at is None and by_id["rs_legacy_young"].ended_at is None
    # The dead instance is forgotten; the live one is not.
    rows = await store.db.run(fetch("SELECT id FROM instances"))
    assert [r[0] for r in rows] == ["inst_alive"]

    # The sweep was wrong about a session still relayed (its instance cut off from the
    # database that long): its real end, when it comes, replaces the sweep's.
    await store.write([SessionClose("rs_quiet", DAY1 + 500, 1000, "", "client")])
    (quiet,) = await store.recent_sessions(session_id="rs_quiet")
    assert (quiet.ended_at, quiet.close_code, quiet.closed_by) == (DAY1 + 500, 1000, "client")


async def test_an_instance_that_left_is_forgotten_and_beats_again_if_it_serves_on(
    store: SqlStore,
) -> None:
    await store.beat("inst_a", DAY1)
    await store.beat("inst_a", DAY1 + 20)
    rows = await store.db.run(fetch("SELECT id, started_at, seen_at FROM instances"))
    assert [tuple(r) for r in rows] == [("inst_a", DAY1, DAY1 + 20)]
    await store.leave("inst_a")
    assert await store.db.run(fetch("SELECT id FROM instances")) == []
    await store.beat("inst_a", DAY1 + 40)  # swept while cut off, then heard again
    assert len(await store.db.run(fetch("SELECT id FROM instances"))) == 1


async def test_a_spilled_open_from_before_instances_were_named_is_read(store: SqlStore) -> None:
    line = b'{"entry":"open","id":"rs_1","key_id":"key_a","model":"m","upstream":"openai",'
    line += b'"intent":null,"started_at":1800000000.0}'
    assert from_line(line) == SessionOpen("rs_1", "key_a", "m", "openai", None, DAY1)
    assert from_line(to_line(opened("rs_2", DAY1, "inst_a"))) == opened("rs_2", DAY1, "inst_a")
    # A line from a later rtgate, with a member this one does not know, is replayed.
    later = line.replace(b"}", b',"added_later":1}')
    assert from_line(later) == SessionOpen("rs_1", "key_a", "m", "openai", None, DAY1)


def test_a_batchs_closes_are_written_in_id_order_as_the_sweep_writes_them() -> None:
    """Two transactions updating the same session rows in different orders deadlock on
    PostgreSQL (a review reproduced it between a sweep and a spill's closes)."""
    closes = [SessionClose(sid, DAY1, 1000, "", "client") for sid in ("rs_b", "rs_c", "rs_a")]
    assert [r["b_id"] for r in close_rows(closes)] == ["rs_a", "rs_b", "rs_c"]


async def test_a_sessions_table_from_before_instances_is_migrated(db_url: str) -> None:
    """A database made before sessions named their instance: its open sessions are legacy
    rows (no instance), ended once older than the longest session, and new ones name theirs."""
    store = SqlStore(db_url)
    await store.init()
    await store.create_key("key_a", "alice", "p", "a" * 64, DAY1)

    def as_before() -> Query[None]:
        yield Statement("DROP INDEX ix_sessions_open_instance")
        yield Statement("ALTER TABLE sessions DROP COLUMN instance")
        yield Statement("DROP TABLE instances")
        yield Statement(
            "INSERT INTO sessions (id, key_id, model, upstream, started_at)"
            f" VALUES ('rs_old', 'key_a', 'gpt-realtime', 'openai', {DAY1 - 7200})"
        )

    store = await reopened(store, as_before(), db_url)
    try:
        assert "instance" in await store.db.run(columns(store.db.dialect, "sessions"))
        await store.beat("inst_a", DAY1)
        await store.write([opened("rs_new", DAY1, "inst_a")])
        assert await sweep(store, ManualClock(DAY1), every=20, longest=3600) == 1
        (old,) = await store.recent_sessions(session_id="rs_old")
        (new,) = await store.recent_sessions(session_id="rs_new")
    finally:
        await store.close()
    assert (old.ended_at, old.close_reason) == (DAY1 - 7200, LOST_REASON)
    assert new.ended_at is None


async def test_a_timeout_says_which_wait_ran_out(tmp_path: Path) -> None:
    """A newcomer's find: a report the driver gave up on in 3 s (no connection within the
    store's timeout) said "no answer within 60 s", its own deadline."""
    import asyncio

    from rtgate.store.sql import _bounded

    class Stalled(SqlStore):
        @_bounded("connect", report=True)
        async def refused_at_connect(self) -> None:
            raise TimeoutError  # as asyncpg's connect timeout raises it

        @_bounded("wait")
        async def never_answers(self) -> None:
            await asyncio.sleep(10)

    s = Stalled(f"sqlite:///{tmp_path / 'x.db'}", timeout=0.2)
    await s.init()
    try:
        with pytest.raises(StoreError, match=r"^cannot connect: no connection to the database "):
            await s.refused_at_connect()
        with pytest.raises(StoreError, match=r"^cannot wait: no answer within 0\.2 s$"):
            await s.never_answers()
    finally:
        await s.close()
