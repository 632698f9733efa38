"""Bringing a database made by an earlier rtgate up to ``schema.py``: the tables added since
are created, and the columns and indexes added to tables that already exist."""

from __future__ import annotations

from rtgate.store.connections import Query, Statement, fetch
from rtgate.store.schema import FILL_SPEND_DAYS, INDEXES, SPEND_TRIGGER, TABLES, create_table

#: Columns added after their table first shipped, in the order they came, each with the
#: statements that fill it in on the rows already there.
ADDED: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("api_keys", "policy", "TEXT", ()),
    ("client_secrets", "revoked_at", "FLOAT", ()),
    ("usage_records", "record_id", "VARCHAR(40)", ()),
    ("usage_records", "review", "VARCHAR(40)", ()),
    (
        "usage_records",
        "unit",
        "VARCHAR(10) NOT NULL DEFAULT 'token'",
        # Before prices had units, a duration was priced per minute (record.legacy_unit).
        ("UPDATE usage_records SET unit = 'minute' WHERE audio_ms > 0",),
    ),
    ("usage_records", "metered_by", "VARCHAR(10) NOT NULL DEFAULT 'provider'", ()),
    ("sessions", "instance", "VARCHAR(40)", ()),
    # Every call stored before is one whose sideband ran (or was hung up).
    ("calls", "accepted_at", "FLOAT", ("UPDATE calls SET accepted_at = created_at",)),
)

#: The PostgreSQL advisory lock key migrations hold (any constant other software on the
#: database does not use: "rtgt" in ASCII).
MIGRATION_LOCK = 0x72746774

#: A table's column names, from each database's own catalog (the one query that differs).
_COLUMNS = {
    "sqlite": "SELECT name FROM pragma_table_info(:table)",
    "postgresql": (
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = :table"
    ),
}


def columns(dialect: str, table: str) -> Query[set[str]]:
    """The names of ``table``'s columns."""
    return {r[0] for r in (yield from fetch(_COLUMNS[dialect], table=table))}


def create_or_migrate(dialect: str) -> Query[None]:
    """Every table, and every column and index added after its table first shipped; and, where
    ``spend_days`` is new, its trigger and its sums of the usage rows already there. One
    transaction (the store runs it as a write): on PostgreSQL, creating the trigger locks
    ``usage_records`` against other instances' inserts until the sums are in, so no row is
    counted twice or missed.

    On PostgreSQL instances starting together migrate one at a time (a transaction-scoped
    advisory lock, taken first): each looks at the schema only once the one before committed,
    so a table, column or trigger is added once (two at once failed on the same new table)."""
    if dialect == "postgresql":
        yield Statement(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
    new_spend_days = not (yield from columns(dialect, "spend_days"))
    for table in TABLES:
        yield Statement(create_table(table, dialect))
    if new_spend_days:
        for sql in SPEND_TRIGGER[dialect]:
            yield Statement(sql)
        yield Statement(FILL_SPEND_DAYS)
    have: dict[str, set[str]] = {}
    for table, column, ddl, fill in ADDED:
        if table not in have:
            have[table] = yield from columns(dialect, table)
        if column not in have[table]:
            yield Statement(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}")
            for sql in fill:
                yield Statement(sql)
    # The transcript's (session_id, seq) index became unique (ux_transcript_session_seq).
    yield Statement("DROP INDEX IF EXISTS ix_transcript_session")
    for index in INDEXES:
        yield Statement(index.ddl)


def drop_all() -> Query[None]:
    """Every table, dependents first (the PostgreSQL suite empties its database with it)."""
    for table in reversed(TABLES):
        yield Statement(f"DROP TABLE IF EXISTS {table}")
