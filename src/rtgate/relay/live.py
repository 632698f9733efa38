"""A live session's one path from open to end, the same for a relayed socket and a call's
sideband: its ``RelayCore`` built from the key's policy, the gateway's effects bound for its
pump, then live (``Gateway.live``, the metrics, the log), run, and torn down (out of
``Gateway.live``, the metrics, its end recorded, its live-session slot released).

Before it runs, a session that went live while the gateway was closing (the shutdown sweep
missed it) or whose client secret was revoked while it dialled (so was the revocation's) is
ended at once, the gateway's way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from rtgate.auth.client_secrets import revoked_secret_error
from rtgate.auth.policy import ClientEventGuard, KeyPolicy
from rtgate.config import Settings
from rtgate.errors import GatewayError
from rtgate.gateway import Gateway, LiveSession, shutting_down
from rtgate.metering.ledger import Ledger
from rtgate.metering.record import UsageRecord
from rtgate.protocol.beta import BetaTranslator
from rtgate.protocol.keepalive import Cadence
from rtgate.protocol.relay import RelayCore
from rtgate.protocol.relay_session import RelaySession, review_excerpt
from rtgate.protocol.transcript import TranscriptEntry, TranscriptRecorder
from rtgate.protocol.translation import AudioMeter
from rtgate.relay.admission import budget_crossed, record_end
from rtgate.relay.legs import Leg
from rtgate.relay.pump import Pump
from rtgate.relay.upstream import provider_key

log = logging.getLogger("rtgate.relay")

#: The intent of a session on ``/v1/realtime/translations`` (``relay/endpoint.py``).
TRANSLATION = "translation"


def commit_usage(ledger: Ledger, rec: UsageRecord, frame: str) -> asyncio.Future[bool]:
    """Make ``rec`` durable before ``frame``, the event it meters, moves on: stored, or spilled
    locally past the commit deadline (``Ledger.submit``), so the frame waits at most that long.
    The future is True then (the record counted in the metrics); False when it could be
    neither, and the session must end (``LedgerUnavailable``) without forwarding the frame. The
    ledger's own future: no task, and no second future or loop iteration per record.

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
    return ledger.submit(rec)


