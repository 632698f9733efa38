"""What a stored record is as a row, both ways: the port's records from the rows a query
returns (by column name), and the rows ``Store.write`` inserts from a batch of entries with the
statements it runs (their keys are the statements' parameters: the tables' columns, and
``CLOSE_SESSION``'s)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rtgate.metering.record import UsageRecord, utc_day
from rtgate.protocol.transcript import TranscriptEntry
from rtgate.protocol.usage import USAGE_FIELDS, Usage
from rtgate.store.connections import Row
from rtgate.store.port import (
    KeyInfo,
    SessionClose,
    SessionOpen,
    StoredCall,
    StoredClientSecret,
)

#: A key's columns, named as ``key_info`` reads them (a join renames its own columns apart).
KEY_COLUMNS = "id, name, display_prefix, created_at, revoked_at, policy"
#: A client secret's columns, as ``client_secret`` reads them (a minted secret's row).
MINTED_COLUMNS = "secret_hash, key_id, model, session, created_at, expires_at, revoked_at"


def key_info(row: Row, prefix: str = "") -> KeyInfo:
    """The key in a row, its columns named with ``prefix`` (a join renames them apart from
    another table's ``created_at`` and ``revoked_at``)."""
    return KeyInfo(
        id=row[f"{prefix}id"],
        name=row[f"{prefix}name"],
        display_prefix=row[f"{prefix}display_prefix"],
        created_at=row[f"{prefix}created_at"],
        revoked_at=row[f"{prefix}revoked_at"],
        policy_json=row[f"{prefix}policy"],
    )


def client_secret(row: Row) -> StoredClientSecret:
    return StoredClientSecret(
        secret_hash=row["secret_hash"],
        key_id=row["key_id"],
        model=row["model"],
        session_json=row["session"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )


def stored_call(row: Row) -> StoredCall:
    return StoredCall(
        call_id=row["call_id"],
        key_id=row["key_id"],
        secret_id=row["secret_id"],
        model=row["model"],
        upstream=row["upstream"],
        created_at=row["created_at"],
        accepted_at=row["accepted_at"],
    )


def usage_of(row: Row) -> Usage:
    """The usage columns (or their sums, named as the columns) of a row."""
    return Usage("response", *(int(row[f] or 0) for f in USAGE_FIELDS))


def insert_once(table: str, columns: Sequence[str], unique: str) -> str:
    """An INSERT of ``columns`` (parameters named as them) that skips a row whose ``unique``
    columns are already there: a replay stores nothing twice."""
    names = ", ".join(columns)
    values = ", ".join(f":{c}" for c in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({values}) ON CONFLICT ({unique}) DO NOTHING"


def open_rows(opens: Sequence[SessionOpen]) -> list[dict[str, Any]]:
    return [
        {
            "id": s.id,
            "key_id": s.key_id,
            "model": s.model,
            "upstream": s.upstream,
            "intent": s.intent,
            "started_at": s.started_at,
            "instance": s.instance,
        }
        for s in opens
    ]


OPEN_SESSION = insert_once(
    "sessions", ("id", "key_id", "model", "upstream", "intent", "started_at", "instance"), "id"
)


def usage_rows(records: Sequence[UsageRecord]) -> list[dict[str, Any]]:
    """The records' rows in key and day order (a key's rows in the order given): each row adds
    to its key's day in ``spend_days`` (``schema.SPEND_TRIGGER``), which locks that row until
    the batch commits, so every batch takes those locks in one order and two instances'
    batches queue on PostgreSQL instead of deadlocking."""
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
            "record_id": r.record_id,
            "review": r.review,
            "unit": r.unit,
            "metered_by": r.metered_by,
            **{f: getattr(r.usage, f) for f in USAGE_FIELDS},
        }
        for r in records
    ]
    rows.sort(key=_key_day)
    return rows


def _key_day(row: dict[str, Any]) -> tuple[str, str]:
    return row["key_id"], row["day"]


ADD_USAGE = insert_once(
    "usage_records",
    (
        "session_id",
        "key_id",
        "model",
        "price_key",
        "kind",
        "day",
        "created_at",
        "ref",
        "provider_nanos",
        "charged_nanos",
        "record_id",
        "review",
        "unit",
        "metered_by",
        *USAGE_FIELDS,
    ),
    "record_id",
)


def transcript_rows(entries: Sequence[TranscriptEntry]) -> list[dict[str, Any]]:
    return [
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


ADD_TRANSCRIPT = insert_once(
    "transcript_entries",
    ("session_id", "key_id", "seq", "created_at", "role", "kind", "item_id", "text", "data"),
    "session_id, seq",
)

# Writing a session's end again writes the same values: a replay changes nothing.
CLOSE_SESSION = (
    "UPDATE sessions SET ended_at = :b_ended_at, close_code = :b_code,"
    " close_reason = :b_reason, closed_by = :b_by WHERE id = :b_id"
)


def close_rows(closes: Sequence[SessionClose]) -> list[dict[str, Any]]:
    """In id order, as the sweep of lost sessions updates them (``END_LOST``): two
    transactions ending the same sessions on PostgreSQL queue instead of deadlocking."""
    rows = [
        {
            "b_id": c.id,
            "b_ended_at": c.ended_at,
            "b_code": c.code,
            "b_reason": c.reason[:300],
            "b_by": c.closed_by,
        }
        for c in closes
    ]
    rows.sort(key=_id)
    return rows


def _id(row: dict[str, Any]) -> str:
    return str(row["b_id"])


# -- instances (rtgate.lost_sessions) -----------------------------------------------------------
BEAT = (
    "INSERT INTO instances (id, started_at, seen_at) VALUES (:id, :now, :now)"
    " ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at"
)

LOST_BATCH = 500

#: Open sessions no serving process relays: their instance was last seen before
#: ``:seen_since`` or is unknown (gone, and forgotten by an earlier sweep), or they name none
#: and opened before ``:before``. With what each is known to have lived until.
LOST_SESSIONS = (
    "SELECT s.id, s.started_at, i.seen_at,"
    " (SELECT MAX(u.created_at) FROM usage_records u WHERE u.session_id = s.id) AS last_use"
    " FROM sessions s LEFT JOIN instances i ON i.id = s.instance"
    " WHERE s.ended_at IS NULL AND ("
    " (s.instance IS NOT NULL AND s.started_at < :seen_since"
    "  AND (i.id IS NULL OR i.seen_at < :seen_since))"
    " OR (s.instance IS NULL AND s.started_at < :before))"
    # A sweep is one transaction within the store's deadline: a backlog goes a batch a beat.
    f" LIMIT {LOST_BATCH}"
)

#: The close a session's own would have written (1006: it ended with no close frame, RFC 6455
#: 7.4.1); a close that lands meanwhile, or later from a spill, is the one kept.
LOST_REASON = "gateway_instance_lost"
END_LOST = (
    "UPDATE sessions SET ended_at = :b_ended_at, close_code = 1006,"
    f" close_reason = '{LOST_REASON}', closed_by = 'gateway'"
    " WHERE id = :b_id AND ended_at IS NULL"
)

FORGET_INSTANCES = "DELETE FROM instances WHERE seen_at < :seen_since"


def lost_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Each lost session's end: the latest moment it is known to have been relayed."""
    return [{"b_id": r[0], "b_ended_at": max(r[1], r[2] or r[1], r[3] or r[1])} for r in rows]
