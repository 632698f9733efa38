"""The local engine's GPT-Live protocol state, with no I/O: client events in, Live events out.

GPT-Live (``/v1/live/sessions``; docs/local-engine.md, "GPT-Live on the engine") is full
duplex: no turns on the wire, no responses, no items. The engine is turn-based underneath: its
voice activity detector cuts the caller's audio into turns, and each turn is heard, answered and
spoken by the same stack as a Realtime response (``engine.live_server``). What this module decides:

* ``session.start`` must come first, once; its ``session`` is strict (an unknown field is
  refused with ``unknown_parameter``, as OpenAI refuses it) and a refused start sends no
  ``session.started``.
* Only ``delegation`` may change later (``session.update``); the model, instructions, input,
  voice and format are fixed at start.
* ``session.input_audio.append`` carries base64 audio in the start's format (PCM16 at 16 or
  24 kHz, G.711 at 8 kHz); PCM needs an even byte count (``invalid_audio``). While muted the
  audio reaches no one.
* ``delegation`` may be null or ``client`` (the brain answers itself), or ``responses``: the
  brain then plays the Responses backend too (``live_backend.py``), a turn it answers with a
  function call is delegated, and ``response.item.create`` (the call's output) and
  ``response.create`` (go on) are taken. A Decisions backend is refused.
* Usage is the session's wall-clock time since ``session.started`` in whole seconds, cumulative
  (``session.usage.updated``, ``session.closed``), as the provider bills Live voice.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rtgate.catalog import typed_for, wrong_route
from rtgate.engine.audio import AudioFormat, InputConverter
from rtgate.engine.brain import item_text
from rtgate.engine.live_backend import BackendResponse, Call, usage
from rtgate.engine.session import Event
from rtgate.engine.turns import TurnEnded, TurnStarted, TurnTaker, default_server_vad
from rtgate.engine.vad import VoiceActivityDetector
from rtgate.protocol.ids import new_id
from rtgate.protocol.session_fields import LIVE as SESSION_FIELDS

#: Live's built-in default voice (docs/protocol-live.md 2).
DEFAULT_VOICE = "marin"
#: The formats a Live WebSocket accepts, by ``audio.format.type``: the rates allowed.
RATES = {"audio/pcm": (16000, 24000), "audio/pcmu": (8000,), "audio/pcma": (8000,)}
#: ``session.closed.reason`` values (openai.types.live.SessionClosedEvent).
CLOSE_REQUESTED = "close_requested"
EXPIRED = "expired"
#: Client events the engine acknowledges with ``<type minus .append>.appended``.
APPENDS = {
    "session.instructions.append": "session.instructions.appended",
    "session.thinking.append": "session.thinking.appended",
    "session.commentary.append": "session.commentary.appended",
}


def live_event(etype: str, client_event_id: str | None = None, **fields: Any) -> Event:
    """A Live server event: every one has an ``event_id`` but the audio delta (its type has
    none), and an acknowledgement echoes the command's ``event_id`` as ``client_event_id``."""
    e: Event = {"type": etype}
    if etype != "session.output_audio.delta":
        e["event_id"] = new_id("event")
    if client_event_id is not None:
        e["client_event_id"] = client_event_id
    e.update(fields)
    return e


def live_error(
    code: str,
    message: str,
    param: str | None = None,
    client_event_id: str | None = None,
    kind: str = "invalid_request_error",
) -> Event:
    """The one Live error envelope (docs/protocol-live.md 6); ``kind`` is ``error.type``."""
    error: dict[str, Any] = {"type": kind, "code": code, "message": message}
    if param is not None:
        error["param"] = param
    if client_event_id is not None:
        error["client_event_id"] = client_event_id
    return live_event("error", error=error)


