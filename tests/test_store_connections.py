"""The store's runners and what they parse: database URLs in every form a config may hold,
``:name`` parameters as asyncpg numbers them, and PostgreSQL's pool when a call is abandoned."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from urllib.parse import SplitResult, urlsplit, urlunsplit

import pytest

from rtgate.store.connections import (
    AsyncpgPool,
    connect,
    fetch,
    positional,
    postgres_dsn,
    sqlite_path,
)
from rtgate.store.port import StoreError
from rtgate.store.sql import SqlStore


def test_sqlite_urls_name_a_file_in_each_form_a_config_may_hold() -> None:
    assert sqlite_path("sqlite:///rtgate.db") == "rtgate.db"
    assert sqlite_path("sqlite:////var/lib/rtgate/rtgate.db") == "/var/lib/rtgate/rtgate.db"
    # The default before SQLite ran in a thread of the store's own.
    assert sqlite_path("sqlite+aiosqlite:////tmp/a%20b.db") == "/tmp/a b.db"
    assert sqlite_path("sqlite://") == ":memory:"
    assert sqlite_path("postgresql+asyncpg://u@h/db") is None
    with pytest.raises(ValueError, match="names a file"):
        sqlite_path("sqlite://host/rtgate.db")


def test_postgresql_urls_lose_only_their_driver_name() -> None:
    assert postgres_dsn("postgresql+asyncpg://u:p@h:5433/db?ssl=require") == (
        "postgresql://u:p@h:5433/db?ssl=require"
    )
    assert postgres_dsn("postgresql://u@h/db") == "postgresql://u@h/db"
    assert postgres_dsn("postgres://u@h/db") == "postgresql://u@h/db"
    with pytest.raises(ValueError, match="database_url"):
        postgres_dsn("mysql://u@h/db")


def test_named_parameters_are_numbered_once_each_for_asyncpg() -> None:
    sql, names = positional(
        "SELECT CAST(a AS BIGINT) FROM t WHERE b = :day OR (c < :anchor AND d = :day) LIMIT :n"
    )
    assert sql == "SELECT CAST(a AS BIGINT) FROM t WHERE b = $1 OR (c < $2 AND d = $1) LIMIT $3"
    assert names == ("day", "anchor", "n")
    assert positional("SELECT 1") == ("SELECT 1", ())


@pytest.mark.postgres
async def test_a_postgresql_call_abandoned_mid_statement_gives_its_pool_slot_back_at_once() -> None:
    db = connect(os.environ["RTGATE_TEST_DATABASE_URL"], timeout=5.0, command_timeout=30.0)
    assert isinstance(db, AsyncpgPool)
    try:
        assert [tuple(r) for r in await db.run(fetch("SELECT 1"))] == [(1,)]
        pool = db._pool
        assert (pool.get_size(), pool.get_idle_size()) == (1, 1)
        stalled = asyncio.ensure_future(db.run(fetch("SELECT pg_sleep(20)"), write=True))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        stalled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stalled
        # Closed, not rolled back over the wire nor returned: no wait on the database.
        assert time.monotonic() - started < 0.5
        assert pool.get_size() == 0
        assert [tuple(r) for r in await db.run(fetch("SELECT 2"))] == [(2,)]
    finally:
        await db.close()


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("change", "refused"),
    [
        (lambda u: u._replace(path="/rtgate_no_such_db"), "InvalidCatalogNameError"),
        (
            lambda u: u._replace(netloc=u.netloc.replace(u.username or "", "rtgate_no_such_role")),
            "InvalidAuthorizationSpecificationError",
        ),
    ],
)
async def test_a_database_or_role_that_does_not_exist_is_one_line_not_a_traceback(
    change: Callable[[SplitResult], SplitResult], refused: str
) -> None:
    """A newcomer's find: asyncpg's error as it connects escaped as a traceback, where an
    unreachable server was one line; now both are the store's error, naming the place."""
    url = urlunsplit(change(urlsplit(os.environ["RTGATE_TEST_DATABASE_URL"])))
    store = SqlStore(url, timeout=5.0)
    try:
        with pytest.raises(StoreError, match=f"cannot open the database: {refused}"):
            await store.init()
    finally:
        await store.close()


@pytest.mark.postgres
async def test_a_write_cut_off_by_a_server_restart_is_the_stores_error() -> None:
    """An audit's find: a backend ended under a write (SQLSTATE 57P01, what a restart or a
    failover sends every backend) failed its ROLLBACK with asyncpg's own InterfaceError, past
    the store's mapping: callers that end a call on ``StoreError`` left it running."""
    import asyncpg

    url = os.environ["RTGATE_TEST_DATABASE_URL"]
    store = SqlStore(url, timeout=5.0)
    await store.init()
    other = await asyncpg.connect(postgres_dsn(url))
    try:
        locked = other.transaction()
        await locked.start()
        await other.execute("LOCK TABLE instances IN ACCESS EXCLUSIVE MODE")
        beat = asyncio.ensure_future(store.beat("inst_restart", 1.0))
        ended = 0
        for _ in range(200):
            await asyncio.sleep(0.02)
            ended = await other.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                " AND pid <> pg_backend_pid()"
            )
            if ended:
                break
        assert ended, "the beat never waited on the lock"
        with pytest.raises(StoreError):
            await asyncio.wait_for(beat, 5)
        await locked.rollback()
        # The store goes on: the next write takes a new connection.
        await store.beat("inst_restart", 2.0)
    finally:
        await other.close()
        await store.close()
