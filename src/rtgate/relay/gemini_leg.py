"""A Gemini Live connection as the relay's upstream ``Leg`` (``legs.py``): the I/O around a
``GeminiTranslator`` (``protocol/gemini.py``).

The pump and its ``RelayCore`` see an OpenAI Realtime upstream: what the core sends
(``send_text``) is translated for Gemini, and what Gemini sends is translated back and reported
to the pump as the upstream's frames (``on_text``), so the core meters, records, polices and
caps a Gemini session exactly as any other. Events the translator answers for itself (a
``session.updated``, an ``error`` for an event Gemini cannot take) are reported the same way.

On ``goAway`` the leg dials a second connection (``redial``), sends it the resuming setup, and
once Gemini answers makes it current and closes the first; frames of the first after that are
ignored, and its close is not the session's. A failed redial leaves the first connection to end
the session as it would have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from rtgate.engine.audio import AudioFormat, InputConverter, OutputConverter
from rtgate.errors import GatewayError
from rtgate.protocol.gemini import GeminiTranslator
from rtgate.protocol.gemini_events import (
    AudioConverter,
    Closed,
    Out,
    Resume,
    Switch,
    ToClient,
    ToGemini,
    protocol_error,
)
from rtgate.relay.legs import Leg, LegEvents

log = logging.getLogger("rtgate.relay")


def input_converter(fmt: str, rate: int) -> AudioConverter:
    """The session's input audio to PCM16 at ``rate``. "MQ": soxr's band-limited filter at
    about half HQ's delay (engine/audio.py), for a relay where every millisecond is heard."""
    return InputConverter(AudioFormat(fmt), "MQ", out_rate=rate)


def output_converter(fmt: str) -> AudioConverter:
    return OutputConverter(AudioFormat(fmt), "MQ")


def translator_for(model: str, upstream_model: str) -> GeminiTranslator:
    return GeminiTranslator(
        model,
        upstream_model,
        input_converter=input_converter,
        output_converter=output_converter,
    )


class _Connection:
    """What one Gemini connection reports, tagged so a replaced one is told apart."""

    __slots__ = ("_gl", "leg")

    def __init__(self, gl: GeminiLeg, leg: Leg) -> None:
        self._gl = gl
        self.leg = leg

    def on_text(self, data: bytes) -> None:
        self._gl.gemini_frame(self, data)

    def on_binary(self, data: bytes) -> None:
        # Google sends its JSON messages as binary frames too (docs/protocol-gemini.md 4).
        self._gl.gemini_frame(self, data)

    def on_heard(self) -> None:
        if self._gl.current is self:
            self._gl.events_heard()

    def on_close(self, code: int, reason: str) -> None:
        self._gl.gemini_closed(self, code, reason)

    def on_lost(self) -> None:
        self._gl.gemini_lost(self)

    def on_drain(self) -> None:
        if self._gl.current is self:
            self._gl.events_drained()


