"""How long a key's budget check reads the store, as the key's usage grows, for each checkout.

A budget check after each metered event reads the key's spend today, this month and ever
(``SqlStore.spend``). Each checkout, in a process of its own, writes ``--records`` usage records
for one key through its own ``SqlStore.write`` (spread over 60 days, in batches as the ledger
writes them), then times ``spend`` (median and worst of ``--reads``). SQLite in a fresh
directory, or the PostgreSQL database ``--database-url`` names (emptied first: not one that
holds anything you keep).

    python bench/spend_bench.py --src before=DIR --src after=. [--records 10000,100000,1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAY0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC
BATCH = 512  # the ledger's largest batch


async def _measure(counts: list[int], reads: int, database_url: str) -> None:
    from rtgate.metering.record import UsageRecord, utc_day
    from rtgate.protocol.usage import Usage
    from rtgate.store.port import SessionOpen
    from rtgate.store.sql import SqlStore

    if database_url:
        from rtgate.store.migrate import drop_all

        store = SqlStore(database_url)
        await store.db.run(drop_all(), write=True)
    else:
        store = SqlStore(f"sqlite:///{tempfile.mkdtemp(prefix='rtgate-spend-')}/rtgate.db")
    await store.init()
    await store.create_key("key_b", "bench", "p", "0" * 64, DAY0)
    await store.write([SessionOpen("rs_b", "key_b", "gpt-realtime", "openai", None, DAY0)])
    written, t0 = 0, time.perf_counter()
    last = DAY0 + 59 * 86_400
    for n in sorted(counts):
        while written < n:
            size = min(BATCH, n - written)
            batch = [
                UsageRecord(
                    "rs_b",
                    "key_b",
                    "gpt-realtime",
                    "gpt-realtime",
                    Usage(text_in=10, audio_out=20),
                    100,
                    120,
                    DAY0 + (written + i) * 59 * 86_400 / max(counts),
                    f"resp_{written + i}",
                )
                for i in range(size)
            ]
            await store.write(batch)
            written += size
        took = []
        for _ in range(reads):
            t = time.perf_counter()
            spend = await store.spend("key_b", utc_day(last), utc_day(last)[:8] + "01")
            took.append(time.perf_counter() - t)
        assert spend[2] == 120 * n, spend
        print(
            f"  {n:>9,} records ({time.perf_counter() - t0:5.0f} s to write so far): spend() "
            f"median {statistics.median(took) * 1e3:8.2f} ms, worst {max(took) * 1e3:8.2f} ms",
            flush=True,
        )
    await store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", action="append", default=[], help="LABEL=DIR, a checkout")
    ap.add_argument("--records", default="10000,100000,1000000")
    ap.add_argument("--reads", type=int, default=20)
    ap.add_argument("--database-url", default="", help="PostgreSQL (emptied first)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    counts = [int(x) for x in a.records.split(",")]
    if a.child is not None:
        sys.path.insert(0, str(Path(a.child) / "src"))
        asyncio.run(_measure(counts, a.reads, a.database_url))
        return
    for spec in a.src or [f"this={ROOT}"]:
        label, _, src = spec.rpartition("=")
        print(f"{label or src}: {src}", flush=True)
        cmd = [sys.executable, __file__, "--child", src, "--records", a.records]
        cmd += ["--reads", str(a.reads), "--database-url", a.database_url]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
