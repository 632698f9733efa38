"""The SQL adapter of the ``Store`` port: each call's statements are written here once, as SQL
text both databases accept, in a query (a generator, ``connections.Query``) run on SQLite's
thread or PostgreSQL's asyncpg pool (``connections.py``).

SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed transaction is in the WAL file
before the commit returns, so it survives the gateway being killed (``tests/test_durability.py``);
only an OS crash or power loss can take the last commits, which is the price of not fsyncing
every session open. PostgreSQL goes through asyncpg, with its own durability settings.

Deadlines: every call answers within ``timeout`` seconds (reports within ``REPORT_TIMEOUT_S``)
or raises ``StoreError``; ``rtgate.deadline`` says why the caller stops waiting rather than
waiting for the cancelled call. The drivers bound their own waits too: asyncpg's connect
``timeout`` and ``command_timeout``, SQLite's busy ``timeout``, and the pool's checkout wait;
a cancelled PostgreSQL call's connection is closed at once (terminated, not returned), so a
stalled one does not hold its pool slot; a SQLite call the caller gave up on runs on in the
store's thread, within the busy timeout.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from dataclasses import replace
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import urlsplit

from rtgate.deadline import DeadlinePassed, Deadlines
from rtgate.metering.record import UsageRecord, utc_day
from rtgate.protocol.transcript import TranscriptEntry
from rtgate.protocol.usage import USAGE_FIELDS, Usage
from rtgate.store.connections import (
    Database,
    DatabaseError,
    Query,
    Row,
    SqliteThread,
    Statement,
    connect,
    fetch,
    first,
)
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
    ADD_TRANSCRIPT,
    ADD_USAGE,
    BEAT,
    CLOSE_SESSION,
    END_LOST,
    FORGET_INSTANCES,
    KEY_COLUMNS,
    LOST_SESSIONS,
    MINTED_COLUMNS,
    OPEN_SESSION,
    client_secret,
    close_rows,
    insert_once,
    key_info,
    lost_rows,
    open_rows,
    stored_call,
    transcript_rows,
    usage_of,
    usage_rows,
)
from rtgate.store.sqlite_writer import SqliteWriter

#: The default deadline of a store call the relay waits on (a key lookup, spend, a write).
STORE_TIMEOUT_S = 3.0
SECONDS_PER_DAY = 86400
#: The overview lists this many (close code, reason) pairs, the commonest first.
MAX_CLOSE_TALLIES = 20
#: The deadline of a report (usage, sessions, transcripts, listings): it may scan a large table.
REPORT_TIMEOUT_S = 60.0

# What a database call can raise: the drivers' errors (asyncpg's wrapped in ``DatabaseError``
# by its runner), the OS, and values the driver cannot bind (an int past BIGINT raises
# OverflowError in sqlite3).
_DB_ERRORS = (DatabaseError, sqlite3.Error, OSError, OverflowError, ValueError, TypeError)
# Of those, the ones that say the data was refused, not that the database is unavailable.
_BAD_DATA = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    OverflowError,
    ValueError,
    TypeError,
)


def _refused_data(exc: BaseException) -> bool:
    """Whether the database refused the data itself, along the chain of causes: ``sqlite3``'s
    ``IntegrityError``/``DataError``, a value a driver cannot bind (asyncpg's ``DataError`` is a
    ``ValueError``), or a PostgreSQL error of SQLSTATE class 22 (data exception) or 23
    (integrity constraint violation)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, _BAD_DATA) or str(getattr(seen, "sqlstate", ""))[:2] in ("22", "23"):
            return True
        seen = seen.__cause__
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
            except DeadlinePassed as exc:
                raise StoreError(f"cannot {what}: no answer within {seconds:g} s") from exc
            except TimeoutError as exc:
                # The driver's own (a TimeoutError is an OSError): no connection within the
                # store's timeout, whatever the call's deadline (a newcomer's find: a report
                # refused in 3 s said 60).
                said = f"no connection to the database within {store.timeout:g} s"
                raise StoreError(f"cannot {what}: {said}") from exc
            except _DB_ERRORS as exc:
                raise _store_error(what, exc) from exc

        return bounded

    return wrap


