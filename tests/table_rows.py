"""Reading a test's database as it stands: rows as attribute namespaces (``row.review``),
through the store's own runner, on SQLite or PostgreSQL."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from rtgate.store.connections import fetch


async def table_rows(store: Any, sql: str, **params: Any) -> list[SimpleNamespace]:
    """The rows ``sql`` returns on ``store``'s database (``store.db``)."""
    found = await store.db.run(fetch(sql, **params))
    # Both drivers' rows iterate their values, and name them with keys().
    return [SimpleNamespace(**dict(zip(row.keys(), row, strict=True))) for row in found]
