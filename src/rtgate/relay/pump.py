"""The pump: the I/O around one ``RelayCore`` (``protocol/relay.py``), between two legs.

Each leg (``legs.py``) reports what it reads through callbacks; the pump hands each report to the
core and performs the actions it answers with, in order. Nothing is awaited per frame: a frame the
core passes (it answers None) is written to the other leg at once. What takes time is a future
the pump owns, whose outcome goes back to the core from its done callback: a usage record's
commit (the ledger's own future, so no task per record), a budget check (the spend book's
read of the key, shared by the checks of its sessions that wait for the same one), a call's
hangup. The gateway's one ``Ticker`` (``ticker.py``) ticks the core (expiry and the
keepalive) and takes the frame counts for the metrics; one timer of the pump's own fires at the
session's deadline.

Backpressure: after writing to a leg, the pump asks whether its buffer is above the high-water
mark; if so it pauses reading the *other* leg until the first one drains (``on_drain``). The core
may pause the upstream too (frames held behind a commit); reading resumes when neither holds it.
So a peer that stops reading stops its own source, and no buffer grows without bound.

A call's sideband is the same pump with no client leg (the core has ``client=False``).

Once the core says ``Ended``, the pump tears down: what the core still owes the ledger
(``finish``: a translation's audio since its last record), then the hangup, if the core asked
for one;
then any leg still open is closed with the session's close code; then it waits, bounded, for the
legs and its tasks to finish. A failure of the pump's own (a bug) still ends the session the
gateway's way: an ``error`` event and a close, never a bare drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any, Protocol, TypeVar

from rtgate.errors import GatewayError, RelayFailed
from rtgate.metering.record import UsageRecord
from rtgate.metrics import Metrics
from rtgate.protocol.actions import (
    Action,
    Actions,
    CheckBudget,
    CloseClient,
    CloseUpstream,
    Commit,
    Ended,
    Hangup,
    KeepTranscript,
    PauseUpstream,
    Ping,
    Record,
    Refused,
    ResumeUpstream,
    SendClient,
    SendUpstream,
    Sever,
    Side,
)
from rtgate.protocol.relay import (
    RelayCore,
    sendable,
)
from rtgate.protocol.relay_session import RelaySession
from rtgate.protocol.transcript import TranscriptEntry
from rtgate.relay.legs import Leg, LegEvents
from rtgate.relay.ticker import Ticker

log = logging.getLogger("rtgate.relay")

T = TypeVar("T")

#: How long the teardown waits for the legs' close handshakes and the pump's tasks.
TEARDOWN_WAIT_S = 15.0


class Effects(Protocol):
    """What the pump asks of the gateway for the core (bound to it by ``relay/live.py``)."""

    def commit(self, record: UsageRecord, frame: str) -> asyncio.Future[bool]:
        """Make ``record`` durable: True once it is, False if it could be neither stored nor
        spilled."""

    def budget_refusal(self) -> asyncio.Future[GatewayError | None]:
        """The budget the key has crossed, if any (a future of the pump's own, which the
        teardown may cancel); never fails for the store."""

    def keep_transcript(self, entries: list[TranscriptEntry]) -> None: ...

    def refused(self, code: str) -> None: ...

    async def hangup(self) -> None:
        """Hang the call up upstream (a call sideband only; bounded, never raises)."""


class _NoLeg:
    """The client leg of a call's sideband: there is none, so whatever is sent is dropped."""

    closed = True
    backed_up = False

    def start(self, events: LegEvents) -> None: ...
    def send_text(self, data: bytes) -> None: ...
    def send_bytes(self, data: bytes) -> None: ...
    def ping(self) -> None: ...
    def close(self, code: int, reason: str) -> None: ...
    def sever(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

    def quiet_seconds(self) -> float | None:
        return None

    async def wait_closed(self) -> None: ...


class Pump:
    """Runs one session's core between its legs; a live session (``Gateway.live``)."""

    # One per live session, as its core (protocol/relay.py): no instance dict.
    __slots__ = (
        "_client_events",
        "_effects",
        "_ended",
        "_finished",
        "_hangup",
        "_hold_paused",
        "_metrics",
        "_monotonic",
        "_paused_for_backlog",
        "_tasks",
        "_ticker",
        "_timer",
        "_upstream_events",
        "client",
        "core",
        "session",
        "upstream",
    )

    def __init__(
        self,
        core: RelayCore,
        client: Leg | None,
        upstream: Leg,
        effects: Effects,
        *,
        monotonic: Callable[[], float],
        ticker: Ticker,
        metrics: Metrics | None = None,
    ) -> None:
        self.core = core
        self.session: RelaySession = core.session
        self.client: Leg = client if client is not None else _NoLeg()
        self.upstream = upstream
        self._effects = effects
        self._monotonic = monotonic
        self._ticker = ticker
        self._metrics = metrics
        #: The commits and checks under way (waited for, bounded, at the teardown).
        self._tasks: set[asyncio.Future[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._ended: asyncio.Future[None] | None = None
        #: Done once torn down. A future, not an ``asyncio.Event``: an event holds a deque for
        #: its waiters from the start (~0.7 KB of every idle session), and only ``terminate``
        #: (a forced close, the shutdown, a revoked secret) ever waits on this.
        self._finished: asyncio.Future[None] | None = None
        self._hangup = False
        self._client_events = _Events(self, Side.CLIENT)
        self._upstream_events = _Events(self, Side.UPSTREAM)
        #: Legs whose reading is paused because the other leg's writes backed up.
        self._paused_for_backlog: set[Side] = set()
        #: Whether the core holds the upstream's reading (frames held behind a commit).
        self._hold_paused = False

    @property
    def frames_up(self) -> int:
        """Client frames read since the last flush to the metrics."""
        return self._client_events.frames

    @property
    def frames_down(self) -> int:
        """Upstream frames read since the last flush to the metrics."""
        return self._upstream_events.frames

    # -- the session's life ---------------------------------------------------------------------
    async def run(self) -> None:
        """Relay until the session ends, then tear down; returns once everything is closed."""
        loop = asyncio.get_running_loop()
        self._finished = loop.create_future()
        try:
            if self._ended is None:
                self._ended = loop.create_future()
            if self.core.open:
                self.perform(self.core.start())
                self.upstream.start(self._upstream_events)
                if self.core.has_client:
                    self.client.start(self._client_events)
                self._ticker.add(self)
                # The deadline is kept to the moment, not to the ticker's next beat.
                self._timer = loop.call_later(self.core.expires_in(self._monotonic()), self._due)
                await self._ended
        finally:
            try:
                await self._teardown()
            finally:
                self._finished.set_result(None)

    async def terminate(self, err: GatewayError, by: str = "operator") -> None:
        """End the session from outside with ``err`` (``Gateway.live``: an operator's forced
        close, shutdown, a revoked secret) and wait, bounded, until it has torn down."""
        self.perform(self.core.terminate(err, by))
        await self.wait_finished()

    async def wait_finished(self) -> None:
        finished = self._finished
        if finished is None:
            # Not running (yet): its run sees the end and tears down at once.
            return
        # asyncio.wait: a waiter that times out or is cancelled leaves the future as it is.
        await asyncio.wait((finished,), timeout=TEARDOWN_WAIT_S)

    async def _teardown(self) -> None:
        self._ticker.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if self.core.open:
            # Cancelled, or a path that left the session open: it still ends the gateway's way.
            self.perform(
                self.core.terminate(
                    RelayFailed("The gateway failed while relaying this session."), "gateway"
                )
            )
        # Usage counted since the last record (a translation's audio), waited for below.
        self._guarded(self.core.finish)
        if self._hangup:
            # The call is hung up before its socket closes.
            await self._effects.hangup()
        session = self.session
        code, reason = sendable(session.close_code or 1011), session.close_reason
        for leg in (self.client, self.upstream):
            if not leg.closed:
                leg.close(code, reason)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TEARDOWN_WAIT_S):
                await asyncio.gather(
                    self.client.wait_closed(),
                    self.upstream.wait_closed(),
                    *self._tasks,
                    return_exceptions=True,
                )
        for task in self._tasks:
            task.cancel()
        self.flush_counts()

    def flush_counts(self) -> None:
        """The counts not taken by the ticker yet, to the metrics (at the session's end)."""
        counts = self.take_counts()
        if self._metrics is not None:
            self._metrics.relayed(*counts)

    def take_counts(self) -> tuple[int, int, int, int]:
        """Frames up, frames down, bytes up, bytes down since the last call (the ticker sums
        every session's into one flush)."""
        up, down = self._client_events, self._upstream_events
        counts = (up.frames, down.frames, up.bytes, down.bytes)
        up.frames = up.bytes = down.frames = down.bytes = 0
        return counts

    # -- performing the core's actions ---------------------------------------------------------
    def perform(self, actions: Sequence[Action]) -> None:
        for act in actions:
            match act:
                case SendClient(data, binary):
                    self._send(self.client, data, binary)
                    if self.client.backed_up:
                        self.backed_up(Side.UPSTREAM)
                case SendUpstream(data, binary):
                    self._send(self.upstream, data, binary)
                    if self.upstream.backed_up:
                        self.backed_up(Side.CLIENT)
                case Commit(record, frame):
                    self._settle(self._effects.commit(record, frame), self.core.committed)
                case Record(record):
                    self._settle(self._effects.commit(record, ""), self.core.recorded)
                case CheckBudget():
                    self._settle(self._effects.budget_refusal(), self.core.budget_checked)
                case KeepTranscript(entries):
                    self._effects.keep_transcript(entries)
                case Refused(code):
                    self._effects.refused(code)
                case Ping(side):
                    self._leg(side).ping()
                case Sever(side):
                    self._leg(side).sever()
                case CloseClient(code, reason):
                    self.client.close(code, reason)
                case CloseUpstream(code, reason):
                    # A call hung up by the gateway closes its socket after the hangup.
                    if not self._hangup:
                        self.upstream.close(code, reason)
                case PauseUpstream():
                    self._hold_paused = True
                    self.upstream.pause_reading()
                case ResumeUpstream():
                    self._hold_paused = False
                    if Side.UPSTREAM not in self._paused_for_backlog:
                        self.upstream.resume_reading()
                case Hangup():
                    self._hangup = True
                case Ended():
                    if self._ended is None:
                        self._ended = asyncio.get_running_loop().create_future()
                    if not self._ended.done():
                        self._ended.set_result(None)

    @staticmethod
    def _send(leg: Leg, data: bytes, binary: bool) -> None:
        if binary:
            leg.send_bytes(data)
        else:
            leg.send_text(data)

    def _leg(self, side: Side) -> Leg:
        return self.client if side is Side.CLIENT else self.upstream

    def backed_up(self, source: Side) -> None:
        """The leg ``source`` feeds is above its high-water mark: stop reading ``source`` until
        that leg drains (``drained``)."""
        if source not in self._paused_for_backlog:
            self._paused_for_backlog.add(source)
            self._leg(source).pause_reading()

    def drained(self, source: Side) -> None:
        """The leg ``source`` feeds drained: read ``source`` again, unless the core holds it."""
        if source in self._paused_for_backlog:
            self._paused_for_backlog.discard(source)
            if not (source is Side.UPSTREAM and self._hold_paused):
                self._leg(source).resume_reading()

    def _settle(self, outcome: asyncio.Future[T], step: Callable[[T], Actions]) -> None:
        """When ``outcome`` is done, hand it to the core (``step``) and perform its answer."""
        self._tasks.add(outcome)
        outcome.add_done_callback(lambda done: self._settled(done, step))

    def _settled(self, done: asyncio.Future[T], step: Callable[[T], Actions]) -> None:
        self._tasks.discard(done)
        if done.cancelled():
            # The teardown gave up on it: the session is over.
            return
        exc = done.exception()
        if exc is not None:
            self.failed(exc)
            return
        result = done.result()
        self._guarded(lambda: step(result))

    def _guarded(self, step: Callable[[], Sequence[Action]]) -> None:
        """Perform what ``step`` (a call into the core) answers; a failure ends the session."""
        try:
            self.perform(step())
        except Exception as exc:  # noqa: BLE001 -- a bug ends the session with an error
            self.failed(exc)

    def failed(self, exc: BaseException) -> None:
        """A failure of the relay's own (a bug): logged, and the session ended with an error."""
        log.error(
            "relay failed: %r", exc, exc_info=exc, extra={"session_id": self.session.session_id}
        )
        with contextlib.suppress(Exception):
            self.perform(
                self.core.terminate(
                    RelayFailed("The gateway failed while relaying this session."), "gateway"
                )
            )
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    # -- time ---------------------------------------------------------------------------------
    def _due(self) -> None:
        """The session's deadline: ticked at once (a timer that fired a hair early is armed
        again for the rest)."""
        self._timer = None
        self.tick()
        if self.core.open:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.core.expires_in(self._monotonic()), self._due)

    def tick(self) -> None:
        """The core's tick: from the ticker's beat, and once at the session's deadline."""
        core = self.core
        if not core.open:
            return
        try:
            for side in (Side.CLIENT, Side.UPSTREAM):
                if core.awaiting_pong(side):
                    # Mid-way through a large frame, a live peer sends no pong until done.
                    core.kernel_heard(side, self._leg(side).quiet_seconds())
            self.perform(core.tick(self._monotonic()))
        except Exception as exc:  # noqa: BLE001 -- a bug ends the session with an error
            self.failed(exc)


class _Events:
    """What one leg reports (``LegEvents``), handed to the core; the hot path is ``on_text``:
    a frame the core passes is written to the other leg, counted, and nothing else. A frame's
    calls go through the objects (the core, the other leg), not through bound methods kept in
    slots: with hundreds of sessions, each bound method is one more object a frame fetches
    from memory, and a call through a slot takes the interpreter's generic lookup, ~4 % of
    the relay's CPU at N=500 (docs/performance.md 9.17). The rare events keep bound methods."""

    __slots__ = (
        "_closed",
        "_core",
        "_heard",
        "_latency",
        "_lost",
        "_other",
        "_pump",
        "_side",
        "_upstream",
        "bytes",
        "frames",
    )

    def __init__(self, pump: Pump, side: Side) -> None:
        core = pump.core
        other = pump.upstream if side is Side.CLIENT else pump.client
        self._pump = pump
        self._side = side
        upstream = self._upstream = side is Side.UPSTREAM
        self._core = core
        self._heard = core.heard_upstream if upstream else core.heard_client
        self._closed = core.upstream_closed if upstream else core.client_closed
        self._lost = core.upstream_lost if upstream else core.client_lost
        self._other = other
        metrics = pump._metrics
        # The latency histogram samples the upstream -> client direction (one frame in 64).
        self._latency = metrics.latency.labels("down") if metrics is not None and upstream else None
        #: Frames and bytes read since the last flush (plain ints: no lock per frame).
        self.frames = self.bytes = 0

    def on_text(self, data: bytes) -> None:
        self.frames += 1
        self.bytes += len(data)
        try:
            core = self._core
            if self.frames & 63 or self._latency is None:
                acts = core.upstream_text(data) if self._upstream else core.client_text(data)
                if acts is None:
                    self._other.send_text(data)
                else:
                    self._pump.perform(acts)
            else:
                t0 = perf_counter()
                acts = core.upstream_text(data) if self._upstream else core.client_text(data)
                if acts is None:
                    self._other.send_text(data)
                else:
                    self._pump.perform(acts)
                self._latency.observe(perf_counter() - t0)
            if self._other.backed_up:
                self._pump.backed_up(self._side)
        except Exception as exc:  # noqa: BLE001 -- a bug ends the session with an error
            self._pump.failed(exc)

    def on_binary(self, data: bytes) -> None:
        self.frames += 1
        self.bytes += len(data)
        try:
            core = self._core
            acts = core.upstream_binary(data) if self._upstream else core.client_binary(data)
            if acts is None:
                self._other.send_bytes(data)
            else:
                self._pump.perform(acts)
            if self._other.backed_up:
                self._pump.backed_up(self._side)
        except Exception as exc:  # noqa: BLE001 -- a bug ends the session with an error
            self._pump.failed(exc)

    def on_heard(self) -> None:
        self._heard()

    def on_close(self, code: int, reason: str) -> None:
        self._pump._guarded(lambda: self._closed(code, reason))

    def on_lost(self) -> None:
        self._pump._guarded(self._lost)

    def on_drain(self) -> None:
        # This leg's writes drained: the other leg, which feeds it, may be read again.
        self._pump.drained(Side.UPSTREAM if self._side is Side.CLIENT else Side.CLIENT)
