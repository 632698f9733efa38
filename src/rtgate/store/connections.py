"""How the SQL store reaches its database without a query builder: a query is written once, as
SQL text both databases accept, inside a generator (``Query``) that yields its statements and
is sent each one's rows; one of two runners drives it.

* ``SqliteThread``: the standard library's ``sqlite3``, in a thread of the store's own. One
  thread, one connection: SQLite has one writer, and several connections would only queue on
  its file lock; calls run in the order they were made.
* ``AsyncpgPool``: PostgreSQL through asyncpg and its pool, the generator driven on the event
  loop.

Why a generator and not a function of a connection: SQLite's calls run in a thread and
asyncpg's on the loop, so a function of a connection would be written twice (one blocking, one
awaiting); a generator is the query's logic without its I/O (the sans-I/O shape of the rest of
rtgate), and each runner only performs what it yields. Why not SQLAlchemy Core, as before: it
cost a serving process ~10 MB of its fixed footprint (docs/performance.md 9.8) to build strings
that can be written once by hand in the subset both databases share (``ON CONFLICT``,
``RETURNING``, ``CAST``, ``CASE``, ``COALESCE``).

Statements name their parameters ``:name`` (``sqlite3``'s named style); for asyncpg each
statement is translated once to ``$n`` (``positional``). ``write=True`` runs the query in one
transaction, committed when it returns and rolled back if it raises. A call the store stops
waiting for (``rtgate.deadline``) runs on to its end in SQLite's thread, bounded by the busy
timeout, like a late commit; on PostgreSQL its connection is closed, not returned to the pool,
so a stalled database does not hold pool slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sqlite3
from collections.abc import Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote

from rtgate.gil import Lender
from rtgate.store.sqlite_writer import open_sqlite

T = TypeVar("T")


class Row(Protocol):
    """A row as both drivers return it (``sqlite3.Row``, ``asyncpg.Record``): by column name
    or position."""

    def __getitem__(self, key: int | str, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement, its parameters named ``:name``; ``many`` runs it once per mapping
    (``executemany``) and answers no rows."""

    sql: str
    params: Mapping[str, Any] = field(default_factory=dict)
    many: Sequence[Mapping[str, Any]] | None = None


#: A query: yields its statements, is sent each one's rows, returns its result.
Query = Generator[Statement, list[Row], T]


def fetch(sql: str, **params: Any) -> Query[list[Row]]:
    """One statement's rows."""
    return (yield Statement(sql, params))


def first(sql: str, **params: Any) -> Query[Row | None]:
    """One statement's first row, None if it has none."""
    rows = yield Statement(sql, params)
    return rows[0] if rows else None


class Database(Protocol):
    #: ``sqlite`` or ``postgresql``: the one thing the DDL differs in (``schema.py``).
    dialect: str

    async def run(self, query: Query[T], *, write: bool = False) -> T:
        """``query``'s result; with ``write``, in one committed transaction."""
        ...

    async def close(self) -> None: ...


class DatabaseError(Exception):
    """What the PostgreSQL driver raised (its error is the ``__cause__``, with its SQLSTATE):
    the store maps it as it maps ``sqlite3.Error``, without importing asyncpg on SQLite."""


def sqlite_path(url: str) -> str | None:
    """The file a SQLite URL names (``sqlite:///path``, or ``sqlite+aiosqlite:///path``, the
    default before SQLite had a thread of its own); None for another database."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0] != "sqlite":
        return None
    if rest and not rest.startswith("/"):
        raise ValueError("a SQLite URL names a file: sqlite:///relative or sqlite:////absolute")
    path = unquote(rest[1:].partition("?")[0])
    return path or ":memory:"


def postgres_dsn(url: str) -> str:
    """asyncpg's DSN for a PostgreSQL URL: ``postgresql+asyncpg://`` (SQLAlchemy's form, still
    accepted) loses its driver name."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        raise ValueError("database_url: expected sqlite:///... or postgresql://...")
    return f"postgresql://{rest}"


_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@functools.lru_cache(maxsize=512)
def positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """``sql`` with its ``:name`` parameters as asyncpg's ``$1, $2, ...`` (a name used twice is
    one parameter), and the names in that order."""
    names: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m[1] not in names:
            names.append(m[1])
        return f"${names.index(m[1]) + 1}"

    return _NAMED.sub(number, sql), tuple(names)


class SqliteThread:
    """A SQLite file through ``sqlite3``, every call in one thread of its own."""

    dialect = "sqlite"

    def __init__(self, path: str, *, timeout: float) -> None:
        #: The file's path (an in-memory database cannot be shared with the ledger's writer).
        self.path = path
        self._busy_ms = int(timeout * 1000)
        #: Opened, used and closed in the one thread below, never in the event loop's.
        self._conn: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtgate-sqlite")
        #: A busy loop starves this thread of the GIL; it lends it (``rtgate/gil.py``).
        self._lender = Lender()

    async def run(self, query: Query[T], *, write: bool = False) -> T:
        return await self._lender.run(
            asyncio.get_running_loop(), self._pool, self._call, query, write
        )

    def _call(self, query: Query[T], write: bool) -> T:
        conn = self._conn
        if conn is None:
            conn = self._conn = open_sqlite(self.path, self._busy_ms)
            conn.row_factory = sqlite3.Row
        if not write:
            return _drive_sqlite(conn, query)
        # IMMEDIATE: the write lock first (within the busy timeout), never half-way through.
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = _drive_sqlite(conn, query)
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
        return result

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        """Close the connection in its thread once the calls queued before it are done."""
        await asyncio.get_running_loop().run_in_executor(self._pool, self._close)
        self._pool.shutdown(wait=False)


