"""How long a usage record's commit waits, with the event loop idle and with it busy.

``commit_usage`` through the ``Ledger`` into a real SQLite store, one record at a time, timed
from the call to its future's callback (where the pump forwards the metered frame). "Busy":
four Python callbacks of 200 µs are always ready, as in a relay near saturation, so each loop
iteration the commit waits for costs ~0.8 ms. Each checkout runs in a process of its own; pin
it to one core (``taskset -c 1``) as the relay bench pins the relay.

    taskset -c 1 python bench/commit_latency_bench.py --src main=DIR --src this=.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The Python work of one ready callback of the busy loop, and how many are always ready.
SPIN_S = 0.0002
SPINNERS = 4


async def _measure(busy: bool, records: int) -> None:
    from rtgate.metering.ledger import Ledger
    from rtgate.metering.record import UsageRecord
    from rtgate.metrics import Metrics
    from rtgate.protocol.usage import Usage
    from rtgate.relay.live import commit_usage
    from rtgate.store.port import SessionOpen
    from rtgate.store.sql import SqlStore

    home = Path(tempfile.mkdtemp(prefix="rtgate-commit-bench-"))
    store = SqlStore(f"sqlite+aiosqlite:///{home / 'rtgate.db'}")
    await store.init()
    await store.create_key("key_a", "a", "p", "0" * 64, time.time())
    metrics = Metrics()
    ledger = Ledger(store, spill_dir=home / "usage-spill", metrics=metrics)
    writer = asyncio.create_task(ledger.run())
    await ledger.open_session(SessionOpen("rs_1", "key_a", "m", "openai", None, time.time()))
    # An older checkout's commit_usage counted the metrics itself.
    legacy = "metrics" in inspect.signature(commit_usage).parameters
    loop = asyncio.get_running_loop()
    stop = False

    def spin() -> None:
        until = time.perf_counter() + SPIN_S
        while time.perf_counter() < until:
            pass
        if not stop:
            loop.call_soon(spin)

    if busy:
        for _ in range(SPINNERS):
            loop.call_soon(spin)
    waits = []
    for i in range(records):
        rec = UsageRecord("rs_1", "key_a", "m", "m", Usage(text_in=i + 1), 1, 1, time.time())
        done: asyncio.Future[float] = loop.create_future()
        started = time.perf_counter()
        args = (ledger, metrics, rec, "") if legacy else (ledger, rec, "")
        fut = commit_usage(*args)
        fut.add_done_callback(lambda _, done=done: done.set_result(time.perf_counter()))
        waits.append((await done - started) * 1e3)
        await asyncio.sleep(0.002)
    stop = True
    waits.sort()
    n = len(waits)
    print(
        f"  loop {'busy' if busy else 'idle'}: commit p50 {waits[n // 2]:.2f} ms, "
        f"p90 {waits[n * 9 // 10]:.2f}, p99 {waits[n * 99 // 100]:.2f}",
        flush=True,
    )
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    await store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", action="append", default=[], help="LABEL=DIR, a checkout")
    ap.add_argument("--records", type=int, default=300)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        sys.path[:0] = [str(Path(a.child) / "src")]
        import uvloop

        uvloop.run(_measure(False, a.records))
        uvloop.run(_measure(True, a.records))
        return
    for spec in a.src or [f"this={ROOT}"]:
        label, _, src = spec.rpartition("=")
        print(f"{label or src}: {src}", flush=True)
        cmd = [sys.executable, __file__, "--child", src, "--records", str(a.records)]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
