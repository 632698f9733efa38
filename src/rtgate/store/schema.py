"""Tables. Money columns are integer nano-dollars; times are unix seconds (float)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("display_prefix", String(40), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    #: The key's policy as JSON (``rtgate.auth.policy.KeyPolicy``); NULL means none.
    Column("policy", Text, nullable=True),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("key_id", String(40), ForeignKey("api_keys.id"), nullable=False),
    Column("model", String(200), nullable=False),
    Column("upstream", String(100), nullable=False),
    Column("intent", String(40), nullable=True),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float, nullable=True),
    Column("close_code", Integer, nullable=True),
    Column("close_reason", String(300), nullable=True),
    Column("closed_by", String(20), nullable=True),
    Index("ix_sessions_started_at", "started_at"),
    Index("ix_sessions_key_id", "key_id"),
    #: A key's sessions newest first, and its last session, without reading the others.
    Index("ix_sessions_key_started", "key_id", "started_at"),
)

usage_records = Table(
    "usage_records",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(40), ForeignKey("sessions.id"), nullable=False),
    Column("key_id", String(40), ForeignKey("api_keys.id"), nullable=False),
    Column("model", String(200), nullable=False),
    Column("price_key", String(200), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("day", String(10), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("ref", String(100), nullable=True),
    Column("text_in", BigInteger, nullable=False, default=0),
    Column("text_in_cached", BigInteger, nullable=False, default=0),
    Column("audio_in", BigInteger, nullable=False, default=0),
    Column("audio_in_cached", BigInteger, nullable=False, default=0),
    Column("image_in", BigInteger, nullable=False, default=0),
    Column("image_in_cached", BigInteger, nullable=False, default=0),
    Column("text_out", BigInteger, nullable=False, default=0),
    Column("audio_out", BigInteger, nullable=False, default=0),
    Column("audio_ms", BigInteger, nullable=False, default=0),
    Column("provider_nanos", BigInteger, nullable=False),
    Column("charged_nanos", BigInteger, nullable=False),
    #: ``UsageRecord.record_id``: a replayed record (a drained spill) is not counted twice. NULL
    #: on rows written before records had ids.
    Column("record_id", String(40), nullable=True),
    #: Why the event's usage wants an operator's review (``rtgate.metering.record.Review``);
    #: NULL when it was read in full.
    Column("review", String(40), nullable=True),
    #: What the usage counts in, as priced (``UsageRecord.unit``): ``token``, ``second`` or
    #: ``minute``.
    Column("unit", String(10), nullable=False, server_default="token"),
    #: Who counted the usage (``UsageRecord.metered_by``): ``provider``, or ``gateway`` where
    #: the provider reports none (a translation's input audio).
    Column("metered_by", String(10), nullable=False, server_default="provider"),
    Index("ix_usage_session", "session_id"),
    Index("ix_usage_key_day", "key_id", "day"),
    #: Spend per day across keys (the console's overview) reads a range of days only.
    Index("ix_usage_day", "day"),
    Index("ux_usage_record_id", "record_id", unique=True),
)

transcript_entries = Table(
    "transcript_entries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(40), ForeignKey("sessions.id"), nullable=False),
    Column("key_id", String(40), ForeignKey("api_keys.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("role", String(20), nullable=False),
    Column("kind", String(40), nullable=False),
    Column("item_id", String(100), nullable=True),
    Column("text", Text, nullable=False),
    #: Extra JSON: a function call's arguments, a turn's usage.
    Column("data", Text, nullable=True),
    #: Unique, so a replayed entry (a drained spill) is written once.
    Index("ux_transcript_session_seq", "session_id", "seq", unique=True),
)

#: Ephemeral secrets minted by ``POST /v1/realtime/client_secrets`` and the beta routes: only the
#: SHA-256 of the secret is kept (``rtgate.auth.client_secrets``).
client_secrets = Table(
    "client_secrets",
    metadata,
    Column("secret_hash", String(64), primary_key=True),
    Column("key_id", String(40), ForeignKey("api_keys.id"), nullable=False),
    Column("model", String(200), nullable=True),
    #: The session template: a GA session object as JSON.
    Column("session", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    #: Set when an operator revokes this one secret (its key may go on minting others).
    Column("revoked_at", Float, nullable=True),
    Index("ix_client_secrets_expires_at", "expires_at"),
    Index("ix_client_secrets_key_id", "key_id"),
)

#: Who each call belongs to (``rtgate.relay.calls``): the key that placed it through
#: ``POST /v1/realtime/calls`` or accepted it (SIP). Only that key, or a secret it minted, may
#: attach a sideband to the call or act on it, on any instance sharing this database.
calls = Table(
    "calls",
    metadata,
    Column("call_id", String(128), primary_key=True),
    Column("key_id", String(40), ForeignKey("api_keys.id"), nullable=False),
    #: The id (``cs_…``) of the client secret that placed it, if one did.
    Column("secret_id", String(40), nullable=True),
    #: The client-facing model and the upstream's name, to reach the call again.
    Column("model", String(200), nullable=False),
    Column("upstream", String(100), nullable=False),
    Column("created_at", Float, nullable=False),
)

#: Signed-in sessions of the operator console (``rtgate.web.signin``): the SHA-256 of the cookie's
#: value, never the value, so the table cannot be replayed into a browser. Shared by every
#: process, so a sign-in holds on any worker and a sign-out ends it on all.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("value_hash", String(64), primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Index("ix_console_sessions_expires_at", "expires_at"),
)
