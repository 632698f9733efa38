"""Minimal aiohttp relay: ``web.WebSocketResponse`` for the client, a shared ``ClientSession``
upstream, two awaiting pumps. The library rtgate is built on, with nothing on top: what rtgate's
own work (auth, policy, metering, metrics) costs is measured against it.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness.anchor import Meter, meter_dumper, parse_args, run, upstream_headers, upstream_ssl

MAX = 16 * 1024 * 1024
TEXT, BINARY = aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY
args = parse_args(8002)
meter = None if args.no_meter else Meter()
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False, max_msg_size=MAX)
    await ws.prepare(request)
    tls = upstream_ssl(args)
    async with request.app[SESSION].ws_connect(
        args.upstream + request.path_qs,
        headers=upstream_headers(request.headers.get),
        compress=0,
        max_msg_size=MAX,
        ssl=tls if tls is not None else True,
    ) as up:

        async def client_to_upstream() -> None:
            async for msg in ws:
                if msg.type == TEXT:
                    await up.send_str(msg.data)
                elif msg.type == BINARY:
                    await up.send_bytes(msg.data)
                else:
                    break

        async def upstream_to_client() -> None:
            async for msg in up:
                if msg.type == TEXT:
                    if meter is not None:
                        meter.sniff(msg.data)
                    await ws.send_str(msg.data)
                elif msg.type == BINARY:
                    await ws.send_bytes(msg.data)
                else:
                    break

        pumps = {
            asyncio.ensure_future(client_to_upstream()),
            asyncio.ensure_future(upstream_to_client()),
        }
        _, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for p in pending:
            p.cancel()
    await ws.close()
    return ws


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    dumper = None
    if meter is not None and args.meter_file:
        dumper = asyncio.ensure_future(meter_dumper(meter, args.meter_file))
    yield
    if dumper is not None:
        dumper.cancel()
    await app[SESSION].close()


async def serve() -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    app.cleanup_ctx.append(session_ctx)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port, backlog=4096).start()
    print(f"relay aiohttp on {args.port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    run(serve, args.loop)