def _step(query: Query[T], rows: list[Any] | None) -> tuple[Statement | None, T | None]:
    """One step of ``query`` for either runner: its next statement, given the last one's rows
    (None before the first), or (None, its result) once it has returned."""
    try:
        return (next(query) if rows is None else query.send(rows)), None
    except StopIteration as done:
        return None, done.value


def _drive_sqlite(conn: sqlite3.Connection, query: Query[T]) -> T:
    rows: list[Any] | None = None
    while True:
        stmt, result = _step(query, rows)
        if stmt is None:
            return result  # type: ignore[return-value]
        if stmt.many is not None:
            conn.executemany(stmt.sql, stmt.many)
            rows = []
        else:
            rows = conn.execute(stmt.sql, stmt.params).fetchall()


class AsyncpgPool:
    """PostgreSQL through asyncpg's pool, opened on the first call (asyncpg is imported then: a
    gateway on SQLite never loads it)."""

    dialect = "postgresql"

    #: Connections kept and opened at most (as SQLAlchemy's pool had: 10 kept, 20 more).
    MAX_SIZE = 30

    def __init__(self, url: str, *, timeout: float, command_timeout: float) -> None:
        self._dsn = postgres_dsn(url)
        self._timeout = timeout
        self._command_timeout = command_timeout
        self._pool: Any = None
        self._opening = asyncio.Lock()

    async def _open(self) -> Any:
        async with self._opening:
            if self._pool is None:
                import asyncpg

                # asyncpg's own bounds: ``timeout`` the connection handshake, and
                # ``command_timeout`` any one statement (a report may take that long; the
                # relay's calls stop waiting much sooner). min_size 0: nothing is connected
                # before the first call. ``reset``: a connection comes back with its
                # transaction ended and no session state (the store sets none), so the reset
                # query asyncpg would send on every release is skipped.
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=0,
                    max_size=self.MAX_SIZE,
                    timeout=self._timeout,
                    command_timeout=self._command_timeout,
                    reset=_nothing_to_reset,
                )
        return self._pool

    async def run(self, query: Query[T], *, write: bool = False) -> T:
        import asyncpg

        try:
            pool = self._pool or await self._open()
            # The pool's checkout wait is the store's timeout too.
            conn = await pool.acquire(timeout=self._timeout)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Refused as it connects: no such database or role, a wrong password (a
            # newcomer's find: a traceback, where an unreachable server gets one line).
            raise DatabaseError(f"{type(exc).__name__}: {exc}") from exc
        try:
            return await self._run(conn, query, write)
        finally:
            # A terminated connection is dropped here at once, its slot freed for a new one.
            await pool.release(conn)

    async def _run(self, conn: Any, query: Query[T], write: bool) -> T:
        import asyncpg

        try:
            if write:
                await conn.execute("BEGIN")
            result = await _drive_asyncpg(conn, query)
            if write:
                await conn.execute("COMMIT")
            return result
        except (asyncpg.PostgresError, asyncpg.DataError) as exc:
            # The server (or asyncpg, encoding an argument) refused: the connection is sound,
            # unless the server is going away (a restart or a failover ends the backend,
            # SQLSTATE 57P01): its ROLLBACK then failed with the driver's own error, past this
            # mapping (an audit's find), so the connection is closed instead.
            if write:
                await _roll_back_or_close(conn)
            raise DatabaseError(f"{type(exc).__name__}: {exc}") from exc
        except BaseException as exc:
            # Cancelled at a deadline, timed out or cut off: closed, not returned, so a stalled
            # database holds no pool slot (a graceful close would wait on it too).
            _terminate(conn)
            if isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError):
                raise DatabaseError(f"{type(exc).__name__}: {exc}") from exc
            raise

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


async def _roll_back_or_close(conn: Any) -> None:
    """End a refused write's transaction, or the connection if it cannot be (closed under it,
    cut off, cancelled at a deadline: then the cancellation goes on)."""
    try:
        if conn.is_closed():
            raise ConnectionError("the connection is closed")
        await conn.execute("ROLLBACK")
    except BaseException as exc:
        _terminate(conn)
        if not isinstance(exc, Exception):
            raise


def _terminate(conn: Any) -> None:
    """Close a pool connection at once; one its server ended is detached from the pool already
    (asyncpg then refuses every call on it), and there is nothing left to close."""
    with contextlib.suppress(Exception):
        conn.terminate()


async def _drive_asyncpg(conn: Any, query: Query[T]) -> T:
    rows: list[Any] | None = None
    while True:
        stmt, result = _step(query, rows)
        if stmt is None:
            return result  # type: ignore[return-value]
        sql, names = positional(stmt.sql)
        if stmt.many is not None:
            await conn.executemany(sql, [[row[n] for n in names] for row in stmt.many])
            rows = []
        else:
            rows = await conn.fetch(sql, *(stmt.params[n] for n in names))


async def _nothing_to_reset(conn: Any) -> None:
    return None


def connect(url: str, *, timeout: float, command_timeout: float) -> Database:
    """The runner for ``url``: SQLite's thread, or PostgreSQL's pool."""
    path = sqlite_path(url)
    if path is not None:
        return SqliteThread(path, timeout=timeout)
    return AsyncpgPool(url, timeout=timeout, command_timeout=command_timeout)


def _conforms(a: SqliteThread, b: AsyncpgPool) -> tuple[Database, Database]:
    return a, b  # mypy checks that both keep to the protocol
