"""The ledger's batches to a SQLite database, each in one hop to a writer thread of its own.

Why not through the store's own thread (``connections.SqliteThread``) like every other call: a
batch there is a query driven step by step, while here it goes to the thread as rows, in one
call, and the thread runs the statements (``rows.py``: the same text PostgreSQL runs) with the
standard library's ``executemany``, in one transaction. What the event loop pays is one future
(docs/performance.md 9.1: through SQLAlchemy's asyncio extension and aiosqlite a batch cost it
~400 µs of CPU while the relay's frames waited).

It is the same database file, through a second connection with the pragmas of the store's
(``open_sqlite``): WAL, ``synchronous=NORMAL``, foreign keys, and the store's timeout as SQLite's
busy timeout, so a write waits for the store's rare writes (keys, secrets, calls) the way two
processes sharing the file do. Entries keep their order: one thread, batches in turn.
A write the caller stopped waiting for (``rtgate.deadline``) still runs to its end in the
thread, like a late commit; ``Store.write`` is idempotent, so nothing lands twice.

Checkpoints are ``Checkpointer``'s, in a thread and on a connection of its own, every
``CHECKPOINT_EVERY`` batches. SQLite's automatic checkpoint runs inside the commit that fills
the WAL past 1,000 pages: that batch took 4-6 ms instead of ~0.3 (copying pages back, two
fsyncs), the batches queued behind it waited with it, and a busy loop lent the writer the GIL
for the whole of it, blocked (``gil.py``), every ~0.5 s at 500 sessions (docs/performance.md
9.15). A passive checkpoint beside the writer holds neither. But the WAL starts over only when
a write begins with every frame copied back, which commits landing during each checkpoint can
prevent for good under load; so the writer keeps SQLite's own checkpoint as a safety net, at
``SAFETY_CHECKPOINT_PAGES``, when nearly everything is copied back already.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from rtgate.gil import Lender

log = logging.getLogger("rtgate.store")

#: One statement (parameters named ``:name``) and its rows, in the order they must run.
Step = tuple[str, list[dict[str, Any]]]

#: The writer's batches between two checkpoints: a batch is ~5-15 WAL frames (a usage row is
#: the table's page and its indexes' and its key's day in ``spend_days``), so about SQLite's own
#: 1,000 pages.
CHECKPOINT_EVERY = 100
#: The writer's own automatic checkpoint (``wal_autocheckpoint``), ten times SQLite's default:
#: reached only if the checkpointer's never let the WAL start over.
SAFETY_CHECKPOINT_PAGES = 10_000


class SqliteWriter:
    """Writes batches of rows to the SQLite file at ``path`` from one thread of its own;
    ``failure`` maps what ``sqlite3`` (or a value it cannot bind) raises to the caller's error."""

    def __init__(self, path: str, busy_ms: int, failure: Callable[[Exception], Exception]) -> None:
        self._path = path
        self._busy_ms = busy_ms
        self._failure = failure
        #: Batches for the thread, each with its future and that future's loop; None stops it.
        self._queue: queue.SimpleQueue[
            tuple[list[Step], asyncio.Future[None], asyncio.AbstractEventLoop] | None
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        #: The loop of the last batch (``asyncio.get_running_loop`` costs a system call per
        #: call on Python 3.11; a future knows its loop for free).
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Opened in the writer thread, on its first batch (sqlite3 connections stay in the
        #: thread that made them).
        self._conn: sqlite3.Connection | None = None
        #: A busy loop starves this thread of the GIL; it lends it (``rtgate/gil.py``).
        self._lender = Lender()
        self._checkpointer = Checkpointer(path, busy_ms)
        #: Batches since the last checkpoint was asked for (the writer thread's count).
        self._batches = 0

    def write(self, steps: Sequence[Step]) -> asyncio.Future[None]:
        """Run ``steps`` in one transaction in the writer thread: a future, done once they are
        committed (its exception ``failure``'s, if not). Not a coroutine: the caller waits on
        the future with its deadline, and no task runs per batch. Cancelling the future stops
        the wait, not the write."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        work = [(sql, rows) for sql, rows in steps if rows]
        if not work:
            fut.set_result(None)
            return fut
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._serve, name="rtgate-sqlite-writer", daemon=True
            )
            self._thread.start()
        # Counted before the thread can finish it.
        self._lender.track(loop, fut)
        self._queue.put((work, fut, loop))
        return fut

    # -- the writer thread ----------------------------------------------------------------------
    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            work, fut, loop = item
            err: Exception | None = None
            try:
                self._run(work)
            except Exception as exc:  # noqa: BLE001 -- the caller's to handle, mapped
                err = self._failure(exc)
            self._lender.finished()
            # A closed loop raises RuntimeError: nobody waits for this batch any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, fut, err)
            self._batches += 1
            if self._batches >= CHECKPOINT_EVERY:
                self._batches = 0
                self._checkpointer.request()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _run(self, work: list[Step]) -> None:
        conn = self._conn
        if conn is None:
            conn = self._conn = open_sqlite(self._path, self._busy_ms)
            # Checkpoints are the Checkpointer's; this thread's commits only as a safety net.
            # No journal_size_limit: cutting the WAL file back as it starts over cost the
            # batch doing it 3-5 ms of CPU (docs/performance.md 9.15); it stays at its largest.
            conn.execute(f"PRAGMA wal_autocheckpoint={SAFETY_CHECKPOINT_PAGES}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in work:
                conn.executemany(sql, rows)
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    async def close(self) -> None:
        """Close the connection in its thread once the batches queued before it are done."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(thread.join)
        await asyncio.to_thread(self._checkpointer.close)


class Checkpointer:
    """Checkpoints the WAL of the file at ``path`` when asked, on a thread and a connection of
    its own: ``PRAGMA wal_checkpoint(PASSIVE)`` copies what no reader still needs back into the
    database without taking the write lock, so the writer commits on meanwhile. Nobody waits for
    it; one that fails, or a connection that cannot be opened, is logged and the next request
    tries again. A request while one is queued adds nothing; while one runs, one more."""

    def __init__(self, path: str, busy_ms: int) -> None:
        self._path = path
        self._busy_ms = busy_ms
        self._lock = threading.Lock()
        #: Made on the first request, shut down by ``close`` (a later request makes another).
        self._pool: ThreadPoolExecutor | None = None
        self._queued: Future[None] | None = None
        #: Opened, used and closed in the pool's one thread.
        self._conn: sqlite3.Connection | None = None
        #: Checkpoints done so far, and the WAL frames the last one had copied back.
        self.runs = 0
        self.copied = 0

    def request(self) -> None:
        """Ask for a checkpoint (any thread)."""
        with self._lock:
            queued = self._queued
            if queued is not None and not (queued.running() or queued.done()):
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="rtgate-sqlite-checkpoint")
            self._queued = self._pool.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        try:
            if self._conn is None:
                self._conn = open_sqlite(self._path, self._busy_ms)
            busy, _, copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            log.warning("checkpointing the SQLite WAL failed (retried later): %s", exc)
            return
        # busy: another connection (a worker process's checkpointer) was at it.
        if not busy:
            self.runs += 1
            self.copied = copied

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close the connection in its thread and end the thread (blocking: the caller's
        thread, not the loop's)."""
        with self._lock:
            pool, self._pool, self._queued = self._pool, None, None
        if pool is not None:
            pool.submit(self._close_conn)
            pool.shutdown(wait=True)


def _settle(fut: asyncio.Future[None], err: Exception | None) -> None:
    # A future cancelled at its caller's deadline takes no outcome: its write went on anyway.
    if fut.done():
        return
    if err is None:
        fut.set_result(None)
    else:
        fut.set_exception(err)


def _wal(conn: sqlite3.Connection, busy_ms: int) -> None:
    """Put the file in WAL mode. A new file that another process is switching at the same
    moment (``--workers N`` on a fresh home) answers "database is locked" at once: SQLite does
    not wait its busy timeout for a change of journal mode. So the switch is tried again, every
    10 ms within that timeout; once one process has switched, the mode is the file's, and the
    others find it set."""
    deadline = time.monotonic() + busy_ms / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if err.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
        time.sleep(0.01)


def open_sqlite(path: str, busy_ms: int) -> sqlite3.Connection:
    """A connection to the file at ``path`` as the store and the writer open it: WAL,
    ``synchronous=NORMAL`` (a commit is in the WAL when it returns), foreign keys, and
    ``busy_ms`` as the busy timeout. ``isolation_level=None``: transactions are the callers'
    explicit ``BEGIN IMMEDIATE``, which takes the write lock first (waiting up to the busy
    timeout), never half-way through; a read outside one sees the last commit."""
    conn = sqlite3.connect(path, timeout=busy_ms / 1000, isolation_level=None)
    try:
        _wal(conn, busy_ms)
    except BaseException:
        conn.close()
        raise
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={busy_ms}")
    return conn
