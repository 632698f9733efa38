"""The ledger's batches to a SQLite database, each in one hop to a writer thread of its own.

Why not through SQLAlchemy, like every other call: a batch there cost the event loop ~400 µs of
CPU when it went through SQLAlchemy's asyncio extension and aiosqlite (docs/performance.md 9.1),
for the pool's checkout, the transaction, the statement's execution context and a round trip
to aiosqlite's thread per step, while the relay's frames waited; in the store's own thread
(``connections.SqliteThread``) the loop would pay one future, but SQLAlchemy's execution work
would still hold the GIL the relay needs. Here the batch goes to one thread as rows, in one
call; the thread runs the same statements (compiled once from ``schema.py``'s tables by
SQLAlchemy's SQLite dialect, so the SQL has one source) with the standard library's
``executemany``, in one transaction. What the event loop pays is one future.

It is the same database file, through a second connection with the pragmas of the store's
(``connections.py``): WAL, ``synchronous=NORMAL``, foreign keys, and the store's timeout as SQLite's
busy timeout, so a write waits for the pool's rare writes (keys, secrets, calls) the way two
processes sharing the file do. Entries keep their order: one thread, batches in turn.
A write the caller stopped waiting for (``rtgate.deadline``) still runs to its end in the
thread, like a late commit; ``Store.write`` is idempotent, so nothing lands twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.dialects import sqlite
from sqlalchemy.sql import ClauseElement

#: One statement and its rows, in the order they must run.
Step = tuple[ClauseElement, list[dict[str, Any]]]
#: Compiled statements and their rows: what the thread runs, in one transaction.
_Work = list[tuple[str, list[dict[str, Any]]]]

_DIALECT = sqlite.dialect(paramstyle="named")


class SqliteWriter:
    """Writes batches of rows to the SQLite file at ``path`` from one thread of its own;
    ``failure`` maps what ``sqlite3`` (or a value it cannot bind) raises to the caller's error."""

    def __init__(self, path: str, busy_ms: int, failure: Callable[[Exception], Exception]) -> None:
        self._path = path
        self._busy_ms = busy_ms
        self._failure = failure
        #: Batches for the thread, each with its future and that future's loop; None stops it.
        self._queue: queue.SimpleQueue[
            tuple[_Work, asyncio.Future[None], asyncio.AbstractEventLoop] | None
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        #: The loop of the last batch (``asyncio.get_running_loop`` costs a system call per
        #: call on Python 3.11; a future knows its loop for free).
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Opened in the writer thread, on its first batch (sqlite3 connections stay in the
        #: thread that made them).
        self._conn: sqlite3.Connection | None = None
        #: Each statement compiled once, for the row keys it was given (the caller keeps its
        #: statements for the writer's life, so an ``id`` names one statement).
        self._sql: dict[tuple[int, tuple[str, ...]], str] = {}

    def write(self, steps: Sequence[Step]) -> asyncio.Future[None]:
        """Run ``steps`` in one transaction in the writer thread: a future, done once they are
        committed (its exception ``failure``'s, if not). Not a coroutine: the caller waits on
        the future with its deadline, and no task runs per batch. Cancelling the future stops
        the wait, not the write."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        work = [(self._compiled(stmt, rows), rows) for stmt, rows in steps if rows]
        if not work:
            fut.set_result(None)
            return fut
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._serve, name="rtgate-sqlite-writer", daemon=True
            )
            self._thread.start()
        self._queue.put((work, fut, loop))
        return fut

    def _compiled(self, stmt: ClauseElement, rows: list[dict[str, Any]]) -> str:
        keys = tuple(rows[0])
        sql = self._sql.get((id(stmt), keys))
        if sql is None:
            sql = str(stmt.compile(dialect=_DIALECT, column_keys=list(keys)))
            self._sql[(id(stmt), keys)] = sql
        return sql

    # -- the writer thread ----------------------------------------------------------------------
    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            work, fut, loop = item
            err: Exception | None = None
            try:
                self._run(work)
            except Exception as exc:  # noqa: BLE001 -- the caller's to handle, mapped
                err = self._failure(exc)
            # A closed loop raises RuntimeError: nobody waits for this batch any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, fut, err)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _run(self, work: _Work) -> None:
        conn = self._conn
        if conn is None:
            conn = self._conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in work:
                conn.executemany(sql, rows)
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level None: the transaction is the explicit BEGIN IMMEDIATE above, which
        # takes the write lock first (waiting up to the busy timeout), never half-way through.
        conn = sqlite3.connect(
            self._path, timeout=self._busy_ms / 1000, isolation_level=None, check_same_thread=True
        )
        for pragma in _PRAGMAS:
            conn.execute(pragma)
        conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        return conn

    async def close(self) -> None:
        """Close the connection in its thread once the batches queued before it are done."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(thread.join)


def _settle(fut: asyncio.Future[None], err: Exception | None) -> None:
    # A future cancelled at its caller's deadline takes no outcome: its write went on anyway.
    if fut.done():
        return
    if err is None:
        fut.set_result(None)
    else:
        fut.set_exception(err)


#: The store's connection pragmas (``pragmas``) but the busy timeout.
_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA foreign_keys=ON")


def pragmas(busy_ms: int) -> Callable[[Any, Any], None]:
    """SQLAlchemy's ``connect`` listener for the store's connection: the writer's pragmas."""

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        for pragma in _PRAGMAS:
            cur.execute(pragma)
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.close()

    return on_connect
