"""GPT-Live over WebSocket (``/v1/live/sessions``, docs/protocol-live.md), the parts rtgate acts
on, with no I/O: the client's first event and the session's voice seconds.

* **The first event.** The model is never in the URL: the client's first message must be
  ``session.start`` with ``session.model`` (docs/protocol-live.md 2). The gateway reads it before
  it dials (``read_session_start``), routes and checks the model, and sends it upstream as the
  session's first frame, untouched unless the route names another upstream id for the model
  (an alias, an Azure deployment): then only ``session.model`` differs.
* **Errors.** Live's envelope (6) carries ``error.client_event_id`` where the Realtime API's
  carries ``error.event_id`` (``protocol/events.py``, ``error_event_for(live=True)``).
* **Voice seconds.** ``usage.seconds`` on ``session.usage.updated`` and ``session.closed`` is the
  session's cumulative total (4: "do not sum this value across usage events"), so
  ``LiveMeter`` bills the delta from what it billed before; ``session.closed`` carries the final
  total and confirms it. A session whose upstream ended without ``session.closed`` is billed to
  its last snapshot and flagged unconfirmed (rtgate's rule, 4).
* **Ending.** A relay must not close the upstream before ``session.closed`` (4): the relay core
  sends ``SESSION_CLOSE`` and waits, bounded, for it (``protocol/relay.py``).

Backend tokens (a Responses model the session delegates to) arrive in nested
``response.event`` -> ``response.completed`` events (5) and are metered at the backend model's
token prices (``protocol/relay_session.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from rtgate.auth.client_secrets import refuse_unknown
from rtgate.errors import InvalidSessionStart, UnknownLiveParameter
from rtgate.protocol import session_fields
from rtgate.protocol.relay_session import parse_event

#: The intent of a session on ``/v1/live/sessions`` (its rows, its live view).
LIVE = "live"

#: What the gateway sends upstream to end a Live session gracefully (docs/protocol-live.md 4).
SESSION_CLOSE = '{"type":"session.close"}'

#: Client frames relayed without a look: the appended audio, as written by hand and by the SDKs
#: (``json.dumps``' separators).
LIVE_APPEND_PREFIXES = (
    '{"type":"session.input_audio.append"',
    '{"type": "session.input_audio.append"',
)
#: The names an upstream frame of a Live session must contain to be parsed: usage snapshots and
#: the final total, backend responses and decisions that carry usage (nested, so quoted as a
#: value), the session's own description (the backend model, the session id).
LIVE_MARKS = (
    '"session.usage.updated"',
    '"session.closed"',
    '"response.completed"',
    '"response.incomplete"',
    '"response.failed"',
    '"decision.completed"',
    '"session.started"',
    '"session.updated"',
)
#: The client event that starts a session; a second one is refused (the model was checked).
START_MARK = '"session.start"'
START_TYPE = "session.start"
#: The client event that ends a session: once a client sent it, the gateway does not again.
CLOSE_MARK = '"session.close"'
CLOSE_TYPE = "session.close"
#: Every client event a Live session defines, with its members (the SDK's
#: ``openai.types.live.ClientEvent``): what a key's blocked events may name for it.
CLIENT_MEMBERS: dict[str, frozenset[str]] = {
    t: frozenset({"type", "event_id", *members})
    for t, members in (
        (START_TYPE, ("session",)),
        ("session.update", ("session",)),
        (CLOSE_TYPE, ()),
        ("session.input_audio.append", ("audio",)),
        ("session.input_audio.mute", ()),
        ("session.input_audio.unmute", ()),
        ("session.instructions.append", ("content", "delegation_id")),
        ("session.thinking.append", ("content", "delegation_id")),
        ("session.commentary.append", ("content", "delegation_id")),
        ("session.output_audio.fixture.play", ("audio",)),
        ("response.create", ()),
        ("response.item.create", ("item",)),
        ("decision.create", ()),
        ("decision.item.create", ("item",)),
        ("decision.item.delete", ("item_id",)),
    )
}


@dataclass(frozen=True, slots=True)
class SessionStart:
    """A client's ``session.start``, read before the gateway dials."""

    #: ``session.model`` as the client asked for it.
    model: str
    #: The frame as the client sent it.
    frame: str
    event: dict[str, Any]

    @property
    def event_id(self) -> str | None:
        eid = self.event.get("event_id")
        return eid if isinstance(eid, str) else None

    @property
    def settings(self) -> dict[str, Any] | None:
        """What the session sets besides its model (``live_settings``)."""
        return live_settings(self.event["session"])

    def frame_for(self, upstream_model: str) -> str:
        """The frame to send upstream: the client's own, or, when the route sends the model
        under another id, the same event with ``session.model`` replaced (the only change)."""
        if upstream_model == self.model:
            return self.frame
        session = {**self.event["session"], "model": upstream_model}
        return orjson.dumps({**self.event, "session": session}).decode()


