"""Shared limits benchmark: what counting sessions in Redis costs, against the in-process limiter
in the same run.

Three parts, each with its in-process baseline measured beside it:

* ``limits``: ``acquire`` + ``release`` per call, ``LocalSessionLimiter`` against
  ``RedisSessionLimiter`` in this process, with 1, 50, 200 callers in flight, on a key with
  ``max_sessions`` and ``sessions_per_minute`` (set high enough never to refuse) and on a key with
  neither (the script runs either way). Latency is each call's wall time, event-loop queueing
  included; every caller yields once between calls, so the local limiter's calls/s is bounded by
  the loop, not by its dict. Redis CPU is the server's own ``INFO cpu`` over the cell. "Failed"
  counts the calls that met ``LimiterUnavailable`` (a key with limits) or were admitted uncounted
  (a key without); their latencies are left out of the percentiles only when refused. Past 100 in
  flight a row also runs the limiter on a ``BlockingConnectionPool``, which the gateway does not
  use, to show what waiting for a connection would cost instead.
* ``connects``: time from dialling to ``session.created`` through a real gateway (``create_app``
  on uvloop, SQLite, ``tests/provider.py``'s ``FakeProvider`` upstream, in a child process of
  its own), with and without ``RTGATE_REDIS_URL``, at 1 and 20 clients in flight; the clients
  run here. Rounds alternate the two gateways (ABBA), so drift lands on both. Gateway CPU is the
  child's (gateway and fake upstream) per connect.
* ``fleet``: ``RedisFleet`` started for real (writer and listener) with N live sessions listed
  through the admin API's ``HeldSessions`` over real ``RelaySession`` objects; the writer's CPU
  is ``time.process_time`` around each ``publish`` (nothing else runs on the loop), the process'
  CPU over the window adds the listener. Without Redis nothing is published (``LoneInstance``):
  the baseline is rendering the listing alone, which the admin API does on request anyway.

Keys live under ``rtgate-bench:<run>:`` and are deleted at the end.

    python bench/limits_bench.py [--parts limits,connects,fleet] [--inflight 1,50,200]
        [--calls 5000] [--connects 200] [--concurrency 1,20] [--fleet-ns 0,100,400]
        [--fleet-seconds 10] [--redis-url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import psutil
from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.provider import PROVIDER_KEY, FakeProvider  # noqa: E402

from rtgate.api.app import create_app, set_local_base_url  # noqa: E402
from rtgate.api.live import HeldSessions  # noqa: E402
from rtgate.auth.limits import LocalSessionLimiter, SessionLimiter  # noqa: E402
from rtgate.auth.policy import KeyPolicy  # noqa: E402
from rtgate.auth.redis_limits import RedisSessionLimiter  # noqa: E402
from rtgate.catalog import Catalog  # noqa: E402
from rtgate.clock import SystemClock  # noqa: E402
from rtgate.config import Settings, load_settings  # noqa: E402
from rtgate.errors import LimiterUnavailable  # noqa: E402
from rtgate.protocol.ids import new_id  # noqa: E402
from rtgate.protocol.relay_session import RelaySession  # noqa: E402
from rtgate.protocol.usage import Usage  # noqa: E402
from rtgate.redis_fleet import RedisFleet  # noqa: E402
from rtgate.relay.endpoint import GATEWAY  # noqa: E402
from rtgate.serving import freeze_startup_heap  # noqa: E402

#: Limits no run reaches: the bench measures the admitted path, the one every session takes.
LIMITED = KeyPolicy(max_sessions=1_000_000, sessions_per_minute=1_000_000)
KINDS = {"limited": (1_000_000, 1_000_000), "no limits": (None, None)}


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q / 100 * len(s)))] if s else 0.0


async def redis_cpu(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def delete_prefix(url: str, prefix: str) -> int:
    redis = Redis.from_url(url)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}*", count=1000)]
        for i in range(0, len(keys), 500):
            await redis.delete(*keys[i : i + 500])
        return len(keys)
    finally:
        await redis.aclose()


# -- part 1: acquire + release -------------------------------------------------------------------


class Unavailable(logging.Handler):
    """Counts the limiter's "Redis unreachable" warnings (a key without limits is then admitted
    uncounted, silently), and keeps them off the terminal."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