class GatewayEffects:
    """The pump's effects (``pump.Effects``) on the gateway, for one session of ``key_id``."""

    def __init__(
        self,
        gw: Gateway,
        key_id: str,
        policy: KeyPolicy,
        hangup: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._gw = gw
        self._key_id = key_id
        self._policy = policy
        self._hangup = hangup
        self._warned_unpriced: set[str] = set()

    def commit(self, record: UsageRecord, frame: str) -> asyncio.Future[bool]:
        # A record for review has its own error line, which names the model.
        if (
            not record.priced
            and record.review is None
            and record.model not in self._warned_unpriced
        ):
            self._warned_unpriced.add(record.model)
            log.warning(
                "%s: its usage is recorded at cost 0",
                unpriced(record, record.price_key in self._gw.settings.prices),
                extra={"session_id": record.session_id, "key_id": record.key_id},
            )
        return commit_usage(self._gw.ledger, record, frame)

    def budget_refusal(self) -> asyncio.Future[GatewayError | None]:
        return budget_crossed(self._gw, self._key_id, self._policy)

    def keep_transcript(self, entries: list[TranscriptEntry]) -> None:
        # Queued, not awaited: the ledger writes it in order, after the session's start.
        self._gw.ledger.keep_transcript(entries)

    def refused(self, code: str) -> None:
        self._gw.metrics.refused(code)

    async def hangup(self) -> None:
        if self._hangup is not None:
            await self._hangup()


def unpriced(record: UsageRecord, has_row: bool) -> str:
    """Why ``record`` costs nothing: no row for its model, or (``has_row``) a row that prices
    other usage (an operator's find: a Live session on a token-only local row was said to have
    no price at all)."""
    if not has_row:
        return f"no price for model {record.model!r}"
    needs = "per-second or per-minute rate" if record.usage.audio_ms else "token rates"
    return f"price row {record.price_key!r} has no {needs} for model {record.model!r}"


def client_cadence(settings: Settings) -> Cadence | None:
    return None if settings.heartbeat_seconds is None else Cadence.after(settings.heartbeat_seconds)


def upstream_cadence(settings: Settings) -> Cadence | None:
    if settings.upstream_ping_after_seconds is None:
        return None
    return Cadence(settings.upstream_ping_after_seconds, settings.upstream_pong_timeout_seconds)


def relay_pump(
    gw: Gateway,
    session: RelaySession,
    policy: KeyPolicy,
    client: Leg | None,
    upstream: Leg,
    *,
    setup: str | None = None,
    beta: BetaTranslator | None = None,
    hangup: Callable[[], Awaitable[None]] | None = None,
) -> Pump:
    """The pump and core of one session: ``client`` None for a call's own sideband (it hangs
    its call up with ``hangup``). A session that records no usage (a client's sideband attached
    to a call) keeps no transcript and checks no budget: the call's own sideband does both. A
    translation session (intent ``translation``) counts its input audio (``AudioMeter``). A
    GPT-Live session keeps no transcript (the recorder reads Realtime events) and waits up to
    ``live_close_seconds`` for its final total as it ends."""
    guard = ClientEventGuard(policy, transcription=session.intent == "transcription")
    metered = session.metered
    core = RelayCore(
        session,
        gw.clock.now,
        client=client is not None,
        setup=setup,
        guard=guard if guard.active and client is not None else None,
        recorder=TranscriptRecorder(session.session_id, session.key_id)
        if policy.keep_transcripts and metered and client is not None and session.live is None
        else None,
        beta=beta,
        budget=policy.has_budget and metered,
        client_beat=client_cadence(gw.settings),
        upstream_beat=upstream_cadence(gw.settings),
        opened_mono=gw.clock.monotonic(),
        audio_meter=AudioMeter(
            round(gw.settings.translation_record_seconds * 1000),
            gw.settings.translation_billed_audio,
        )
        if session.intent == TRANSLATION and metered
        else None,
        close_grace=gw.settings.live_close_seconds,
        secret=provider_key(session.route.upstream),
    )
    return Pump(
        core,
        client,
        upstream,
        GatewayEffects(gw, session.key_id, policy, hangup),
        monotonic=gw.clock.monotonic,
        ticker=gw.ticker,
        metrics=gw.metrics,
    )


def go_live(gw: Gateway, live: LiveSession, extra: Mapping[str, object]) -> None:
    """In ``Gateway.live`` (the admin API lists it, closes it, shutdown ends it) from here on,
    before any await, so no close that comes after this misses it: a socket's pump, or a call's
    ``Sideband``."""
    session = live.session
    gw.live.add(session.session_id, live)
    gw.metrics.live.inc()
    gw.metrics.started.labels(session.shown_model).inc()
    log.info("session opened", extra=dict(extra))


async def run_live(
    gw: Gateway,
    pump: Pump,
    extra: Mapping[str, object],
    *,
    release: str | None,
    before_end: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run a session that went live (``go_live``) to its end, then tear it down: out of
    ``Gateway.live``, its end counted and recorded, ``release``'s live-session slot freed (None:
    it holds none, as a client's sideband of a call)."""
    session = pump.session
    try:
        if gw.closing:
            # Live sessions were being ended while this one opened: the sweep missed it.
            pump.perform(pump.core.terminate(shutting_down(), "gateway"))
        elif session.secret_id and await secret_revoked(gw, session.secret_id, extra):
            # Its secret was revoked while it dialled: the revocation's sweep missed it.
            pump.perform(pump.core.terminate(revoked_secret_error(), "operator"))
        await pump.run()
    finally:
        if before_end is not None:
            await before_end()
        if release is not None:
            await gw.limiter.release(release)
        # Recorded before it leaves ``Gateway.live``: a drain ends once none is live, and by
        # then every session's end is stored (or spilled), not still on its way.
        await record_end(gw, session)
        gw.live.discard(session.session_id)
        gw.metrics.live.dec()
        gw.metrics.ended.labels(str(session.close_code), session.closed_by or "gateway").inc()
        gw.metrics.duration.observe(gw.clock.now() - session.opened_at)
        if session.upstream_auth_failed:
            # The provider took the dial and then refused the gateway's key (invalid_api_key):
            # the upstream is failing, as when it refuses the handshake (a newcomer's find: it
            # showed "ok" while every session ended upstream_auth_failed).
            upstream = session.route.upstream_name
            gw.upstream_health.refused_after(upstream, "invalid_api_key", gw.clock.now())
            log.warning("upstream %s refused the gateway's key (invalid_api_key)", upstream)
        log.info(
            "session closed by %s: %s%s",
            session.closed_by,
            session.close_code,
            f" {session.close_reason}" if session.close_reason else "",
            # A field of its own too, as the README's log fields promise (a newcomer's find).
            extra={**extra, "close_code": session.close_code},
        )


async def secret_revoked(gw: Gateway, secret_id: str, extra: Mapping[str, object]) -> bool:
    """Whether the secret that opened a session was revoked while it dialled. The session was
    admitted with the secret valid, so a store that cannot answer does not end it; it is
    logged."""
    try:
        return await gw.keyring.secret_revoked(secret_id)
    except GatewayError as err:
        log.error("client secret %s not re-checked: %s", secret_id, err.message, extra=dict(extra))
        return False
