"""Minimal picows relay, the floor anchor: picows server and picows upstream client, callbacks.

No coroutine and no per-frame Python object beyond the payload: each frame is forwarded as a
memoryview of the receive buffer from inside the receive callback. Metering sniffs upstream
frames (``anchor.py``). Backpressure: when one side's socket write buffer passes its high-water
mark, reading from the other side pauses until it drains.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_connect,
    ws_create_server,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness.anchor import Meter, meter_dumper, parse_args, run, upstream_headers, upstream_ssl

TEXT, BINARY, CLOSE = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CLOSE
MAX = 16 * 1024 * 1024


class UpstreamSide(WSListener):
    """Our connection to the upstream; its frames go to the client."""

    def __init__(self, down: ClientSide, meter: Meter | None) -> None:
        self.down = down
        self.meter = meter

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        mt = frame.msg_type
        if mt in (TEXT, BINARY):
            if self.meter is not None and mt == TEXT:
                self.meter.sniff(frame.get_payload_as_bytes())
            self.down.t.send(mt, frame.get_payload_as_memoryview())
        elif mt == CLOSE:
            code = frame.get_close_code()
            transport.send_close(code)
            transport.disconnect()
            self.down.t.send_close(code)
            self.down.t.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.down.t.disconnect()

    def pause_writing(self) -> None:  # the upstream socket is backed up: stop reading the client
        self.down.t.underlying_transport.pause_reading()

    def resume_writing(self) -> None:
        self.down.t.underlying_transport.resume_reading()


class ClientSide(WSListener):
    """A client's connection; its frames go upstream once the upstream is dialled."""

    def __init__(self, request: WSUpgradeRequest, relay: Relay) -> None:
        self.req = request
        self.relay = relay
        self.up: WSTransport | None = None
        self.pending: list[tuple[Any, bytes]] | None = []
        self.closed = False
        self.dial: asyncio.Task[None] | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.t = transport
        self.dial = asyncio.get_running_loop().create_task(self.connect_upstream())

    async def connect_upstream(self) -> None:
        a = self.relay.args
        try:
            up_t, _ = await ws_connect(
                lambda: UpstreamSide(self, self.relay.meter),
                a.upstream + self.req.path.decode(),
                extra_headers=upstream_headers(self.req.headers.get),
                websocket_handshake_timeout=30,
                max_frame_size=MAX,
                ssl_context=upstream_ssl(a),
            )
        except Exception:
            self.t.send_close(WSCloseCode.BAD_GATEWAY)
            self.t.disconnect()
            return
        if self.closed:
            up_t.disconnect()
            return
        self.up = up_t
        for mt, data in self.pending or ():
            up_t.send(mt, data)
        self.pending = None

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        mt = frame.msg_type
        if mt in (TEXT, BINARY):
            if self.up is not None:
                self.up.send(mt, frame.get_payload_as_memoryview())
            elif self.pending is not None:
                self.pending.append((mt, frame.get_payload_as_bytes()))
        elif mt == CLOSE:
            code = frame.get_close_code()
            transport.send_close(code)
            transport.disconnect()
            if self.up is not None:
                self.up.send_close(code)
                self.up.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        if self.up is not None:
            self.up.disconnect()

    def pause_writing(self) -> None:  # the client socket is backed up: stop reading upstream
        if self.up is not None:
            self.up.underlying_transport.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None:
            self.up.underlying_transport.resume_reading()


class Relay:
    def __init__(self) -> None:
        self.args = parse_args(8004)
        self.meter = None if self.args.no_meter else Meter()

    async def serve(self) -> None:
        dumper = None
        if self.meter is not None and self.args.meter_file:
            dumper = asyncio.get_running_loop().create_task(
                meter_dumper(self.meter, self.args.meter_file)
            )
        server = await ws_create_server(
            lambda req: ClientSide(req, self),
            "127.0.0.1",
            self.args.port,
            backlog=4096,
            websocket_handshake_timeout=30,
            max_frame_size=MAX,
        )
        print(f"relay picows on {self.args.port}", flush=True)
        try:
            await server.serve_forever()
        finally:
            if dumper is not None:
                dumper.cancel()


if __name__ == "__main__":
    relay = Relay()
    run(relay.serve, relay.args.loop)