class Refused(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


@dataclass(frozen=True, slots=True)
class Answer:
    """A caller's turn ended: hear ``pcm`` (24 kHz PCM16) and answer it. ``start_ms`` and
    ``end_ms`` place it on the session's timeline."""

    pcm: bytes
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class BargeIn:
    """The caller started speaking: whatever the engine is saying stops."""


@dataclass(frozen=True, slots=True)
class Say:
    """Content the application asked the model to speak (``session.commentary.append``)."""

    text: str


@dataclass(frozen=True, slots=True)
class Backend:
    """The client answered the backend's calls and asked it to go on (``response.create``,
    ``client_event_id``): run the brain as the backend of ``delegation_id`` (None: a response
    the application asked for outside any delegation)."""

    delegation_id: str | None
    client_event_id: str | None = None


@dataclass(frozen=True, slots=True)
class Close:
    """End the session: ``session.closed`` with ``reason``, then the socket."""

    reason: str
    client_event_id: str | None = None


LiveAction = Answer | BargeIn | Say | Backend | Close


def _format(audio: Any) -> dict[str, Any]:
    fmt = audio.get("format") if isinstance(audio, dict) else None
    if fmt is None:
        return {"type": "audio/pcm", "rate": 24000}
    if not isinstance(fmt, dict) or fmt.get("type") not in RATES:
        raise Refused(
            "invalid_value",
            "audio.format.type must be one of 'audio/pcm', 'audio/pcmu', 'audio/pcma'.",
            "session.audio.format.type",
        )
    rates = RATES[fmt["type"]]
    rate = fmt.get("rate", rates[-1])
    if rate not in rates:
        raise Refused(
            "invalid_value",
            f"audio.format.rate must be one of {', '.join(map(str, rates))} for {fmt['type']}.",
            "session.audio.format.rate",
        )
    return {"type": fmt["type"], "rate": rate}


def _voice(audio: Any) -> Any:
    output = audio.get("output") if isinstance(audio, dict) else None
    voice = output.get("voice") if isinstance(output, dict) else None
    return voice if voice is not None else DEFAULT_VOICE


def _delegation(
    value: Any, current: dict[str, Any] | None = None, updating: bool = False
) -> dict[str, Any] | None:
    """A start's delegation, or an update's over ``current``: sparse, the settings it omits
    keep their values, and its type cannot change [SDK ``SessionUpdateConfig.delegation``]."""
    if value is None:
        return current
    kind = value.get("type") if isinstance(value, dict) else None
    # An update's type must match; a session started with none delegates to the client.
    if updating and kind != (current or {"type": "client"})["type"]:
        raise Refused(
            "invalid_value",
            "The delegation type cannot change: this session's is "
            f"'{(current or {'type': 'client'})['type']}'.",
            "session.delegation.type",
        )
    resolved: dict[str, Any] = dict(current or {"type": kind})
    delay = value.get("acknowledgement_delay_ms") if isinstance(value, dict) else None
    if delay is not None:
        if not isinstance(delay, int) or isinstance(delay, bool) or delay < 0:
            raise Refused(
                "invalid_type",
                "delegation.acknowledgement_delay_ms must be an integer of at least 0.",
                "session.delegation.acknowledgement_delay_ms",
            )
        resolved["acknowledgement_delay_ms"] = delay
    if kind == "client":
        return resolved
    if kind == "responses":
        responses = value.get("responses")
        if responses is None and current is not None:
            return resolved
        if not isinstance(responses, dict):
            raise Refused(
                "invalid_type",
                "delegation.responses must be an object.",
                "session.delegation.responses",
            )
        given = {k: v for k, v in responses.items() if v is not None}
        _check_backend(given)
        merged = {**resolved.get("responses", {}), **given}
        if "model" not in merged:
            raise Refused(
                "missing_required_parameter",
                "delegation.responses.model is required.",
                "session.delegation.responses.model",
            )
        resolved["responses"] = merged
        return resolved
    if kind == "decisions":
        raise Refused(
            "unsupported_delegation",
            "The local engine has no 'decisions' backend; use delegation null, "
            "{'type': 'client'} or {'type': 'responses', ...}.",
            "session.delegation.type",
        )
    raise Refused(
        "invalid_value",
        "delegation.type must be 'client', 'responses' or 'decisions'.",
        "session.delegation.type",
    )


def _check_backend(responses: dict[str, Any]) -> None:
    """The kinds of the backend settings the engine reads (the SDK's
    ``ResponsesDelegationConfig``); the rest are kept as given."""
    path = "session.delegation.responses"
    model = responses.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise Refused(
            "invalid_type", "delegation.responses.model must be a string.", f"{path}.model"
        )
    if "instructions" in responses and not isinstance(responses["instructions"], str):
        raise Refused(
            "invalid_type",
            "delegation.responses.instructions must be a string.",
            f"{path}.instructions",
        )
    choice = responses.get("tool_choice")
    if choice is not None and not isinstance(choice, str | dict):
        raise Refused(
            "invalid_type",
            "delegation.responses.tool_choice must be a string or an object.",
            f"{path}.tool_choice",
        )
    tools = responses.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise Refused(
                "invalid_type", "delegation.responses.tools must be an array.", f"{path}.tools"
            )
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
                raise Refused(
                    "invalid_type",
                    "Each delegation.responses.tools entry must be an object with a type.",
                    f"{path}.tools[{i}]",
                )


def resolve_config(config: Any) -> dict[str, Any]:
    """``session.start.session`` checked and with the server's defaults filled in; the
    ``SessionResource`` fields other than ``id``, ``expires_at`` and ``status``."""
    if not isinstance(config, dict):
        raise Refused("invalid_type", "session must be an object.", "session")
    for name in config:
        if name not in SESSION_FIELDS:
            raise Refused("unknown_parameter", f"Unknown parameter: 'session.{name}'.", name)
    model = config.get("model")
    if not isinstance(model, str) or not model:
        raise Refused("missing_required_parameter", "session.model is required.", "session.model")
    if typed_for(model) not in (None, "live"):
        raise Refused("model_not_found", wrong_route(model, "/v1/live/sessions"), "session.model")
    instructions = config.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise Refused("invalid_type", "instructions must be a string.", "session.instructions")
    audio = config.get("audio")
    if audio is not None and not isinstance(audio, dict):
        raise Refused("invalid_type", "audio must be an object.", "session.audio")
    resolved: dict[str, Any] = {
        "model": model,
        "audio": {"format": _format(audio), "output": {"voice": _voice(audio)}},
        "delegation": _delegation(config.get("delegation")),
    }
    if instructions:
        resolved["instructions"] = instructions
    for name in ("input", "store", "safety_identifier"):
        if config.get(name) is not None:
            resolved[name] = config[name]
    return resolved


def message(role: str, text: str) -> dict[str, Any]:
    """A conversation line in the message shape the brain reads (``brain.item_text``)."""
    kind = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}


