"""``PicowsLeg``: a ``Leg`` (relay/legs.py) on a picows connection, either end.

picows calls ``on_ws_frame`` for every frame, straight from the transport's read callback, and
writes each frame with one ``send()`` when the socket buffer is empty: no coroutine and no
future per frame, which is what the relay's per-frame cost needs (docs/performance.md).

picows hands over single frames and leaves the rest of RFC 6455 to its listener, so this leg
keeps it:

* messages: a fragmented message (RFC 6455 5.4) is assembled from its continuation frames and
  reported whole; a message is at most ``max_message`` bytes (``max_message_bytes``: exactly
  that many pass), one more closes the connection with 1009. picows checks each frame against
  ``max_frame_size`` (set to the same bound: a single frame over it is refused by picows with
  1009 before it is read); this leg checks the sum of a fragmented message's frames;
* text must be UTF-8 (RFC 6455 8.1): invalid text closes with 1007. A text message is reported
  as the bytes read (``LegEvents.on_text``); checking them costs one ``isascii`` (what base64
  audio in JSON is), and a decode only for a message with other characters; reserved bits with no
  extension negotiated, and continuation frames out of order, close with 1002 (5.2, 5.4);
* a ping is answered with a pong carrying its payload (5.5.2) and, like a pong, reported as
  ``on_heard``; picows' own auto-pong is off, because it would swallow the ping unreported;
* a close frame is answered with the same code (5.5.1; an empty one with an empty one) and
  reported as ``on_close`` (1005 when it had no code, 7.1.5), then the connection is dropped;
* a protocol error picows finds itself (a frame over ``max_frame_size``, a bad header) is
  reported as ``on_close`` with the code picows sent, once the connection is gone.

Everything a leg reports before its pump is bound (``start``) waits in order, and the leg stops
reading once that backlog passes ``BACKLOG_BYTES``: a client that talks while its session is
admitted and its upstream dialled is held by TCP, not by memory. While the pump has reading
paused, the frames of a read picows already made (it delivers them all) wait the same way,
at most one read's worth, and follow in order on ``resume_reading``.

Backpressure: the transport calls ``pause_writing`` past its high-water mark and
``resume_writing`` below the low one; the leg exposes that as ``backed_up`` and
``on_drain``, and the pump pauses the other leg's reading meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Callable, Mapping

from picows import (
    WSCloseCode,
    WSError,
    WSFrame,
    WSHandshakeError,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)

from rtgate.errors import UpstreamError, upstream_refused
from rtgate.relay.aiohttp_leg import quiet_seconds
from rtgate.relay.legs import LegEvents

_TEXT, _BINARY, _CONTINUATION = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION
_PING, _PONG, _CLOSE = WSMsgType.PING, WSMsgType.PONG, WSMsgType.CLOSE

#: RFC 6455 5.5: a control frame's payload is at most 125 bytes, so a close reason 123.
MAX_REASON_BYTES = 123
#: How long a closing connection waits for the peer's answering close frame before it is dropped.
CLOSE_TIMEOUT = 5.0
#: What a leg holds for its pump before ``start`` until it stops reading (see the module doc).
BACKLOG_BYTES = 1 << 20
#: picows' first read buffer per connection, its smallest (an idle session holds two). picows
#: keeps 256 bytes of it for its parser and doubles it once 1,536 bytes wait in it (90 % of
#: the rest, or 256 bytes of room left): a 20 ms audio frame (~1.4 KB) alone leaves it as it
#: is; frames that arrive together, a long request head, or an upstream's 101 read with its
#: ``session.created`` grow it, and a 100 ms frame (~6.6 KB) takes it through 4 and 7 to ~15 KB
#: (docs/performance.md 9.17). It never shrinks.
READ_BUFFER_BYTES = 2048


def picows_logger(side: str) -> logging.LoggerAdapter[logging.Logger]:
    """The logger picows gets: an adapter, because given a ``Logger`` picows builds a child
    logger per connection, which stays in memory as long as the connection."""
    return logging.LoggerAdapter(logging.getLogger(f"picows.{side}"), {})


def close_reason(reason: str) -> bytes:
    """``reason`` cut to what a close frame carries (123 bytes), never mid-character."""
    raw = reason.encode()
    if len(raw) <= MAX_REASON_BYTES:
        return raw
    return raw[:MAX_REASON_BYTES].decode("utf-8", "ignore").encode()


def _utf8(data: bytes) -> bool:
    """Whether ``data`` is valid UTF-8 (RFC 6455 8.1; the decoded text is not kept)."""
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


class _Held:
    """Events a leg holds back, in order: before its pump is bound (``Leg.start``), or while
    the pump has its reading paused (picows delivers every frame of a read it already made:
    those wait here, at most one read's worth). Signs of life and drains are not held."""

    __slots__ = ("entries", "leg", "size", "through")

    def __init__(self, leg: PicowsLeg, through: LegEvents | None) -> None:
        self.leg = leg
        self.through = through
        self.entries: deque[Callable[[LegEvents], None]] = deque()
        self.size = 0

    def _keep(self, entry: Callable[[LegEvents], None], size: int = 0) -> None:
        self.entries.append(entry)
        self.size += size
        if self.through is None and self.size > BACKLOG_BYTES:
            self.leg._hold_reading(True)

    def on_text(self, data: bytes) -> None:
        self._keep(lambda events: events.on_text(data), len(data))

    def on_binary(self, data: bytes) -> None:
        self._keep(lambda events: events.on_binary(data), len(data))

    def on_heard(self) -> None:
        if self.through is not None:
            self.through.on_heard()

    def on_close(self, code: int, reason: str) -> None:
        self._keep(lambda events: events.on_close(code, reason))

    def on_lost(self) -> None:
        self._keep(lambda events: events.on_lost())

    def on_drain(self) -> None:
        if self.through is not None:
            self.through.on_drain()

    def replay(self, events: LegEvents) -> bool:
        """Report what was held to ``events``; False if the pump paused reading again on the
        way (the rest stays held)."""
        entries = self.entries
        while entries:
            if self.leg._paused_by_pump:
                return False
            entries.popleft()(events)
        return True


class PicowsLeg(WSListener):
    """One WebSocket connection through picows, client-facing (built by the front door) or
    upstream (``connect``); the listener picows calls is the leg itself."""

    # Slots: attributes of a subclass of picows' extension type are read ~3x faster than from
    # an instance dict, and the hot path reads several per frame.
    __slots__ = (
        "_close_timeout",
        "_closing",
        "_drop_timer",
        "_ended",
        "_events",
        "_gone",
        "_max_message",
        "_on_open",
        "_paused_by_pump",
        "_paused_for_backlog",
        "_pieces",
        "_pieces_size",
        "_pieces_type",
        "_plain",
        "_pump",
        "_reaper",
        "backed_up",
        "closed",
        "transport",
    )

    def __init__(
        self,
        max_message: int,
        *,
        on_open: Callable[[PicowsLeg], None] | None = None,
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> None:
        super().__init__()
        self.closed = False
        self.transport: WSTransport | None = None
        self._max_message = max_message
        self._on_open = on_open
        self._close_timeout = close_timeout
        #: The pump's events once bound; ``_events`` is a holder (``_Held``) until then, and
        #: again while the pump has reading paused.
        self._pump: LegEvents | None = None
        self._report_to(_Held(self, None))
        #: True while no fragmented message is being assembled and nothing ended the leg: the
        #: one test the hot path makes.
        self._plain = True
        #: The pieces of a fragmented message, and its type (RFC 6455 5.4).
        self._pieces: list[bytes] = []
        self._pieces_size = 0
        self._pieces_type = _TEXT
        #: Set once the leg reported its end, or the pump ended it: nothing more is reported.
        self._ended = False
        #: A close frame of ours is out; the peer's answer ends the connection.
        self._closing = False
        self.backed_up = False
        self._paused_by_pump = False
        self._paused_for_backlog = False
        self._drop_timer: asyncio.TimerHandle | None = None
        self._gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reaper: asyncio.Future[None] | None = None

    def _report_to(self, events: LegEvents) -> None:
        # Called through the object on the hot path, not through a bound method kept in a slot:
        # a bound method is one more object per frame to fetch from memory, and reaching it
        # through a slot takes the interpreter's generic lookup (docs/performance.md 9.17).
        self._events = events

    # -- picows' callbacks ------------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        if self._on_open is not None:
            opened, self._on_open = self._on_open, None
            opened(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        mt = frame.msg_type
        if (
            self._plain
            and frame.fin
            and not (frame.rsv1 or frame.rsv2 or frame.rsv3)
            and frame.payload_size <= self._max_message
        ):
            if mt is _TEXT:
                data = frame.get_payload_as_bytes()
                if data.isascii() or _utf8(data):
                    self._events.on_text(data)
                else:
                    self._fail(WSCloseCode.INVALID_TEXT, "invalid UTF-8 in a text message")
                return
            if mt is _BINARY:
                self._events.on_binary(frame.get_payload_as_bytes())
                return
        self._other_frame(transport, frame, mt)

    def _other_frame(self, transport: WSTransport, frame: WSFrame, mt: WSMsgType) -> None:
        """Everything but a whole text or binary message on an open leg."""
        if frame.payload_size > self._max_message:
            # picows refused this frame's header (over max_frame_size: 1009, RFC 6455 7.4.1)
            # but goes on reading its payload until it drops the connection: never relayed.
            # The close is reported once the connection is gone (on_ws_disconnected).
            return
        if mt is _CLOSE and transport.is_close_frame_sent and not self._closing:
            transport.disconnect()  # the peer's answer to a close picows sent for an error
            return
        if mt is _PING:
            # RFC 6455 5.5.2: the pong carries the ping's payload.
            transport.send_pong(frame.get_payload_as_bytes())
            if not self._ended:
                self._events.on_heard()
            return
        if mt is _PONG:
            if not self._ended:
                self._events.on_heard()
            return
        if mt is _CLOSE:
            self._close_received(transport, frame)
            return
        if self._ended or self._closing:
            return  # after our close frame (RFC 6455 5.5.1): the peer's last data, dropped
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            # RFC 6455 5.2: no extension was negotiated on this connection.
            self._fail(WSCloseCode.PROTOCOL_ERROR, "reserved bits set")
            return
        if mt is _CONTINUATION:
            if self._plain:
                self._fail(WSCloseCode.PROTOCOL_ERROR, "continuation without a message")
                return
        elif not self._plain:
            # A new data frame before the fragmented message ended (RFC 6455 5.4).
            self._fail(WSCloseCode.PROTOCOL_ERROR, "message interleaved in a fragmented one")
            return
        else:
            self._plain = False
            self._pieces_type = mt
        self._pieces_size += frame.payload_size
        if self._pieces_size > self._max_message:
            self._fail(WSCloseCode.MESSAGE_TOO_BIG, "message too big")
            return
        self._pieces.append(frame.get_payload_as_bytes())
        if frame.fin:
            self._message_complete()

    def _message_complete(self) -> None:
        data = b"".join(self._pieces)
        self._pieces = []
        self._pieces_size = 0
        self._plain = True
        if self._pieces_type is _BINARY:
            self._events.on_binary(data)
        elif _utf8(data):
            self._events.on_text(data)
        else:
            self._fail(WSCloseCode.INVALID_TEXT, "invalid UTF-8 in a text message")

    def _close_received(self, transport: WSTransport, frame: WSFrame) -> None:
        self.closed = True
        self._plain = False
        if self._closing:
            transport.disconnect()  # the answer to our close frame: the handshake is over
            return
        self._closing = True
        if frame.payload_size >= 2:
            code = frame.get_close_code().value
            reason = frame.get_close_reason() or ""
            transport.send_close(WSCloseCode(code))  # RFC 6455 5.5.1: echo the code
        else:
            code, reason = 1005, ""  # RFC 6455 7.1.5: no code in the frame
            transport.send(_CLOSE, b"")
        transport.disconnect()
        self._report_close(code, reason)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        self._plain = False
        if self._drop_timer is not None:
            self._drop_timer.cancel()
            self._drop_timer = None
        if not self._ended:
            self._ended = True
            shake = transport.close_handshake
            if shake is not None and shake.sent is not None:
                # picows refused a frame itself (over max_frame_size: 1009; a bad header:
                # 1002) and sent its close frame: reported as the leg closing for it.
                self._events.on_close(shake.sent.code.value, shake.sent.reason or "")
            else:
                self._events.on_lost()
        if transport.is_client_side:
            # picows keeps the error it closed a client connection for in a future of its own,
            # raised by wait_disconnected: retrieved here (the leg reported it already).
            self._reaper = asyncio.ensure_future(self._reap(transport))
        elif not self._gone.done():
            self._gone.set_result(None)

    async def _reap(self, transport: WSTransport) -> None:
        with contextlib.suppress(Exception):
            await transport.wait_disconnected()
        if not self._gone.done():
            self._gone.set_result(None)

    def pause_writing(self) -> None:
        self.backed_up = True

    def resume_writing(self) -> None:
        self.backed_up = False
        if not self._ended:
            self._events.on_drain()

    # -- the Leg protocol -------------------------------------------------------------------

    def start(self, events: LegEvents) -> None:
        if self._pump is not None:
            raise RuntimeError("PicowsLeg.start called twice")
        self._pump = events
        self._release_held()

    def _release_held(self) -> None:
        """Replay what was held to the pump and report to it directly again, unless it pauses
        reading on the way."""
        held, pump = self._events, self._pump
        if pump is None or not isinstance(held, _Held):
            return
        if not held.replay(pump):
            held.through = pump
            return
        self._report_to(pump)
        self._hold_reading(False)

    def send_text(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.send(_TEXT, data)

    def send_bytes(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.send(_BINARY, data)

    def ping(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.send_ping()

    def close(self, code: int, reason: str) -> None:
        if self.closed or self.transport is None:
            self._ended = True
            return
        self._ended = True
        self._send_close(code, reason)

    def sever(self) -> None:
        self.closed = True
        self._ended = True
        if self.transport is not None:
            self.transport.disconnect(graceful=False)

    def pause_reading(self) -> None:
        self._paused_by_pump = True
        if self._events is self._pump and self._pump is not None:
            self._report_to(_Held(self, self._pump))
        self._apply_reading()

    def resume_reading(self) -> None:
        self._paused_by_pump = False
        self._release_held()
        self._apply_reading()

    def quiet_seconds(self) -> float | None:
        if self.transport is None:
            return None
        return quiet_seconds(self.transport.underlying_transport)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._gone)

    # -- internals --------------------------------------------------------------------------

    def _hold_reading(self, held: bool) -> None:
        self._paused_for_backlog = held
        self._apply_reading()

    def _apply_reading(self) -> None:
        if self.transport is None or self.transport.is_disconnected:
            return
        tr = self.transport.underlying_transport
        if self._paused_by_pump or self._paused_for_backlog:
            tr.pause_reading()
        else:
            tr.resume_reading()

    def _send_close(self, code: int, reason: str) -> None:
        """Our close frame, then the connection is dropped when the peer answers or after
        ``close_timeout`` (RFC 6455 7.1.1: the server drops TCP first)."""
        assert self.transport is not None
        self.closed = True
        self._closing = True
        self._plain = False
        self.transport.send_close(WSCloseCode(code), close_reason(reason))
        loop = asyncio.get_running_loop()
        self._drop_timer = loop.call_later(self._close_timeout, self.transport.disconnect)

    def _fail(self, code: WSCloseCode, reason: str) -> None:
        """Fail the connection for a protocol error (RFC 6455 7.1.7), reported as closed with
        ``code``."""
        self._pieces = []
        self._send_close(code.value, reason)
        self._report_close(code.value, reason)

    def _report_close(self, code: int, reason: str) -> None:
        if not self._ended:
            self._ended = True
            self._events.on_close(code, reason)


async def connect(
    url: str,
    headers: Mapping[str, str],
    *,
    max_message: int,
    connect_timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> PicowsLeg:
    """Dial an upstream at ``url`` (``ws://`` or ``wss://``, certificates verified, against
    ``ssl_context``'s trust: the gateway's one ``Gateway.upstream_tls``; without it the event
    loop builds a default context for this connection alone, parsing the CA bundle again) with
    ``headers`` (relay/upstream.py ``upstream_headers``), within ``connect_timeout`` seconds,
    handshake included.

    Raises ``UpstreamError``: refused (HTTP status in the message) or unreachable."""
    try:
        async with asyncio.timeout(connect_timeout):
            _transport, leg = await ws_connect(
                lambda: PicowsLeg(max_message),
                url,
                ssl_context=ssl_context,
                extra_headers=dict(headers),
                websocket_handshake_timeout=connect_timeout,
                max_frame_size=max_message,
                enable_auto_pong=False,
                max_redirects=0,
                logger_name=picows_logger("client"),
                read_buffer_init_size=READ_BUFFER_BYTES,
            )
    except WSHandshakeError as exc:
        status = exc.response.status if exc.response is not None else None
        raise upstream_refused(status) from exc
    except WSError as exc:  # an answer that is not a WebSocket handshake at all
        raise UpstreamError("The upstream could not be reached.") from exc
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise UpstreamError("The upstream could not be reached.") from exc
    if not isinstance(leg, PicowsLeg):  # ws_connect returns what the factory built
        raise TypeError(type(leg).__name__)
    return leg
