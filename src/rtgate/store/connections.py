"""How the SQL store reaches its database: a query is a plain function of a SQLAlchemy Core
``Connection``, and one of two runners gives it one.

* ``SqliteThread``: the standard library's ``sqlite3`` under SQLAlchemy's synchronous engine, in
  a thread of the store's own. Why not SQLAlchemy's asyncio extension over aiosqlite, as before:
  the extension imports the ORM and greenlet, which an idle gateway carried for nothing (~8 MB of
  its fixed footprint, docs/performance.md "Memory"), and aiosqlite itself runs every call in a
  thread anyway. One thread, one pooled connection: SQLite has one writer, and several
  connections would only queue on its file lock; calls run in the order they were made.
* ``AsyncpgEngine``: PostgreSQL through asyncpg on SQLAlchemy's async engine, the query run
  with ``AsyncConnection.run_sync`` (the same function, a connection in a greenlet).

Either way the query-building has one copy (``sql.py``), and ``write=True`` runs it in one
transaction, committed when the function returns and rolled back if it raises. A call the store
stops waiting for (``rtgate.deadline``) runs on to its end in SQLite's thread, bounded by the
busy timeout, like a late commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol, TypeVar

from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import URL, make_url

from rtgate.store.sqlite_writer import pragmas

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")

#: A query: what it returns, given a connection (``sql.py`` builds them).
Query = Callable[[Connection], T]


class Database(Protocol):
    #: SQLAlchemy's name for the dialect: ``sqlite`` or ``postgresql``.
    dialect: str

    async def run(self, query: Query[T], *, write: bool = False) -> T:
        """``query``'s result on a connection; with ``write``, in one committed transaction."""
        ...

    async def close(self) -> None: ...


def sqlite_url(url: str) -> URL | None:
    """The standard library driver's URL for a SQLite URL (``sqlite+aiosqlite://`` included, the
    default before it had a thread of its own); None for another database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    return parsed.set(drivername="sqlite")


class SqliteThread:
    """A SQLite file through ``sqlite3``, every call in one thread of its own."""

    dialect = "sqlite"

    def __init__(self, url: URL, *, timeout: float, echo: bool = False) -> None:
        busy_ms = int(timeout * 1000)
        #: The file's path (an in-memory database cannot be shared with the ledger's writer).
        self.path = str(url.database)
        self.engine = create_engine(
            url,
            echo=echo,
            pool_size=1,
            max_overflow=0,
            pool_timeout=60,
            # Opened, used and closed in the one thread below, never in the event loop's.
            connect_args={"timeout": timeout},
        )
        event.listen(self.engine, "connect", pragmas(busy_ms))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtgate-sqlite")

    async def run(self, query: Query[T], *, write: bool = False) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._call, query, write)

    def _call(self, query: Query[T], write: bool) -> T:
        with self.engine.begin() if write else self.engine.connect() as conn:
            return query(conn)

    async def close(self) -> None:
        """Close the connection in its thread once the calls queued before it are done."""
        await asyncio.get_running_loop().run_in_executor(self._pool, self.engine.dispose)
        self._pool.shutdown(wait=False)


class AsyncpgEngine:
    """PostgreSQL through asyncpg, on SQLAlchemy's async engine and its pool."""

    dialect = "postgresql"

    def __init__(self, url: str, *, timeout: float, command_timeout: float, echo: bool) -> None:
        # Imported here: a gateway on SQLite never loads the asyncio extension, the ORM it
        # imports, greenlet or asyncpg.
        from sqlalchemy.ext.asyncio import create_async_engine

        self.engine: AsyncEngine = create_async_engine(
            url,
            echo=echo,
            pool_size=10,
            max_overflow=20,
            pool_pre_ping=True,
            pool_timeout=timeout,
            # asyncpg's own bounds: the connection handshake, and any one statement (a report
            # may take that long; the relay's calls stop waiting much sooner).
            connect_args={"timeout": timeout, "command_timeout": command_timeout},
        )

    async def run(self, query: Query[T], *, write: bool = False) -> T:
        # A cancelled call's connection is closed by SQLAlchemy on the way out (up to 2 s for
        # asyncpg, then a hard close): a stalled one does not keep its pool slot.
        async with self.engine.begin() if write else self.engine.connect() as conn:
            return await conn.run_sync(query)

    async def close(self) -> None:
        await self.engine.dispose()


def connect(url: str, *, timeout: float, command_timeout: float, echo: bool = False) -> Database:
    """The runner for ``url``: SQLite's thread, or PostgreSQL's async engine."""
    sqlite = sqlite_url(url)
    if sqlite is not None:
        return SqliteThread(sqlite, timeout=timeout, echo=echo)
    return AsyncpgEngine(url, timeout=timeout, command_timeout=command_timeout, echo=echo)


def _conforms(a: SqliteThread, b: AsyncpgEngine) -> tuple[Database, Database]:
    return a, b  # mypy checks that both keep to the protocol
