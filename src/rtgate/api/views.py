"""How keys, client secrets, usage and sessions look to the outside: ``--json`` on the CLI
and the admin API.

Each view is a msgspec struct, so both surfaces render one row type the same way, and the admin
API's OpenAPI document is generated from the very classes that produce its responses. Times are
UTC ISO 8601 (``2026-01-31T12:00:00Z``); money is a USD decimal string with nine places, never a
float.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import orjson
from msgspec import Meta

from rtgate.auth.client_secrets import secret_id, shown_template
from rtgate.auth.policy import KeyPolicy, expired, policy_view
from rtgate.clock import rfc3339
from rtgate.config import PriceUnit
from rtgate.metering.cost import usd_str
from rtgate.protocol.transcript import TranscriptEntry
from rtgate.protocol.usage import TOKEN_FIELDS, Usage
from rtgate.store.port import KeyInfo, SessionSummary, StoredClientSecret, UsageSummary

if TYPE_CHECKING:
    from rtgate.protocol.relay_session import RelaySession

#: RFC 3339 strings; the format sits on the string type, so an optional field's schema reads
#: ``anyOf: [{type: string, format}, {type: null}]``, where tools and validators look for it.
Timestamp = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]
Day = Annotated[str, Meta(extra_json_schema={"format": "date"})]
_USD = r"^-?\d+\.\d{9}$"
#: Money: a USD decimal string with nine places.
Usd = Annotated[str, Meta(pattern=_USD)]


#: Audio billed by duration (``usage.seconds``), in seconds to the millisecond.
AudioSeconds = Annotated[float, Meta(ge=0)]


class View(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A row as shown outside; read back (another instance's live session), a field this
    version does not know is refused instead of going missing."""


class Tokens(View, frozen=True, kw_only=True):
    """Tokens by kind; input counts include their cached subsets."""

    text_in: int
    text_in_cached: int
    audio_in: int
    audio_in_cached: int
    image_in: int
    image_in_cached: int
    text_out: int
    audio_out: int

    @classmethod
    def of(cls, u: Usage) -> Tokens:
        return cls(**{f: getattr(u, f) for f in TOKEN_FIELDS})


class PolicyView(View, frozen=True, kw_only=True):
    """A key's policy in human units; ``null`` or empty means no limit."""

    models: list[str]
    max_sessions: int | None
    sessions_per_minute: int | None
    secrets_per_minute: int | None
    budget_usd_day: Usd | None
    budget_usd_month: Usd | None
    budget_usd_total: Usd | None
    max_duration_s: float | None
    expires_at: Timestamp | None
    session_defaults: dict[str, Any] | None
    blocked_events: list[str]
    keep_transcripts: bool


class KeyView(View, frozen=True, kw_only=True):
    id: str
    name: str
    #: The first characters of the secret, enough to tell keys apart.
    prefix: str
    created_at: Timestamp | None
    revoked_at: Timestamp | None
    #: Not revoked (an expired key is still active: it may be given a later expiry).
    active: bool
    #: Its policy's expiry has passed: it authenticates nothing until given a later one.
    expired: bool
    policy: PolicyView


class RevokedKey(KeyView, frozen=True, kw_only=True):
    """A key just revoked, and its live sessions this instance closed; the other instances
    close theirs within their next check of revoked keys (``api/live.py``, 5 s)."""

    closed_sessions: list[str]


class NewKeyView(KeyView, frozen=True, kw_only=True):
    """A key just created, with its secret: shown this once, never stored."""

    secret: str


class UsageRow(View, frozen=True, kw_only=True):
    """Usage of one key, model, UTC day and unit."""

    key_id: str
    key_name: str
    model: str
    day: Day
    #: What the usage counts in, as priced: ``token`` (``tokens``), or the ``second`` or
    #: ``minute`` of a row priced by duration (``audio_seconds``).
    unit: PriceUnit
    records: int
    #: Of ``records``, those whose usage could not be read in full: what they did count is in
    #: ``tokens`` and the cost; the rest wants an operator's review (README, Metering).
    needs_review: int
    tokens: Tokens
    audio_seconds: AudioSeconds
    cost_usd: Usd
    provider_cost_usd: Usd


