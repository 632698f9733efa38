"""The front door: one listening socket for aiohttp (every HTTP route, the engine's own route)
and picows (the relay's WebSocket upgrades, ``GET /v1/realtime``,
``GET /v1/realtime/translations`` and ``GET /v1/live/sessions``).

Each connection starts with ``FrontDoor``, an asyncio protocol that reads its first request's
head. Then it hands the connection over with ``transport.set_protocol`` and replays the bytes it
read:

* a WebSocket upgrade of the relay path goes to picows' server protocol, whose listener is a
  ``PicowsLeg``: picows answers the handshake (101, and the subprotocol ``subprotocol`` picks,
  docs/protocol.md 1.7), and ``on_relay`` gets the leg and the request once the 101 is out.
  Authentication and routing run after it, as OpenAI's own server does (5.3);
* everything else goes to aiohttp (``runner.server`` builds its protocol), as it arrived: any
  other request, an upgrade that offers permessage-deflate when ``deflate`` is on (RFC 7692:
  picows does not negotiate it, aiohttp does), and the relay path without an upgrade. aiohttp
  answers what it cannot parse (400).

Bounds (slowloris, as ``api/request_timeouts.py`` bounds aiohttp's requests): the first head
must end within ``head_timeout`` seconds (``request_timeout_seconds``) of the connection
opening, else the connection is dropped, as aiohttp's keep-alive timer drops a later request
whose head is late; a relay head longer than ``MAX_HEAD`` bytes (picows' own limit), another
longer than ``MAX_HTTP_HEAD``, is answered 431 and closed, as is a request line longer than
``MAX_HEAD``.

The same protocol serves plain TCP and TLS (``set_protocol`` on an SSL transport swaps the
application protocol behind it), asyncio's loop and uvloop, one process or ``--workers N``
sharing the port (``SO_REUSEPORT``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy
from picows import (
    WSAutoPingStrategy,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)
from picows import picows as _picows_ext
from yarl import URL

from rtgate.relay.picows_leg import READ_BUFFER_BYTES, PicowsLeg, picows_logger

log = logging.getLogger("rtgate.relay")

#: picows' server protocol. Not in its public stubs: ``ws_create_server`` builds it for a
#: listening socket of its own, and the front door shares its socket with aiohttp.
_WSProtocol: Any = _picows_ext.WSProtocol  # type: ignore[attr-defined]

#: The longest request head the front door reads: picows' own limit for the head it parses.
MAX_HEAD = 16 * 1024
#: The longest head of another request (aiohttp's): a console page's cookies and referrer can
#: run past picows' limit; aiohttp's own field limits apply after it.
MAX_HTTP_HEAD = 64 * 1024
RELAY_PATH = "/v1/realtime"
#: The translation route (docs/protocol.md 10), relayed as ``RELAY_PATH`` is.
TRANSLATIONS_PATH = "/v1/realtime/translations"
#: GPT-Live's WebSocket (docs/protocol-live.md 1), relayed as ``RELAY_PATH`` is; its ``POST``
#: (WebRTC) is an HTTP request like any other.
LIVE_PATH = "/v1/live/sessions"
_RELAY_PATHS = frozenset({RELAY_PATH.encode(), TRANSLATIONS_PATH.encode(), LIVE_PATH.encode()})

_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 31\r\nConnection: close\r\n\r\n"
    b"Request header fields too large"
)


@dataclass(frozen=True, slots=True)
class RelayUpgrade:
    """A WebSocket upgrade of the relay path that picows accepted (the 101 is out)."""

    leg: PicowsLeg
    headers: CIMultiDictProxy[str]
    query: MultiDictProxy[str]
    #: The peer's address, as aiohttp's ``request.remote`` gives it.
    remote: str | None
    #: ``RELAY_PATH``, ``TRANSLATIONS_PATH`` or ``LIVE_PATH``.
    path: str = RELAY_PATH


@dataclass(frozen=True, slots=True)
class RelayDoor:
    """What the relay path needs from its owner (relay/endpoint.py)."""

    #: Called once per accepted upgrade, from the event loop; it owns the session from there.
    on_relay: Callable[[RelayUpgrade], None]
    #: The subprotocol answered for these request headers, or None (docs/protocol.md 5.3).
    subprotocol: Callable[[Mapping[str, str]], str | None]
    #: ``max_message_bytes``: exactly that many pass, one more is closed with 1009.
    max_message: int
    #: Whether permessage-deflate is on: an upgrade offering it then goes to aiohttp.
    deflate: bool = False


def _offers_deflate(headers: CIMultiDictProxy[str]) -> bool:
    return any(
        "permessage-deflate" in value.lower()
        for value in headers.getall("Sec-WebSocket-Extensions", ())
    )


def _is_upgrade(headers: CIMultiDictProxy[str]) -> bool:
    return headers.get("Upgrade", "").strip().lower() == "websocket"


class FrontDoor(asyncio.Protocol):
    """One connection until its first request says where it goes (module docstring)."""

    def __init__(
        self,
        http: Callable[[], asyncio.BaseProtocol],
        relay: RelayDoor,
        head_timeout: float,
    ) -> None:
        self._http = http
        self._relay = relay
        self._head_timeout = head_timeout
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        #: Whether the request line named the relay path; None until it is read.
        self._relay_request: bool | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._head_timeout, self._too_slow)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if self._relay_request is None:
            line_end = buffer.find(b"\n")
            if line_end < 0:
                if len(buffer) > MAX_HEAD:
                    self._refuse_too_large()
                return
            self._relay_request = self._is_relay_request_line(bytes(buffer[:line_end]))
        bound = MAX_HEAD if self._relay_request else MAX_HTTP_HEAD
        head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(buffer) > bound:
                self._refuse_too_large()
            return
        if head_end + 4 > bound:
            self._refuse_too_large()
            return
        if not self._relay_request:
            # The whole head within the bound of the connection's opening, for every route:
            # handed over at its request line, aiohttp's timer began again, so a head could
            # take twice the bound (a security audit's find).
            self._to_http()
            return
        self._route_relay_head(bytes(buffer[:head_end]))

    def eof_received(self) -> bool | None:
        self._stop_timer()
        return False  # the transport closes itself: the head never ended

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()

    # -- deciding ---------------------------------------------------------------------------

    @staticmethod
    def _is_relay_request_line(line: bytes) -> bool:
        parts = line.rstrip(b"\r").split(b" ")
        if len(parts) != 3 or parts[0] != b"GET":
            return False
        target = parts[1]
        path = target.split(b"?", 1)[0]
        return path in _RELAY_PATHS

    def _route_relay_head(self, head: bytes) -> None:
        headers = _parse_headers(head)
        if (
            headers is None
            or not _is_upgrade(headers)
            or (self._relay.deflate and _offers_deflate(headers))
        ):
            self._to_http()
            return
        self._to_picows()

    # -- handing over -----------------------------------------------------------------------

    def _to_http(self) -> None:
        self._stop_timer()
        transport = self._transport
        assert transport is not None
        protocol = self._http()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data, self._buffer = bytes(self._buffer), bytearray()
        cast(asyncio.Protocol, protocol).data_received(data)

    def _to_picows(self) -> None:
        self._stop_timer()
        transport = self._transport
        assert transport is not None
        relay = self._relay
        peer = transport.get_extra_info("peername")
        remote = str(peer[0]) if isinstance(peer, tuple) and peer else None

        def upgrade(request: WSUpgradeRequest) -> WSUpgradeResponseWithListener:
            headers = CIMultiDictProxy(request.headers)
            url = URL(request.path.decode("latin-1"))
            query = MultiDictProxy(MultiDict(url.query))
            path = url.path

            def opened(leg: PicowsLeg) -> None:
                relay.on_relay(RelayUpgrade(leg, headers, query, remote, path))

            extra: dict[str, str] = {}
            answered = relay.subprotocol(headers)
            if answered is not None:
                extra["Sec-WebSocket-Protocol"] = answered
            response = WSUpgradeResponse.create_101_response(extra_headers=extra)
            return WSUpgradeResponseWithListener(
                response, PicowsLeg(relay.max_message, on_open=opened)
            )

        protocol = _WSProtocol(
            host_port=None,
            ws_path=None,
            is_client_side=False,
            ws_listener_factory=upgrade,
            logger=picows_logger("server"),
            disconnect_on_exception=True,
            websocket_handshake_timeout=None,  # the head is here already
            enable_auto_ping=False,  # the relay's keepalive pings (relay/keepalive.py)
            auto_ping_idle_timeout=20,
            auto_ping_reply_timeout=20,
            auto_ping_strategy=WSAutoPingStrategy.PING_WHEN_IDLE,
            enable_auto_pong=False,  # PicowsLeg answers pings and reports them
            max_frame_size=relay.max_message,
            extra_headers=None,
            read_buffer_init_size=READ_BUFFER_BYTES,
        )
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data = memoryview(bytes(self._buffer))
        self._buffer = bytearray()
        while data:
            room: memoryview = protocol.get_buffer(-1)
            n = min(len(room), len(data))
            room[:n] = data[:n]
            protocol.buffer_updated(n)
            data = data[n:]

    # -- refusing ---------------------------------------------------------------------------

    def _refuse_too_large(self) -> None:
        self._stop_timer()
        assert self._transport is not None
        self._transport.write(_TOO_LARGE)
        self._transport.close()
        self._buffer = bytearray()

    def _too_slow(self) -> None:
        self._timer = None
        if self._transport is not None:
            log.info(
                "request head not complete within %g s: connection dropped", self._head_timeout
            )
            self._transport.close()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _parse_headers(head: bytes) -> CIMultiDictProxy[str] | None:
    """The header fields of a request head (RFC 9112 5), or None when a line is not one: such a
    head goes to aiohttp, which answers it."""
    headers: CIMultiDict[str] = CIMultiDict()
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or b" " in name:
            return None
        headers.add(name.decode("latin-1"), value.strip().decode("latin-1"))
    return CIMultiDictProxy(headers)


class FrontDoorSite(web.BaseSite):
    """An aiohttp site whose connections go through the front door: the runner stops it and
    serves its HTTP as with ``TCPSite`` / ``SockSite``."""

    __slots__ = ("_bind", "_head_timeout", "_listening", "_relay")

    def __init__(
        self,
        runner: web.BaseRunner,
        relay: RelayDoor,
        *,
        head_timeout: float,
        host: str | None = None,
        port: int = 0,
        sock: socket.socket | None = None,
        reuse_port: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._bind: dict[str, Any] = (
            {"sock": sock}
            if sock is not None
            else {"host": host, "port": port, "reuse_port": reuse_port or None}
        )
        self._relay = relay
        self._head_timeout = head_timeout
        self._listening: asyncio.Server | None = None

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        if self._listening is not None and self._listening.sockets:
            host, port = self._listening.sockets[0].getsockname()[:2]
            return f"{scheme}://{host}:{port}"
        return f"{scheme}://{self._bind.get('host')}:{self._bind.get('port')}"

    @property
    def port(self) -> int:
        """The port it listens on (the one the system chose for port 0)."""
        assert self._listening is not None
        return int(self._listening.sockets[0].getsockname()[1])

    async def start(self) -> None:
        await super().start()
        http = self._runner.server
        assert http is not None
        relay, head_timeout = self._relay, self._head_timeout
        loop = asyncio.get_running_loop()
        self._server = self._listening = await loop.create_server(
            lambda: FrontDoor(http, relay, head_timeout),
            ssl=self._ssl_context,
            backlog=self._backlog,
            **self._bind,
        )
