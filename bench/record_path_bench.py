"""What one usage record costs the relay, off the forwarding path, for each checkout given.

A ``response.done`` read by the core, metered, committed through the ledger into a real SQLite
store and forwarded once durable: the pump and core of ``--sessions`` sessions over fake legs,
``Ledger`` and ``SqlStore`` as the gateway runs them. Records are sent one at a time (each
waits alone for its commit: a batch of one, as at low load) and ten at a time (they share a
batch). Printed per record: the CPU of the whole process (the store's threads included) and of
the event loop's thread alone. Each checkout runs in a process of its own, one after the
other, so compare the lines of one run.

    python bench/record_path_bench.py --src before=DIR --src after=. [--records 2000]

``--latency``: how long a record's commit waits instead, ``commit_usage`` to its future's
callback (where the pump forwards the metered frame), one record at a time, with the loop idle
and then busy: ``SPINNERS`` Python callbacks of ``SPIN_S`` always ready, as in a relay near
saturation, so each loop iteration the commit spans costs ~0.8 ms. Pin it to one core
(``taskset -c 1``) as the relay bench pins the relay.

    taskset -c 1 python bench/record_path_bench.py --latency --records 300 --src ...
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: ``--latency``: the Python work of one ready callback of the busy loop, and how many are ready.
SPIN_S = 0.0002
SPINNERS = 4


class _Leg:
    """A leg that keeps nothing: the pump's writes are counted, and one may be waited for."""

    closed = False

    def __init__(self) -> None:
        self.events: Any = None
        self.sent = 0
        self.waiter: asyncio.Future[None] | None = None

    def start(self, events: Any) -> None:
        self.events = events

    def send_text(self, data: str | bytes) -> None:
        self.sent += 1
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def send_bytes(self, data: bytes) -> None: ...
    def ping(self) -> None: ...
    def sever(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

    def close(self, code: int, reason: str) -> None:
        self.closed = True

    #: The pump reads ``backed_up`` (checkouts before it call ``write_backed_up``).
    backed_up = False

    def write_backed_up(self) -> bool:
        return False

    def quiet_seconds(self) -> float | None:
        return None

    async def wait_closed(self) -> None: ...


async def _ledger() -> tuple[Any, Any, Any, asyncio.Task[None]]:
    """A SQLite store with the bench's key in a fresh directory, and a running ledger."""
    from rtgate.metering.ledger import Ledger
    from rtgate.metrics import Metrics
    from rtgate.store.sql import SqlStore

    home = Path(tempfile.mkdtemp(prefix="rtgate-record-bench-"))
    store = SqlStore(f"sqlite+aiosqlite:///{home / 'rtgate.db'}")
    await store.init()
    await store.create_key("key_bench", "bench", "p", "0" * 64, time.time())
    metrics = Metrics()
    ledger = Ledger(store, spill_dir=home / "usage-spill", metrics=metrics)
    return store, metrics, ledger, asyncio.create_task(ledger.run())


async def _measure(sessions: int, records: int) -> None:
    import orjson

    from harness.effects import NoEffects
    from harness.loadgen import DONE
    from rtgate.catalog import Catalog
    from rtgate.config import load_settings
    from rtgate.metering.ledger import Ledger
    from rtgate.metrics import Metrics
    from rtgate.protocol.relay import RelayCore
    from rtgate.protocol.relay_session import RelaySession
    from rtgate.relay.live import commit_usage
    from rtgate.relay.pump import Pump
    from rtgate.store.port import SessionOpen

    legacy_commit = "metrics" in inspect.signature(commit_usage).parameters

    class Effects(NoEffects):
        """Commits through the ledger into SQLite; the rest answered at once (the bench's key
        has no budget)."""

        def __init__(self, ledger: Ledger, metrics: Metrics) -> None:
            self.ledger, self.metrics = ledger, metrics

        # Not async: an older checkout awaits what this returns (a coroutine there), a newer
        # one adds callbacks to it (a future).
        def commit(self, record: Any, frame: Any) -> Any:
            if legacy_commit:  # the metrics were counted by commit_usage, now by the ledger
                return commit_usage(self.ledger, self.metrics, record, frame)
            return commit_usage(self.ledger, record, frame)

    store, metrics, ledger, writer = await _ledger()
    catalog = Catalog(load_settings(None, {"OPENAI_API_KEY": "sk-bench"}))
    # The pump's timer: one per session (tick_every) before the gateway's Ticker.
    params = inspect.signature(Pump).parameters
    timer: dict[str, Any] = {"tick_every": 1.0}
    if "ticker" in params:
        from rtgate.relay.ticker import Ticker

        timer = {"ticker": Ticker(1.0)}
    legs: list[_Leg] = []
    ups: list[_Leg] = []
    runs = []
    for i in range(sessions):
        sid = f"rs_{i}"
        await ledger.open_session(SessionOpen(sid, "key_bench", "gpt-realtime", "openai", None, 0))
        session = RelaySession(
            session_id=sid,
            key_id="key_bench",
            route=catalog.resolve("gpt-realtime"),
            catalog=catalog,
            opened_at=time.time(),
            opened_mono=time.monotonic(),
            max_seconds=3600,
        )
        core = RelayCore(session, time.time, opened_mono=time.monotonic())
        client, up = _Leg(), _Leg()
        pump = Pump(core, client, up, Effects(ledger, metrics), monotonic=time.monotonic, **timer)
        runs.append(asyncio.create_task(pump.run()))
        legs.append(client)
        ups.append(up)
    await asyncio.sleep(0)
    frame: str | bytes = orjson.dumps(DONE).decode().replace("%TS%", "1")
    if RelayCore.upstream_text.__annotations__.get("data") == "bytes":
        frame = frame.encode()  # a checkout whose legs hand text frames over as bytes
    loop = asyncio.get_running_loop()
    for together in (1, 10):
        rounds = records // together
        cpu, loop_cpu = time.process_time(), time.thread_time()
        for r in range(rounds):
            waits = []
            for j in range(together):
                i = (r * together + j) % sessions
                legs[i].waiter = loop.create_future()
                waits.append(legs[i].waiter)
                ups[i].events.on_text(frame)
            await asyncio.gather(*waits)
        n = rounds * together
        print(
            f"  {together:2d} at a time: {(time.process_time() - cpu) / n * 1e6:6.0f} µs of CPU "
            f"per record, {(time.thread_time() - loop_cpu) / n * 1e6:6.0f} µs on the loop thread",
            flush=True,
        )
    for client in legs:
        client.events.on_close(1000, "")
    await asyncio.gather(*runs)
    await ledger.drain()
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    await store.close()


async def _latency(busy: bool, records: int) -> None:
    """A record's commit wait, one at a time, with the loop idle or busy (``SPINNERS``)."""
    from rtgate.metering.record import UsageRecord
    from rtgate.protocol.usage import Usage
    from rtgate.relay.live import commit_usage
    from rtgate.store.port import SessionOpen

    store, metrics, ledger, writer = await _ledger()
    await ledger.open_session(SessionOpen("rs_1", "key_bench", "m", "openai", None, time.time()))
    # An older checkout's commit_usage counted the metrics itself.
    legacy = "metrics" in inspect.signature(commit_usage).parameters
    loop = asyncio.get_running_loop()
    stop = False

    def spin() -> None:
        until = time.perf_counter() + SPIN_S
        while time.perf_counter() < until:  # CPU a busy relay's callbacks would take
            continue
        if not stop:
            loop.call_soon(spin)

    if busy:
        for _ in range(SPINNERS):
            loop.call_soon(spin)
    waits = []
    for i in range(records):
        rec = UsageRecord("rs_1", "key_bench", "m", "m", Usage(text_in=i + 1), 1, 1, time.time())
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
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--latency", action="store_true", help="the commit's wait instead (above)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        sys.path[:0] = [str(Path(a.child) / "src"), str(ROOT / "bench")]
        import uvloop

        if a.latency:
            uvloop.run(_latency(False, a.records))
            uvloop.run(_latency(True, a.records))
        else:
            uvloop.run(_measure(a.sessions, a.records))
        return
    for spec in a.src or [f"this={ROOT}"]:
        label, _, src = spec.rpartition("=")
        print(f"{label or src}: {src}", flush=True)
        cmd = [sys.executable, __file__, "--child", src]
        cmd += ["--sessions", str(a.sessions), "--records", str(a.records)]
        cmd += ["--latency"] if a.latency else []
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