async def drive(
    limiter: SessionLimiter, key_id: str, limits: tuple[int | None, int | None], n: int, calls: int
) -> tuple[list[float], int, float]:
    """``calls`` acquire+release pairs by ``n`` concurrent callers: latencies of the admitted
    (s), refusals (``LimiterUnavailable``), wall time (s)."""
    clock = SystemClock()
    lat: list[float] = []
    refused = 0
    left = calls

    async def caller() -> None:
        nonlocal left, refused
        while left > 0:
            left -= 1
            t0 = time.perf_counter()
            try:
                await limiter.acquire(key_id, limits[0], limits[1], clock.now())
            except LimiterUnavailable:
                refused += 1
            else:
                await limiter.release(key_id)
                lat.append(time.perf_counter() - t0)
            await asyncio.sleep(0)  # the local limiter never yields on its own

    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(n):
            tg.create_task(caller())
    return lat, refused, time.perf_counter() - t0


async def bench_limits(a: argparse.Namespace, prefix: str) -> list[dict[str, Any]]:
    """Each cell on fresh keys, so a window of starts never outgrows what one cell wrote."""
    rows = []
    watcher = Redis.from_url(a.redis_url)
    clock = SystemClock()
    shared = await RedisSessionLimiter.connect(a.redis_url, clock, prefix=prefix)
    # Not what the gateway runs: the same limiter on a pool that waits for a free connection
    # instead of raising once 100 are in use (redis-py's asyncio default).
    blocking = RedisSessionLimiter(
        Redis(
            connection_pool=BlockingConnectionPool.from_url(
                a.redis_url, max_connections=100, timeout=5, socket_timeout=1.0
            )
        ),
        clock,
        prefix=prefix,
    )
    limiters: dict[str, SessionLimiter] = {
        "local": LocalSessionLimiter(),
        "redis": shared,
        "redis, blocking pool": blocking,
    }
    unavailable = Unavailable()
    log = logging.getLogger("rtgate.limits")
    log.addHandler(unavailable)
    log.propagate = False
    try:
        for n in a.inflight:
            for kind, limits in KINDS.items():
                for name, limiter in limiters.items():
                    if name == "redis, blocking pool" and n <= 100:
                        continue
                    key_id = f"key_{name[:7]}_{n}_{kind.replace(' ', '')}"
                    await drive(limiter, key_id + "_warm", limits, n, max(4 * n, 500))
                    c0, warned = await redis_cpu(watcher), unavailable.count
                    lat, refused, wall = await drive(limiter, key_id, limits, n, a.calls)
                    rcpu = await redis_cpu(watcher) - c0
                    uncounted = unavailable.count - warned - refused
                    reached = a.calls - refused - uncounted  # the calls that ran the script
                    rows.append(
                        {
                            "limiter": name,
                            "kind": kind,
                            "inflight": n,
                            "calls": a.calls,
                            "per_s": len(lat) / wall,
                            "p50": pct(lat, 50) * 1e6,
                            "p95": pct(lat, 95) * 1e6,
                            "p99": pct(lat, 99) * 1e6,
                            "redis_us": rcpu * 1e6 / max(1, reached) if name != "local" else None,
                            "refused": refused,
                            "uncounted": uncounted,
                        }
                    )
                    print(report_limits(rows).splitlines()[-1], flush=True)
    finally:
        log.removeHandler(unavailable)
        log.propagate = True
        await shared.close()
        await blocking.close()
        await watcher.aclose()
    return rows


def report_limits(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| limiter | keys | in flight | calls/s | p50 / p95 / p99 µs | added p50 / p99 µs "
        "| calls/s vs local | Redis server µs/call | failed: refused / uncounted |",
        "|---|---|---:|---:|---|---|---:|---:|---|",
    ]
    base = {(r["kind"], r["inflight"]): r for r in rows if r["limiter"] == "local"}
    for r in rows:
        b = base.get((r["kind"], r["inflight"]))
        vs = rate = "-"
        if r["limiter"] != "local" and b:
            vs = f"**{r['p50'] - b['p50']:+.0f} / {r['p99'] - b['p99']:+.0f}**"
            rate = f"{r['per_s'] / b['per_s']:.2f}x"
        redis_us = f"{r['redis_us']:.1f}" if r["redis_us"] is not None else "-"
        failed = "-"
        if r["refused"] or r["uncounted"]:
            failed = f"**{r['refused']} / {r['uncounted']}** of {r['calls']}"
        lines.append(
            f"| {r['limiter']} | {r['kind']} | {r['inflight']} | {r['per_s']:,.0f} "
            f"| {r['p50']:.0f} / {r['p95']:.0f} / {r['p99']:.0f} | {vs} | {rate} | {redis_us} "
            f"| {failed} |"
        )
    return "\n".join(lines)


