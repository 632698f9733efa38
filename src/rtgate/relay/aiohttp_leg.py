"""``AiohttpLeg``: an aiohttp WebSocket (the client's ``web.WebSocketResponse`` or an upstream
``ClientWebSocketResponse``) as a callback-driven ``Leg`` (``legs.py``).

Reading: one task per leg awaits ``receive()`` and reports each message to the pump (a text
message as its UTF-8 bytes, ``legs.py``: aiohttp hands over text it decoded and checked, which
is encoded again here; this leg serves permessage-deflate clients, where inflating costs more).
aiohttp offers no callback for a frame, so this is the one coroutine step per frame left on
this leg; while the pump has reading paused the task stops calling ``receive()``, aiohttp's
bounded reader queue fills and it stops reading the socket.

Writing: a frame goes straight to the transport through aiohttp's frame writer, without a
coroutine or a future, when the connection is not compressed (aiohttp's ``send_frame`` does the
same, then awaits a drain only past its buffer limit: the pump watches ``backed_up``
instead). A compressed connection (permessage-deflate, RFC 7692) keeps aiohttp's own path: its
compressor must see frames in order, so they go through a queue and one writer task.

The socket is opened with aiohttp's autoping and heartbeat off (its heartbeat re-arms a timer
per frame): pings are answered here and reported as signs of life, and the core decides when to
ping (``protocol/keepalive.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections import deque
from typing import Any

from aiohttp import ClientWebSocketResponse, WSMsgType, web

from rtgate.protocol.relay_session import received_close_code
from rtgate.relay.legs import LegEvents

log = logging.getLogger("rtgate.relay")

_TEXT, _BINARY, _CLOSE = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CLOSE
_PING, _PONG, _CLOSING, _ERROR = WSMsgType.PING, WSMsgType.PONG, WSMsgType.CLOSING, WSMsgType.ERROR
_TEXT_OPCODE = int(WSMsgType.TEXT)

#: Close codes aiohttp's reader closes a connection with for a protocol error of the peer's
#: (RFC 6455 7.4.1); reported with ``on_close``, anything else without a close frame is lost.
_PROTOCOL_ERRORS = {1002: "protocol error", 1007: "invalid frame payload", 1009: "message too big"}

#: Frames queued on a compressed connection before the leg counts as backed up.
_QUEUE_HIGH = 64
_CLOSE_TIMEOUT_S = 5.0


def quiet_seconds(ws: Any) -> float | None:
    """Seconds since the kernel last received bytes on ``ws``'s TCP socket (Linux TCP_INFO
    ``tcpi_last_data_recv``), or None where that is not known.

    A peer in the middle of one large frame sends no complete frame, so no pong either, for
    as long as the frame takes; this tells such a peer from a dead one.
    """
    tcp_info = getattr(socket, "TCP_INFO", None)
    sock = ws.get_extra_info("socket")
    if tcp_info is None or sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, 104)
    except (OSError, TypeError):
        return None
    if len(info) < 56:
        return None
    return float(struct.unpack_from("I", info, 52)[0]) / 1000


def sever(ws: Any) -> None:
    """Cut a dead leg's TCP connection (shutdown both ways), so it reads as dropped at once
    instead of waiting out a close handshake nobody will answer."""
    sock = ws.get_extra_info("socket")
    if sock is None:
        return
    # uvloop's transport sockets do not offer shutdown(); a duplicate descriptor does.
    with (
        contextlib.suppress(OSError, TypeError, ValueError),
        socket.socket(sock.family, sock.type, fileno=os.dup(sock.fileno())) as dup,
    ):
        dup.shutdown(socket.SHUT_RDWR)


class AiohttpLeg:
    """One aiohttp WebSocket, prepared (server side) or connected (client side), as a Leg."""

    def __init__(self, ws: web.WebSocketResponse | ClientWebSocketResponse) -> None:
        self.ws = ws
        self.closed = False
        writer = ws._writer
        assert writer is not None, "the WebSocket must be prepared or connected"
        self._writer = writer
        self._frame = writer._write_websocket_frame
        self._protocol = writer.protocol
        self._events: LegEvents | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._resumed: asyncio.Future[None] | None = None
        self._paused = False
        #: A compressed connection's frames and their opcodes, in order, for its one writer task.
        self._queue: deque[tuple[bytes, WSMsgType]] | None = deque() if writer.compress else None
        self._sender: asyncio.Task[None] | None = None

    # -- reading --------------------------------------------------------------------------------
    def start(self, events: LegEvents) -> None:
        self._events = events
        self._reader = asyncio.get_running_loop().create_task(self._read(events), name="leg")

    async def _read(self, events: LegEvents) -> None:
        ws = self.ws
        receive = ws.receive
        on_text, on_binary = events.on_text, events.on_binary
        while True:
            if self._paused:
                self._resumed = asyncio.get_running_loop().create_future()
                await self._resumed
                continue
            try:
                t, data, extra = await receive()
            except (ConnectionError, RuntimeError):
                t, data, extra = WSMsgType.CLOSED, None, None
            if t is _TEXT:
                on_text(data.encode())
            elif t is _BINARY:
                on_binary(data)
            elif t is _PING:
                # RFC 6455 5.5.2: answered at once, with the ping's payload.
                self._write(data, WSMsgType.PONG)
                events.on_heard()
            elif t is _PONG:
                events.on_heard()
            elif t is _CLOSING:
                # Our own close started (``close``): it reads the peer's answer.
                return
            elif t is _CLOSE:
                self.closed = True
                events.on_close(received_close_code(data), extra or "")
                return
            else:
                # Gone without a close frame, or closed by aiohttp for the peer's protocol error.
                already, self.closed = self.closed, True
                code = ws.close_code
                if t is _ERROR and code in _PROTOCOL_ERRORS:
                    events.on_close(code, _PROTOCOL_ERRORS[code])
                elif not already:
                    events.on_lost()
                return

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False
        resumed, self._resumed = self._resumed, None
        if resumed is not None and not resumed.done():
            resumed.set_result(None)

    # -- writing --------------------------------------------------------------------------------
    def send_text(self, data: bytes) -> None:
        if self.closed:
            return
        if self._queue is not None:
            self._enqueue(data, _TEXT)
            return
        # The hot path, inlined: one frame straight to the transport.
        try:
            self._frame(data, _TEXT_OPCODE, 0)
        except (ConnectionError, RuntimeError):
            return

    def send_bytes(self, data: bytes) -> None:
        if self.closed:
            return
        if self._queue is None:
            self._write(data, _BINARY)
        else:
            self._enqueue(data, _BINARY)

    def ping(self) -> None:
        if not self.closed:
            self._write(b"", WSMsgType.PING)

    def _write(self, payload: bytes, opcode: WSMsgType) -> None:
        # Control frames are never compressed (RFC 7692 6.1), so they take this path too.
        try:
            self._frame(payload, opcode, 0)
        except (ConnectionError, RuntimeError):
            # A transport already closing raises; the reader reports the loss.
            return

    def _enqueue(self, data: bytes, opcode: WSMsgType) -> None:
        queue = self._queue
        assert queue is not None
        queue.append((data, opcode))
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_queued(queue))

    async def _send_queued(self, queue: deque[tuple[bytes, WSMsgType]]) -> None:
        ws = self.ws
        try:
            while queue:
                await ws.send_frame(*queue.popleft())
        except (ConnectionError, RuntimeError):
            queue.clear()
        finally:
            self._sender = None
            self._maybe_drained()

    @property
    def backed_up(self) -> bool:
        """(Reading it while backed up starts the task that reports the drain.)"""
        backed = self._protocol._paused or (
            self._queue is not None and len(self._queue) > _QUEUE_HIGH
        )
        if backed and self._drainer is None and self._queue is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return backed

    async def _drain(self) -> None:
        try:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._protocol._drain_helper()
        finally:
            self._drainer = None
        self._maybe_drained()

    def _maybe_drained(self) -> None:
        events = self._events
        if events is not None and not self.closed:
            events.on_drain()

    # -- ending ---------------------------------------------------------------------------------
    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self._closer = asyncio.get_running_loop().create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        sender = self._sender
        if sender is not None:
            # A compressed connection's queued frames go before its close frame.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await asyncio.shield(sender)
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S * 2):
                await self.ws.close(code=code, message=reason.encode()[:123])
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            log.debug("close handshake cut short: %s", type(exc).__name__)

    def sever(self) -> None:
        self.closed = True
        sever(self.ws)

    def quiet_seconds(self) -> float | None:
        return quiet_seconds(self.ws)

    async def wait_closed(self) -> None:
        """Until this leg's tasks are done (its close handshake bounded by aiohttp's own close
        timeout); its reader is cancelled if the connection is closed and it still waits."""
        for task in (self._closer, self._sender, self._drainer):
            if task is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await task
        reader = self._reader
        if reader is not None and not reader.done():
            if self.ws.closed:
                reader.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await reader
