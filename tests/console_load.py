"""A store with many sessions, for the console's scale test and ``bench/console_bench.py``:
keys, sessions spread over the last 60 days, one usage record each, written straight into the
tables in large batches (the ledger's path would take minutes for 100,000)."""

from __future__ import annotations

import random
import time

import aiohttp

from rtgate.metering.record import utc_day
from rtgate.protocol.usage import USAGE_FIELDS
from rtgate.store.connections import Query, Statement
from rtgate.store.rows import ADD_USAGE
from rtgate.store.sql import SqlStore

CLOSES = (
    (1000, "", "client"),
    (1001, "server_error.session_expired", "gateway"),
    (1011, "server_error.upstream_unavailable", "gateway"),
    (1008, "x", "operator"),
)


async def seed(store: SqlStore, n: int, now: float, keys: int = 20) -> list[str]:
    """``n`` closed sessions of ``keys`` keys over the 60 days before ``now``; the session ids."""
    rng = random.Random(20260101)
    key_ids = [f"key_load{k:04d}" for k in range(keys)]

    def add_keys() -> Query[None]:
        yield Statement(
            "INSERT INTO api_keys (id, name, display_prefix, key_hash, created_at)"
            " VALUES (:id, :name, :display_prefix, :key_hash, :created_at)",
            many=[
                {
                    "id": k,
                    "name": f"load {i}",
                    "display_prefix": f"rtg_load{i:04d}",
                    "key_hash": f"{i:064x}",
                    "created_at": now - 90 * 86400,
                }
                for i, k in enumerate(key_ids)
            ],
        )

    await store.db.run(add_keys(), write=True)
    ids = [f"rs_load{i:07d}" for i in range(n)]
    for start in range(0, n, 20_000):
        batch = range(start, min(start + 20_000, n))
        rows, usage = [], []
        for i in batch:
            t = now - rng.random() * 60 * 86400
            code, reason, by = CLOSES[i % len(CLOSES)] if i % 7 else CLOSES[0]
            key = key_ids[i % keys]
            rows.append(
                {
                    "id": ids[i],
                    "key_id": key,
                    "model": "gpt-realtime",
                    "upstream": "openai",
                    "started_at": t,
                    "ended_at": t + 30,
                    "close_code": code,
                    "close_reason": reason,
                    "closed_by": by,
                }
            )
            usage.append(
                {
                    "session_id": ids[i],
                    "key_id": key,
                    "model": "gpt-realtime",
                    "price_key": "gpt-realtime",
                    "kind": "response",
                    "day": utc_day(t + 20),
                    "created_at": t + 20,
                    "ref": f"resp_{i}",
                    **dict.fromkeys(USAGE_FIELDS, 0),
                    "text_in": 100,
                    "audio_out": 50,
                    "provider_nanos": 3_600_000,
                    "charged_nanos": 4_000_000,
                    "record_id": f"ur_load{i:07d}",
                    "review": None,
                    "unit": "token",
                    "metered_by": "provider",
                }
            )
        await store.db.run(_add_batch(rows, usage), write=True)
    return ids


def _add_batch(rows: list[dict[str, object]], usage: list[dict[str, object]]) -> Query[None]:
    yield Statement(
        "INSERT INTO sessions (id, key_id, model, upstream, started_at, ended_at, close_code,"
        " close_reason, closed_by) VALUES (:id, :key_id, :model, :upstream, :started_at,"
        " :ended_at, :close_code, :close_reason, :closed_by)",
        many=rows,
    )
    yield Statement(ADD_USAGE, many=usage)


async def timed(http: aiohttp.ClientSession, url: str, **kw: object) -> tuple[float, int]:
    """Seconds to fetch ``url`` whole, and its status."""
    started = time.perf_counter()
    async with http.get(url, **kw) as r:  # type: ignore[arg-type]
        await r.read()
        return time.perf_counter() - started, r.status