class SessionRow(View, frozen=True, kw_only=True):
    """A recorded session; ``ended_at`` is null while it is live."""

    id: str
    key_id: str
    key_name: str
    model: str
    upstream: str
    intent: str | None
    started_at: Timestamp | None
    ended_at: Timestamp | None
    duration_s: float | None
    close_code: int | None
    close_reason: str | None
    closed_by: str | None
    tokens: Tokens
    audio_seconds: AudioSeconds
    cost_usd: Usd
    provider_cost_usd: Usd


class LiveSession(View, frozen=True, kw_only=True):
    """A session relayed right now, with what it has used so far. Another instance's session
    (with ``redis_url``) is shown as that instance last published it, at most ~1 s ago."""

    id: str
    key_id: str
    model: str
    upstream: str
    #: ``transcription``, ``webrtc`` (a call's sideband) or null (a realtime session).
    intent: str | None
    #: The client secret that opened it (its id), or null for a gateway key.
    client_secret_id: str | None
    started_at: Timestamp | None
    #: The gateway instance relaying it (``inst_`` and 12 hex digits, random per process).
    instance: str
    tokens: Tokens
    audio_seconds: AudioSeconds
    cost_usd: Usd
    provider_cost_usd: Usd


class ClosedSession(LiveSession, frozen=True, kw_only=True):
    """A live session the operator closed, as it stood, and how it ended."""

    close_code: int | None
    close_reason: str
    closed_by: str | None


class DrainView(View, frozen=True, kw_only=True):
    """The drain of the instance that answered (all its worker processes): new sessions are
    refused, live ones run until they end or until ``deadline_at``, then the process exits."""

    draining: bool
    #: The instance draining (``inst_`` and 12 hex digits).
    instance: str
    started_at: Timestamp | None
    deadline_at: Timestamp | None
    drain_seconds: float
    #: Sessions still live on the process that answered.
    live_sessions: int


class ClientSecretView(View, frozen=True, kw_only=True):
    """A minted client secret, by its id: never its value."""

    id: str
    key_id: str
    #: The session type it opens: ``realtime`` or ``transcription``.
    type: str
    model: str | None
    created_at: Timestamp | None
    expires_at: Timestamp | None
    revoked_at: Timestamp | None
    #: Whether it still opens sessions: neither it nor its key is expired or revoked.
    active: bool
    #: The session template applied to every session it opens (a GA session object); tool
    #: credentials (``authorization``, ``headers``) read ``[redacted]``.
    session: dict[str, Any]


class RevokedClientSecret(ClientSecretView, frozen=True, kw_only=True):
    """A secret just revoked, and the live sessions it had opened, which were closed."""

    closed_sessions: list[str]


class TranscriptEntryView(View, frozen=True, kw_only=True):
    """One line of a kept transcript: text only, never audio."""

    seq: int
    created_at: str
    role: str
    kind: str
    item_id: str | None
    text: str
    #: A function call's ``call_id`` and ``arguments``, or a turn's ``usage`` block.
    data: dict[str, Any] | None


class ErrorDetail(View, frozen=True, kw_only=True):
    message: str
    type: str
    code: str | None
    param: str | None


class ErrorResponse(View, frozen=True, kw_only=True):
    """OpenAI's error body."""

    error: ErrorDetail


def timestamp(t: float | None) -> str | None:
    return rfc3339(t) if t else None


def key_view(k: KeyInfo, now: float) -> KeyView:
    policy = KeyPolicy.from_json(k.policy_json)
    return KeyView(
        id=k.id,
        name=k.name,
        prefix=k.display_prefix,
        created_at=timestamp(k.created_at),
        revoked_at=timestamp(k.revoked_at),
        active=k.active,
        expired=expired(policy, now),
        policy=PolicyView(**policy_view(policy)),
    )