class GeminiLeg:
    """The upstream leg of a session routed to a ``gemini`` upstream."""

    def __init__(
        self,
        leg: Leg,
        translator: GeminiTranslator,
        redial: Callable[[], Awaitable[Leg]],
        *,
        session_id: str = "",
    ) -> None:
        self.closed = False
        self.translator = translator
        self.current = _Connection(self, leg)
        self._redial = redial
        self._session_id = session_id
        self._events: LegEvents | None = None
        #: Frames for the pump before it started this leg (the setup update's answer).
        self._early: list[bytes] = []
        self._next: _Connection | None = None
        self._old: list[Leg] = []
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        #: The number of resumptions so far (for the log and the tests).
        self.resumptions = 0
        self._perform(translator.opened())

    # -- Leg ------------------------------------------------------------------------------------
    def start(self, events: LegEvents) -> None:
        self._events = events
        early, self._early = self._early, []
        for frame in early:
            events.on_text(frame)
        self.current.leg.start(self.current)

    def send_text(self, data: bytes) -> None:
        if not self.closed:
            self._perform(self.translator.client_frame(data))

    def send_bytes(self, data: bytes) -> None:
        """A binary client frame carries no Realtime event (docs/protocol.md 5.8): dropped."""

    def ping(self) -> None:
        self.current.leg.ping()

    def close(self, code: int, reason: str) -> None:
        """Close Gemini's connections; usage Gemini reported that no event carried yet is
        metered first (an audit's find: the gateway's own end dropped it unbilled), as when
        the connection is lost (``_lost``)."""
        if not self.closed:
            self._perform(self.translator.flush_usage())
        self.closed = True
        if self._task is not None:
            self._task.cancel()
        for conn in (self.current, self._next):
            if conn is not None and not conn.leg.closed:
                conn.leg.close(code, reason)

    def sever(self) -> None:
        """Gemini stopped answering: its connection is cut, after the usage it reported and no
        event carried yet is metered, as on a close (a review's find)."""
        if not self.closed:
            self._perform(self.translator.flush_usage())
        self.closed = True
        self.current.leg.sever()

    def pause_reading(self) -> None:
        self._paused = True
        self.current.leg.pause_reading()

    def resume_reading(self) -> None:
        self._paused = False
        self.current.leg.resume_reading()

    @property
    def backed_up(self) -> bool:
        return self.current.leg.backed_up

    def quiet_seconds(self) -> float | None:
        return self.current.leg.quiet_seconds()

    async def wait_closed(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        legs = [self.current.leg, *self._old]
        if self._next is not None:
            legs.append(self._next.leg)
        await asyncio.gather(*(leg.wait_closed() for leg in legs))

    # -- what the connections report --------------------------------------------------------------
    def gemini_frame(self, conn: _Connection, data: bytes) -> None:
        if conn is not self.current and conn is not self._next:
            return  # a connection replaced after a resumption
        try:
            outs = self.translator.gemini_frame(data)
        except Exception:  # a bug of ours: the client hears of it, the session goes on
            log.exception("Gemini message not translated", extra={"session_id": self._session_id})
            outs = [ToClient(protocol_error("a message the gateway failed to translate"))]
        self._perform(outs)

    def gemini_closed(self, conn: _Connection, code: int, reason: str) -> None:
        if conn is self._next:
            # The new connection refused the resumption: the old one goes on while it lasts.
            log.warning(
                "Gemini refused to resume the session: %s",
                code,
                extra={"session_id": self._session_id},
            )
            self._next = None
            self._resume_failed()
            return
        if conn is not self.current:
            return
        self._perform(self.translator.gemini_closed(code, reason))

    def gemini_lost(self, conn: _Connection) -> None:
        if conn is self._next:
            self._next = None
            self._resume_failed()
            return
        if conn is not self.current or self.translator.resuming:
            return
        self._lost()

    def _lost(self) -> None:
        """The session's Gemini connection is gone: usage Gemini reported and no event carried
        yet is metered, then the core ends the session (``upstream_unavailable``)."""
        self._perform(self.translator.flush_usage())
        self.closed = True
        if self._events is not None:
            self._events.on_lost()

    def _resume_failed(self) -> None:
        """The resumption failed: the old connection goes on if it still can."""
        self._perform(self.translator.resume_failed())
        if self.current.leg.closed and not self.closed:
            self._lost()

    def events_heard(self) -> None:
        if self._events is not None:
            self._events.on_heard()

    def events_drained(self) -> None:
        if self._events is not None:
            self._events.on_drain()

    # -- performing the translator's outputs ------------------------------------------------------
    def _perform(self, outs: list[Out]) -> None:
        for out in outs:
            match out:
                case ToGemini(frame):
                    target = self._next if self._next is not None else self.current
                    target.leg.send_text(frame.encode())
                case ToClient(frame):
                    if self._events is None:
                        self._early.append(frame.encode())
                    else:
                        self._events.on_text(frame.encode())
                case Resume():
                    self._start_resume()
                case Switch():
                    self._switch()
                case Closed(code, reason):
                    self.closed = True
                    if self._events is not None:
                        self._events.on_close(code, reason)

    def _start_resume(self) -> None:
        if self.closed or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.ensure_future(self._resume())

    async def _resume(self) -> None:
        try:
            leg = await self._redial()
        except GatewayError as err:
            log.warning(
                "Gemini session not resumed: %s",
                err.message,
                extra={"session_id": self._session_id},
            )
            self._resume_failed()
            return
        except Exception:  # a bug of ours: as a failed dial, logged
            log.exception("Gemini session not resumed", extra={"session_id": self._session_id})
            self._resume_failed()
            return
        if self.closed:
            leg.close(1001, "session ended")
            self._old.append(leg)
            return
        self._next = _Connection(self, leg)
        leg.start(self._next)
        leg.send_text(self.translator.resume_setup().encode())

    def _switch(self) -> None:
        new = self._next
        if new is None:
            return
        old, self.current, self._next = self.current, new, None
        self._old.append(old.leg)
        self.resumptions += 1
        if self._paused:
            new.leg.pause_reading()
        if not old.leg.closed:
            old.leg.close(1000, "resumed")
        log.info(
            "Gemini session resumed on a new connection", extra={"session_id": self._session_id}
        )
