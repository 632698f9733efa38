"""The relay's decisions for one WebSocket session, with no I/O (sans-I/O, like h11).

The relay core (``protocol/relay.py``) feeds it every upstream frame that can matter; it tells
the core what to meter and when the session
must end. It keeps the hot path cheap (docs/protocol.md 8.2, docs/performance.md):

* Audio frames are recognised by their prefix and skipped without a scan.
* Other frames are scanned for a handful of quoted event names. Base64 cannot contain ``"``, and
  a name quoted inside a JSON string reads ``\\"name\\"``, which does not match ``"name"``.
* Only frames that match are parsed, and the parsed ``type`` decides, so a false hit costs one
  parse and nothing else.

No frame that carries usage reaches the client without a ledger row. What orjson refuses but JSON
allows (a lone surrogate escape, RFC 8259 8.2) is parsed again by the standard library, on that
rare path only. Usage that cannot be read in full, and a frame that names a usage event but is no
JSON object at all, still make a record: flagged for review (``UsageRecord.review``), with
whatever counts did read.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson

from rtgate.catalog import Catalog, Route
from rtgate.errors import UPSTREAM_AUTH_MESSAGE
from rtgate.metering.cost import Cost, RunningCost, billed_unit, cost_of, prices_usage
from rtgate.metering.record import MeteredBy, Review, UsageRecord
from rtgate.protocol.events import error_event
from rtgate.protocol.session_fields import transcription_model
from rtgate.protocol.usage import (
    BACKEND_USAGE_EVENTS,
    Usage,
    UsageKind,
    UsageReading,
    read_live_paused_ms,
    read_live_seconds,
    read_response_usage,
    read_responses_usage,
    read_transcription_usage,
)

if TYPE_CHECKING:
    from rtgate.protocol.live import LiveMeter

#: Frames that dominate traffic and never matter to metering: ``on_upstream_text`` returns None
#: for a frame starting with one of these, so a caller may forward such a frame without asking
#: (the relay core does, to spare a call per audio frame). A tuple keeps it one C call.
FORWARD_PREFIXES = (
    '{"type":"response.output_audio.delta"',
    '{"type":"input_audio_buffer.append"',
    '{"type":"response.output_audio_transcript.delta"',
    '{"type":"response.output_text.delta"',
    '{"type":"response.audio.delta"',
    '{"type":"response.audio_transcript.delta"',
    '{"type":"response.text.delta"',
    # GPT-Live's audio (docs/protocol-live.md 3); the translation route's, spelled the same.
    '{"type":"session.output_audio.delta"',
    # The caller's audio a Live call's sideband reflects.
    '{"type":"session.input_audio.append"',
)
_RESPONSE_DONE = '"response.done"'
_TRANSCRIBED = 'input_audio_transcription.completed"'
# Unquoted at the front: the beta transcription session's ``transcription_session.created``
# and ``.updated`` (an upstream that speaks beta) match too.
_SESSION_CREATED = 'session.created"'
_SESSION_UPDATED = 'session.updated"'
#: The events in which an upstream says what its session is: the GA ones, and a beta
#: upstream's transcription session's (its ``input_audio_transcription.model`` is what its
#: transcriptions are billed by, ``_track_session``).
SESSION_EVENTS = frozenset(
    {
        "session.created",
        "session.updated",
        "transcription_session.created",
        "transcription_session.updated",
    }
)
#: Those that follow a change of the session.
SESSION_UPDATES = frozenset({"session.updated", "transcription_session.updated"})
_INVALID_KEY = '"invalid_api_key"'
#: What an upstream frame must contain to matter to metering (one substring scan each).
METER_MARKS = (_RESPONSE_DONE, _TRANSCRIBED, _SESSION_CREATED, _SESSION_UPDATED, _INVALID_KEY)
#: Usage kinds whose records bill parts of one duration the provider bills whole (a Live
#: session's voice seconds, a translation's audio): costed as a running total (``RunningCost``).
_PARTS_OF_A_WHOLE = frozenset({"live", "translation"})
#: A Live session's standby time is a whole of its own, at its own rate.
_STANDBY = "#standby"

#: RFC 6455 7.1.5: the close code of a close frame that carried none. Never sent (7.4.1).
NO_STATUS_RECEIVED = 1005


def received_close_code(code: int | None) -> int:
    """The code a received close frame reports: 1005 when it carried none (aiohttp reads an
    empty close frame as code 0)."""
    return code or NO_STATUS_RECEIVED


class SessionState(enum.Enum):
    """OPEN until the first close from either side or the gateway; then CLOSED for good."""

    OPEN = "open"
    CLOSED = "closed"


class RelaySession:
    """What one relayed session has consumed, and when it must end."""

    # One per live session: slots, not an instance dict (CPython shares a class's dict keys
    # among its instances up to 30 attributes only; past that each session held a dict of its
    # own, ~1.3 KB more, docs/performance.md 9.25).
    __slots__ = (
        "_catalog",
        "_running",
        "charged_nanos",
        "close_code",
        "close_reason",
        "closed_by",
        "deadline",
        "intent",
        "key_id",
        "live",
        "max_seconds",
        "metered",
        "opened_at",
        "provider_nanos",
        "records",
        "route",
        "secret_id",
        "session_id",
        "state",
        "totals",
        "transcription_model",
        "unpriced",
        "upstream_auth_failed",
        "upstream_session_model",
    )

    def __init__(
        self,
        *,
        session_id: str,
        key_id: str,
        route: Route,
        catalog: Catalog,
        opened_at: float,
        opened_mono: float,
        max_seconds: float,
        intent: str | None = None,
        secret_id: str | None = None,
        metered: bool = True,
        live: LiveMeter | None = None,
        transcription_model: str | None = None,
    ) -> None:
        self.session_id = session_id
        self.key_id = key_id
        self.route = route
        #: ``transcription``, ``translation`` (``/v1/realtime/translations``), ``webrtc`` (the
        #: gateway's own sideband of a call), ``sideband`` (a client's socket attached to one of
        #: its calls) or None (a realtime session).
        self.intent = intent
        #: False for a client's sideband: every sideband of a call sees the call's usage, and
        #: the gateway's own records it, so this one records none (a call is billed once).
        self.metered = metered
        #: The client secret that opened it, if one did (its id, never the secret).
        self.secret_id = secret_id
        #: A GPT-Live session's voice seconds (``/v1/live/sessions``, ``protocol/live.py``);
        #: None on every other route.
        self.live = live
        self._catalog = catalog
        self.opened_at = opened_at
        self.deadline = opened_mono + max_seconds
        self.max_seconds = max_seconds
        self.state = SessionState.OPEN
        self.upstream_session_model: str | None = None
        #: The input transcription model: the one the session opens with, then what the
        #: upstream's ``session.updated`` says.
        self.transcription_model = transcription_model
        self.totals = Usage()
        self.provider_nanos = 0
        self.charged_nanos = 0
        self.records = 0
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.closed_by: str | None = None
        #: Models whose usage had no price row (reported once, by ``relay/live.py``).
        self.unpriced: set[str] = set()
        #: The running cost of each price row's records that bill parts of one duration.
        self._running: dict[str, RunningCost] = {}
        #: The provider refused our own key (its error was rewritten; so is its close reason).
        self.upstream_auth_failed = False

    # -- upstream -> client -------------------------------------------------------------------
    def on_upstream_text(self, data: str, now: float) -> UsageRecord | str | None:
        """Inspect one upstream text frame.

        Returns a usage record when the frame carries usage, a replacement frame when the
        frame must not reach the client as it is, else None (forward it untouched).
        """
        if data.startswith(FORWARD_PREFIXES) or not any(m in data for m in METER_MARKS):
            return None
        return self.on_upstream_event(parse_event(data), data, now)

    def on_upstream_event(self, event: Any, data: str, now: float) -> UsageRecord | str | None:
        """``on_upstream_text`` for a frame parsed already (``parse_event``; anything but a dict
        is a frame no parser could read as an event), so a frame is parsed once however many
        collaborators read it (``protocol/relay.py``)."""
        if not isinstance(event, dict):
            return self._unparseable(data, now)
        etype = event.get("type")
        if self.live is not None and etype != "error":
            return self._on_live_event(self.live, etype, event, now)
        if etype == "response.done":
            resp = event.get("response")
            if not isinstance(resp, dict):
                resp = {}
            return self._meter(read_response_usage(resp.get("usage")), resp.get("id"), now)
        if etype == "conversation.item.input_audio_transcription.completed":
            reading = read_transcription_usage(event.get("usage"))
            return self._meter(reading, event.get("item_id"), now)
        if etype == "error":
            err = event.get("error")
            if isinstance(err, dict) and err.get("code") == "invalid_api_key":
                # The provider quotes part of *our* key back; the client must not see it.
                self.upstream_auth_failed = True
                # The client's own event it answered is the client's to see (either envelope).
                cause = err.get("client_event_id" if self.live is not None else "event_id")
                return error_event(
                    "invalid_request_error",
                    "upstream_auth_failed",
                    UPSTREAM_AUTH_MESSAGE,
                    client_event_id=cause if isinstance(cause, str) else None,
                    live=self.live is not None,
                )
            return None
        if etype in SESSION_EVENTS:
            self._track_session(event.get("session"))
        return None

    def _on_live_event(
        self, live: LiveMeter, etype: Any, event: dict[str, Any], now: float
    ) -> UsageRecord | None:
        """A GPT-Live upstream event (docs/protocol-live.md 3-5): the voice seconds a usage
        snapshot or the final total adds, backend tokens, what the session says of itself."""
        if etype in ("session.usage.updated", "session.closed"):
            closed = etype == "session.closed"
            # Usage means the provider runs the session, whether or not this socket saw it
            # start (an accepted SIP call's sideband need not): its end must confirm the total.
            live.started = True
            if closed:
                live.confirmed = True
            reading = read_live_seconds(event.get("usage"))
            if not reading.complete:
                return self._meter(reading, live.session_id, now)
            delta = live.delta_ms(reading.usage.audio_ms)
            standby = live.paused_part_ms(read_live_paused_ms(event.get("usage")), delta)
            return self._meter(
                UsageReading(Usage(kind="live", audio_ms=delta)),
                live.session_id,
                now,
                standby_ms=standby,
            )
        if etype == "response.event":
            inner = event.get("event")
            if not isinstance(inner, dict) or inner.get("type") not in BACKEND_USAGE_EVENTS:
                return None
            resp = inner.get("response")
            if not isinstance(resp, dict):
                resp = {}
            if resp.get("usage") is None and inner.get("type") != "response.completed":
                return None  # a response that failed or stopped before it used anything
            model = resp.get("model")
            if not isinstance(model, str) or not model:
                model = live.backend_model or ""
            reading = read_responses_usage(resp.get("usage"))
            return self._meter(reading, resp.get("id"), now, model=model)
        if etype == "decision.event":
            # A delegation's or transcript trigger's Decision API call, billed apart from the
            # voice (docs/protocol-live.md 5): its usage is the Responses API's shape.
            inner = event.get("event")
            if not isinstance(inner, dict) or inner.get("type") != "decision.completed":
                return None
            decision = inner.get("decision")
            if not isinstance(decision, dict):
                decision = {}
            model = decision.get("model")
            reading = read_responses_usage(decision.get("usage"))
            return self._meter(
                reading, event.get("event_id"), now, model=model if isinstance(model, str) else ""
            )
        if etype in ("session.started", "session.updated"):
            live.track(event.get("session"), started=etype == "session.started")
        return None

    def prepay_live(self, ms: int, now: float) -> UsageRecord | None:
        """A Live call's start-up charge: ``ms`` billed now as the session's first voice (the
        provider credits it against the duration, so snapshots bill only what exceeds it);
        docs/protocol-live.md 9."""
        live = self.live
        if live is None or ms <= 0:
            return None
        live.billed_ms = max(live.billed_ms, ms)
        live.started = True  # the provider runs (and bills) it from its creation
        reading = UsageReading(Usage(kind="live", audio_ms=ms))
        return self._meter(reading, None, now)

    def unconfirmed_live(self, now: float) -> UsageRecord | None:
        """At the end of a Live session the provider ran but never confirmed
        (``session.closed`` did not arrive): a record of no usage flagged
        ``unconfirmed_usage``, so the session's total (billed to its last snapshot) is reviewed
        against the provider's invoice (docs/protocol-live.md 4). None for any other session."""
        live = self.live
        if live is None or not live.unconfirmed or not self.metered:
            return None
        live.confirmed = True  # once
        reading = UsageReading(Usage(kind="live"))
        return self._meter(reading, live.session_id, now, "unconfirmed_usage")

    @property
    def shown_model(self) -> str:
        """The model a listing shows for the session: a transcription session's is the model
        it opened transcribing with (its route names none, or the realtime model of its URL);
        the rest, their route's."""
        if self.intent == "transcription" and self.transcription_model:
            return self.transcription_model
        return self.route.model or ""

    def _track_session(self, session: Any) -> None:
        if not isinstance(session, dict):
            return
        model = session.get("model")
        if isinstance(model, str):
            self.upstream_session_model = model
        tmodel = transcription_model(session)
        if tmodel is not None:
            self.transcription_model = tmodel

    def _unparseable(self, data: str, now: float) -> UsageRecord | None:
        """A frame no parser reads as an event object: a record for review if it names a usage
        event (nothing in it can be metered), else None (relayed as it is, like any frame)."""
        if _RESPONSE_DONE in data:
            kind: UsageKind = "response"
        elif _TRANSCRIBED in data:
            kind = "transcription"
        else:
            return None
        return self._meter(
            UsageReading(Usage(kind=kind), complete=False), None, now, "unparseable_frame"
        )

    def meter_translation_audio(self, audio_ms: int, now: float) -> UsageRecord | None:
        """The record of ``audio_ms`` of a translation session's audio, which the gateway
        counted (``protocol/translation.py``): priced by the route's row (per minute for
        ``gpt-realtime-translate``) and marked ``metered_by="gateway"``. None for no audio."""
        if audio_ms <= 0:
            return None
        reading = UsageReading(Usage(kind="translation", audio_ms=audio_ms))
        return self._meter(reading, None, now, metered_by="gateway")

    def _meter(
        self,
        reading: UsageReading,
        ref: Any,
        now: float,
        review: Review | None = None,
        *,
        metered_by: MeteredBy = "provider",
        model: str | None = None,
        standby_ms: int = 0,
    ) -> UsageRecord | None:
        """The record for one usage event: None when it read in full and counts nothing.
        ``model``: the usage's own model (a Live session's backend), priced by its row.
        ``standby_ms``: of a Live session's voice, the part priced at its row's standby rate."""
        if not self.metered:
            return None
        usage = reading.usage
        if review is None and not reading.complete:
            review = "unreadable_usage"
        if review is None and usage.total_tokens == 0 and usage.audio_ms == 0:
            return None
        other: str | None  # the usage's own model, when it is not the route's
        if model is not None:
            other = model
        elif usage.kind == "transcription":
            # Billed by the transcription model's row, in its unit, whatever the session's
            # intent (docs/protocol.md 4.2); one the session never named is unpriced.
            other = self.transcription_model or ""
        elif self.route.model:
            other = None
        else:
            # A session routed without a model (an intent alone): session.created names it.
            other = self.upstream_session_model or ""
        price_key, prices = self._catalog.usage_price(self.route, other)
        model = self.route.model if other is None else other
        # What the local engine serves is priced by its one row (catalog.py): in the units
        # that row prices, or at 0 when it prices nothing at all (the default, ``local``). A
        # row that prices tokens only leaves a Live session's seconds unpriced, and logged.
        priced = prices is not None and (
            prices_usage(prices, usage)
            or (self.route.upstream.kind == "local" and not prices.charges_anything)
        )
        if not priced or prices is None:
            cost = Cost(0, 0)
        elif usage.kind in _PARTS_OF_A_WHOLE:
            active = (
                usage if not standby_ms else replace(usage, audio_ms=usage.audio_ms - standby_ms)
            )
            cost = self._running.setdefault(price_key, RunningCost()).add(active, prices)
            if standby_ms:
                paused = self._running.setdefault(price_key + _STANDBY, RunningCost()).add(
                    Usage(kind=usage.kind, audio_ms=standby_ms), prices.at_standby
                )
                cost = Cost(
                    cost.provider_nanos + paused.provider_nanos,
                    cost.charged_nanos + paused.charged_nanos,
                )
        else:
            cost = cost_of(usage, prices)
        if not priced:
            self.unpriced.add(model)
        self.totals = self.totals + usage
        self.provider_nanos += cost.provider_nanos
        self.charged_nanos += cost.charged_nanos
        self.records += 1
        return UsageRecord(
            session_id=self.session_id,
            key_id=self.key_id,
            model=model[:200],
            price_key=price_key[:200],
            usage=usage,
            provider_nanos=cost.provider_nanos,
            charged_nanos=cost.charged_nanos,
            created_at=now,
            ref=ref[:100] if isinstance(ref, str) else None,
            priced=priced,
            review=review,
            unit=billed_unit(usage, prices),
            metered_by=metered_by,
        )

    def mirrored_close(self, code: int, reason: str) -> tuple[int, str]:
        """The close to send the client for an upstream close (the same, but for our key)."""
        if self.upstream_auth_failed and reason == "invalid_request_error.invalid_api_key":
            return code, "invalid_request_error.upstream_auth_failed"
        return code, reason

    # -- lifecycle ----------------------------------------------------------------------------
    def expired(self, now_mono: float) -> bool:
        return now_mono >= self.deadline

    def close(self, code: int, reason: str, by: str) -> bool:
        """Record the first close; later ones (the echo from the other side) are ignored."""
        if self.state is SessionState.CLOSED:
            return False
        self.state = SessionState.CLOSED
        self.close_code, self.close_reason, self.closed_by = code, reason, by
        return True