def new_key_view(k: KeyInfo, secret: str, now: float) -> NewKeyView:
    return NewKeyView(**msgspec.structs.asdict(key_view(k, now)), secret=secret)


def usage_row(r: UsageSummary) -> UsageRow:
    return UsageRow(
        key_id=r.key_id,
        key_name=r.key_name,
        model=r.model,
        day=r.day,
        unit=r.unit,
        records=r.records,
        needs_review=r.needs_review,
        tokens=Tokens.of(r.usage),
        audio_seconds=r.usage.audio_seconds,
        cost_usd=usd_str(r.charged_nanos),
        provider_cost_usd=usd_str(r.provider_nanos),
    )


def session_row(r: SessionSummary) -> SessionRow:
    return SessionRow(
        id=r.id,
        key_id=r.key_id,
        key_name=r.key_name,
        model=r.model,
        upstream=r.upstream,
        intent=r.intent,
        started_at=timestamp(r.started_at),
        ended_at=timestamp(r.ended_at),
        duration_s=round(r.ended_at - r.started_at, 3) if r.ended_at else None,
        close_code=r.close_code,
        close_reason=r.close_reason,
        closed_by=r.closed_by,
        tokens=Tokens.of(r.usage),
        audio_seconds=r.usage.audio_seconds,
        cost_usd=usd_str(r.charged_nanos),
        provider_cost_usd=usd_str(r.provider_nanos),
    )


def live_session(s: RelaySession, instance: str) -> LiveSession:
    return LiveSession(
        id=s.session_id,
        key_id=s.key_id,
        model=s.shown_model,
        upstream=s.route.upstream_name,
        intent=s.intent,
        client_secret_id=s.secret_id,
        started_at=timestamp(s.opened_at),
        instance=instance,
        tokens=Tokens.of(s.totals),
        audio_seconds=s.totals.audio_seconds,
        cost_usd=usd_str(s.charged_nanos),
        provider_cost_usd=usd_str(s.provider_nanos),
    )


def client_secret_view(c: StoredClientSecret, now: float, key_opens: bool) -> ClientSecretView:
    session = orjson.loads(c.session_json)
    return ClientSecretView(
        id=secret_id(c.secret_hash),
        key_id=c.key_id,
        type="transcription" if session.get("type") == "transcription" else "realtime",
        model=c.model,
        created_at=timestamp(c.created_at),
        expires_at=timestamp(c.expires_at),
        revoked_at=timestamp(c.revoked_at),
        active=key_opens and c.revoked_at is None and now < c.expires_at,
        session=shown_template(session),
    )


def transcript_entry(e: TranscriptEntry) -> TranscriptEntryView:
    return TranscriptEntryView(
        seq=e.seq,
        created_at=timestamp(e.created_at) or "",
        role=e.role,
        kind=e.kind,
        item_id=e.item_id,
        text=e.text,
        data=orjson.loads(e.data) if e.data else None,
    )


def dump(views: View | Sequence[View]) -> Any:
    """Plain JSON values, in field order."""
    return msgspec.to_builtins(views)


#: The usage CSV's columns: the row's scalars with ``tokens`` spread in place.
USAGE_CSV_COLUMNS: tuple[str, ...] = tuple(
    col
    for name in UsageRow.__struct_fields__
    for col in (Tokens.__struct_fields__ if name == "tokens" else (name,))
)


def usage_csv(rows: Sequence[UsageRow]) -> str:
    """RFC 4180 CSV with a header row (``\\r\\n`` line ends, as the csv module writes)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(USAGE_CSV_COLUMNS)
    for r in rows:
        flat = {**dump(r), **dump(r.tokens)}
        writer.writerow([flat[c] for c in USAGE_CSV_COLUMNS])
    return out.getvalue()
