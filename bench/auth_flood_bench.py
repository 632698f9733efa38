"""Auth flood benchmark: what a flood of bad keys on ``GET /v1/realtime`` does to other sessions'
relay latency, without the failure throttle (``auth_failures_burst = 0``) and with it (the
default), against no flood in the same run.

The gateway (``create_app`` on uvloop, SQLite, INFO logs as JSON to /dev/null,
``tests/provider.py``'s ``FakeProvider`` upstream) runs in a child process; the flood in another
(``--rate`` a second from up to ``--flooders`` raw sockets: upgrade with a bad key, read up to the
close frame, hang up); the measured sessions here, each sending a ``test.raw`` frame every 20 ms
that the provider sends straight back, timed from send to receipt (through the gateway both
ways). Gateway CPU is the child's (gateway and fake upstream) over the measured window.

    python bench/auth_flood_bench.py [--sessions 20] [--seconds 10] [--rate 1000] [--flooders 50]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import psutil
from aiohttp import web
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.provider import PROVIDER_KEY, FakeProvider  # noqa: E402

from rtgate.api.app import create_app, set_local_base_url  # noqa: E402
from rtgate.api.request_timeouts import app_runner  # noqa: E402
from rtgate.config import load_settings  # noqa: E402
from rtgate.logs import configure_logging  # noqa: E402
from rtgate.relay.endpoint import GATEWAY  # noqa: E402
from rtgate.serving import freeze_startup_heap  # noqa: E402

BAD_KEY = "rtg_nope0000_" + "x" * 32


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def serve_gateway(burst: str) -> None:
    """The child: a gateway and its fake upstream until stdin closes; prints port and a key."""
    configure_logging("info", [], "json")
    provider = FakeProvider()
    await provider.start()
    home = Path(tempfile.mkdtemp(prefix="rtgate-flood-bench-"))
    env = {
        "RTGATE_HOME": str(home),
        "RTGATE_DATABASE_URL": f"sqlite:///{home / 'rtgate.db'}",
        "RTGATE_OPENAI_BASE_URL": provider.base_url,
        "OPENAI_API_KEY": PROVIDER_KEY,
        "RTGATE_AUTH_FAILURES_BURST": burst,
    }
    settings = load_settings(None, env)
    app = create_app(settings)
    runner = app_runner(app, settings, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    set_local_base_url(app, "127.0.0.1", port)
    _, key = await app[GATEWAY].keyring.create("measured")
    freeze_startup_heap()
    print(json.dumps({"port": port, "key": key}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()
    await provider.stop()


async def flood(port: int, flooders: int, rate: float, seconds: float) -> None:
    """The flood child: ``rate`` bad-key upgrades a second (open loop: each has its start time,
    taken by the next of ``flooders`` connections free); prints how many were made."""
    request = (
        "GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
        f"Authorization: Bearer {BAD_KEY}\r\n\r\n"
    ).encode()
    done = issued = 0
    start = time.monotonic()
    deadline = start + seconds

    async def one() -> None:
        nonlocal done, issued
        while time.monotonic() < deadline:
            due = start + issued / rate
            issued += 1
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                seen = b""
                while b"\x88" not in seen.partition(b"\r\n\r\n")[2]:
                    chunk = await reader.read(4096)
                    if not chunk:
                        break
                    seen += chunk
                writer.close()
                done += 1
            except OSError:
                await asyncio.sleep(0.01)

    await asyncio.gather(*(one() for _ in range(flooders)))
    print(json.dumps({"upgrades": done}), flush=True)


async def child(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def measure(port: int, key: str, sessions: int, seconds: float) -> list[float]:
    rtts: list[float] = []
    url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
    frame = orjson.dumps({"type": "test.raw", "frame": '{"type":"bench.echo"}'}).decode()

    async def session() -> None:
        async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
            await ws.recv()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                t0 = time.perf_counter()
                await ws.send(frame)
                while orjson.loads(await ws.recv())["type"] != "bench.echo":
                    pass
                rtts.append(time.perf_counter() - t0)
                await asyncio.sleep(0.02)

    await asyncio.gather(*(session() for _ in range(sessions)))
    return rtts


async def cell(a: argparse.Namespace, burst: str | None) -> dict[str, Any]:
    gw = await child("--serve-gateway", burst or "20")
    assert gw.stdout is not None
    hello = json.loads(await asyncio.wait_for(gw.stdout.readline(), 60))
    ps = psutil.Process(gw.pid)
    await measure(hello["port"], hello["key"], 2, 1.0)  # warm up
    cpu0 = sum(ps.cpu_times()[:2])
    flooder = None
    if burst is not None:
        flooder = await child(
            "--flood", str(hello["port"]), str(a.flooders), str(a.rate), str(a.seconds + 1)
        )
    rtts = await measure(hello["port"], hello["key"], a.sessions, a.seconds)
    cpu = (sum(ps.cpu_times()[:2]) - cpu0) / a.seconds
    upgrades = 0
    if flooder is not None:
        assert flooder.stdout is not None
        upgrades = json.loads(await flooder.stdout.readline())["upgrades"]
        await flooder.wait()
    assert gw.stdin is not None
    gw.stdin.close()
    await gw.wait()
    return {
        "flood": "none" if burst is None else ("throttle off" if burst == "0" else "throttle on"),
        "bad upgrades/s": round(upgrades / (a.seconds + 1)),
        "p50 ms": round(pct(rtts, 0.5) * 1000, 2),
        "p99 ms": round(pct(rtts, 0.99) * 1000, 2),
        "gateway CPU": f"{cpu:.0%}",
        "round trips": len(rtts),
    }


async def run(a: argparse.Namespace) -> None:
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs", flush=True)
    rows = [await cell(a, burst) for burst in (None, "0", "20")]
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + " --- |" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--flooders", type=int, default=50)
    ap.add_argument("--serve-gateway", help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, default=1000, help="bad-key upgrades a second")
    ap.add_argument("--flood", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    import uvloop

    uvloop.install()
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    if a.serve_gateway is not None:
        asyncio.run(serve_gateway(a.serve_gateway))
    elif a.flood:
        port, flooders, rate, seconds = a.flood
        asyncio.run(flood(int(port), int(flooders), float(rate), float(seconds)))
    else:
        asyncio.run(run(a))


if __name__ == "__main__":
    main()