def parse_event(data: str) -> Any:
    """One frame parsed (orjson, with the tolerant fallback below), or None if no parser reads
    it. The result is shared by everything that reads the frame, and never changed by them."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return _tolerant_loads(data)


def _tolerant_loads(data: str) -> Any:
    """What orjson refused, parsed by the standard library (it accepts lone surrogate escapes,
    which RFC 8259 8.2 allows), or None when that refuses too. Only frames orjson refused come
    here, so the hot path keeps orjson's speed.

    A lone surrogate cannot be encoded as UTF-8, so no database column or spill line could hold
    one: in object keys and values it becomes ``?``."""
    try:
        return json.loads(data, object_pairs_hook=_storable_object)
    except (ValueError, RecursionError):
        return None


def _storable_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {_storable(k): _storable(v) if isinstance(v, str) else v for k, v in pairs}


def _storable(text: str) -> str:
    return text if text.isascii() else text.encode("utf-8", "replace").decode()


# A JSON string, or one cut off by the end of the text (a truncated frame).
_STRING = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?$)', re.DOTALL)
_KEY_AFTER = re.compile(r"\s*:")
_NUMBER_LIKE = re.compile(r'"[-+ ]?[0-9][0-9.eE+ -]{0,23}"')
_EXCERPT_CHARS = 200


def review_excerpt(data: str) -> str:
    """A short excerpt of a frame whose usage wants review, fit for a log line: from its
    ``"usage"`` key (else its start), every string value masked but number-like ones, so no
    transcript, instruction or metadata value can reach a log; keys and numbers stay."""
    start = data.find('"usage"')
    text = data[max(start, 0) :]

    def mask(m: re.Match[str]) -> str:
        s = m.group()
        if _NUMBER_LIKE.fullmatch(s) or _KEY_AFTER.match(text, m.end()):
            return s
        return '"…"'

    return _STRING.sub(mask, text)[:_EXCERPT_CHARS]
