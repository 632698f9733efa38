"""The bridge: two pumps and a watchdog for one relayed session.

Each pump owns reading one socket and writing the other; the watchdog owns the duration cap.
The first of the three to finish ends the session and the others are cancelled, so every task
has an owner and none outlives the connection.

Backpressure: a pump awaits each send, and a send waits for the destination's write buffer to
drain. While it waits it does not read, so aiohttp's bounded reader queue fills and the source
socket is paused: a slow client slows its own upstream read, never the process.

Closing (protocol.md 5.4): a close frame from either side is mirrored to the other with the same
code and reason. A side that vanishes without a close frame gets the other side an OpenAI-style
``error`` event (when that side is the client's) and a 1011 close.

Beta clients (``beta``, protocol.md 2.4): their frames become GA before anything else looks at
them, and GA frames become beta only after the relay session has metered them, so the guard,
the transcript and metering only ever see GA. A GA client pays one ``is None`` test per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from time import perf_counter

from aiohttp import ClientWebSocketResponse, WSMsgType, web

from rtgate.auth.policy import ClientEventGuard
from rtgate.clock import Clock
from rtgate.errors import GatewayError, SessionExpired, UpstreamError
from rtgate.metering.ledger import Ledger, LedgerError
from rtgate.metering.record import UsageRecord
from rtgate.metrics import Metrics
from rtgate.protocol.beta import BetaTranslator
from rtgate.protocol.events import error_event_for
from rtgate.protocol.relay_session import RelaySession
from rtgate.protocol.transcript import TranscriptRecorder
from rtgate.store.port import Store

log = logging.getLogger("rtgate.relay")

_TEXT, _BINARY, _CLOSE = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CLOSE

# RFC 6455 7.4: codes that must never be sent in a close frame.
_UNSENDABLE = frozenset({1004, 1005, 1006, 1015})


class LedgerUnavailable(GatewayError):
    close_code = 1011
    code = "usage_unavailable"


def sendable(code: int | None) -> int:
    if code is None or code in _UNSENDABLE or not (1000 <= code <= 4999):
        return 1000
    return code


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
        store: Store | None = None,
        beta: BetaTranslator | None = None,
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
        self._store = store
        self._beta = beta
        self._warned_unpriced: set[str] = set()
        #: Frames and bytes relayed since the last flush to the metrics (plain ints: the hot
        #: path must not take a metrics lock per frame).
        self.frames_up = self.frames_down = self.bytes_up = self.bytes_down = 0

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
        self.session.close(1011, "relay ended", "gateway")
        await self._close_both(1011, "")
        self.flush_counts()

    async def close(self, code: int, reason: str, by: str) -> None:
        """End the session from outside (shutdown, admin): close both sides with ``code``."""
        if self.session.close(code, reason, by):
            await self._close_both(code, reason)

    async def terminate(self, err: GatewayError, by: str = "operator") -> None:
        """End the session from outside with ``err`` (an operator's forced close): the client
        gets its ``error`` event, then both sides close with its code and reason. A session
        already ending is left alone."""
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

    async def _commit(self, rec: UsageRecord) -> bool:
        """Make ``rec`` durable before its frame moves on; False ends the session."""
        if not rec.priced and rec.model not in self._warned_unpriced:
            self._warned_unpriced.add(rec.model)
            log.warning(
                "no price for model %r: its usage is recorded at cost 0",
                rec.model,
                extra={"session_id": rec.session_id, "key_id": rec.key_id},
            )
        try:
            await self._ledger.record(rec)
            if self._metrics is not None:
                self._metrics.usage(rec)
        except LedgerError as exc:
            log.error(
                "usage record lost, ending the session: %r (%s)",
                rec,
                exc,
                extra={"session_id": rec.session_id, "key_id": rec.key_id},
            )
            return False
        return True

    async def _upstream_to_client(self) -> None:
        up, client, session, clock = self.upstream, self.client, self.session, self._clock
        on_text = session.on_upstream_text
        to_beta = self._beta.to_client if self._beta is not None else None
        sampled = self._metrics is not None
        latency = self._metrics.latency.labels("down") if self._metrics is not None else None
        try:
            while True:
                msg = await up.receive()
                t = msg.type
                if t is _TEXT:
                    data = msg.data
                    self.frames_down += 1
                    self.bytes_down += len(data)
                    # One frame in 64 is timed through the gateway, for the latency histogram.
                    t0 = perf_counter() if sampled and not self.frames_down & 63 else 0.0
                    rec = on_text(data, clock.now())
                    if self._recorder is not None:
                        self._recorder.on_upstream(data, clock.now())
                        await self._keep_transcript()
                    if rec is None:
                        if to_beta is None:
                            await client.send_str(data)
                        elif (beta := to_beta(data)) is not None:
                            await client.send_str(beta)
                        if t0 and latency is not None:
                            latency.observe(perf_counter() - t0)
                    elif isinstance(rec, str):
                        await client.send_str(rec)
                    elif not await self._commit(rec):
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
                            await client.send_str(beta)
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
                    self.bytes_down += len(msg.data)
                    await client.send_bytes(msg.data)
                elif t is _CLOSE:
                    code, reason = session.mirrored_close(msg.data, msg.extra or "")
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
        err = UpstreamError("The upstream connection was lost.")
        if session.close(err.close_code, err.close_reason, "upstream"):
            with contextlib.suppress(Exception):
                await client.send_str(error_event_for(err))
                await client.close(code=err.close_code, message=err.close_reason.encode())

    async def _client_to_upstream(self) -> None:
        up, client, session, guard = self.upstream, self.client, self.session, self._guard
        to_ga = self._beta.to_upstream if self._beta is not None else None
        try:
            while True:
                msg = await client.receive()
                t = msg.type
                if t is _TEXT:
                    data = msg.data
                    self.frames_up += 1
                    self.bytes_up += len(data)
                    if to_ga is not None:
                        data = to_ga(data)
                    if self._recorder is not None:
                        self._recorder.on_client(data, self._clock.now())
                        await self._keep_transcript()
                    if guard is not None and (refusal := guard.check(data)) is not None:
                        # Policy refusals of single events are not fatal: answer, drop, go on.
                        await client.send_str(error_event_for(refusal))
                        if self._metrics is not None:
                            self._metrics.refused(refusal.code)
                        continue
                    await up.send_str(data)
                elif t is _BINARY:
                    self.frames_up += 1
                    self.bytes_up += len(msg.data)
                    await up.send_bytes(msg.data)
                elif t is _CLOSE:
                    code, reason = msg.data, msg.extra or ""
                    if session.close(code, reason, "client"):
                        with contextlib.suppress(Exception):
                            await up.close(code=sendable(code), message=reason.encode()[:123])
                    return
                else:
                    break
        except (ConnectionError, RuntimeError):
            await asyncio.sleep(0)
            err = UpstreamError("The upstream connection was lost.")
            if session.close(err.close_code, err.close_reason, "upstream"):
                with contextlib.suppress(Exception):
                    await client.send_str(error_event_for(err))
                    await client.close(code=err.close_code, message=err.close_reason.encode())
            return
        # The client vanished, or aiohttp closed it for a protocol error (e.g. 1009 too big).
        code = client.close_code or 1006
        reason = "message too big" if code == 1009 else "client disconnected"
        if session.close(code, reason, "client"):
            with contextlib.suppress(Exception):
                await up.close(
                    code=1001 if code == 1006 else sendable(code), message=reason.encode()
                )

    async def _keep_transcript(self) -> None:
        recorder = self._recorder
        if recorder is None or not recorder.pending or self._store is None:
            return
        entries = recorder.drain()
        try:
            await self._store.add_transcript(entries)
        except GatewayError as exc:
            # A transcript is a record for the operator, not a bill: log, never end the session.
            log.error(
                "transcript not kept (%d entries): %s",
                len(entries),
                exc.message,
                extra={"session_id": self.session.session_id},
            )

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
            self.flush_counts()
        await self._end(SessionExpired(expiry_message(session.max_seconds)))
