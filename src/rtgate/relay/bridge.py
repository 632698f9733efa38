"""The bridge: two pumps and a watchdog for one relayed session.

Each pump owns reading one socket and writing the other; the watchdog owns the duration cap.
The first of the three to finish ends the session and the others are cancelled, so every task
has an owner and none outlives the connection.

Backpressure: a pump awaits each send, and a send waits for the destination's write buffer to
drain. While it waits it does not read, so aiohttp's bounded reader queue fills and the source
socket is paused: a slow client slows its own upstream read, never the process.

Closing (docs/protocol.md 5.4): a close frame from either side is mirrored to the other with the
same code and reason. A side that vanishes without a close frame gets the other side an OpenAI-style
``error`` event (when that side is the client's) and a 1011 close. Whenever the gateway itself
ends a session, whatever the cause (a bug in a pump included), the client gets the ``error``
event first and a close with its ``"<type>.<code>"`` reason: never a bare 1011.

The ledger: a metered frame waits for its usage record to be durable (``Ledger.record``: the
store, or the local spill past the commit deadline), so frames after it in the same direction
wait with it, by at most that deadline. Nothing else waits on the ledger or the store: audio,
every other frame and the client's frames pass by, and transcripts are handed over unawaited.

Heartbeat (``client_beat``, ``upstream_beat``): the bridge pings a leg that went quiet and drops
one that stays quiet (``keepalive.py``), from its watchdog tick, so the sockets are opened with
aiohttp's heartbeat and autoping off: aiohttp's heartbeat costs a scheduled callback per frame
per leg.
The pumps therefore answer pings themselves, and count pongs as signs of life.

Hot path: an audio frame (``FORWARD_PREFIXES``) from a GA upstream, with no transcript kept,
is forwarded without consulting the relay session or the clock; one frame in 64 still takes
the full path, timed for the latency histogram.

Beta clients (``beta``, docs/protocol.md 2.4): their frames become GA before anything else looks at
them, and GA frames become beta only after the relay session has metered them, so the guard,
the transcript and metering only ever see GA. A GA client pays one ``is None`` test per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

from aiohttp import ClientWebSocketResponse, WSMsgType, web

from rtgate.auth.policy import ClientEventGuard
from rtgate.clock import Clock
from rtgate.errors import (
    GatewayError,
    LedgerUnavailable,
    RelayFailed,
    SessionExpired,
    UpstreamError,
)
from rtgate.metering.ledger import Ledger, LedgerError
from rtgate.metering.record import UsageRecord
from rtgate.metrics import Metrics
from rtgate.protocol.beta import BetaTranslator
from rtgate.protocol.events import error_event_for
from rtgate.protocol.relay_session import (
    FORWARD_PREFIXES,
    RelaySession,
    received_close_code,
    review_excerpt,
)
from rtgate.protocol.transcript import TranscriptRecorder
from rtgate.relay.keepalive import Beat, Cadence, Keepalive

log = logging.getLogger("rtgate.relay")

_TEXT, _BINARY, _CLOSE = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CLOSE
_PING, _PONG = WSMsgType.PING, WSMsgType.PONG

# RFC 6455 7.4: codes that must never be sent in a close frame.
_UNSENDABLE = frozenset({1004, 1005, 1006, 1015})


def sendable(code: int | None) -> int:
    if code is None or code in _UNSENDABLE or not (1000 <= code <= 4999):
        return 1000
    return code


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


async def commit_usage(
    ledger: Ledger, metrics: Metrics | None, rec: UsageRecord, frame: str
) -> bool:
    """Make ``rec`` durable before ``frame``, the event it meters, moves on: stored, or spilled
    locally past the commit deadline (``Ledger.record``), so the frame waits at most that long.
    False when it could be neither, and the caller must end the session (``LedgerUnavailable``)
    without forwarding the frame.

    A record flagged for review (its usage could not be read in full) is reported first: an
    error line with a masked excerpt of the frame, and ``rtgate_usage_review``."""
    if rec.review is not None:
        log.error(
            "usage of %r not read in full (%s); recorded for review: %s",
            rec.model,
            rec.review,
            review_excerpt(frame),
            extra={"session_id": rec.session_id, "key_id": rec.key_id},
        )
    try:
        await ledger.record(rec)
    except LedgerError:
        # The ledger logged why (once for the outage, not once per record) and counted it.
        return False
    if metrics is not None:
        metrics.usage(rec)
    return True


async def keep_alive(alive: Keepalive, ws: Any, heard: bool, now: float) -> bool:
    """One keepalive tick for the leg ``ws`` (``heard``: whether anything came from it since the
    last tick): pinged if it went quiet; False if it is dead and must be dropped."""
    if not heard and alive.awaiting_pong:
        # Mid-way through a large frame, a live peer sends no pong until it is done.
        quiet = quiet_seconds(ws)
        heard = quiet is not None and quiet < alive.cadence.pong_within
    beat = alive.tick(heard, now)
    if beat is Beat.PING:
        with contextlib.suppress(Exception):
            await ws.ping()
    return beat is not Beat.DEAD


def expiry_message(seconds: float) -> str:
    minutes = seconds / 60
    span = f"{minutes:g} minutes" if minutes >= 1 else f"{seconds:g} seconds"
    return f"Your session hit the maximum duration of {span}."


class Bridge:
    def __init__(
        self,
        client: web.WebSocketResponse,
        upstream: ClientWebSocketResponse,
        session: RelaySession,
        ledger: Ledger,
        clock: Clock,
        *,
        check_interval: float = 1.0,
        guard: ClientEventGuard | None = None,
        after_usage: Callable[[], Awaitable[GatewayError | None]] | None = None,
        metrics: Metrics | None = None,
        recorder: TranscriptRecorder | None = None,
        beta: BetaTranslator | None = None,
        client_beat: Cadence | None = None,
        upstream_beat: Cadence | None = None,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.session = session
        self._ledger = ledger
        self._clock = clock
        self._check_interval = check_interval
        self._guard = guard
        self._after_usage = after_usage
        self._metrics = metrics
        self._recorder = recorder
        self._beta = beta
        self._warned_unpriced: set[str] = set()
        #: Frames and bytes relayed since the last flush to the metrics (plain ints: the hot
        #: path must not take a metrics lock per frame).
        self.frames_up = self.frames_down = self.bytes_up = self.bytes_down = 0
        #: Pings and pongs received since the last watchdog tick (signs of life, not relayed).
        self._control_up = self._control_down = 0
        #: Liveness of the client and upstream legs; a leg without a cadence is not watched
        #: (its pings are still answered).
        now = clock.monotonic()
        self._keepalive: list[tuple[Keepalive, Any, bool]] = [
            (Keepalive(beat, now), ws, ws is client)
            for beat, ws in ((client_beat, client), (upstream_beat, upstream))
            if beat is not None
        ]

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._upstream_to_client(), name="down"),
            asyncio.create_task(self._client_to_upstream(), name="up"),
            asyncio.create_task(self._watchdog(), name="watchdog"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            if not t.cancelled() and (exc := t.exception()) is not None:
                log.error(
                    "relay task %s failed: %r",
                    t.get_name(),
                    exc,
                    extra={"session_id": self.session.session_id},
                )
        # A task that failed left the session open: the client still hears why it ends.
        await self._end(RelayFailed("The gateway failed while relaying this session."))
        # Whatever ended it, neither side is left open (a no-op for a side already closed).
        await self._close_both(self.session.close_code or 1011, self.session.close_reason)
        self.flush_counts()

    async def terminate(self, err: GatewayError, by: str = "operator") -> None:
        """End the session from outside with ``err`` (an operator's forced close, shutdown):
        the client gets its ``error`` event, then both sides close with its code and reason.
        A session already ending is left alone."""
        await self._end(err, by)

    async def _end(self, err: GatewayError, by: str = "gateway") -> None:
        """The gateway ends the session: error event to the client, then both closed."""
        if self.session.close(err.close_code, err.close_reason, by):
            with contextlib.suppress(Exception):
                await self.client.send_str(error_event_for(err))
            await self._close_both(err.close_code, err.close_reason)

    async def _close_both(self, code: int, reason: str) -> None:
        msg = reason.encode()[:123]
        with contextlib.suppress(Exception):
            await self.client.close(code=sendable(code), message=msg)
        with contextlib.suppress(Exception):
            await self.upstream.close(code=sendable(code), message=msg)

    async def _commit(self, rec: UsageRecord, frame: str) -> bool:
        """Make ``rec`` durable before ``frame`` moves on; False ends the session."""
        # A record for review has its own error line, which names the model.
        if not rec.priced and rec.review is None and rec.model not in self._warned_unpriced:
            self._warned_unpriced.add(rec.model)
            log.warning(
                "no price for model %r: its usage is recorded at cost 0",
                rec.model,
                extra={"session_id": rec.session_id, "key_id": rec.key_id},
            )
        return await commit_usage(self._ledger, self._metrics, rec, frame)

    async def _upstream_to_client(self) -> None:
        up, client, session, clock = self.upstream, self.client, self.session, self._clock
        on_text = session.on_upstream_text
        to_beta = self._beta.to_client if self._beta is not None else None
        recorder = self._recorder
        # Frames that may skip the relay session entirely (see the module docstring).
        fast = to_beta is None and recorder is None
        send_str = client.send_str
        sampled = self._metrics is not None
        latency = self._metrics.latency.labels("down") if self._metrics is not None else None
        try:
            while True:
                t, data, extra = await up.receive()
                if t is _TEXT:
                    self.frames_down += 1
                    self.bytes_down += len(data)
                    if fast and self.frames_down & 63 and data.startswith(FORWARD_PREFIXES):
                        await send_str(data)
                        continue
                    # One frame in 64 is timed through the gateway, for the latency histogram.
                    t0 = perf_counter() if sampled and not self.frames_down & 63 else 0.0
                    now = clock.now()
                    rec = on_text(data, now)
                    if recorder is not None:
                        recorder.on_upstream(data, now)
                        self._keep_transcript()
                    if rec is None:
                        if to_beta is None:
                            await send_str(data)
                        elif (beta := to_beta(data)) is not None:
                            await send_str(beta)
                        if t0 and latency is not None:
                            latency.observe(perf_counter() - t0)
                    elif isinstance(rec, str):
                        await send_str(rec)
                    elif not await self._commit(rec, data):
                        # Unbillable usage must not flow on: stop before forwarding it.
                        await self._end(
                            LedgerUnavailable(
                                "Usage could not be recorded, so the session was ended."
                            )
                        )
                        return
                    else:
                        beta = data if to_beta is None else to_beta(data)
                        if beta is not None:
                            await send_str(beta)
                        if self._after_usage is not None:
                            # Billed and delivered; now, has the key crossed a budget?
                            refusal = await self._after_usage()
                            if refusal is not None:
                                if self._metrics is not None:
                                    self._metrics.refused(refusal.code)
                                await self._end(refusal)
                                return
                elif t is _BINARY:
                    self.frames_down += 1
                    self.bytes_down += len(data)
                    await client.send_bytes(data)
                elif t is _PING:
                    # Only seen with autoping off (the bridge's own heartbeat): answer it.
                    self._control_down += 1
                    await up.pong(data)
                elif t is _PONG:
                    self._control_down += 1
                elif t is _CLOSE:
                    code, reason = session.mirrored_close(received_close_code(data), extra or "")
                    if session.close(code, reason, "upstream"):
                        with contextlib.suppress(Exception):
                            await client.close(code=sendable(code), message=reason.encode()[:123])
                    return
                else:
                    break
        except (ConnectionError, RuntimeError):
            # The client went away while we wrote to it; the other pump sees its close.
            await asyncio.sleep(0)
            if session.close(1006, "client disconnected", "client"):
                with contextlib.suppress(Exception):
                    await up.close(code=1001, message=b"client disconnected")
            return
        # The upstream vanished without a close frame (TCP reset, crash, timeout).
        await self._upstream_lost()

    async def _upstream_lost(self, message: str = "The upstream connection was lost.") -> None:
        err = UpstreamError(message)
        if self.session.close(err.close_code, err.close_reason, "upstream"):
            with contextlib.suppress(Exception):
                await self.client.send_str(error_event_for(err))
                await self.client.close(code=err.close_code, message=err.close_reason.encode())

    async def _client_to_upstream(self) -> None:
        up, client, session, guard = self.upstream, self.client, self.session, self._guard
        to_ga = self._beta.to_upstream if self._beta is not None else None
        recorder = self._recorder
        send_str = up.send_str
        try:
            while True:
                t, data, extra = await client.receive()
                if t is _TEXT:
                    self.frames_up += 1
                    self.bytes_up += len(data)
                    if to_ga is not None:
                        data = to_ga(data)
                    if recorder is not None:
                        recorder.on_client(data, self._clock.now())
                        self._keep_transcript()
                    if guard is not None and (refusal := guard.check(data)) is not None:
                        # Policy refusals of single events are not fatal: answer, drop, go on.
                        await client.send_str(error_event_for(refusal))
                        if self._metrics is not None:
                            self._metrics.refused(refusal.code)
                        continue
                    await send_str(data)
                elif t is _BINARY:
                    self.frames_up += 1
                    self.bytes_up += len(data)
                    await up.send_bytes(data)
                elif t is _PING:
                    # Only seen with autoping off (the bridge's own heartbeat): answer it.
                    self._control_up += 1
                    await client.pong(data)
                elif t is _PONG:
                    self._control_up += 1
                elif t is _CLOSE:
                    code, reason = received_close_code(data), extra or ""
                    if session.close(code, reason, "client"):
                        with contextlib.suppress(Exception):
                            await up.close(code=sendable(code), message=reason.encode()[:123])
                    return
                else:
                    break
        except (ConnectionError, RuntimeError):
            await asyncio.sleep(0)
            await self._upstream_lost()
            return
        # The client vanished, or aiohttp closed it for a protocol error (e.g. 1009 too big).
        code = client.close_code or 1006
        reason = "message too big" if code == 1009 else "client disconnected"
        if session.close(code, reason, "client"):
            with contextlib.suppress(Exception):
                await up.close(
                    code=1001 if code == 1006 else sendable(code), message=reason.encode()
                )

    def _keep_transcript(self) -> None:
        recorder = self._recorder
        if recorder is not None and recorder.pending:
            # Queued, not awaited: the ledger writes it in order, after the session's start.
            self._ledger.keep_transcript(recorder.drain())

    def flush_counts(self) -> None:
        if self._metrics is not None:
            self._metrics.relayed(self.frames_up, self.frames_down, self.bytes_up, self.bytes_down)
        self.frames_up = self.frames_down = self.bytes_up = self.bytes_down = 0

    async def _watchdog(self) -> None:
        session, clock = self.session, self._clock
        while True:
            remaining = session.deadline - clock.monotonic()
            if remaining <= 0:
                break
            await asyncio.sleep(min(remaining, self._check_interval))
            if self._keepalive and not await self._heartbeat(clock.monotonic()):
                return
            self.flush_counts()
        await self._end(SessionExpired(expiry_message(session.max_seconds)))

    async def _heartbeat(self, now: float) -> bool:
        """One keepalive tick for the watched legs (before the counts are flushed); False once
        a leg is dead and the session has been ended for it."""
        heard_up = self.frames_up + self._control_up
        heard_down = self.frames_down + self._control_down
        self._control_up = self._control_down = 0
        for alive, ws, is_client in self._keepalive:
            heard = heard_up if is_client else heard_down
            if not await keep_alive(alive, ws, heard > 0, now):
                await self._leg_dead(client=is_client)
                return False
        return True

    async def _leg_dead(self, *, client: bool) -> None:
        """A leg stopped answering pings: end the session as aiohttp's heartbeat did, as if
        that leg's connection had dropped (client: 1006 and the upstream gets 1001; upstream:
        the client gets ``upstream_unavailable`` and 1011)."""
        if client:
            if self.session.close(1006, "client disconnected", "client"):
                sever(self.client)
                with contextlib.suppress(Exception):
                    await self.upstream.close(code=1001, message=b"client disconnected")
        else:
            sever(self.upstream)
            await self._upstream_lost("The upstream stopped responding.")