def _history_text(item: Any) -> tuple[str, str] | None:
    """An initial history message's role and text (one text part, docs/protocol-live.md 2)."""
    if not isinstance(item, dict) or item.get("role") not in ("developer", "user", "assistant"):
        return None
    parts = item.get("content")
    if isinstance(parts, str):
        return str(item["role"]), parts
    if isinstance(parts, list):
        text = "".join(p.get("text", "") for p in parts if isinstance(p, dict))
        return str(item["role"]), text
    return None


@dataclass
class LiveEngineSession:
    """One Live session's state. ``now`` is the monotonic clock (seconds); ``vad`` a detector
    of this session's own (it keeps state)."""

    vad: VoiceActivityDetector
    max_seconds: int = 3600
    now: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    id: str = field(default_factory=lambda: new_id("live"))
    config: dict[str, Any] = field(default_factory=dict)
    started_at: float | None = None
    expires_at: int = 0
    muted: bool = False
    closing: bool = False
    #: The conversation so far, as the brain reads it: messages (``message``) and, under
    #: Responses delegation, the backend's function calls and the client's outputs for them.
    history: list[dict[str, Any]] = field(default_factory=list)
    #: The backend's calls still waiting for the client's output, by call id.
    open_calls: set[str] = field(default_factory=set)
    #: The delegation whose backend waits to go on (its calls made): a ``response.create``
    #: goes on with it; None once the backend has answered in words.
    delegation_id: str | None = None
    #: A backend response is being made (from a ``response.create`` until it is sent).
    backend_running: bool = False
    #: Milliseconds of caller audio heard (24 kHz), the clock of the turn detector.
    heard_ms: float = 0.0
    #: The caller audio since the current turn's start was first possible (24 kHz PCM16).
    _audio: bytearray = field(default_factory=bytearray)
    _audio_from_ms: float = 0.0
    _turns: TurnTaker = field(default_factory=TurnTaker)
    _converter: InputConverter | None = None

    def __post_init__(self) -> None:
        self._turns.vad = self.vad
        self._turns.configure(default_server_vad())

    @property
    def started(self) -> bool:
        return self.started_at is not None

    @property
    def audio_format(self) -> dict[str, Any]:
        fmt: dict[str, Any] = self.config["audio"]["format"]
        return fmt

    @property
    def voice(self) -> str:
        voice = self.config["audio"]["output"]["voice"]
        return voice if isinstance(voice, str) else str(voice.get("id", DEFAULT_VOICE))

    @property
    def instructions(self) -> str:
        return str(self.config.get("instructions") or "")

    @property
    def backend_model(self) -> str | None:
        """The Responses backend's model, under Responses delegation; else None."""
        delegation = self.config.get("delegation") or {}
        if delegation.get("type") != "responses":
            return None
        return str(delegation["responses"]["model"])

    def _conversation_text(self) -> str:
        said = [self.instructions]
        for item in self.history:
            said.append(item_text(item) or str(item.get("arguments") or item.get("output") or ""))
        return "\n".join(s for s in said if s)

    def delegate(
        self,
        calls: list[tuple[str, str]],
        delegation_id: str | None,
        offset_ms: int | None = None,
    ) -> list[Event]:
        """The brain answered with function calls under Responses delegation. From a turn
        (``offset_ms``: its end), the voice delegates: ``session.delegation.created``, one
        delegation open at a time (a turn answered with a call while another is open is not
        delegated). From the backend going on, the same ``delegation_id`` (None: a response
        the application asked for). Then a backend response whose output is the calls, each
        waiting for its output. The caller sends the events before anything else can happen:
        the calls wait from here."""
        model = self.backend_model
        if model is None:
            return []
        from_turn = offset_ms is not None
        if from_turn and (self.delegation_id is not None or self.open_calls):
            return []
        events: list[Event] = []
        response = BackendResponse(model, delegation_id, int(self.wall()))
        if from_turn:
            delegation_id = response.delegation_id = new_id("dlg")
            events.append(
                live_event(
                    "session.delegation.created",
                    delegation={
                        "id": delegation_id,
                        "type": "delegation",
                        "target": "responses",
                        "response_id": response.id,
                    },
                    offset_ms=offset_ms,
                )
            )
        self.delegation_id = delegation_id
        made = [Call.new(name, arguments) for name, arguments in calls]
        used = usage(self._conversation_text(), "".join(c.arguments for c in made))
        for call in made:
            self.history.append(
                {
                    "type": "function_call",
                    "call_id": call.call_id,
                    "name": call.name,
                    "arguments": call.arguments,
                }
            )
            self.open_calls.add(call.call_id)
        return events + response.calls(made, used)

    def backend_reply(self, text: str, delegation_id: str | None) -> list[Event]:
        """The backend's answer in words (the voice speaks it next): its delegation is done."""
        model = self.backend_model
        if model is None:
            return []
        if delegation_id == self.delegation_id:
            self.delegation_id = None
        response = BackendResponse(model, delegation_id, int(self.wall()))
        events = response.message(text, usage(self._conversation_text(), text))
        # The client has it as the response's output, whether or not the voice gets to say it.
        if text:
            self.history.append(message("assistant", text))
        return events

    def backend_failed(self, go_on: Backend, why: str) -> list[Event]:
        """The backend could not answer: ``response.failed`` in the delegation's stream, then
        the Live error for the ``response.create``; the delegation is over."""
        model = self.backend_model or ""
        if go_on.delegation_id == self.delegation_id:
            self.delegation_id = None
        response = BackendResponse(model, go_on.delegation_id, int(self.wall()))
        error = live_error("server_error", why, None, go_on.client_event_id, "server_error")
        return [*response.failed(why), error]

    def timeline_ms(self) -> int:
        """Now, in milliseconds from the start of the session."""
        return 0 if self.started_at is None else int((self.now() - self.started_at) * 1000)

    def seconds(self) -> int:
        """The billable duration so far, whole seconds (``SessionUsage.seconds``)."""
        return 0 if self.started_at is None else round(self.now() - self.started_at)

    def resource(self) -> dict[str, Any]:
        return {"id": self.id, "expires_at": self.expires_at, "status": "active", **self.config}

    def usage_updated(self) -> Event:
        return live_event("session.usage.updated", usage={"seconds": self.seconds()})

    def closed(self, reason: str, client_event_id: str | None = None) -> Event:
        return live_event(
            "session.closed",
            client_event_id,
            reason=reason,
            session=self.resource(),
            usage={"seconds": self.seconds()},
        )

    def expired(self) -> bool:
        return self.started_at is not None and self.now() - self.started_at >= self.max_seconds

    # -- dispatch -----------------------------------------------------------------------------
    def handle(self, event: Any) -> tuple[list[Event], list[LiveAction]]:
        """Apply one client event: the events to send and what the connection must do."""
        eid = event.get("event_id") if isinstance(event, dict) else None
        eid = eid if isinstance(eid, str) else None
        etype = event.get("type") if isinstance(event, dict) else None
        if not isinstance(etype, str):
            return [live_error("invalid_event", "The 'type' field is missing.", "type", eid)], []
        if self.closing:
            return [live_error("session_closing", "The session is closing.", None, eid)], []
        if not self.started and etype != "session.start":
            return [
                live_error(
                    "session_not_started",
                    "Send session.start first and wait for session.started.",
                    "type",
                    eid,
                )
            ], []
        try:
            return self._dispatch(etype, event, eid)
        except Refused as r:
            return [live_error(r.code, r.message, r.param, eid)], []

    def _dispatch(
        self, etype: str, e: dict[str, Any], eid: str | None
    ) -> tuple[list[Event], list[LiveAction]]:
        if etype == "session.start":
            return self._start(e, eid), []
        if etype == "session.input_audio.append":
            return [], self._append(e)
        if etype in ("session.input_audio.mute", "session.input_audio.unmute"):
            self.muted = etype.endswith(".mute")
            return [live_event(etype + "d", eid)], []  # session.input_audio.muted / .unmuted
        if etype in APPENDS:
            return self._append_text(etype, e, eid)
        if etype == "session.update":
            return self._update(e, eid), []
        if etype == "session.close":
            self.closing = True
            return [], [Close(CLOSE_REQUESTED, eid)]
        if etype in ("response.create", "response.item.create"):
            if self.backend_model is None:
                raise Refused(
                    "delegation_required",
                    f"{etype} needs delegation of type 'responses'.",
                    "type",
                )
            if etype == "response.item.create":
                self._backend_item(e.get("item"))
                return [], []
            return [], [self._go_on(eid)]
        raise Refused("unsupported_event", f"The local engine does not support '{etype}'.", "type")

    def _backend_item(self, item: Any) -> None:
        """An input item for the backend: a function call's output, or a message."""
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or call_id not in self.open_calls:
                raise Refused(
                    "invalid_value",
                    f"No function call with call_id '{call_id}' is waiting for its output.",
                    "item.call_id",
                )
            output = item.get("output")
            if isinstance(output, list):  # content parts: their text
                output = "".join(str(p.get("text") or "") for p in output if isinstance(p, dict))
            if not isinstance(output, str):
                raise Refused("invalid_type", "item.output must be a string.", "item.output")
            self.open_calls.remove(call_id)
            # Right after the call's other outputs, before what was said since: a chat model
            # takes a call's results only next to it.
            at = next(
                i + 1
                for i, h in enumerate(self.history)
                if h.get("type") == "function_call" and h.get("call_id") == call_id
            )
            while at < len(self.history) and self.history[at].get("type") in (
                "function_call",
                "function_call_output",
            ):
                at += 1
            self.history.insert(
                at, {"type": "function_call_output", "call_id": call_id, "output": output}
            )
        elif kind == "message":
            said = _history_text(item)
            if said is None:
                raise Refused(
                    "invalid_value",
                    "item.role must be 'user', 'assistant' or 'developer'.",
                    "item.role",
                )
            self.history.append(message(*said))
        else:
            raise Refused(
                "invalid_value",
                "The local engine's backend takes item.type 'function_call_output' or 'message'.",
                "item.type",
            )

    def _go_on(self, eid: str | None) -> Backend:
        """``response.create``: the backend goes on, once every call it made has its output
        (a partial batch is refused, as the SDK's clients expect) and no response of its is
        being made."""
        if self.open_calls:
            waiting = ", ".join(sorted(self.open_calls))
            raise Refused(
                "invalid_request",
                f"Function calls are still waiting for their output: {waiting}.",
                "type",
            )
        if self.backend_running:
            raise Refused(
                "conversation_already_has_active_response",
                "The backend is already making a response.",
                "type",
            )
        self.backend_running = True
        return Backend(self.delegation_id, eid)

    def _start(self, e: dict[str, Any], eid: str | None) -> list[Event]:
        if self.started:
            raise Refused("session_already_started", "The session has already started.", "type")
        self.config = resolve_config(e.get("session"))
        fmt = self.audio_format
        self._converter = InputConverter(AudioFormat(fmt["type"]), rate=fmt["rate"])
        for item in self.config.get("input") or []:
            said = _history_text(item)
            if said is not None:
                self.history.append(message(*said))
        self.started_at = self.now()
        self.expires_at = int(self.wall()) + self.max_seconds
        return [live_event("session.started", eid, session=self.resource())]

    def _append(self, e: dict[str, Any]) -> list[LiveAction]:
        audio = e.get("audio")
        try:
            data = base64.b64decode(audio, validate=True) if isinstance(audio, str) else None
        except (binascii.Error, ValueError):
            data = None
        if data is None:
            raise Refused("invalid_audio", "audio must be base64-encoded audio.", "audio")
        if self.audio_format["type"] == "audio/pcm" and len(data) % 2:
            raise Refused("invalid_audio", "PCM16 audio must have an even byte count.", "audio")
        assert self._converter is not None
        pcm = self._converter.feed(data)
        if self.muted:
            # Muted audio reaches no one, but the clock runs on (silence in its place).
            pcm = bytes(len(pcm))
        return self.hear(pcm)

    def hear(self, pcm: bytes) -> list[LiveAction]:
        """Caller audio (24 kHz PCM16) into the turn detector: barge-ins and ended turns."""
        self._audio.extend(pcm)
        self.heard_ms += len(pcm) / 48
        actions: list[LiveAction] = []
        for edge in self._turns.hear(pcm, default_server_vad(), 0, self.heard_ms):
            if isinstance(edge, TurnStarted):
                actions.append(BargeIn())
            elif isinstance(edge, TurnEnded):
                first = int((edge.audio_start_ms - self._audio_from_ms) * 48) & ~1
                last = int((edge.audio_end_ms - self._audio_from_ms) * 48) & ~1
                turn = bytes(self._audio[max(first, 0) : last])
                actions.append(Answer(turn, edge.audio_start_ms, edge.audio_end_ms))
        if not self.vad.in_speech:
            # Nothing before a turn to come is needed but its prefix padding (300 ms).
            keep = 48 * 500
            if len(self._audio) > keep:
                cut = len(self._audio) - keep
                del self._audio[:cut]
                self._audio_from_ms += cut / 48
        return actions

    def _append_text(
        self, etype: str, e: dict[str, Any], eid: str | None
    ) -> tuple[list[Event], list[LiveAction]]:
        content = e.get("content")
        if not isinstance(content, str):
            raise Refused("invalid_type", "content must be a string.", "content")
        if "delegation_id" not in e:
            raise Refused(
                "missing_required_parameter",
                "delegation_id is required (null for general session context).",
                "delegation_id",
            )
        if e["delegation_id"] is not None and self.backend_model is not None:
            raise Refused(
                "invalid_value",
                "delegation_id must be null with Responses delegation.",
                "delegation_id",
            )
        actions: list[LiveAction] = []
        if etype == "session.instructions.append":
            self.history.append(message("developer", content))
        elif etype == "session.commentary.append":
            actions.append(Say(content))
        # Appended context takes no time on the session's timeline: start and end are now.
        at = self.timeline_ms()
        return [live_event(APPENDS[etype], eid, start_ms=at, end_ms=at)], actions

    def _update(self, e: dict[str, Any], eid: str | None) -> list[Event]:
        session = e.get("session")
        if not isinstance(session, dict):
            raise Refused("invalid_type", "session must be an object.", "session")
        for name in session:
            if name != "delegation":
                raise Refused(
                    "immutable_parameter",
                    f"session.{name} cannot change after the session has started; only "
                    "delegation can be updated.",
                    f"session.{name}",
                )
        if "delegation" in session:
            current = self.config.get("delegation")
            self.config["delegation"] = _delegation(session["delegation"], current, updating=True)
        return [live_event("session.updated", eid, session=self.resource())]
