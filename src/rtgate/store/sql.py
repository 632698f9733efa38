"""The SQL adapter of the ``Store`` port, on SQLAlchemy Core (async).

SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed transaction is in the WAL file
before the commit returns, so it survives the gateway being killed (``tests/test_durability.py``);
only an OS crash or power loss can take the last commits, which is the price of not fsyncing
every session open. PostgreSQL goes through asyncpg, with its own durability settings.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, case, event, func, inspect, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from rtgate.errors import GatewayError
from rtgate.metering.record import UsageRecord
from rtgate.protocol.transcript import TranscriptEntry
from rtgate.protocol.usage import TOKEN_FIELDS, Usage
from rtgate.store.port import (
    KeyInfo,
    SessionOpen,
    SessionSummary,
    StoredCall,
    StoredClientSecret,
    UsageSummary,
)
from rtgate.store.schema import (
    api_keys,
    calls,
    client_secrets,
    metadata,
    sessions,
    transcript_entries,
    usage_records,
)


class StoreError(GatewayError):
    """The database failed; mapped from SQLAlchemy at this boundary."""

    code = "store_unavailable"


# What a database call can raise: the driver's errors (wrapped by SQLAlchemy), the OS, and
# values the driver cannot bind (an int past BIGINT raises OverflowError in sqlite3).
_DB_ERRORS = (SQLAlchemyError, OSError, OverflowError, ValueError, TypeError)


@contextlib.asynccontextmanager
async def _mapped(what: str) -> AsyncIterator[None]:
    try:
        yield
    except _DB_ERRORS as exc:
        raise StoreError(f"cannot {what}: {type(exc).__name__}") from exc


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def _key(row: Row[Any]) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        name=row.name,
        display_prefix=row.display_prefix,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        policy_json=row.policy,
    )


def _migrate(conn: Connection) -> None:
    """Columns and indexes added after a table first shipped (create_all does not alter
    tables; it does create the tables added since, such as ``calls``)."""
    have = {c["name"] for c in inspect(conn).get_columns("api_keys")}
    if "policy" not in have:
        conn.execute(text("ALTER TABLE api_keys ADD COLUMN policy TEXT"))
    have = {c["name"] for c in inspect(conn).get_columns("client_secrets")}
    if "revoked_at" not in have:
        conn.execute(text("ALTER TABLE client_secrets ADD COLUMN revoked_at FLOAT"))
    have = {c["name"] for c in inspect(conn).get_columns("usage_records")}
    if "review" not in have:
        conn.execute(text("ALTER TABLE usage_records ADD COLUMN review VARCHAR(40)"))
    # Nor does it add an index to a table that exists (ix_client_secrets_key_id came later).
    for table in metadata.sorted_tables:
        for index in table.indexes:
            index.create(conn, checkfirst=True)


def _client_secret(m: Mapping[Any, Any]) -> StoredClientSecret:
    c = client_secrets.c
    return StoredClientSecret(
        secret_hash=m[c.secret_hash],
        key_id=m[c.key_id],
        model=m[c.model],
        session_json=m[c.session],
        created_at=m[c.created_at],
        expires_at=m[c.expires_at],
        revoked_at=m[c.revoked_at],
    )


async def _one_by_prefix(conn: AsyncConnection, hash_prefix: str) -> StoredClientSecret | None:
    """The one client secret whose hash starts with ``hash_prefix`` (a secret's id); None if no
    secret, or more than one, matches."""
    c = client_secrets.c
    # A hex prefix: no LIKE wildcards can hide in it (the caller checked its shape).
    match = c.secret_hash.startswith(hash_prefix, autoescape=True)
    rows = (await conn.execute(select(client_secrets).where(match).limit(2))).all()
    return _client_secret(rows[0]._mapping) if len(rows) == 1 else None


def _call(row: Row[Any]) -> StoredCall:
    return StoredCall(
        call_id=row.call_id,
        key_id=row.key_id,
        secret_id=row.secret_id,
        model=row.model,
        upstream=row.upstream,
        created_at=row.created_at,
    )


def _usage_from_row(row: Row[Any]) -> Usage:
    return Usage("response", *(int(getattr(row, f) or 0) for f in TOKEN_FIELDS))


_SUMS = [func.coalesce(func.sum(getattr(usage_records.c, f)), 0).label(f) for f in TOKEN_FIELDS]


class SqlStore:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"echo": echo}
        if url.startswith("postgresql"):
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        elif url.startswith("sqlite"):
            # SQLite has one writer. Several pooled connections would queue on its file lock
            # (and give up after busy_timeout under a burst of connects); one connection
            # queues the same work in the event loop instead, in order and without failing.
            kwargs.update(pool_size=1, max_overflow=0, pool_timeout=60)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    async def init(self) -> None:
        async with _mapped("open the database"), self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.run_sync(_migrate)

    async def close(self) -> None:
        await self.engine.dispose()

    # -- keys -----------------------------------------------------------------------------------
    async def create_key(
        self,
        key_id: str,
        name: str,
        display_prefix: str,
        key_hash: str,
        now: float,
        policy_json: str | None = None,
    ) -> KeyInfo:
        async with _mapped("write"), self.engine.begin() as conn:
            await conn.execute(
                api_keys.insert().values(
                    id=key_id,
                    name=name,
                    display_prefix=display_prefix,
                    key_hash=key_hash,
                    created_at=now,
                    revoked_at=None,
                    policy=policy_json,
                )
            )
        return KeyInfo(key_id, name, display_prefix, now, None, policy_json)

    async def list_keys(self, include_revoked: bool = True) -> list[KeyInfo]:
        q = select(api_keys).order_by(api_keys.c.created_at)
        if not include_revoked:
            q = q.where(api_keys.c.revoked_at.is_(None))
        async with _mapped("read"), self.engine.connect() as conn:
            return [_key(r) for r in (await conn.execute(q)).all()]

    async def get_key(self, key_id: str) -> KeyInfo | None:
        async with _mapped("read"), self.engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return _key(row) if row else None

    async def key_by_hash(self, key_hash: str) -> tuple[KeyInfo, str] | None:
        async with _mapped("read"), self.engine.connect() as conn:
            row = (
                await conn.execute(select(api_keys).where(api_keys.c.key_hash == key_hash))
            ).first()
        return (_key(row), row.key_hash) if row else None

    async def revoke_key(self, key_id: str, now: float) -> KeyInfo | None:
        async with _mapped("write"), self.engine.begin() as conn:
            await conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return _key(row) if row else None

    async def set_key_policy(self, key_id: str, policy_json: str | None) -> KeyInfo | None:
        async with _mapped("write"), self.engine.begin() as conn:
            await conn.execute(
                api_keys.update().where(api_keys.c.id == key_id).values(policy=policy_json)
            )
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return _key(row) if row else None

    # -- client secrets ---------------------------------------------------------------------------
    async def add_client_secret(self, row: StoredClientSecret) -> None:
        async with _mapped("write"), self.engine.begin() as conn:
            # Expired secrets can open nothing; drop them as new ones arrive.
            await conn.execute(
                client_secrets.delete().where(client_secrets.c.expires_at <= row.created_at)
            )
            await conn.execute(
                client_secrets.insert().values(
                    secret_hash=row.secret_hash,
                    key_id=row.key_id,
                    model=row.model,
                    session=row.session_json,
                    created_at=row.created_at,
                    expires_at=row.expires_at,
                )
            )

    async def client_secret_by_hash(
        self, secret_hash: str
    ) -> tuple[StoredClientSecret, KeyInfo] | None:
        c = client_secrets.c
        q = (
            select(client_secrets, api_keys)
            .select_from(client_secrets.join(api_keys, api_keys.c.id == c.key_id))
            .where(c.secret_hash == secret_hash)
        )
        async with _mapped("read"), self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        if row is None:
            return None
        m = row._mapping
        secret = _client_secret(m)
        k = api_keys.c
        key = KeyInfo(
            id=m[k.id],
            name=m[k.name],
            display_prefix=m[k.display_prefix],
            created_at=m[k.created_at],
            revoked_at=m[k.revoked_at],
            policy_json=m[k.policy],
        )
        return secret, key

    async def list_client_secrets(self, key_id: str | None, now: float) -> list[StoredClientSecret]:
        c = client_secrets.c
        q = select(client_secrets).where(c.expires_at > now)
        if key_id is not None:
            q = q.where(c.key_id == key_id)
        q = q.order_by(c.created_at.desc(), c.secret_hash)
        async with _mapped("read"), self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [_client_secret(r._mapping) for r in rows]

    async def client_secret_by_id(self, hash_prefix: str) -> StoredClientSecret | None:
        async with _mapped("read"), self.engine.connect() as conn:
            return await _one_by_prefix(conn, hash_prefix)

    async def revoke_client_secret(self, hash_prefix: str, now: float) -> StoredClientSecret | None:
        c = client_secrets.c
        async with _mapped("write"), self.engine.begin() as conn:
            row = await _one_by_prefix(conn, hash_prefix)
            if row is None:
                return None
            if row.revoked_at is None:
                # Only a secret not revoked yet: a concurrent revocation keeps its first time.
                done = await conn.execute(
                    client_secrets.update()
                    .where(c.secret_hash == row.secret_hash, c.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
                row = (
                    replace(row, revoked_at=now)
                    if done.rowcount
                    else await _one_by_prefix(conn, hash_prefix)
                )
        return row

    # -- calls ----------------------------------------------------------------------------------
    async def claim_call(self, call: StoredCall) -> StoredCall:
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        # INSERT .. ON CONFLICT DO NOTHING: a concurrent claim waits for this one's commit
        # (PostgreSQL) or the file lock (SQLite), then stores nothing; the read after it sees
        # whichever claim was stored (READ COMMITTED reads each statement afresh).
        claim = (
            dialect.insert(calls)
            .values(
                call_id=call.call_id,
                key_id=call.key_id,
                secret_id=call.secret_id,
                model=call.model,
                upstream=call.upstream,
                created_at=call.created_at,
            )
            .on_conflict_do_nothing(index_elements=[calls.c.call_id])
        )
        async with _mapped("write"), self.engine.begin() as conn:
            await conn.execute(claim)
            row = (await conn.execute(select(calls).where(calls.c.call_id == call.call_id))).one()
        return _call(row)

    async def call_owner(self, call_id: str) -> StoredCall | None:
        async with _mapped("read"), self.engine.connect() as conn:
            row = (await conn.execute(select(calls).where(calls.c.call_id == call_id))).first()
        return _call(row) if row else None

    async def release_call(self, call_id: str, key_id: str) -> None:
        async with _mapped("write"), self.engine.begin() as conn:
            await conn.execute(
                calls.delete().where(calls.c.call_id == call_id, calls.c.key_id == key_id)
            )

    async def spend(self, key_id: str, day: str, month_start: str) -> tuple[int, int, int]:
        u = usage_records.c
        q = select(
            func.coalesce(func.sum(case((u.day == day, u.charged_nanos), else_=0)), 0),
            func.coalesce(func.sum(case((u.day >= month_start, u.charged_nanos), else_=0)), 0),
            func.coalesce(func.sum(u.charged_nanos), 0),
        ).where(u.key_id == key_id)
        async with _mapped("read"), self.engine.connect() as conn:
            row = (await conn.execute(q)).one()
        return int(row[0]), int(row[1]), int(row[2])

    # -- sessions and usage -----------------------------------------------------------------------
    async def open_session(self, s: SessionOpen) -> None:
        async with _mapped("write"), self.engine.begin() as conn:
            await conn.execute(
                sessions.insert().values(
                    id=s.id,
                    key_id=s.key_id,
                    model=s.model,
                    upstream=s.upstream,
                    intent=s.intent,
                    started_at=s.started_at,
                )
            )

    async def close_session(
        self, session_id: str, ended_at: float, code: int | None, reason: str, closed_by: str
    ) -> None:
        async with _mapped("write"), self.engine.begin() as conn:
            await conn.execute(
                sessions.update()
                .where(sessions.c.id == session_id)
                .values(
                    ended_at=ended_at,
                    close_code=code,
                    close_reason=reason[:300],
                    closed_by=closed_by,
                )
            )

    async def add_usage(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        rows = [
            {
                "session_id": r.session_id,
                "key_id": r.key_id,
                "model": r.model,
                "price_key": r.price_key,
                "kind": r.usage.kind,
                "day": utc_day(r.created_at),
                "created_at": r.created_at,
                "ref": r.ref,
                "provider_nanos": r.provider_nanos,
                "charged_nanos": r.charged_nanos,
                "review": r.review,
                **{f: getattr(r.usage, f) for f in TOKEN_FIELDS},
            }
            for r in records
        ]
        async with _mapped("write usage"), self.engine.begin() as conn:
            await conn.execute(usage_records.insert(), rows)

    async def add_transcript(self, entries: Sequence[TranscriptEntry]) -> None:
        if not entries:
            return
        rows = [
            {
                "session_id": e.session_id,
                "key_id": e.key_id,
                "seq": e.seq,
                "created_at": e.created_at,
                "role": e.role,
                "kind": e.kind,
                "item_id": (e.item_id or "")[:100] or None,
                "text": e.text,
                "data": e.data,
            }
            for e in entries
        ]
        async with _mapped("write transcript"), self.engine.begin() as conn:
            await conn.execute(transcript_entries.insert(), rows)

    async def session_transcript(self, session_id: str) -> list[TranscriptEntry]:
        t = transcript_entries.c
        q = select(transcript_entries).where(t.session_id == session_id).order_by(t.seq)
        async with _mapped("read"), self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
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
            for r in rows
        ]

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
                func.count().label("records"),
                func.count(u.review).label("needs_review"),
                func.coalesce(func.sum(u.provider_nanos), 0).label("provider_nanos"),
                func.coalesce(func.sum(u.charged_nanos), 0).label("charged_nanos"),
                *_SUMS,
            )
            .select_from(usage_records.join(api_keys, api_keys.c.id == u.key_id))
            .group_by(u.key_id, api_keys.c.name, u.model, u.day)
            .order_by(u.day, api_keys.c.name, u.model)
        )
        if key_id:
            q = q.where(u.key_id == key_id)
        if since_day:
            q = q.where(u.day >= since_day)
        async with _mapped("read"), self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [
            UsageSummary(
                key_id=r.key_id,
                key_name=r.key_name,
                model=r.model,
                day=r.day,
                usage=_usage_from_row(r),
                records=int(r.records),
                needs_review=int(r.needs_review),
                provider_nanos=int(r.provider_nanos),
                charged_nanos=int(r.charged_nanos),
            )
            for r in rows
        ]

    async def recent_sessions(
        self, limit: int = 50, key_id: str | None = None, session_id: str | None = None
    ) -> list[SessionSummary]:
        u = usage_records.c
        totals = (
            select(
                u.session_id,
                func.coalesce(func.sum(u.provider_nanos), 0).label("provider_nanos"),
                func.coalesce(func.sum(u.charged_nanos), 0).label("charged_nanos"),
                *_SUMS,
            )
            .group_by(u.session_id)
            .subquery()
        )
        s = sessions.c
        q = (
            select(sessions, api_keys.c.name.label("key_name"), totals)
            .select_from(
                sessions.join(api_keys, api_keys.c.id == s.key_id).outerjoin(
                    totals, totals.c.session_id == s.id
                )
            )
            .order_by(s.started_at.desc())
            .limit(limit)
        )
        if key_id:
            q = q.where(s.key_id == key_id)
        if session_id:
            q = q.where(s.id == session_id)
        async with _mapped("read"), self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        out = []
        for r in rows:
            m = r._mapping
            out.append(
                SessionSummary(
                    id=m[s.id],
                    key_id=m[s.key_id],
                    key_name=m["key_name"],
                    model=m[s.model],
                    upstream=m[s.upstream],
                    intent=m[s.intent],
                    started_at=m[s.started_at],
                    ended_at=m[s.ended_at],
                    close_code=m[s.close_code],
                    close_reason=m[s.close_reason],
                    closed_by=m[s.closed_by],
                    usage=Usage("response", *(int(m[totals.c[f]] or 0) for f in TOKEN_FIELDS)),
                    provider_nanos=int(m[totals.c.provider_nanos] or 0),
                    charged_nanos=int(m[totals.c.charged_nanos] or 0),
                )
            )
        return out