def read_session_start(frame: str | bytes | None) -> SessionStart:
    """The client's first message as a ``session.start`` (docs/protocol-live.md 2: it must be), else
    ``InvalidSessionStart``: no message before the deadline (None), a binary one, another event,
    no ``session`` object or no ``session.model`` string."""
    if frame is None:
        raise InvalidSessionStart(
            "No session.start arrived in time: a Live session's first message must be"
            " session.start, sent as the session opens (live_start_seconds)."
        )
    if not isinstance(frame, str):
        raise InvalidSessionStart(
            "The first message on a Live session must be a session.start text frame."
        )
    event = parse_event(frame)
    if not isinstance(event, dict) or event.get("type") != START_TYPE:
        raise InvalidSessionStart(
            "The first message on a Live session must be session.start.", param="type"
        )
    eid = event.get("event_id")
    eid = eid if isinstance(eid, str) else None
    session = event.get("session")
    if not isinstance(session, dict):
        raise InvalidSessionStart(
            "session.start needs a session object.", param="session", client_event_id=eid
        )
    model = session.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidSessionStart(
            "session.start needs session.model.", param="session.model", client_event_id=eid
        )
    unknown = UnknownLiveParameter
    refuse_unknown(event, session_fields.LIVE_START, "", error=unknown, event_id=eid)
    refuse_unknown(session, session_fields.LIVE, "session.", error=unknown, event_id=eid)
    return SessionStart(model, frame, event)


def live_settings(session: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a Live session object sets besides its model (and an accept's ``type``), or None:
    judged against the key's policy as a ``session.update`` setting it would be
    (``route_for``'s template), so a key that may not change ``instructions`` cannot set them
    when it starts a Live session either (Live fixes them at start, docs/protocol-live.md 2)."""
    settings = {k: v for k, v in session.items() if k not in _NOT_SETTINGS}
    return settings or None


#: What a session object names rather than sets: its model (routed and checked on its own)
#: and an accept's ``type`` (always ``"live"``).
_NOT_SETTINGS = frozenset({"model", "type"})


class LiveMeter:
    """The voice seconds of one Live session: billed as deltas of the cumulative snapshots, and
    whether the provider confirmed the final total (``session.closed``)."""

    def __init__(self) -> None:
        #: Milliseconds billed so far (the largest snapshot seen).
        self.billed_ms = 0
        #: Of them, those billed as standby (``paused_seconds``).
        self.billed_paused_ms = 0
        #: The provider's session id (``session.started``), the records' ``ref``.
        self.session_id: str | None = None
        #: ``session.started`` arrived: the provider runs (and bills) the session.
        self.started = False
        #: ``session.closed`` arrived: its total is final.
        self.confirmed = False
        #: ``session.delegation.responses.model``: the backend's model, for a response whose
        #: own snapshot does not name it.
        self.backend_model: str | None = None

    def delta_ms(self, total_ms: int) -> int:
        """What a snapshot of ``total_ms`` adds to what was billed (never negative: a total
        that went down is not refunded), now billed."""
        delta = max(0, total_ms - self.billed_ms)
        self.billed_ms += delta
        return delta

    def paused_part_ms(self, paused_ms: int | None, delta_ms: int) -> int:
        """Of a snapshot's ``delta_ms``, what its cumulative ``paused_ms`` (None: no breakdown
        reported) adds to the standby billed so far, at most all of it; now billed."""
        if paused_ms is None:
            return 0
        part = min(delta_ms, max(0, paused_ms - self.billed_paused_ms))
        self.billed_paused_ms += part
        return part

    def track(self, session: Any, *, started: bool) -> None:
        """What ``session.started`` / ``session.updated`` say that metering needs."""
        if started:
            self.started = True
        if not isinstance(session, dict):
            return
        sid = session.get("id")
        if isinstance(sid, str) and self.session_id is None:
            self.session_id = sid
        delegation = session.get("delegation")
        if isinstance(delegation, dict):
            responses = delegation.get("responses")
            if isinstance(responses, dict) and isinstance(responses.get("model"), str):
                self.backend_model = responses["model"]

    @property
    def unconfirmed(self) -> bool:
        """The provider ran the session and never confirmed its final total."""
        return self.started and not self.confirmed
