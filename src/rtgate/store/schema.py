"""Tables, as DDL both databases accept. Money columns are integer nano-dollars; times are unix
seconds (float).

The text is what SQLAlchemy Core emitted for these tables when it built them (rtgate before
docs/performance.md 9.8), so a database made then and one made now have the same columns, types
and index names: ``FLOAT`` is SQLite's REAL and PostgreSQL's double precision, ``BIGINT`` and
``VARCHAR(n)`` mean the same in both. The one difference is a row id that numbers itself
(``{serial}``): SQLite's ``INTEGER PRIMARY KEY`` (the rowid), PostgreSQL's ``SERIAL``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: ``{serial}`` in each dialect.
SERIAL = {"sqlite": "INTEGER NOT NULL PRIMARY KEY", "postgresql": "SERIAL NOT NULL PRIMARY KEY"}

#: Each table's columns and constraints, in the order a table's references are created first.
TABLES: dict[str, str] = {
    "api_keys": """
        id VARCHAR(40) NOT NULL PRIMARY KEY,
        name VARCHAR(200) NOT NULL,
        display_prefix VARCHAR(40) NOT NULL,
        key_hash VARCHAR(64) NOT NULL UNIQUE,
        created_at FLOAT NOT NULL,
        revoked_at FLOAT,
        -- The key's policy as JSON (rtgate.auth.policy.KeyPolicy); NULL means none.
        policy TEXT""",
    "sessions": """
        id VARCHAR(40) NOT NULL PRIMARY KEY,
        key_id VARCHAR(40) NOT NULL REFERENCES api_keys (id),
        model VARCHAR(200) NOT NULL,
        upstream VARCHAR(100) NOT NULL,
        intent VARCHAR(40),
        started_at FLOAT NOT NULL,
        ended_at FLOAT,
        close_code INTEGER,
        close_reason VARCHAR(300),
        closed_by VARCHAR(20),
        -- The serving process that relays it (instances.id); NULL before rtgate recorded it.
        instance VARCHAR(40)""",
    "usage_records": """
        id {serial},
        session_id VARCHAR(40) NOT NULL REFERENCES sessions (id),
        key_id VARCHAR(40) NOT NULL REFERENCES api_keys (id),
        model VARCHAR(200) NOT NULL,
        price_key VARCHAR(200) NOT NULL,
        kind VARCHAR(20) NOT NULL,
        day VARCHAR(10) NOT NULL,
        created_at FLOAT NOT NULL,
        ref VARCHAR(100),
        text_in BIGINT NOT NULL,
        text_in_cached BIGINT NOT NULL,
        audio_in BIGINT NOT NULL,
        audio_in_cached BIGINT NOT NULL,
        image_in BIGINT NOT NULL,
        image_in_cached BIGINT NOT NULL,
        text_out BIGINT NOT NULL,
        audio_out BIGINT NOT NULL,
        audio_ms BIGINT NOT NULL,
        provider_nanos BIGINT NOT NULL,
        charged_nanos BIGINT NOT NULL,
        -- UsageRecord.record_id: a replayed record (a drained spill) is not counted twice.
        -- NULL on rows written before records had ids.
        record_id VARCHAR(40),
        -- Why the event's usage wants an operator's review (rtgate.metering.record.Review);
        -- NULL when it was read in full.
        review VARCHAR(40),
        -- What the usage counts in, as priced (UsageRecord.unit): token, second or minute.
        unit VARCHAR(10) NOT NULL DEFAULT 'token',
        -- Who counted the usage (UsageRecord.metered_by): provider, or gateway where the
        -- provider reports none (a translation's input audio).
        metered_by VARCHAR(10) NOT NULL DEFAULT 'provider'""",
    # A key's charged and provider spend per UTC day: the sums of its usage_records, kept by
    # SPEND_TRIGGER as each row is inserted, so a budget check reads one row per day the key
    # was used instead of every record it ever made (docs/performance.md 9.12).
    "spend_days": """
        key_id VARCHAR(40) NOT NULL,
        day VARCHAR(10) NOT NULL,
        provider_nanos BIGINT NOT NULL,
        charged_nanos BIGINT NOT NULL,
        PRIMARY KEY (key_id, day)""",
    "transcript_entries": """
        id {serial},
        session_id VARCHAR(40) NOT NULL REFERENCES sessions (id),
        key_id VARCHAR(40) NOT NULL REFERENCES api_keys (id),
        seq INTEGER NOT NULL,
        created_at FLOAT NOT NULL,
        role VARCHAR(20) NOT NULL,
        kind VARCHAR(40) NOT NULL,
        item_id VARCHAR(100),
        text TEXT NOT NULL,
        -- Extra JSON: a function call's arguments, a turn's usage.
        data TEXT""",
    # Ephemeral secrets minted by POST /v1/realtime/client_secrets and the beta routes: only
    # the SHA-256 of the secret is kept (rtgate.auth.client_secrets).
    "client_secrets": """
        secret_hash VARCHAR(64) NOT NULL PRIMARY KEY,
        key_id VARCHAR(40) NOT NULL REFERENCES api_keys (id),
        model VARCHAR(200),
        -- The session template: a GA session object as JSON.
        session TEXT NOT NULL,
        created_at FLOAT NOT NULL,
        expires_at FLOAT NOT NULL,
        -- Set when an operator revokes this one secret (its key may go on minting others).
        revoked_at FLOAT""",
    # Who each call belongs to (rtgate.relay.calls): the key that placed it through
    # POST /v1/realtime/calls or accepted it (SIP). Only that key, or a secret it minted, may
    # attach a sideband to the call or act on it, on any instance sharing this database.
    "calls": """
        call_id VARCHAR(128) NOT NULL PRIMARY KEY,
        key_id VARCHAR(40) NOT NULL REFERENCES api_keys (id),
        -- The id (cs_...) of the client secret that placed it, if one did.
        secret_id VARCHAR(40),
        -- The client-facing model and the upstream's name, to reach the call again.
        model VARCHAR(200) NOT NULL,
        upstream VARCHAR(100) NOT NULL,
        created_at FLOAT NOT NULL,
        -- When its owner's metered sideband was started: null for a SIP call claimed by an
        -- accept that has not gone through yet (its owner's next accept opens the sideband).
        accepted_at FLOAT""",
    # Each serving process, while it serves: its id (fleet.new_instance_id) and when it last
    # said it was alive (rtgate.lost_sessions). Its sessions still open once it stops being
    # seen are ended as lost.
    "instances": """
        id VARCHAR(40) NOT NULL PRIMARY KEY,
        started_at FLOAT NOT NULL,
        seen_at FLOAT NOT NULL""",
    # Signed-in sessions of the operator console (rtgate.web.signin): the SHA-256 of the
    # cookie's value, never the value, so the table cannot be replayed into a browser. Shared
    # by every process, so a sign-in holds on any worker and a sign-out ends it on all.
    "console_sessions": """
        value_hash VARCHAR(64) NOT NULL PRIMARY KEY,
        created_at FLOAT NOT NULL,
        expires_at FLOAT NOT NULL""",
}


#: What adds a usage row's money to its key's day in ``spend_days``, as the row is inserted:
#: an insert skipped by ``ON CONFLICT DO NOTHING`` (a replayed record) fires nothing, so a
#: record counts once, and the sums commit with the rows. SQLite's trigger holds the statement;
#: PostgreSQL's calls a function.
_ADD_SPEND = (
    "INSERT INTO spend_days (key_id, day, provider_nanos, charged_nanos)"
    " VALUES (NEW.key_id, NEW.day, NEW.provider_nanos, NEW.charged_nanos)"
    " ON CONFLICT (key_id, day) DO UPDATE SET"
    " provider_nanos = spend_days.provider_nanos + excluded.provider_nanos,"
    " charged_nanos = spend_days.charged_nanos + excluded.charged_nanos"
)
SPEND_TRIGGER: dict[str, tuple[str, ...]] = {
    "sqlite": (
        "CREATE TRIGGER IF NOT EXISTS usage_adds_spend AFTER INSERT ON usage_records"
        f" BEGIN {_ADD_SPEND}; END",
    ),
    "postgresql": (
        "CREATE OR REPLACE FUNCTION rtgate_usage_adds_spend() RETURNS trigger"
        f" LANGUAGE plpgsql AS $$ BEGIN {_ADD_SPEND}; RETURN NULL; END $$",
        "DROP TRIGGER IF EXISTS usage_adds_spend ON usage_records",
        "CREATE TRIGGER usage_adds_spend AFTER INSERT ON usage_records"
        " FOR EACH ROW EXECUTE FUNCTION rtgate_usage_adds_spend()",
    ),
}
#: ``spend_days`` filled in from the usage rows already there, in the transaction that adds
#: it and its trigger to a database made before them.
FILL_SPEND_DAYS = (
    "INSERT INTO spend_days (key_id, day, provider_nanos, charged_nanos)"
    " SELECT key_id, day, SUM(provider_nanos), SUM(charged_nanos) FROM usage_records"
    " GROUP BY key_id, day"
)


@dataclass(frozen=True, slots=True)
class Index:
    name: str
    table: str
    columns: str
    unique: bool = False
    #: A partial index's condition (both databases have them): only the rows it holds.
    where: str = ""

    @property
    def ddl(self) -> str:
        unique = "UNIQUE " if self.unique else ""
        where = f" WHERE {self.where}" if self.where else ""
        return (
            f"CREATE {unique}INDEX IF NOT EXISTS {self.name} ON {self.table} ({self.columns})"
            + where
        )


INDEXES = (
    Index("ix_sessions_started_at", "sessions", "started_at"),
    Index("ix_sessions_key_id", "sessions", "key_id"),
    # A key's sessions newest first, and its last session, without reading the others.
    Index("ix_sessions_key_started", "sessions", "key_id, started_at"),
    # The open sessions by instance, for the sweep of lost ones: a few rows, not the history.
    Index("ix_sessions_open_instance", "sessions", "instance", where="ended_at IS NULL"),
    Index("ix_usage_session", "usage_records", "session_id"),
    Index("ix_usage_key_day", "usage_records", "key_id, day"),
    # Spend per day across keys (the console's overview) reads a range of days only.
    Index("ix_usage_day", "usage_records", "day"),
    Index("ux_usage_record_id", "usage_records", "record_id", unique=True),
    # Unique, so a replayed entry (a drained spill) is written once.
    Index("ux_transcript_session_seq", "transcript_entries", "session_id, seq", unique=True),
    Index("ix_client_secrets_expires_at", "client_secrets", "expires_at"),
    Index("ix_client_secrets_key_id", "client_secrets", "key_id"),
    # The secrets revoked lately, read every few seconds while a secret's session is live
    # (api/live.py end_revoked_secrets): the revoked rows only.
    Index(
        "ix_client_secrets_revoked_at",
        "client_secrets",
        "revoked_at",
        where="revoked_at IS NOT NULL",
    ),
    Index("ix_console_sessions_expires_at", "console_sessions", "expires_at"),
)


def create_table(table: str, dialect: str) -> str:
    """The table's DDL without its ``--`` notes: SQLite keeps a table's DDL as given and
    rewrites it on ``ALTER TABLE ... DROP COLUMN``, which a note after the last column breaks."""
    lines = TABLES[table].format(serial=SERIAL[dialect]).splitlines()
    columns = " ".join(line.strip() for line in lines if not line.strip().startswith("--"))
    return f"CREATE TABLE IF NOT EXISTS {table} ({columns.strip()})"