# -- part 2: connect to session.created ----------------------------------------------------------


async def serve_gateway(mode: str, redis_url: str, prefix: str) -> None:
    """The child: one gateway (and its fake upstream) until stdin closes; prints its port and
    two keys' secrets as one JSON line."""
    provider = FakeProvider()
    await provider.start()
    home = Path(tempfile.mkdtemp(prefix="rtgate-limits-bench-"))
    env = {
        "RTGATE_HOME": str(home),
        "RTGATE_DATABASE_URL": f"sqlite:///{home / 'rtgate.db'}",
        "RTGATE_OPENAI_BASE_URL": provider.base_url,
        "OPENAI_API_KEY": PROVIDER_KEY,
    }
    if mode == "redis":
        env |= {"RTGATE_REDIS_URL": redis_url, "RTGATE_REDIS_PREFIX": prefix}
    app = create_app(load_settings(None, env))
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    set_local_base_url(app, "127.0.0.1", port)
    keyring = app[GATEWAY].keyring
    _, limited = await keyring.create("limited", LIMITED)
    _, free = await keyring.create("no-limits")
    freeze_startup_heap()
    print(json.dumps({"port": port, "limited": limited, "no limits": free}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await runner.cleanup()
    await provider.stop()


class Child:
    def __init__(self, mode: str, proc: asyncio.subprocess.Process, hello: dict[str, Any]) -> None:
        self.mode = mode
        self.proc = proc
        self.port: int = hello["port"]
        self.keys: dict[str, str] = {k: hello[k] for k in KINDS}
        self.ps = psutil.Process(proc.pid)

    @classmethod
    async def start(cls, mode: str, a: argparse.Namespace, prefix: str) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--serve-gateway",
            mode,
            "--redis-url",
            a.redis_url,
            "--prefix",
            prefix,
            "--loop",
            a.loop,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError(f"the {mode} gateway did not start")
        return cls(mode, proc, json.loads(line))

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def connects(
    http: aiohttp.ClientSession, port: int, secret: str, count: int, concurrency: int
) -> tuple[list[float], list[str]]:
    """``count`` sessions opened by ``concurrency`` clients, each closed once it has its first
    event: times to ``session.created`` (s), and the error codes of the refused."""
    url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
    headers = {"Authorization": f"Bearer {secret}"}
    times: list[float] = []
    refused: list[str] = []
    left = count

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t0 = time.perf_counter()
            async with http.ws_connect(url, headers=headers) as ws:
                msg = await ws.receive(timeout=10)
                dt = time.perf_counter() - t0
                event = orjson.loads(msg.data)
            if event.get("type") == "session.created":
                times.append(dt)
            else:
                refused.append(str((event.get("error") or {}).get("code") or event.get("type")))

    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(client())
    return times, refused


async def bench_connects(a: argparse.Namespace, prefix: str) -> list[dict[str, Any]]:
    children = [
        await Child.start("local", a, prefix + "gw:"),
        await Child.start("redis", a, prefix + "gw:"),
    ]
    rows = []
    rounds = max(1, a.rounds)
    per_round = max(1, a.connects // rounds)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            for c in children:  # warm-up: the first sessions build caches and pools
                for secret in c.keys.values():
                    await connects(http, c.port, secret, 40, 20)
            for conc in a.concurrency:
                times: dict[tuple[str, str], list[float]] = {}
                refused: dict[tuple[str, str], list[str]] = {}
                cpu: dict[tuple[str, str], float] = {}
                for r in range(rounds):
                    order = children if r % 2 == 0 else children[::-1]
                    for c in order:
                        for kind, secret in c.keys.items():
                            c0 = c.cpu()
                            got, no = await connects(http, c.port, secret, per_round, conc)
                            await asyncio.sleep(0.2)  # the closes finish before the CPU is read
                            cpu[c.mode, kind] = cpu.get((c.mode, kind), 0.0) + c.cpu() - c0
                            times.setdefault((c.mode, kind), []).extend(got)
                            refused.setdefault((c.mode, kind), []).extend(no)
                for (mode, kind), ts in times.items():
                    no = refused[mode, kind]
                    rows.append(
                        {
                            "gateway": mode,
                            "kind": kind,
                            "concurrency": conc,
                            "connects": len(ts) + len(no),
                            "refused": {code: no.count(code) for code in sorted(set(no))},
                            "p50": pct(ts, 50) * 1e3,
                            "p90": pct(ts, 90) * 1e3,
                            "p99": pct(ts, 99) * 1e3,
                            "cpu_ms": cpu[mode, kind] * 1e3 / (len(ts) + len(no)),
                        }
                    )
                print(report_connects(rows), flush=True)
    finally:
        for c in children:
            await c.stop()
    return rows


def report_connects(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| gateway | keys | in flight | connects | to session.created p50 / p90 / p99 ms "
        "| added p50 / p99 ms | p50 vs local | gateway CPU ms per connect | refused |",
        "|---|---|---:|---:|---|---|---:|---:|---|",
    ]
    base = {(r["kind"], r["concurrency"]): r for r in rows if r["gateway"] == "local"}
    for r in sorted(rows, key=lambda r: (r["concurrency"], r["kind"], r["gateway"])):
        b = base.get((r["kind"], r["concurrency"]))
        added = ratio = "-"
        if r["gateway"] == "redis" and b:
            added = f"**{r['p50'] - b['p50']:+.2f} / {r['p99'] - b['p99']:+.2f}**"
            ratio = f"{r['p50'] / b['p50']:.2f}x"
        no = ", ".join(f"{n} {code}" for code, n in r["refused"].items()) or "-"
        lines.append(
            f"| {r['gateway']} | {r['kind']} | {r['concurrency']} | {r['connects']} "
            f"| {r['p50']:.2f} / {r['p90']:.2f} / {r['p99']:.2f} | {added} | {ratio} "
            f"| {r['cpu_ms']:.2f} | {no} |"
        )
    return "\n".join(lines)


# -- part 3: the fleet's listing -----------------------------------------------------------------


def live_sessions(settings: Settings, n: int) -> dict[str, SimpleNamespace]:
    """``n`` relayed sessions as ``Gateway.live`` holds them, some minutes into a conversation."""
    catalog = Catalog(settings)
    route = catalog.resolve("gpt-realtime")
    clock = SystemClock()
    live = {}
    for i in range(n):
        s = RelaySession(
            session_id=new_id("sess"),
            key_id=new_id("key", 16),
            route=route,
            catalog=catalog,
            opened_at=clock.now() - i,
            opened_mono=clock.monotonic(),
            max_seconds=3600.0,
        )
        s.totals = Usage(
            text_in=4_000 + i,
            text_in_cached=2_000,
            audio_in=12_000 + i,
            audio_in_cached=6_000,
            text_out=900,
            audio_out=8_000 + i,
        )
        s.provider_nanos = s.charged_nanos = 123_456_789 + i
        live[s.session_id] = SimpleNamespace(session=s)
    return live


async def bench_fleet(a: argparse.Namespace, prefix: str) -> list[dict[str, Any]]:
    home = Path(tempfile.mkdtemp(prefix="rtgate-limits-bench-"))
    settings = load_settings(None, {"RTGATE_HOME": str(home), "OPENAI_API_KEY": PROVIDER_KEY})
    watcher = Redis.from_url(a.redis_url)
    rows = []
    try:
        for n in a.fleet_ns:
            fleet = RedisFleet.from_url(a.redis_url, SystemClock(), prefix=prefix + "fleet:")
            gw = SimpleNamespace(live=live_sessions(settings, n), fleet=fleet)
            holder = HeldSessions(gw)  # type: ignore[arg-type]
            ticks: list[float] = []
            publish = fleet.publish

            async def timed(
                publish: Callable[[], Awaitable[None]] = publish, ticks: list[float] = ticks
            ) -> None:
                t0 = time.process_time()
                await publish()
                ticks.append(time.process_time() - t0)

            fleet.publish = timed  # type: ignore[method-assign]
            renders = []
            for _ in range(20):
                t0 = time.process_time()
                listing = holder.listing()
                renders.append(time.process_time() - t0)
            size = sum(len(v) for v in listing.values())
            await fleet.start(holder)
            await asyncio.sleep(1.5)  # the first tick (connection set-up) is not counted
            ticks.clear()
            c0, r0, t0 = time.process_time(), await redis_cpu(watcher), time.monotonic()
            await asyncio.sleep(a.fleet_seconds)
            wall = time.monotonic() - t0
            proc_cpu, rcpu = time.process_time() - c0, await redis_cpu(watcher) - r0
            got = list(ticks)
            await fleet.close()
            rows.append(
                {
                    "n": n,
                    "ticks": len(got),
                    "tick_ms_p50": pct(got, 50) * 1e3,
                    "tick_ms_max": max(got, default=0.0) * 1e3,
                    "writer_s_per_s": sum(got) / wall,
                    "process_s_per_s": proc_cpu / wall,
                    "render_ms": pct(renders, 50) * 1e3,
                    "redis_s_per_s": rcpu / wall,
                    "bytes": size,
                }
            )
            print(report_fleet(rows).splitlines()[-1], flush=True)
    finally:
        await watcher.aclose()
    return rows


def report_fleet(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| live sessions | writer CPU s/s (% of a core) | per session µs/s (beyond 0) "
        "| tick p50 / max ms "
        "| render alone ms (in-process baseline) | writer vs render | process CPU % "
        "| Redis server CPU % | listing bytes |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    empty = next((r["writer_s_per_s"] for r in rows if r["n"] == 0), 0.0)
    for r in rows:
        w = r["writer_s_per_s"]
        per = f"{(w - empty) * 1e6 / r['n']:.0f}" if r["n"] else "-"
        vs = f"{r['tick_ms_p50'] / r['render_ms']:.1f}x" if r["render_ms"] > 0 and r["n"] else "-"
        lines.append(
            f"| {r['n']} | {w:.5f} ({100 * w:.2f} %) | {per} "
            f"| {r['tick_ms_p50']:.2f} / {r['tick_ms_max']:.2f} | {r['render_ms']:.2f} | {vs} "
            f"| {100 * r['process_s_per_s']:.2f} | {100 * r['redis_s_per_s']:.2f} "
            f"| {r['bytes']:,} |"
        )
    return "\n".join(lines)


# -- the run ---------------------------------------------------------------------------------


async def run(a: argparse.Namespace) -> None:
    prefix = f"rtgate-bench:{secrets.token_hex(6)}:"
    out: dict[str, str] = {}
    try:
        if "limits" in a.parts:
            print("## acquire + release, one process\n", flush=True)
            out["limits"] = report_limits(await bench_limits(a, prefix + "lim:"))
        if "connects" in a.parts:
            print("\n## dial to session.created, through a gateway\n", flush=True)
            out["connects"] = report_connects(await bench_connects(a, prefix))
        if "fleet" in a.parts:
            print("\n## the fleet's listing, every second\n", flush=True)
            out["fleet"] = report_fleet(await bench_fleet(a, prefix))
    finally:
        deleted = await delete_prefix(a.redis_url, prefix)
        print(f"\n(deleted {deleted} Redis keys under {prefix})")
    for name, table in out.items():
        print(f"\n### {name}\n\n{table}")


def ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--parts", default="limits,connects,fleet")
    ap.add_argument(
        "--redis-url", default=os.environ.get("RTGATE_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    ap.add_argument("--inflight", type=ints, default=[1, 50, 200])
    ap.add_argument("--calls", type=int, default=5000, help="acquire+release pairs per cell")
    ap.add_argument("--connects", type=int, default=200, help="per gateway and key kind")
    ap.add_argument("--concurrency", type=ints, default=[1, 20], help="clients in flight")
    ap.add_argument("--rounds", type=int, default=4, help="alternations of the two gateways")
    ap.add_argument("--fleet-ns", type=ints, default=[0, 100, 400])
    ap.add_argument("--fleet-seconds", type=float, default=10.0)
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    ap.add_argument("--serve-gateway", choices=["local", "redis"], help=argparse.SUPPRESS)
    ap.add_argument("--prefix", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.loop == "uvloop":
        import uvloop

        uvloop.install()
    if a.serve_gateway:
        asyncio.run(serve_gateway(a.serve_gateway, a.redis_url, a.prefix))
        return
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs", flush=True)
    t0 = time.monotonic()
    asyncio.run(run(a))
    print(f"\n({time.monotonic() - t0:.0f} s)")


if __name__ == "__main__":
    main()
