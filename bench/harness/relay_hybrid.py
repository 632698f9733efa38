"""Anchor for a picows upstream leg: aiohttp serves the client (one port with the HTTP routes,
as rtgate must), picows dials the upstream.

Uplink: the aiohttp pump hands each frame to picows' synchronous ``send`` (no writer coroutine,
C masking). Downlink: picows' ``on_ws_frame`` callback puts the payload on a deque and wakes the
aiohttp pump, which awaits ``send_str`` (the client leg stays async, so metering can await a
commit before forwarding, as rtgate's does). Backpressure: the deque past its high-water mark
pauses reading the upstream; the upstream's write buffer past its mark pauses the uplink pump.

Run by ``relay_bench.py --anchors`` as ``hybrid``; it takes ``anchor.py``'s arguments.
"""

from __future__ import annotations

import asyncio
import collections
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from picows import WSListener, WSMsgType, WSTransport, ws_connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness.anchor import Meter, meter_dumper, parse_args, run, upstream_headers, upstream_ssl

DOWN_DIRECT = "--down-direct" in sys.argv
if DOWN_DIRECT:
    # Upper bound only: the downlink written from picows' callback straight onto the client's
    # transport (unmasked server frames), bypassing aiohttp's writer; no backpressure, no
    # metering wait. Not a design rtgate could ship as is.
    sys.argv.remove("--down-direct")
args = parse_args(8006)
meter = None if args.no_meter else Meter()
MAX = 16 * 1024 * 1024
SSL = upstream_ssl(args)
HIGH, LOW = 64, 16


class Upstream(WSListener):
    """The picows side: frames land on ``inbox`` and wake the downlink pump."""

    def __init__(self) -> None:
        self.inbox: collections.deque[tuple[int, Any]] = collections.deque()
        self.wake: asyncio.Future[None] | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.transport: WSTransport | None = None
        self.paused = False
        #: The client's transport, when the downlink bypasses aiohttp (``--down-direct``).
        self.client: asyncio.Transport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def _push(self, item: tuple[int, Any]) -> None:
        self.inbox.append(item)
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)
        if len(self.inbox) > HIGH and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.underlying_transport.pause_reading()

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        mt = frame.msg_type
        if self.client is not None and mt == WSMsgType.TEXT:
            payload = frame.get_payload_as_bytes()
            if meter is not None:
                meter.sniff(payload)
            n = len(payload)
            if n < 126:
                head = bytes((0x81, n))
            elif n < 65536:
                head = bytes((0x81, 126)) + n.to_bytes(2, "big")
            else:
                head = bytes((0x81, 127)) + n.to_bytes(8, "big")
            self.client.write(head + payload)
            return
        if mt == WSMsgType.TEXT:
            self._push((1, frame.get_payload_as_utf8_text()))
        elif mt == WSMsgType.BINARY:
            self._push((2, frame.get_payload_as_bytes()))
        elif mt == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())
        elif mt == WSMsgType.CLOSE:
            self._push((8, frame.get_close_code()))
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._push((0, None))

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    async def next(self) -> tuple[int, Any]:
        while not self.inbox:
            self.wake = asyncio.get_running_loop().create_future()
            await self.wake
        item = self.inbox.popleft()
        if self.paused and len(self.inbox) < LOW and self.transport is not None:
            self.paused = False
            self.transport.underlying_transport.resume_reading()
        return item


async def handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False, max_msg_size=MAX)
    await ws.prepare(request)
    hdrs = upstream_headers(request.headers.get)
    up = Upstream()
    up_t, _ = await ws_connect(
        lambda: up,
        args.upstream + request.path_qs,
        extra_headers=hdrs,
        max_frame_size=MAX,
        ssl_context=SSL,
    )
    send = up_t.send
    if DOWN_DIRECT:
        up.client = request.transport

    async def c2u() -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                if not up.writable.is_set():
                    await up.writable.wait()
                send(WSMsgType.TEXT, msg.data.encode())
            elif msg.type == aiohttp.WSMsgType.BINARY:
                send(WSMsgType.BINARY, msg.data)
            else:
                break

    async def u2c() -> None:
        while True:
            kind, data = await up.next()
            if kind == 1:
                if meter is not None:
                    meter.sniff(data)
                await ws.send_str(data)
            elif kind == 2:
                await ws.send_bytes(data)
            else:
                break

    t1 = asyncio.ensure_future(c2u())
    t2 = asyncio.ensure_future(u2c())
    _, pending = await asyncio.wait({t1, t2}, return_when=asyncio.FIRST_COMPLETED)
    for p in pending:
        p.cancel()
    up_t.disconnect()
    await ws.close()
    return ws


async def serve() -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port, backlog=4096).start()
    dumper = None
    if meter is not None and args.meter_file:
        dumper = asyncio.ensure_future(meter_dumper(meter, args.meter_file))
    print(f"relay hybrid on {args.port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        if dumper is not None:
            dumper.cancel()
        await runner.cleanup()


if __name__ == "__main__":
    run(serve, args.loop)
