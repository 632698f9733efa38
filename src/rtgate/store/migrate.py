"""Bringing a database made by an earlier rtgate up to ``schema.py``: the tables added since
are created, and the columns and indexes added to tables that already exist."""

from __future__ import annotations

from sqlalchemy import Connection, inspect, text

from rtgate.store.schema import metadata


def create_or_migrate(conn: Connection) -> None:
    """Every table, and every column and index added after its table first shipped."""
    metadata.create_all(conn)
    _migrate(conn)


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
    if "record_id" not in have:
        conn.execute(text("ALTER TABLE usage_records ADD COLUMN record_id VARCHAR(40)"))
    if "review" not in have:
        conn.execute(text("ALTER TABLE usage_records ADD COLUMN review VARCHAR(40)"))
    if "unit" not in have:
        conn.execute(
            text("ALTER TABLE usage_records ADD COLUMN unit VARCHAR(10) NOT NULL DEFAULT 'token'")
        )
        # Before prices had units, a duration was priced per minute (record.legacy_unit).
        conn.execute(text("UPDATE usage_records SET unit = 'minute' WHERE audio_ms > 0"))
    if "metered_by" not in have:
        conn.execute(
            text(
                "ALTER TABLE usage_records ADD COLUMN metered_by VARCHAR(10) NOT NULL"
                " DEFAULT 'provider'"
            )
        )
    # The transcript's (session_id, seq) index became unique (ux_transcript_session_seq).
    conn.execute(text("DROP INDEX IF EXISTS ix_transcript_session"))
    # Nor does it add an index to a table that exists (ix_client_secrets_key_id came later).
    for table in metadata.sorted_tables:
        for index in table.indexes:
            index.create(conn, checkfirst=True)
