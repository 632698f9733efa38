"""The SQL adapter of the ``Store`` port, on SQLAlchemy Core: each call builds its statements
here, once for both databases, and runs them as one function of a connection on SQLite's thread
or PostgreSQL's async engine (``connections.py``).

SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed transaction is in the WAL file
before the commit returns, so it survives the gateway being killed (``tests/test_durability.py``);
only an OS crash or power loss can take the last commits, which is the price of not fsyncing
every session open. PostgreSQL goes through asyncpg, with its own durability settings.

Deadlines: every call answers within ``timeout`` seconds (reports within ``REPORT_TIMEOUT_S``)
or raises ``StoreError``; ``rtgate.deadline`` says why the caller stops waiting rather than
waiting for the cancelled call. The drivers bound their own waits too: asyncpg's connect
``timeout`` and ``command_timeout``, SQLite's busy ``timeout``, and the pool's checkout wait;
a cancelled PostgreSQL call's connection is closed by SQLAlchemy, so a stalled one does not hold
its pool slot for longer than that close takes (2 s for asyncpg, then a hard close); a SQLite
call the caller gave up on runs on in the store's thread, within the busy timeout.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import (
    Connection,
    Integer,
    Table,
    and_,
    case,
    cast,
    func,
    or_,
    select,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.sql import Executable

from rtgate.deadline import Deadlines
from rtgate.metering.record import UsageRecord, utc_day
from rtgate.protocol.transcript import TranscriptEntry
from rtgate.protocol.usage import USAGE_FIELDS, Usage
from rtgate.store.connections import Database, SqliteThread, connect
from rtgate.store.migrate import create_or_migrate
from rtgate.store.port import (
    CloseTally,
    DayTotals,
    Entry,
    KeyActivity,
    KeyInfo,
    Overview,
    SessionClose,
    SessionOpen,
    SessionSummary,
    StoredCall,
    StoredClientSecret,
    StoreError,
    UsageSummary,
)
from rtgate.store.rows import (
    CLOSE_SESSION,
    client_secret,
    close_rows,
    key_info,
    open_rows,
    stored_call,
    transcript_rows,
    usage_of,
    usage_rows,
)
from rtgate.store.schema import (
    api_keys,
    calls,
    client_secrets,
    console_sessions,
    sessions,
    transcript_entries,
    usage_records,
)
from rtgate.store.sqlite_writer import SqliteWriter

#: The default deadline of a store call the relay waits on (a key lookup, spend, a write).
STORE_TIMEOUT_S = 3.0
SECONDS_PER_DAY = 86400
#: The overview lists this many (close code, reason) pairs, the commonest first.
MAX_CLOSE_TALLIES = 20
#: The deadline of a report (usage, sessions, transcripts, listings): it may scan a large table.
REPORT_TIMEOUT_S = 60.0

# What a database call can raise: the driver's errors (wrapped by SQLAlchemy), the OS, and
# values the driver cannot bind (an int past BIGINT raises OverflowError in sqlite3).
# ``sqlite3``'s own come from the ledger's writer thread (``sqlite_writer.py``).
_DB_ERRORS = (SQLAlchemyError, sqlite3.Error, OSError, OverflowError, ValueError, TypeError)
# Of those, the ones that say the data was refused, not that the database is unavailable.
_BAD_DATA = (
    IntegrityError,
    DataError,
    sqlite3.IntegrityError,
    sqlite3.DataError,
    OverflowError,
    ValueError,
    TypeError,
)


def _refused_data(exc: BaseException) -> bool:
    """Whether the database refused the data itself, along the chain of causes: SQLAlchemy's
    own ``IntegrityError``/``DataError``, a value the driver cannot bind, or a PostgreSQL error
    of SQLSTATE class 22 (data exception) or 23 (integrity constraint violation) that SQLAlchemy
    passed on as a generic ``DBAPIError`` (asyncpg refusing to encode an argument does)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, _BAD_DATA) or str(getattr(seen, "sqlstate", ""))[:2] in ("22", "23"):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


P = ParamSpec("P")
T = TypeVar("T")
_Method = Callable[Concatenate["SqlStore", P], Coroutine[Any, Any, T]]