def database_place(url: str) -> str:
    """Where ``url`` points, without its user and password: the SQLite file, or the server's
    ``scheme://host:port/name``."""
    parts = urlsplit(url)
    if parts.scheme.startswith("sqlite"):
        return parts.path.removeprefix("/") or ":memory:"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or 'localhost'}{port}{parts.path}"


def _store_error(what: str, exc: BaseException) -> StoreError:
    # asyncpg's error by its own name (``UniqueViolationError``), not its wrapper's.
    driver = exc.__cause__ if isinstance(exc, DatabaseError) and exc.__cause__ else exc
    return StoreError(f"cannot {what}: {type(driver).__name__}", bad_data=_refused_data(exc))


def _write_failed(exc: Exception) -> Exception:
    """What the SQLite writer's thread raises, as ``_bounded`` maps it (a bug's own error
    passes unchanged)."""
    if not isinstance(exc, _DB_ERRORS):
        return exc
    err = _store_error("write", exc)
    err.__cause__ = exc
    return err


# -- the queries' text, written once for both databases ------------------------------------------
_KEY = f"SELECT {KEY_COLUMNS}, key_hash FROM api_keys"
_SECRET = f"SELECT {MINTED_COLUMNS} FROM client_secrets"
#: A secret and its key, the key's columns renamed apart (both have created_at, revoked_at).
_SECRET_AND_KEY = (
    f"SELECT {', '.join(f'c.{c}' for c in MINTED_COLUMNS.split(', '))}, "
    + ", ".join(f"k.{c} AS k_{c}" for c in KEY_COLUMNS.split(", "))
    + " FROM client_secrets c JOIN api_keys k ON k.id = c.key_id WHERE c.secret_hash = :hash"
)
_CALL = "SELECT call_id, key_id, secret_id, model, upstream, created_at, accepted_at FROM calls"
_CLAIM_CALL = insert_once(
    "calls",
    ("call_id", "key_id", "secret_id", "model", "upstream", "created_at", "accepted_at"),
    "call_id",
)
#: Each usage column's sum, named as the column (``rows.usage_of`` reads them).
_SUMS = ", ".join(f"COALESCE(SUM(u.{f}), 0) AS {f}" for f in USAGE_FIELDS)
_MONEY = (
    "COALESCE(SUM(u.provider_nanos), 0) AS provider_nanos,"
    " COALESCE(SUM(u.charged_nanos), 0) AS charged_nanos"
)
#: Spend today, this month and ever, from a key's ``spend_days`` (a row per day, not per record).
_SPEND = (
    "COALESCE(SUM(CASE WHEN d.day = :day THEN d.charged_nanos ELSE 0 END), 0),"
    " COALESCE(SUM(CASE WHEN d.day >= :month_start THEN d.charged_nanos ELSE 0 END), 0),"
    " COALESCE(SUM(d.charged_nanos), 0)"
)
#: The UTC day number (days since 1970-01-01) of a session's start: the floor of the seconds
#: over 86400. A cast to an integer truncates in SQLite and rounds in PostgreSQL; taking one
#: off where it came out above the value is the floor in both (the times are after 1970).
_START_DAY = (
    "(CAST(s.started_at AS BIGINT)"
    " - CASE WHEN CAST(s.started_at AS BIGINT) > s.started_at THEN 1 ELSE 0 END)"
    f" / {SECONDS_PER_DAY}"
)
_SESSION_PAGE = (
    "SELECT s.id, s.key_id, k.name AS key_name, s.model, s.upstream, s.intent, s.started_at,"
    " s.ended_at, s.close_code, s.close_reason, s.closed_by"
    " FROM sessions s JOIN api_keys k ON k.id = s.key_id"
)


def _where(conditions: Sequence[str]) -> str:
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


def _like_prefix(prefix: str) -> str:
    """A LIKE pattern for values starting with ``prefix`` (``ESCAPE '/'``)."""
    escaped = prefix.replace("/", "//").replace("%", "/%").replace("_", "/_")
    return escaped + "%"


