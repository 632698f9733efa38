"""A client's first message, read before its session is dialled (GPT-Live: the model is in the
client's ``session.start``, never in the URL; docs/protocol-live.md 2).

``FirstMessage`` starts the client's leg itself and answers its first message; what the client
sends after it is held, in order, until the session's pump binds (``Leg.start`` on the
``FirstMessageLeg`` that wraps the leg), then replayed to the pump and passed through. Past
``HOLD_BYTES`` held, reading pauses until the pump binds, as a leg pauses before its pump starts
(``picows_leg.BACKLOG_BYTES``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

from rtgate.relay.legs import Leg, LegEvents

#: Client bytes held between the first message and the pump before reading pauses.
HOLD_BYTES = 1 << 20


class FirstMessage:
    """The ``LegEvents`` of a client leg until its pump binds (module docstring)."""

    def __init__(self, leg: Leg) -> None:
        self._leg = leg
        self._first: asyncio.Future[str | bytes | None] = asyncio.get_running_loop().create_future()
        self._events: LegEvents | None = None
        self._held: deque[Callable[[LegEvents], None]] = deque()
        self._held_bytes = 0
        self._paused = False
        #: Whether the pump has paused reading (it may, as it replays what was held).
        self.pump_paused = False
        #: The client closed or vanished before its first message.
        self.gone = False
        leg.start(self)

    async def read(self, within: float) -> str | bytes | None:
        """The first message (a text message as ``str``, a binary one as ``bytes``), or None:
        none within ``within`` seconds, or the client is gone (``gone``)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                return await asyncio.shield(self._first)
        return None

    def bind(self, events: LegEvents) -> None:
        """Report to ``events`` (the pump) from now on, what was held first. Reading paused
        for the hold resumes after, unless the pump paused it meanwhile."""
        held = self._held
        while held:
            held.popleft()(events)
        self._events = events
        if self._paused:
            self._paused = False
            if not self.pump_paused:
                self._leg.resume_reading()

    def _hold(self, entry: Callable[[LegEvents], None], size: int = 0) -> None:
        self._held.append(entry)
        self._held_bytes += size
        if self._held_bytes > HOLD_BYTES and not self._paused:
            self._paused = True
            self._leg.pause_reading()

    def _ended(self) -> None:
        if not self._first.done():
            self.gone = True
            self._first.set_result(None)

    # -- LegEvents ------------------------------------------------------------------------------
    def on_text(self, data: bytes) -> None:
        if self._events is not None:
            self._events.on_text(data)
        elif not self._first.done():
            self._first.set_result(data.decode())  # the first message: answered, not relayed
        else:
            self._hold(lambda events: events.on_text(data), len(data))

    def on_binary(self, data: bytes) -> None:
        if self._events is not None:
            self._events.on_binary(data)
        elif not self._first.done():
            self._first.set_result(data)
        else:
            self._hold(lambda events: events.on_binary(data), len(data))

    def on_heard(self) -> None:
        if self._events is not None:
            self._events.on_heard()

    def on_close(self, code: int, reason: str) -> None:
        if self._events is not None:
            self._events.on_close(code, reason)
            return
        self._ended()
        self._hold(lambda events: events.on_close(code, reason))

    def on_lost(self) -> None:
        if self._events is not None:
            self._events.on_lost()
            return
        self._ended()
        self._hold(lambda events: events.on_lost())

    def on_drain(self) -> None:
        if self._events is not None:
            self._events.on_drain()


class FirstMessageLeg:
    """A client leg whose first message was read (``FirstMessage``): the pump's ``start``
    binds it to the reader; everything else is the leg's own."""

    def __init__(self, leg: Leg, first: FirstMessage) -> None:
        self._leg = leg
        self._first = first

    @property
    def closed(self) -> bool:
        return self._leg.closed

    @closed.setter
    def closed(self, value: bool) -> None:
        self._leg.closed = value

    def start(self, events: LegEvents) -> None:
        self._first.bind(events)

    def send_text(self, data: bytes) -> None:
        self._leg.send_text(data)

    def send_bytes(self, data: bytes) -> None:
        self._leg.send_bytes(data)

    def ping(self) -> None:
        self._leg.ping()

    def close(self, code: int, reason: str) -> None:
        self._leg.close(code, reason)

    def sever(self) -> None:
        self._leg.sever()

    def pause_reading(self) -> None:
        self._first.pump_paused = True
        self._leg.pause_reading()

    def resume_reading(self) -> None:
        self._first.pump_paused = False
        self._leg.resume_reading()

    @property
    def backed_up(self) -> bool:
        return self._leg.backed_up

    def quiet_seconds(self) -> float | None:
        return self._leg.quiet_seconds()

    async def wait_closed(self) -> None:
        await self._leg.wait_closed()
