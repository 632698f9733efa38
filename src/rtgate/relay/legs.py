"""The two ports between the relay's pump and a WebSocket connection (docs/architecture.md).

A ``Leg`` is one WebSocket connection, driven by callbacks: whatever it reads it reports to its
``LegEvents`` (the pump), and whatever the pump asks it to send it buffers without blocking. The
pump never awaits a frame, so the hot path costs no coroutine per frame on a leg that allows it.

Rules every leg keeps:

* a text message is reported, and sent, as its UTF-8 payload (``bytes``): the leg checks that
  what it reads is UTF-8 (RFC 6455 8.1: else it closes with 1007) and hands over the bytes it
  read, so a frame the relay only forwards is never decoded and encoded again;
* a ping from the peer is answered by the leg itself and reported with ``on_heard`` (RFC 6455
  5.5.2-5.5.3), as is a pong;
* ``on_close`` reports a close frame received (1005 when it carried no code, RFC 6455 7.1.5), or
  a protocol error the leg closed the connection for itself (1009 message too big, 1007 bad
  UTF-8), with that code; ``on_lost`` a connection gone without a close frame. After either the
  leg reports nothing more;
* ``send_*`` after ``closed`` is a no-op;
* ``backed_up`` is True above the leg's high-water mark; ``on_drain`` fires once its
  buffer falls below the low-water mark again. The pump pauses reading the *other* leg meanwhile,
  so a peer that stops reading cannot grow memory without bound.

Implemented by ``relay/aiohttp_leg.py`` (aiohttp) and ``relay/picows_leg.py`` (picows).
"""

from __future__ import annotations

from typing import Protocol


class LegEvents(Protocol):
    """What a leg reports; implemented by the pump, once per leg."""

    def on_text(self, data: bytes) -> None:
        """A text message: its payload, valid UTF-8."""

    def on_binary(self, data: bytes) -> None: ...

    def on_heard(self) -> None:
        """A ping or a pong arrived: a sign of life that is not relayed."""

    def on_close(self, code: int, reason: str) -> None:
        """A close frame arrived (1005 if it had no code), or the leg closed for a protocol
        error (1009, 1007) with that code."""

    def on_lost(self) -> None:
        """The connection is gone without a close frame."""

    def on_drain(self) -> None:
        """The write buffer fell below the low-water mark after ``backed_up``."""


class Leg(Protocol):
    """One WebSocket connection, client-facing or upstream."""

    #: True once a close frame was sent or received, or the connection is gone.
    closed: bool

    def start(self, events: LegEvents) -> None:
        """Report to ``events`` from now on: frames that arrived before (a client's, while its
        session was admitted and dialled) are reported first, in order. Called once."""

    def send_text(self, data: bytes) -> None:
        """Queue a text frame whose payload is ``data`` (UTF-8); never blocks (buffers past the
        high-water mark)."""

    def send_bytes(self, data: bytes) -> None: ...

    def ping(self) -> None: ...

    def close(self, code: int, reason: str) -> None:
        """Send a close frame with ``code`` (a sendable one) and ``reason`` (at most 123 bytes),
        then drop the connection once the peer answers or after a bound."""

    def sever(self) -> None:
        """Drop the TCP connection now (a dead peer: no close handshake)."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    @property
    def backed_up(self) -> bool:
        """Whether the write buffer is above the high-water mark. The pump reads it after every
        frame it writes, so a leg keeps it as a plain attribute where it can (picows' leg does:
        a method call per frame cost more than the read)."""
        ...

    def quiet_seconds(self) -> float | None:
        """Seconds since the kernel last received bytes on this connection (Linux TCP_INFO
        ``tcpi_last_data_recv``), None where not known. A peer in the middle of one large frame
        sends no pong; this tells it from a dead one."""

    async def wait_closed(self) -> None:
        """Return once the connection is fully gone."""