def _one_by_prefix(hash_prefix: str) -> Query[StoredClientSecret | None]:
    """The one client secret whose hash starts with ``hash_prefix`` (a secret's id); None if no
    secret, or more than one, matches."""
    rows = yield from fetch(
        f"{_SECRET} WHERE secret_hash LIKE :pattern ESCAPE '/' LIMIT 2",
        pattern=_like_prefix(hash_prefix),
    )
    return client_secret(rows[0]) if len(rows) == 1 else None


class SqlStore:
    def __init__(self, url: str, *, timeout: float = STORE_TIMEOUT_S) -> None:
        self.url = url
        #: The deadline of every call but reports (``REPORT_TIMEOUT_S``) and ``init``.
        self.timeout = timeout
        self.deadlines = Deadlines()
        #: Where queries run: SQLite's thread, or PostgreSQL's pool (connections.py).
        self.db: Database = connect(url, timeout=timeout, command_timeout=REPORT_TIMEOUT_S)
        #: SQLite's ledger batches go through a writer thread of their own (sqlite_writer.py).
        self._sqlite: SqliteWriter | None = None
        if isinstance(self.db, SqliteThread):
            self._sqlite = SqliteWriter(self.db.path, int(timeout * 1000), _write_failed)

    async def _all(self, sql: str, **params: Any) -> list[Row]:
        return await self.db.run(fetch(sql, **params))

    async def _first(self, sql: str, **params: Any) -> Row | None:
        return await self.db.run(first(sql, **params))

    async def init(self) -> None:
        """Create or migrate the schema. A failure names the database it tried (its address,
        never its credentials): it is what an operator reads when a start fails."""
        try:
            await self._create_or_migrate()
        except StoreError as err:
            where = database_place(self.url)
            raise StoreError(f"{err.message} ({where})", bad_data=err.bad_data) from err

    @_bounded("open the database", report=True)
    async def _create_or_migrate(self) -> None:
        await self.db.run(create_or_migrate(self.db.dialect), write=True)

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
        await self.db.run(
            fetch(
                "INSERT INTO api_keys (id, name, display_prefix, key_hash, created_at, policy)"
                " VALUES (:id, :name, :display_prefix, :key_hash, :now, :policy)",
                id=key_id,
                name=name,
                display_prefix=display_prefix,
                key_hash=key_hash,
                now=now,
                policy=policy_json,
            ),
            write=True,
        )
        return KeyInfo(key_id, name, display_prefix, now, None, policy_json)

    @_bounded("read", report=True)
    async def list_keys(self, include_revoked: bool = True) -> list[KeyInfo]:
        active = "" if include_revoked else " WHERE revoked_at IS NULL"
        return [key_info(r) for r in await self._all(f"{_KEY}{active} ORDER BY created_at")]

    @_bounded("read")
    async def get_key(self, key_id: str) -> KeyInfo | None:
        row = await self._first(f"{_KEY} WHERE id = :id", id=key_id)
        return key_info(row) if row else None

    @_bounded("read")
    async def key_by_hash(self, key_hash: str) -> tuple[KeyInfo, str] | None:
        row = await self._first(f"{_KEY} WHERE key_hash = :hash", hash=key_hash)
        return (key_info(row), row["key_hash"]) if row else None

    async def _update_key(self, key_id: str, update: str, **params: Any) -> KeyInfo | None:
        """Run ``update`` on the key (``:id``), and read the key back in the same transaction."""

        def run() -> Query[Row | None]:
            yield Statement(update, {"id": key_id, **params})
            return (yield from first(f"{_KEY} WHERE id = :id", id=key_id))

        row = await self.db.run(run(), write=True)
        return key_info(row) if row else None

    @_bounded("write")
    async def revoke_key(self, key_id: str, now: float) -> KeyInfo | None:
        return await self._update_key(
            key_id,
            "UPDATE api_keys SET revoked_at = :now WHERE id = :id AND revoked_at IS NULL",
            now=now,
        )

    @_bounded("read")
    async def revoked_keys(self, key_ids: Collection[str]) -> set[str]:
        ids = sorted(key_ids)
        if not ids:
            return set()
        named = {f"k{i}": key_id for i, key_id in enumerate(ids)}
        rows = await self._all(
            "SELECT id FROM api_keys WHERE revoked_at IS NOT NULL"
            f" AND id IN ({', '.join(':' + n for n in named)})",
            **named,
        )
        return {str(r["id"]) for r in rows}

    @_bounded("read")
    async def revoked_client_secrets(self, since: float) -> set[str]:
        rows = await self._all(
            "SELECT secret_hash FROM client_secrets"
            " WHERE revoked_at IS NOT NULL AND revoked_at >= :since",
            since=since,
        )
        return {str(r["secret_hash"]) for r in rows}

    @_bounded("write")
    async def set_key_policy(self, key_id: str, policy_json: str | None) -> KeyInfo | None:
        return await self._update_key(
            key_id, "UPDATE api_keys SET policy = :policy WHERE id = :id", policy=policy_json
        )

    # -- client secrets ---------------------------------------------------------------------------
    @_bounded("write")
    async def add_client_secret(self, row: StoredClientSecret) -> None:
        def run() -> Query[None]:
            # Expired secrets can open nothing; drop them as new ones arrive.
            yield Statement(
                "DELETE FROM client_secrets WHERE expires_at <= :now", {"now": row.created_at}
            )
            yield Statement(
                "INSERT INTO client_secrets"
                " (secret_hash, key_id, model, session, created_at, expires_at) VALUES"
                " (:secret_hash, :key_id, :model, :session, :created_at, :expires_at)",
                {
                    "secret_hash": row.secret_hash,
                    "key_id": row.key_id,
                    "model": row.model,
                    "session": row.session_json,
                    "created_at": row.created_at,
                    "expires_at": row.expires_at,
                },
            )

        await self.db.run(run(), write=True)

    @_bounded("read")
    async def client_secret_by_hash(
        self, secret_hash: str
    ) -> tuple[StoredClientSecret, KeyInfo] | None:
        row = await self._first(_SECRET_AND_KEY, hash=secret_hash)
        if row is None:
            return None
        return client_secret(row), key_info(row, prefix="k_")

    @_bounded("read", report=True)
    async def list_client_secrets(self, key_id: str | None, now: float) -> list[StoredClientSecret]:
        mine = " AND key_id = :key_id" if key_id is not None else ""
        rows = await self._all(
            f"{_SECRET} WHERE expires_at > :now{mine} ORDER BY created_at DESC, secret_hash",
            now=now,
            key_id=key_id,
        )
        return [client_secret(r) for r in rows]

    @_bounded("read")
    async def client_secret_by_id(self, hash_prefix: str) -> StoredClientSecret | None:
        return await self.db.run(_one_by_prefix(hash_prefix))

    @_bounded("write")
    async def revoke_client_secret(self, hash_prefix: str, now: float) -> StoredClientSecret | None:
        def run() -> Query[StoredClientSecret | None]:
            row = yield from _one_by_prefix(hash_prefix)
            if row is None or row.revoked_at is not None:
                return row
            # Only a secret not revoked yet: a concurrent revocation keeps its first time.
            done = yield from fetch(
                "UPDATE client_secrets SET revoked_at = :now"
                " WHERE secret_hash = :hash AND revoked_at IS NULL RETURNING secret_hash",
                now=now,
                hash=row.secret_hash,
            )
            if done:
                return replace(row, revoked_at=now)
            return (yield from _one_by_prefix(hash_prefix))

        return await self.db.run(run(), write=True)

    # -- calls ----------------------------------------------------------------------------------
    @_bounded("write")
    async def claim_call(self, call: StoredCall) -> StoredCall:
        # INSERT .. ON CONFLICT DO NOTHING: a concurrent claim waits for this one's commit
        # (PostgreSQL) or the file lock (SQLite), then stores nothing; the read after it sees
        # whichever claim was stored (READ COMMITTED reads each statement afresh). A claim that
        # committed after its caller stopped waiting is seen by the key's retry as its own.
        def run() -> Query[Row | None]:
            yield Statement(
                _CLAIM_CALL,
                {
                    "call_id": call.call_id,
                    "key_id": call.key_id,
                    "secret_id": call.secret_id,
                    "model": call.model,
                    "upstream": call.upstream,
                    "created_at": call.created_at,
                    "accepted_at": call.accepted_at,
                },
            )
            return (yield from first(f"{_CALL} WHERE call_id = :id", id=call.call_id))

        row = await self.db.run(run(), write=True)
        assert row is not None  # inserted, or there already, in this transaction
        return stored_call(row)

    @_bounded("read")
    async def call_owner(self, call_id: str) -> StoredCall | None:
        row = await self._first(f"{_CALL} WHERE call_id = :id", id=call_id)
        return stored_call(row) if row else None

    @_bounded("write")
    async def release_call(self, call_id: str, key_id: str) -> None:
        await self.db.run(
            fetch(
                # Only a claim whose sideband never started: a running call keeps its owner.
                "DELETE FROM calls WHERE call_id = :id AND key_id = :key AND accepted_at IS NULL",
                id=call_id,
                key=key_id,
            ),
            write=True,
        )

    @_bounded("write")
    async def accept_call(self, call_id: str, now: float) -> None:
        await self.db.run(
            fetch(
                "UPDATE calls SET accepted_at = :now WHERE call_id = :id AND accepted_at IS NULL",
                id=call_id,
                now=now,
            ),
            write=True,
        )

    @_bounded("read")
    async def spend(self, key_id: str, day: str, month_start: str) -> tuple[int, int, int]:
        row = await self._first(
            f"SELECT {_SPEND} FROM spend_days d WHERE d.key_id = :key_id",
            key_id=key_id,
            day=day,
            month_start=month_start,
        )
        assert row is not None  # an aggregate without GROUP BY: one row
        return int(row[0]), int(row[1]), int(row[2])

    # -- sessions and usage -----------------------------------------------------------------------
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
        steps = [
            (OPEN_SESSION, open_rows(opens)),
            (ADD_USAGE, usage_rows(usage)),
            (ADD_TRANSCRIPT, transcript_rows(transcript)),
            (CLOSE_SESSION, close_rows(closes)),
        ]
        if self._sqlite is not None:
            return self._sqlite.write(steps)
        return self._write_pooled(steps)

    @_bounded("write")
    async def _write_pooled(self, steps: list[tuple[str, list[dict[str, Any]]]]) -> None:
        def run() -> Query[None]:
            for sql, rows in steps:
                if rows:
                    yield Statement(sql, many=rows)

        await self.db.run(run(), write=True)

    @_bounded("read", report=True)
    async def session_transcript(self, session_id: str) -> list[TranscriptEntry]:
        rows = await self._all(
            "SELECT session_id, key_id, seq, created_at, role, kind, text, item_id, data"
            " FROM transcript_entries WHERE session_id = :id ORDER BY seq",
            id=session_id,
        )
        return [
            TranscriptEntry(
                r["session_id"],
                r["key_id"],
                r["seq"],
                r["created_at"],
                r["role"],
                r["kind"],
                r["text"],
                r["item_id"],
                r["data"],
            )
            for r in rows
        ]

    @_bounded("read", report=True)
    async def usage_summary(
        self, key_id: str | None = None, since_day: str | None = None
    ) -> list[UsageSummary]:
        where = [
            *(["u.key_id = :key_id"] if key_id else []),
            *(["u.day >= :since_day"] if since_day else []),
        ]
        rows = await self._all(
            "SELECT u.key_id, k.name AS key_name, u.model, u.day, u.unit,"
            f" COUNT(*) AS records, COUNT(u.review) AS needs_review, {_MONEY}, {_SUMS}"
            " FROM usage_records u JOIN api_keys k ON k.id = u.key_id"
            f"{_where(where)}"
            " GROUP BY u.key_id, k.name, u.model, u.day, u.unit"
            " ORDER BY u.day, k.name, u.model, u.unit",
            key_id=key_id,
            since_day=since_day,
        )
        return [
            UsageSummary(
                key_id=r["key_id"],
                key_name=r["key_name"],
                model=r["model"],
                day=r["day"],
                unit=r["unit"],
                usage=usage_of(r),
                records=int(r["records"]),
                needs_review=int(r["needs_review"]),
                provider_nanos=int(r["provider_nanos"]),
                charged_nanos=int(r["charged_nanos"]),
            )
            for r in rows
        ]

    @_bounded("read", report=True)
    async def recent_sessions(
        self,
        limit: int = 50,
        key_id: str | None = None,
        session_id: str | None = None,
        before: str | None = None,
    ) -> list[SessionSummary]:
        # The page first, along the started_at index (or key_id, started_at); then the usage of
        # its sessions only: a page's cost does not grow with the table.
        def run() -> Query[tuple[list[Row], dict[str, tuple[Usage, int, int]]]]:
            where = [
                *(["s.key_id = :key_id"] if key_id else []),
                *(["s.id = :session_id"] if session_id else []),
            ]
            anchor = None
            if before:
                row = yield from first("SELECT started_at FROM sessions WHERE id = :id", id=before)
                if row is None:
                    return [], {}
                anchor = row[0]
                where.append(
                    "(s.started_at < :anchor OR (s.started_at = :anchor AND s.id < :before))"
                )
            rows = yield from fetch(
                f"{_SESSION_PAGE}{_where(where)}"
                " ORDER BY s.started_at DESC, s.id DESC LIMIT :limit",
                key_id=key_id,
                session_id=session_id,
                anchor=anchor,
                before=before,
                limit=limit,
            )
            return rows, (yield from _session_totals([r["id"] for r in rows]))

        rows, totals = await self.db.run(run())
        out = []
        for r in rows:
            usage, provider, charged = totals.get(r["id"], (Usage(), 0, 0))
            out.append(
                SessionSummary(
                    id=r["id"],
                    key_id=r["key_id"],
                    key_name=r["key_name"],
                    model=r["model"],
                    upstream=r["upstream"],
                    intent=r["intent"],
                    started_at=r["started_at"],
                    ended_at=r["ended_at"],
                    close_code=r["close_code"],
                    close_reason=r["close_reason"],
                    closed_by=r["closed_by"],
                    usage=usage,
                    provider_nanos=provider,
                    charged_nanos=charged,
                )
            )
        return out

    @_bounded("read", report=True)
    async def session_usage(self, session_id: str) -> list[UsageRecord]:
        rows = await self._all(
            "SELECT * FROM usage_records WHERE session_id = :id ORDER BY created_at, id",
            id=session_id,
        )
        return [
            UsageRecord(
                session_id=r["session_id"],
                key_id=r["key_id"],
                model=r["model"],
                price_key=r["price_key"],
                usage=Usage(r["kind"], *(int(r[f]) for f in USAGE_FIELDS)),
                provider_nanos=int(r["provider_nanos"]),
                charged_nanos=int(r["charged_nanos"]),
                created_at=r["created_at"],
                ref=r["ref"],
                review=r["review"],
                record_id=r["record_id"] or f"ur_row{r['id']}",
                unit=r["unit"],
                metered_by=r["metered_by"],
            )
            for r in rows
        ]

    @_bounded("read", report=True)
    async def overview(self, since_day: str, since: float) -> Overview:
        def run() -> Query[tuple[list[Row], list[Row], list[Row]]]:
            spent = yield from fetch(
                "SELECT d.day, COALESCE(SUM(d.provider_nanos), 0),"
                " COALESCE(SUM(d.charged_nanos), 0)"
                " FROM spend_days d WHERE d.day >= :since_day GROUP BY d.day",
                since_day=since_day,
            )
            counted = yield from fetch(
                f"SELECT {_START_DAY} AS day_number, COUNT(*) FROM sessions s"
                " WHERE s.started_at >= :since GROUP BY 1",
                since=since,
            )
            tallies = yield from fetch(
                "SELECT close_code, close_reason, COUNT(*) AS n FROM sessions"
                " WHERE started_at >= :since GROUP BY close_code, close_reason"
                " ORDER BY n DESC, close_code LIMIT :limit",
                since=since,
                limit=MAX_CLOSE_TALLIES,
            )
            return spent, counted, tallies

        spent, counted, tallies = await self.db.run(run())
        money = {r[0]: (int(r[1]), int(r[2])) for r in spent}
        counts = {utc_day(int(r[0]) * SECONDS_PER_DAY): int(r[1]) for r in counted}
        days = tuple(
            DayTotals(d, counts.get(d, 0), *money.get(d, (0, 0)))
            for d in sorted(set(money) | set(counts))
            if d >= since_day
        )
        return Overview(
            days,
            tuple(CloseTally(r["close_code"], r["close_reason"], int(r["n"])) for r in tallies),
        )

    @_bounded("read", report=True)
    async def key_activity(self, day: str, month_start: str) -> list[KeyActivity]:
        def run() -> Query[tuple[list[Row], list[Row]]]:
            spent = yield from fetch(
                f"SELECT d.key_id, {_SPEND} FROM spend_days d GROUP BY d.key_id",
                day=day,
                month_start=month_start,
            )
            used = yield from fetch(
                "SELECT key_id, COUNT(*), MAX(started_at) FROM sessions GROUP BY key_id"
            )
            return spent, used

        spent_rows, used_rows = await self.db.run(run())
        spent = {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in spent_rows}
        last = {r[0]: (int(r[1]), r[2]) for r in used_rows}
        return [
            KeyActivity(k, spent.get(k, (0, 0, 0)), *last.get(k, (0, None)))
            for k in sorted(set(spent) | set(last))
        ]

    # -- console sign-ins -----------------------------------------------------------------------
    @_bounded("write")
    async def add_console_session(self, value_hash: str, now: float, expires_at: float) -> None:
        def run() -> Query[None]:
            yield Statement("DELETE FROM console_sessions WHERE expires_at <= :now", {"now": now})
            yield Statement(
                "INSERT INTO console_sessions (value_hash, created_at, expires_at)"
                " VALUES (:hash, :now, :expires_at)",
                {"hash": value_hash, "now": now, "expires_at": expires_at},
            )

        await self.db.run(run(), write=True)

    @_bounded("read")
    async def console_session(self, value_hash: str, now: float) -> bool:
        row = await self._first(
            "SELECT expires_at FROM console_sessions WHERE value_hash = :hash", hash=value_hash
        )
        return row is not None and now < row[0]

    @_bounded("write")
    async def end_console_session(self, value_hash: str) -> None:
        await self.db.run(
            fetch("DELETE FROM console_sessions WHERE value_hash = :hash", hash=value_hash),
            write=True,
        )

    # -- instances and their lost sessions (rtgate.lost_sessions) -------------------------------
    @_bounded("write")
    async def beat(self, instance: str, now: float) -> None:
        await self.db.run(fetch(BEAT, id=instance, now=now), write=True)

    @_bounded("write")
    async def end_lost_sessions(self, seen_since: float, opened_before: float) -> int:
        def run() -> Query[int]:
            rows = yield from fetch(LOST_SESSIONS, seen_since=seen_since, before=opened_before)
            # In id order: two instances sweeping at once lock the rows in one order.
            ends = sorted(lost_rows(rows), key=lambda r: r["b_id"])
            if ends:
                yield Statement(END_LOST, many=ends)
            yield Statement(FORGET_INSTANCES, {"seen_since": seen_since})
            return len(ends)

        return await self.db.run(run(), write=True)

    @_bounded("write")
    async def leave(self, instance: str) -> None:
        await self.db.run(fetch("DELETE FROM instances WHERE id = :id", id=instance), write=True)


def _session_totals(session_ids: Sequence[str]) -> Query[dict[str, tuple[Usage, int, int]]]:
    """Usage, provider and charged nano-dollars of these sessions (along ix_usage_session)."""
    if not session_ids:
        return {}
    names = {f"s{i}": sid for i, sid in enumerate(session_ids)}
    rows = yield from fetch(
        f"SELECT u.session_id, {_MONEY}, {_SUMS} FROM usage_records u"
        f" WHERE u.session_id IN ({', '.join(f':{n}' for n in names)}) GROUP BY u.session_id",
        **names,
    )
    return {
        r["session_id"]: (usage_of(r), int(r["provider_nanos"]), int(r["charged_nanos"]))
        for r in rows
    }
