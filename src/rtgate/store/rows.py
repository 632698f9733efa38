"""What a stored record is as a row, both ways: the port's records from the rows a query
returns, and the rows ``Store.write`` inserts from a batch of entries (their keys are the
statements' parameters: the tables' columns, and ``CLOSE_SESSION``'s)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.engine import Row

from rtgate.metering.record import UsageRecord, utc_day
from rtgate.protocol.transcript import TranscriptEntry
from rtgate.protocol.usage import USAGE_FIELDS, Usage
from rtgate.store.port import (
    KeyInfo,
    SessionClose,
    SessionOpen,
    StoredCall,
    StoredClientSecret,
)
from rtgate.store.schema import api_keys, client_secrets, sessions


def key_info(m: Mapping[Any, Any]) -> KeyInfo:
    """The key in a row's mapping, by column: the row may join another table whose columns
    share its names (``created_at``, ``revoked_at``)."""
    k = api_keys.c
    return KeyInfo(
        id=m[k.id],
        name=m[k.name],
        display_prefix=m[k.display_prefix],
        created_at=m[k.created_at],
        revoked_at=m[k.revoked_at],
        policy_json=m[k.policy],
    )


def client_secret(m: Mapping[Any, Any]) -> StoredClientSecret:
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


def stored_call(row: Row[Any]) -> StoredCall:
    return StoredCall(
        call_id=row.call_id,
        key_id=row.key_id,
        secret_id=row.secret_id,
        model=row.model,
        upstream=row.upstream,
        created_at=row.created_at,
    )


def usage_of(row: Row[Any]) -> Usage:
    return Usage("response", *(int(getattr(row, f) or 0) for f in USAGE_FIELDS))


def open_rows(opens: Sequence[SessionOpen]) -> list[dict[str, Any]]:
    return [
        {
            "id": s.id,
            "key_id": s.key_id,
            "model": s.model,
            "upstream": s.upstream,
            "intent": s.intent,
            "started_at": s.started_at,
        }
        for s in opens
    ]


def usage_rows(records: Sequence[UsageRecord]) -> list[dict[str, Any]]:
    return [
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


# Writing a session's end again writes the same values: a replay changes nothing.
CLOSE_SESSION = (
    sessions.update()
    .where(sessions.c.id == bindparam("b_id"))
    .values(
        ended_at=bindparam("b_ended_at"),
        close_code=bindparam("b_code"),
        close_reason=bindparam("b_reason"),
        closed_by=bindparam("b_by"),
    )
)


def close_rows(closes: Sequence[SessionClose]) -> list[dict[str, Any]]:
    return [
        {
            "b_id": c.id,
            "b_ended_at": c.ended_at,
            "b_code": c.code,
            "b_reason": c.reason[:300],
            "b_by": c.closed_by,
        }
        for c in closes
    ]