def _bounded(what: str, *, report: bool = False) -> Callable[[_Method[P, T]], _Method[P, T]]:
    """Run the method within the store's deadline, its failures mapped to ``StoreError``."""

    def wrap(method: _Method[P, T]) -> _Method[P, T]:
        @functools.wraps(method)
        async def bounded(store: SqlStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
            seconds = REPORT_TIMEOUT_S if report else store.timeout
            try:
                return await store.deadlines.run(method(store, *args, **kwargs), seconds)
            except TimeoutError as exc:
                # The deadline, or the driver's own timeout (a TimeoutError is an OSError).
                raise StoreError(f"cannot {what}: no answer within {seconds:g} s") from exc
            except _DB_ERRORS as exc:
                raise _store_error(what, exc) from exc

        return bounded

    return wrap


def _store_error(what: str, exc: BaseException) -> StoreError:
    return StoreError(f"cannot {what}: {type(exc).__name__}", bad_data=_refused_data(exc))


def _write_failed(exc: Exception) -> Exception:
    """What the SQLite writer's thread raises, as ``_bounded`` maps it (a bug's own error
    passes unchanged)."""
    if not isinstance(exc, _DB_ERRORS):
        return exc
    err = _store_error("write", exc)
    err.__cause__ = exc
    return err


def _one_by_prefix(conn: Connection, hash_prefix: str) -> StoredClientSecret | None:
    """The one client secret whose hash starts with ``hash_prefix`` (a secret's id); None if no
    secret, or more than one, matches."""
    c = client_secrets.c
    # A hex prefix: no LIKE wildcards can hide in it (the caller checked its shape).
    match = c.secret_hash.startswith(hash_prefix, autoescape=True)
    rows = conn.execute(select(client_secrets).where(match).limit(2)).all()
    return client_secret(rows[0]._mapping) if len(rows) == 1 else None


_SUMS = [func.coalesce(func.sum(getattr(usage_records.c, f)), 0).label(f) for f in USAGE_FIELDS]


class SqlStore:
    def __init__(self, url: str, *, timeout: float = STORE_TIMEOUT_S, echo: bool = False) -> None:
        self.url = url
        #: The deadline of every call but reports (``REPORT_TIMEOUT_S``) and ``init``.
        self.timeout = timeout
        self.deadlines = Deadlines()
        #: Where queries run: SQLite's thread, or PostgreSQL's async engine (connections.py).
        self.db: Database = connect(
            url, timeout=timeout, command_timeout=REPORT_TIMEOUT_S, echo=echo
        )
        #: SQLite's ledger batches go through a writer thread of their own (sqlite_writer.py).
        self._sqlite: SqliteWriter | None = None
        if isinstance(self.db, SqliteThread):
            self._sqlite = SqliteWriter(self.db.path, int(timeout * 1000), _write_failed)
        #: ``write``'s statements, built once (the SQLite writer compiles each once, too).
        self._writes = (
            self._insert_once(sessions, "id"),
            self._insert_once(usage_records, "record_id"),
            self._insert_once(transcript_entries, "session_id", "seq"),
            CLOSE_SESSION,
        )

    async def _all(self, q: Executable) -> Sequence[Row[Any]]:
        return await self.db.run(lambda conn: conn.execute(q).all())

    async def _first(self, q: Executable) -> Row[Any] | None:
        return await self.db.run(lambda conn: conn.execute(q).first())

    @_bounded("open the database", report=True)
    async def init(self) -> None:
        await self.db.run(create_or_migrate, write=True)

    async def close(self) -> None:
        # Calls cancelled at their deadline close their connections first (bounded).
        await self.deadlines.close()
        if self._sqlite is not None:
            await self._sqlite.close()
        await self.db.close()

    # -- keys -----------------------------------------------------------------------------------
    @_bounded("write")
    async def create_key(
        self,
        key_id: str,
        name: str,
        display_prefix: str,
        key_hash: str,
        now: float,
        policy_json: str | None = None,
    ) -> KeyInfo:
        q = api_keys.insert().values(
            id=key_id,
            name=name,
            display_prefix=display_prefix,
            key_hash=key_hash,
            created_at=now,
            revoked_at=None,
            policy=policy_json,
        )
        await self.db.run(lambda conn: conn.execute(q), write=True)
        return KeyInfo(key_id, name, display_prefix, now, None, policy_json)

    @_bounded("read", report=True)
    async def list_keys(self, include_revoked: bool = True) -> list[KeyInfo]:
        q = select(api_keys).order_by(api_keys.c.created_at)
        if not include_revoked:
            q = q.where(api_keys.c.revoked_at.is_(None))
        return [key_info(r._mapping) for r in await self._all(q)]

    @_bounded("read")
    async def get_key(self, key_id: str) -> KeyInfo | None:
        row = await self._first(select(api_keys).where(api_keys.c.id == key_id))
        return key_info(row._mapping) if row else None

    @_bounded("read")
    async def key_by_hash(self, key_hash: str) -> tuple[KeyInfo, str] | None:
        row = await self._first(select(api_keys).where(api_keys.c.key_hash == key_hash))
        return (key_info(row._mapping), row.key_hash) if row else None

    async def _update_key(self, key_id: str, update: Executable) -> KeyInfo | None:
        """Run ``update`` on the key, and read the key back in the same transaction."""

        def run(conn: Connection) -> Row[Any] | None:
            conn.execute(update)
            return conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()

        row = await self.db.run(run, write=True)
        return key_info(row._mapping) if row else None

    @_bounded("write")
    async def revoke_key(self, key_id: str, now: float) -> KeyInfo | None:
        return await self._update_key(
            key_id,
            api_keys.update()
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=now),
        )

    @_bounded("write")
    async def set_key_policy(self, key_id: str, policy_json: str | None) -> KeyInfo | None:
        return await self._update_key(
            key_id, api_keys.update().where(api_keys.c.id == key_id).values(policy=policy_json)
        )

    # -- client secrets ---------------------------------------------------------------------------
    @_bounded("write")
    async def add_client_secret(self, row: StoredClientSecret) -> None:
        # Expired secrets can open nothing; drop them as new ones arrive.
        expired = client_secrets.delete().where(client_secrets.c.expires_at <= row.created_at)
        add = client_secrets.insert().values(
            secret_hash=row.secret_hash,
            key_id=row.key_id,
            model=row.model,
            session=row.session_json,
            created_at=row.created_at,
            expires_at=row.expires_at,
        )

        def run(conn: Connection) -> None:
            conn.execute(expired)
            conn.execute(add)

        await self.db.run(run, write=True)

    @_bounded("read")
    async def client_secret_by_hash(
        self, secret_hash: str
    ) -> tuple[StoredClientSecret, KeyInfo] | None:
        c = client_secrets.c
        q = (
            select(client_secrets, api_keys)
            .select_from(client_secrets.join(api_keys, api_keys.c.id == c.key_id))
            .where(c.secret_hash == secret_hash)
        )
        row = await self._first(q)
        if row is None:
            return None
        return client_secret(row._mapping), key_info(row._mapping)

    @_bounded("read", report=True)
    async def list_client_secrets(self, key_id: str | None, now: float) -> list[StoredClientSecret]:
        c = client_secrets.c
        q = select(client_secrets).where(c.expires_at > now)
        if key_id is not None:
            q = q.where(c.key_id == key_id)
        q = q.order_by(c.created_at.desc(), c.secret_hash)
        return [client_secret(r._mapping) for r in await self._all(q)]

    @_bounded("read")
    async def client_secret_by_id(self, hash_prefix: str) -> StoredClientSecret | None:
        return await self.db.run(lambda conn: _one_by_prefix(conn, hash_prefix))

    @_bounded("write")
    async def revoke_client_secret(self, hash_prefix: str, now: float) -> StoredClientSecret | None:
        c = client_secrets.c

        def run(conn: Connection) -> StoredClientSecret | None:
            row = _one_by_prefix(conn, hash_prefix)
            if row is None or row.revoked_at is not None:
                return row
            # Only a secret not revoked yet: a concurrent revocation keeps its first time.
            done = conn.execute(
                client_secrets.update()
                .where(c.secret_hash == row.secret_hash, c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            return (
                replace(row, revoked_at=now) if done.rowcount else _one_by_prefix(conn, hash_prefix)
            )

        return await self.db.run(run, write=True)

    # -- calls ----------------------------------------------------------------------------------
    @_bounded("write")
    async def claim_call(self, call: StoredCall) -> StoredCall:
        # INSERT .. ON CONFLICT DO NOTHING: a concurrent claim waits for this one's commit
        # (PostgreSQL) or the file lock (SQLite), then stores nothing; the read after it sees
        # whichever claim was stored (READ COMMITTED reads each statement afresh). A claim that
        # committed after its caller stopped waiting is seen by the key's retry as its own.
        claim = self._insert_once(calls, "call_id").values(
            call_id=call.call_id,
            key_id=call.key_id,
            secret_id=call.secret_id,
            model=call.model,
            upstream=call.upstream,
            created_at=call.created_at,
        )

        def run(conn: Connection) -> Row[Any]:
            conn.execute(claim)
            return conn.execute(select(calls).where(calls.c.call_id == call.call_id)).one()

        return stored_call(await self.db.run(run, write=True))

    @_bounded("read")
    async def call_owner(self, call_id: str) -> StoredCall | None:
        row = await self._first(select(calls).where(calls.c.call_id == call_id))
        return stored_call(row) if row else None

    @_bounded("write")
    async def release_call(self, call_id: str, key_id: str) -> None:
        q = calls.delete().where(calls.c.call_id == call_id, calls.c.key_id == key_id)
        await self.db.run(lambda conn: conn.execute(q), write=True)

    @_bounded("read")
    async def spend(self, key_id: str, day: str, month_start: str) -> tuple[int, int, int]:
        u = usage_records.c
        q = select(
            func.coalesce(func.sum(case((u.day == day, u.charged_nanos), else_=0)), 0),
            func.coalesce(func.sum(case((u.day >= month_start, u.charged_nanos), else_=0)), 0),
            func.coalesce(func.sum(u.charged_nanos), 0),
        ).where(u.key_id == key_id)
        row = await self.db.run(lambda conn: conn.execute(q).one())
        return int(row[0]), int(row[1]), int(row[2])

    # -- sessions and usage -----------------------------------------------------------------------
    def _insert_once(self, table: Table, *unique: str) -> Any:
        """INSERT that skips a row whose ``unique`` columns are already there (a replay)."""
        # The database's own dialect, imported with it: a gateway on SQLite never loads
        # PostgreSQL's (~2 MB of modules).
        if self.db.dialect == "postgresql":
            from sqlalchemy.dialects import postgresql

            return postgresql.insert(table).on_conflict_do_nothing(index_elements=list(unique))
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table).on_conflict_do_nothing(index_elements=list(unique))

    def write(self, entries: Sequence[Entry]) -> Awaitable[None]:
        """SQLite: the writer thread's future, bounded by its caller's deadline (the ledger's)
        and by SQLite's busy timeout (the store's). Otherwise, a coroutine within the store's
        deadline."""
        opens = [e for e in entries if isinstance(e, SessionOpen)]
        usage = [e for e in entries if isinstance(e, UsageRecord)]
        transcript = [e for e in entries if isinstance(e, TranscriptEntry)]
        closes = [e for e in entries if isinstance(e, SessionClose)]
        # Opens first and closes last: whatever the batch's order, a session's row exists
        # before its usage and transcript refer to it, and its end is written after its start.
        open_, use, said, close = self._writes
        steps = [
            (open_, open_rows(opens)),
            (use, usage_rows(usage)),
            (said, transcript_rows(transcript)),
            (close, close_rows(closes)),
        ]
        if self._sqlite is not None:
            return self._sqlite.write(steps)
        return self._write_pooled(steps)

    @_bounded("write")
    async def _write_pooled(self, steps: list[tuple[Any, list[dict[str, Any]]]]) -> None:
        def run(conn: Connection) -> None:
            for stmt, rows in steps:
                if rows:
                    conn.execute(stmt, rows)

        await self.db.run(run, write=True)

    @_bounded("read", report=True)
    async def session_transcript(self, session_id: str) -> list[TranscriptEntry]:
        t = transcript_entries.c
        q = select(transcript_entries).where(t.session_id == session_id).order_by(t.seq)
        return [
            TranscriptEntry(
                r.session_id,
                r.key_id,
                r.seq,
                r.created_at,
                r.role,
                r.kind,
                r.text,
                r.item_id,
                r.data,
            )
            for r in await self._all(q)
        ]

    @_bounded("read", report=True)
    async def usage_summary(
        self, key_id: str | None = None, since_day: str | None = None
    ) -> list[UsageSummary]:
        u = usage_records.c
        q = (
            select(
                u.key_id,
                api_keys.c.name.label("key_name"),
                u.model,
                u.day,
                u.unit,
                func.count().label("records"),
                func.count(u.review).label("needs_review"),
                func.coalesce(func.sum(u.provider_nanos), 0).label("provider_nanos"),
                func.coalesce(func.sum(u.charged_nanos), 0).label("charged_nanos"),
                *_SUMS,
            )
            .select_from(usage_records.join(api_keys, api_keys.c.id == u.key_id))
            .group_by(u.key_id, api_keys.c.name, u.model, u.day, u.unit)
            .order_by(u.day, api_keys.c.name, u.model, u.unit)
        )
        if key_id:
            q = q.where(u.key_id == key_id)
        if since_day:
            q = q.where(u.day >= since_day)
        return [
            UsageSummary(
                key_id=r.key_id,
                key_name=r.key_name,
                model=r.model,
                day=r.day,
                unit=r.unit,
                usage=usage_of(r),
                records=int(r.records),
                needs_review=int(r.needs_review),
                provider_nanos=int(r.provider_nanos),
                charged_nanos=int(r.charged_nanos),
            )
            for r in await self._all(q)
        ]

    @_bounded("read", report=True)
    async def recent_sessions(
        self,
        limit: int = 50,
        key_id: str | None = None,
        session_id: str | None = None,
        before: str | None = None,
    ) -> list[SessionSummary]:
        s = sessions.c
        # The page first, along the started_at index (or key_id, started_at); then the usage of
        # its sessions only: a page's cost does not grow with the table.
        q = (
            select(sessions, api_keys.c.name.label("key_name"))
            .select_from(sessions.join(api_keys, api_keys.c.id == s.key_id))
            .order_by(s.started_at.desc(), s.id.desc())
            .limit(limit)
        )
        if key_id:
            q = q.where(s.key_id == key_id)
        if session_id:
            q = q.where(s.id == session_id)

        def run(
            conn: Connection,
        ) -> tuple[Sequence[Row[Any]], dict[str, tuple[Usage, int, int]]]:
            page = q
            if before:
                anchor = conn.execute(
                    select(s.started_at).where(s.id == before)
                ).scalar_one_or_none()
                if anchor is None:
                    return [], {}
                page = q.where(
                    or_(s.started_at < anchor, and_(s.started_at == anchor, s.id < before))
                )
            rows = conn.execute(page).all()
            return rows, _session_totals(conn, [r.id for r in rows])

        rows, totals = await self.db.run(run)
        out = []
        for r in rows:
            usage, provider, charged = totals.get(r.id, (Usage(), 0, 0))
            out.append(
                SessionSummary(
                    id=r.id,
                    key_id=r.key_id,
                    key_name=r.key_name,
                    model=r.model,
                    upstream=r.upstream,
                    intent=r.intent,
                    started_at=r.started_at,
                    ended_at=r.ended_at,
                    close_code=r.close_code,
                    close_reason=r.close_reason,
                    closed_by=r.closed_by,
                    usage=usage,
                    provider_nanos=provider,
                    charged_nanos=charged,
                )
            )
        return out

    @_bounded("read", report=True)
    async def session_usage(self, session_id: str) -> list[UsageRecord]:
        u = usage_records.c
        q = select(usage_records).where(u.session_id == session_id).order_by(u.created_at, u.id)
        return [
            UsageRecord(
                session_id=r.session_id,
                key_id=r.key_id,
                model=r.model,
                price_key=r.price_key,
                usage=Usage(r.kind, *(int(getattr(r, f)) for f in USAGE_FIELDS)),
                provider_nanos=int(r.provider_nanos),
                charged_nanos=int(r.charged_nanos),
                created_at=r.created_at,
                ref=r.ref,
                review=r.review,
                record_id=r.record_id or f"ur_row{r.id}",
                unit=r.unit,
                metered_by=r.metered_by,
            )
            for r in await self._all(q)
        ]

    def _day_number(self, seconds: Any) -> Any:
        """The UTC day number (days since 1970-01-01) of a unix time column."""
        if self.db.dialect == "postgresql":
            return func.floor(seconds / SECONDS_PER_DAY)
        # SQLite: the integer cast truncates, which is the floor for times after 1970.
        return cast(seconds / SECONDS_PER_DAY, Integer)

    @_bounded("read", report=True)
    async def overview(self, since_day: str, since: float) -> Overview:
        u, s = usage_records.c, sessions.c
        spend = (
            select(
                u.day,
                func.coalesce(func.sum(u.provider_nanos), 0),
                func.coalesce(func.sum(u.charged_nanos), 0),
            )
            .where(u.day >= since_day)
            .group_by(u.day)
        )
        day = self._day_number(s.started_at).label("day")
        started = select(day, func.count()).where(s.started_at >= since).group_by(day)
        n = func.count().label("n")
        closes = (
            select(s.close_code, s.close_reason, n)
            .where(s.started_at >= since)
            .group_by(s.close_code, s.close_reason)
            .order_by(n.desc(), s.close_code)
            .limit(MAX_CLOSE_TALLIES)
        )
        spent, counted, tallies = await self.db.run(
            lambda conn: [conn.execute(q).all() for q in (spend, started, closes)]
        )
        money = {r[0]: (int(r[1]), int(r[2])) for r in spent}
        counts = {utc_day(int(r[0]) * SECONDS_PER_DAY): int(r[1]) for r in counted}
        days = tuple(
            DayTotals(d, counts.get(d, 0), *money.get(d, (0, 0)))
            for d in sorted(set(money) | set(counts))
            if d >= since_day
        )
        return Overview(
            days, tuple(CloseTally(r.close_code, r.close_reason, int(r.n)) for r in tallies)
        )

    @_bounded("read", report=True)
    async def key_activity(self, day: str, month_start: str) -> list[KeyActivity]:
        u, s = usage_records.c, sessions.c
        spend = select(
            u.key_id,
            func.coalesce(func.sum(case((u.day == day, u.charged_nanos), else_=0)), 0),
            func.coalesce(func.sum(case((u.day >= month_start, u.charged_nanos), else_=0)), 0),
            func.coalesce(func.sum(u.charged_nanos), 0),
        ).group_by(u.key_id)
        used = select(s.key_id, func.count(), func.max(s.started_at)).group_by(s.key_id)
        spent_rows, used_rows = await self.db.run(
            lambda conn: (conn.execute(spend).all(), conn.execute(used).all())
        )
        spent = {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in spent_rows}
        last = {r[0]: (int(r[1]), r[2]) for r in used_rows}
        return [
            KeyActivity(k, spent.get(k, (0, 0, 0)), *last.get(k, (0, None)))
            for k in sorted(set(spent) | set(last))
        ]

    # -- console sign-ins -----------------------------------------------------------------------
    @_bounded("write")
    async def add_console_session(self, value_hash: str, now: float, expires_at: float) -> None:
        c = console_sessions.c
        expired = console_sessions.delete().where(c.expires_at <= now)
        add = console_sessions.insert().values(
            value_hash=value_hash, created_at=now, expires_at=expires_at
        )

        def run(conn: Connection) -> None:
            conn.execute(expired)
            conn.execute(add)

        await self.db.run(run, write=True)

    @_bounded("read")
    async def console_session(self, value_hash: str, now: float) -> bool:
        c = console_sessions.c
        q = select(c.expires_at).where(c.value_hash == value_hash)
        expires = await self.db.run(lambda conn: conn.execute(q).scalar_one_or_none())
        return expires is not None and now < expires

    @_bounded("write")
    async def end_console_session(self, value_hash: str) -> None:
        q = console_sessions.delete().where(console_sessions.c.value_hash == value_hash)
        await self.db.run(lambda conn: conn.execute(q), write=True)


def _session_totals(
    conn: Connection, session_ids: Sequence[str]
) -> dict[str, tuple[Usage, int, int]]:
    """Usage, provider and charged nano-dollars of these sessions (along ix_usage_session)."""
    if not session_ids:
        return {}
    u = usage_records.c
    q = (
        select(
            u.session_id,
            func.coalesce(func.sum(u.provider_nanos), 0).label("provider_nanos"),
            func.coalesce(func.sum(u.charged_nanos), 0).label("charged_nanos"),
            *_SUMS,
        )
        .where(u.session_id.in_(session_ids))
        .group_by(u.session_id)
    )
    return {
        r.session_id: (usage_of(r), int(r.provider_nanos), int(r.charged_nanos))
        for r in conn.execute(q).all()
    }
