"""Gemini Live behind the OpenAI Realtime protocol: the translator, with no I/O.

One ``GeminiTranslator`` per session sits between the relay core and the Gemini connection
(``relay/gemini_leg.py`` feeds it). It handles the client's side and the connection's life
(setup, resumption) here; Gemini's messages become OpenAI events in ``gemini_response.py``,
and the outputs and error shapes are in ``gemini_events.py``.

The core speaks OpenAI Realtime both ways, as to any upstream, so keys, policy, budgets, the
duration cap, transcripts and metering apply unchanged: the core meters the ``response.done``
this module writes. Fed frames as strings, it answers outputs: ``ToGemini`` (a message for the
Gemini connection), ``ToClient`` (an OpenAI server event, handed to the core as if the upstream
had sent it), ``Resume`` (dial a new connection and send it ``resume_setup()``), ``Switch``
(that connection is ready: make it current, close the old one) and ``Closed`` (the upstream's
end, as the code and reason the client gets).

The rules it keeps (docs/protocol-gemini.md 3-10; the event shapes are the GA ones the ``openai``
SDK types, docs/protocol.md):

* **Session.** ``session.created`` is written at connect, as OpenAI sends it, from OpenAI's
  defaults. Every ``session.update`` before the first turn is merged and acknowledged with
  ``session.updated``. The first event that needs the model (audio, an item, ``response.create``)
  sends Gemini's one ``setup`` (``gemini_setup.py``); what follows waits for ``setupComplete``.
  A later update that would change ``setup`` is refused with an ``error`` event
  (``session_update_not_supported``) and the session goes on, instead of Gemini's 1007 close;
  one that leaves ``setup`` as it is (audio formats, which the gateway converts) is applied.
* **Audio in.** ``input_audio_buffer.append`` (24 kHz PCM16, or G.711) is resampled to 16 kHz
  PCM16 (``realtimeInput.audio``, protocol-gemini.md 5). ``commit`` flushes the resampler and ends
  the stream (``audioStreamEnd``; with ``turn_detection: null``, ``activityEnd``, after an
  ``activityStart`` before the turn's first audio).
* **Turns.** ``conversation.item.create`` text is ``clientContent`` without ``turnComplete``;
  ``response.create`` is ``clientContent.turnComplete`` (Gemini's "start generating"), except
  after a tool output or an audio commit, which Gemini answers on its own (a ``turnComplete``
  there would interrupt it, protocol-gemini.md 3). A ``function_call_output`` is a ``toolResponse``
  under the call's name.
* **Responses.** The first output of a Gemini turn opens a response (``response.created``,
  the message item, its content part); audio and transcript deltas follow; ``turnComplete``
  closes it (``response.done`` ``completed``); ``interrupted`` is a barge-in:
  ``input_audio_buffer.speech_started`` at once, the rest of the turn dropped, and
  ``response.done`` ``cancelled`` (``turn_detected``) when Gemini ends the turn (protocol-gemini.md
  10, item 2). ``response.cancel`` is the same with ``client_cancelled``: Gemini cannot stop a
  generation, so the gateway stops relaying it. ``toolCall`` adds a function-call item per call and
  ends the response.
* **Usage.** The last ``usageMetadata`` before a response ends goes into its ``response.done``
  (``gemini_usage.py``); one that arrives with no response to carry it (a bare ``turnComplete``)
  gets a response of its own, empty, so nothing Gemini bills goes unmetered.
* **goAway.** Client messages sent since setup are kept until Gemini reports them consumed
  (``sessionResumptionUpdate.lastConsumedClientMessageIndex``). On ``goAway`` the session is
  resumed on a new connection with the last resumable handle, once no response is in flight,
  and the unconsumed messages are replayed; the client sees nothing of it (protocol-gemini.md 10 gap
  1). A 1011 close with a handle known is resumed the same way (``RESUME_ON_FAULT``); a response
  that was in flight on a lost connection ends ``failed``, carrying its usage.
* **Errors.** Gemini has no error message: its close codes become an OpenAI ``error`` event and
  a close (``gemini_close``, protocol-gemini.md 7). A message the translator cannot read gets an
  ``error`` event (``upstream_protocol_error``) and the session goes on.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from rtgate.protocol import gemini_setup as gs
from rtgate.protocol.gemini_events import (
    AudioConverter,
    Closed,
    Out,
    Resume,
    Switch,
    ToClient,
    ToGemini,
    error_event,
    gemini_close,
    protocol_error,
    scrub,
    server_event,
)
from rtgate.protocol.gemini_response import ResponseWriter
from rtgate.protocol.ids import new_id

__all__ = ["REPLAY_LIMIT", "RESUME_ON_FAULT", "GeminiTranslator"]


#: A connection Gemini closed with 1011 ("Internal error", or "Deadline expired" at about 58
#: minutes, protocol-gemini.md 6, 7) is resumed from the last handle, at most this many times
#: between two completed turns; past that, or without a handle, the session ends with the mapped
#: error.
RESUME_ON_FAULT = 2

#: Client messages kept for a replay after ``goAway`` while Gemini has not reported them
#: consumed; past this the oldest go (about a minute of 20 ms audio appends).
REPLAY_LIMIT = 3000


class _Phase(enum.Enum):
    """IDLE: no setup sent; SETTING_UP: setup sent, ``setupComplete`` awaited; READY: messages
    flow; RESUMING: a new connection is being set up after ``goAway``, messages wait."""

    IDLE = "idle"
    SETTING_UP = "setting_up"
    READY = "ready"
    RESUMING = "resuming"


class GeminiTranslator:
    """One session's translation; see the module docstring for the rules."""

    def __init__(
        self,
        model: str,
        upstream_model: str,
        *,
        input_converter: Callable[[str, int], AudioConverter],
        output_converter: Callable[[str], AudioConverter],
    ) -> None:
        """``model``: the name the client asked for (shown in the session); ``upstream_model``:
        Gemini's id (``models/`` added when missing). ``input_converter(format, rate)``: a
        stream from the session's input format to PCM16 at ``rate``; ``output_converter
        (format)``: from 24 kHz PCM16 to the session's output format (``engine/audio.py``'s,
        injected so this module stays free of numpy)."""
        self._upstream_model = upstream_model
        self._new_input = input_converter
        self.session = gs.default_session(model, new_id("sess"))
        #: The server side: Gemini's messages as OpenAI events (``gemini_response.py``).
        self._w = ResponseWriter(self.session, output_converter)
        self._setup: dict[str, Any] | None = None
        self._phase = _Phase.IDLE
        self._input: AudioConverter | None = None
        #: Client messages since setup, by index, until Gemini reports them consumed.
        self._log: deque[tuple[int, str]] = deque()
        self._next_index = 0
        self._consumed = -1
        #: The index of the last message sent on the current connection.
        self._sent = -1
        self._handle: str | None = None
        self._resumable = False
        self._going_away = False
        self._fault_resumes = 0
        #: Inside an ``activityStart`` (manual turns).
        self._in_activity = False
        #: Gemini will answer without a ``turnComplete`` (after a tool's output or the end of
        #: the client's audio): the client's ``response.create`` for it sends nothing.
        self._answer_coming = False
        self._cancelled_calls: set[str] = set()

    # -- the session ------------------------------------------------------------------------
    def opened(self) -> list[Out]:
        """What the client hears at connect: ``session.created`` (OpenAI sends it unasked)."""
        return [ToClient(server_event("session.created", session=self.session))]

    @property
    def resuming(self) -> bool:
        return self._phase is _Phase.RESUMING

    def resume_setup(self) -> str:
        """The setup for the new connection of a resumption: the session's own, resumed from
        the last handle."""
        assert self._setup is not None
        assert self._handle is not None
        return orjson.dumps({"setup": gs.with_handle(self._setup, self._handle)}).decode()

    def resume_failed(self) -> list[Out]:
        """The new connection could not be dialled: the old one goes on while it lasts."""
        if self._phase is _Phase.RESUMING:
            self._phase = _Phase.READY
            self._going_away = False
            return self._replay(self._sent)
        return []

    # -- client -> Gemini -------------------------------------------------------------------
    def client_frame(self, data: str | bytes) -> list[Out]:
        """One OpenAI client event (from the relay core, already checked against the key's
        policy)."""
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return [ToClient(error_event("invalid_json", "The event is not valid JSON."))]
        if not isinstance(event, dict):
            return [ToClient(error_event("invalid_event", "The event must be a JSON object."))]
        etype = event.get("type")
        eid = event.get("event_id")
        match etype:
            case "session.update":
                return self._session_update(event, eid)
            case "input_audio_buffer.append":
                return self._append(event, eid)
            case "input_audio_buffer.commit":
                return self._commit()
            case "input_audio_buffer.clear":
                if self._input is not None:
                    self._input.flush()
                return [ToClient(server_event("input_audio_buffer.cleared"))]
            case "conversation.item.create":
                return self._item_create(event, eid)
            case "response.create":
                return self._response_create(eid)
            case "response.cancel":
                return self._response_cancel(eid)
            case "conversation.item.truncate":
                # Gemini drops the unplayed rest of an interrupted turn itself; acknowledged.
                return [
                    ToClient(
                        server_event(
                            "conversation.item.truncated",
                            item_id=str(event.get("item_id", "")),
                            content_index=_int(event.get("content_index")),
                            audio_end_ms=_int(event.get("audio_end_ms")),
                        )
                    )
                ]
            case "output_audio_buffer.clear":
                return []
        return [
            ToClient(
                error_event(
                    "unsupported_event",
                    f"The event type `{etype}` is not supported on a Gemini Live model.",
                    client_event_id=eid,
                )
            )
        ]

    def _session_update(self, event: dict[str, Any], eid: Any) -> list[Out]:
        upd = event.get("session")
        if not isinstance(upd, dict):
            return [
                ToClient(
                    error_event(
                        "invalid_value", "`session` must be an object.", client_event_id=eid
                    )
                )
            ]
        if upd.get("type") == "transcription":
            return [
                ToClient(
                    error_event(
                        "session_update_not_supported",
                        "Transcription sessions are not supported on a Gemini Live model.",
                        client_event_id=eid,
                    )
                )
            ]
        new = gs.updated(self.session, upd)
        if self._setup is not None and gs.setup_message(new, self._upstream_model) != self._setup:
            return [
                ToClient(
                    error_event(
                        "session_update_not_supported",
                        "A Gemini Live session's instructions, voice, tools, modalities and turn "
                        "detection are fixed once its first turn starts; this update was not "
                        "applied. Send them before the first audio, item or response.",
                        client_event_id=eid,
                    )
                )
            ]
        old_in = _format(self.session, "input")
        self.session = self._w.session = new
        if _format(new, "input") != old_in:
            self._input = None
        self._w.set_output_format(_format(new, "output"))
        return [ToClient(server_event("session.updated", session=self.session))]

    def _send(self, message: dict[str, Any]) -> list[Out]:
        """A client message for Gemini: setup first if none went; kept for a replay; sent now
        unless the connection is not ready for it."""
        out: list[Out] = []
        if self._phase is _Phase.IDLE:
            self._setup = gs.setup_message(self.session, self._upstream_model)
            self._phase = _Phase.SETTING_UP
            out.append(ToGemini(orjson.dumps({"setup": self._setup}).decode()))
        frame = orjson.dumps(message).decode()
        self._log.append((self._next_index, frame))
        self._next_index += 1
        if len(self._log) > REPLAY_LIMIT:
            self._log.popleft()
        if self._phase is _Phase.READY:
            self._sent = self._next_index - 1
            out.append(ToGemini(frame))
        return out

    def _append(self, event: dict[str, Any], eid: Any) -> list[Out]:
        audio = event.get("audio")
        try:
            raw = base64.b64decode(audio, validate=True) if isinstance(audio, str) else None
        except (binascii.Error, ValueError):
            raw = None
        if raw is None:
            return [
                ToClient(
                    error_event("invalid_value", "`audio` must be base64.", client_event_id=eid)
                )
            ]
        fmt = _format(self.session, "input")
        self._w.audio_ms += len(raw) // _bytes_per_ms(fmt)
        if self._input is None:
            self._input = self._new_input(fmt, gs.GEMINI_INPUT_RATE)
        pcm = self._input.feed(raw)
        out: list[Out] = []
        if gs.manual_turns(self.session) and not self._in_activity:
            self._in_activity = True
            out += self._send({"realtimeInput": {"activityStart": {}}})
        if pcm:
            out += self._send(_audio_message(pcm))
        return out

    def _commit(self) -> list[Out]:
        out: list[Out] = []
        if self._input is not None:
            tail = self._input.flush()
            if tail:
                out += self._send(_audio_message(tail))
        if gs.manual_turns(self.session):
            if self._in_activity:
                self._in_activity = False
                out += self._send({"realtimeInput": {"activityEnd": {}}})
        else:
            out += self._send({"realtimeInput": {"audioStreamEnd": True}})
        self._answer_coming = True
        item = self._w.user_item or new_id("item")
        self._w.user_item = item
        out.append(
            ToClient(
                server_event(
                    "input_audio_buffer.committed", item_id=item, previous_item_id=self._w.last_item
                )
            )
        )
        return out

    def _item_create(self, event: dict[str, Any], eid: Any) -> list[Out]:
        item = event.get("item")
        if not isinstance(item, dict):
            return [
                ToClient(
                    error_event("invalid_value", "`item` must be an object.", client_event_id=eid)
                )
            ]
        itype = item.get("type")
        item_id = item.get("id") if isinstance(item.get("id"), str) else new_id("item")
        out: list[Out]
        if itype == "message":
            role = item.get("role")
            texts = [
                p["text"]
                for p in item.get("content") or []
                if isinstance(p, dict)
                and p.get("type") in ("input_text", "output_text", "text")
                and isinstance(p.get("text"), str)
            ]
            if role not in ("user", "assistant") or not texts:
                return [
                    ToClient(
                        error_event(
                            "unsupported_item",
                            "A Gemini Live model takes user and assistant messages of text "
                            "only; send instructions with session.update.",
                            client_event_id=eid,
                        )
                    )
                ]
            turn = {
                "role": "user" if role == "user" else "model",
                "parts": [{"text": " ".join(texts)}],
            }
            out = self._send({"clientContent": {"turns": [turn], "turnComplete": False}})
            self._answer_coming = False
        elif itype == "function_call_output":
            call_id = item.get("call_id")
            output = item.get("output")
            if not isinstance(call_id, str) or not isinstance(output, str):
                return [
                    ToClient(
                        error_event(
                            "invalid_value",
                            "`call_id` and `output` must be strings.",
                            client_event_id=eid,
                        )
                    )
                ]
            out = []
            if call_id not in self._cancelled_calls:
                out = self._send(
                    {
                        "toolResponse": {
                            "functionResponses": [
                                {
                                    "id": call_id,
                                    "name": self._w.calls.get(call_id, ""),
                                    "response": _tool_result(output),
                                }
                            ]
                        }
                    }
                )
                self._answer_coming = True
        else:
            return [
                ToClient(
                    error_event(
                        "unsupported_item",
                        f"Items of type `{itype}` are not supported on a Gemini Live model.",
                        client_event_id=eid,
                    )
                )
            ]
        shown = {**item, "id": item_id, "object": "realtime.item", "status": "completed"}
        prev, self._w.last_item = self._w.last_item, item_id
        out.append(
            ToClient(server_event("conversation.item.added", previous_item_id=prev, item=shown))
        )
        out.append(
            ToClient(server_event("conversation.item.done", previous_item_id=prev, item=shown))
        )
        return out

    def _response_create(self, eid: Any) -> list[Out]:
        if self._answer_coming:
            # Gemini answers a tool's output and the end of the client's audio on its own; a
            # turnComplete now would interrupt that answer (protocol-gemini.md 3), however far it
            # got.
            self._answer_coming = False
            return []
        if self._w.resp is not None and self._w.resp.cancelled is None:
            return [
                ToClient(
                    error_event(
                        "conversation_already_has_active_response",
                        "Conversation already has an active response in progress.",
                        client_event_id=eid,
                    )
                )
            ]
        return self._send({"clientContent": {"turnComplete": True}})

    def _response_cancel(self, eid: Any) -> list[Out]:
        resp = self._w.resp
        if resp is None or resp.cancelled is not None:
            return [
                ToClient(
                    error_event(
                        "response_cancel_not_active",
                        "Cancellation failed: no active response found.",
                        client_event_id=eid,
                    )
                )
            ]
        resp.cancelled = "client_cancelled"
        return []

    # -- Gemini -> client -------------------------------------------------------------------
    def gemini_frame(self, data: str | bytes) -> list[Out]:
        """One Gemini server message (Google sends them as text or binary frames)."""
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            return [self._protocol_error("a frame that is not JSON")]
        if not isinstance(msg, dict):
            return [self._protocol_error("a frame that is not a JSON object")]
        out: list[Out] = []
        known = False
        if "setupComplete" in msg:
            known = True
            out += self._setup_complete()
        if "sessionResumptionUpdate" in msg:
            known = True
            self._resumption_update(msg["sessionResumptionUpdate"])
        if "usageMetadata" in msg:
            known = True
            if isinstance(msg["usageMetadata"], dict):
                self._w.metadata(msg["usageMetadata"])
            else:
                out.append(self._protocol_error("a usageMetadata that is not an object"))
        if "serverContent" in msg:
            known = True
            content = msg["serverContent"]
            if isinstance(content, dict):
                if content.get("turnComplete") is True:
                    self._fault_resumes = 0
                out += self._w.server_content(content)
            else:
                out.append(self._protocol_error("a serverContent that is not an object"))
        if "toolCall" in msg:
            known = True
            out += self._w.tool_call(msg["toolCall"])
        if "toolCallCancellation" in msg:
            known = True
            ids = msg["toolCallCancellation"]
            ids = ids.get("ids") if isinstance(ids, dict) else None
            # The calls were abandoned (a barge-in): their outputs, if any come, are dropped.
            self._cancelled_calls.update(i for i in ids or [] if isinstance(i, str))
        if "goAway" in msg:
            known = True
            self._going_away = True
        for key in ("voiceActivityDetectionSignal", "voiceActivity"):
            known = known or key in msg
        if not known:
            out.append(self._protocol_error(f"a message with no key it knows ({sorted(msg)[:4]})"))
        out += self._maybe_resume()
        return out

    def _protocol_error(self, what: str) -> ToClient:
        return ToClient(protocol_error(what))

    def _setup_complete(self) -> list[Out]:
        if self._phase is _Phase.RESUMING:
            self._phase = _Phase.READY
            self._going_away = False
            return [Switch(), *self._replay(self._consumed)]
        if self._phase is not _Phase.SETTING_UP:
            return [self._protocol_error("a second setupComplete")]
        self._phase = _Phase.READY
        return self._replay(self._consumed)

    def _replay(self, after: int) -> list[Out]:
        """The kept messages past index ``after``, sent on the current connection."""
        frames = [frame for i, frame in self._log if i > after]
        self._sent = self._next_index - 1
        return [ToGemini(frame) for frame in frames]

    def _resumption_update(self, upd: Any) -> None:
        if not isinstance(upd, dict):
            return
        handle = upd.get("newHandle")
        self._resumable = bool(upd.get("resumable")) and isinstance(handle, str) and bool(handle)
        if self._resumable:
            self._handle = handle
        idx = upd.get("lastConsumedClientMessageIndex")
        consumed = int(idx) if isinstance(idx, str | int) and str(idx).isdigit() else None
        if consumed is not None and self._resumable:
            self._consumed = max(self._consumed, consumed)
            while self._log and self._log[0][0] <= self._consumed:
                self._log.popleft()

    def _maybe_resume(self) -> list[Out]:
        if (
            self._going_away
            and self._phase is _Phase.READY
            and self._handle is not None
            and self._resumable
            and self._w.resp is None
        ):
            self._phase = _Phase.RESUMING
            return [Resume()]
        return []

    def gemini_closed(self, code: int, reason: str) -> list[Out]:
        """The Gemini connection closed. After a ``goAway`` with a handle known, the session
        is resumed rather than ended (what was in flight may be lost); otherwise the client
        gets an ``error`` event and the close it maps to. While a resumption is under way the
        old connection's close is expected: nothing."""
        if self._phase is _Phase.RESUMING:
            return []
        fault = code == 1011 and self._fault_resumes < RESUME_ON_FAULT
        if self._handle is not None and (self._going_away or fault):
            if not self._going_away:
                self._fault_resumes += 1
            self._phase = _Phase.RESUMING
            # What was in flight on the lost connection will not end there: failed, billed.
            return [*self._w.lost_response(), Resume()]
        out: list[Out] = self.flush_usage()
        if code == 1000:
            return [*out, Closed(1000, reason)]
        etype, ecode, close = gemini_close(code, reason)
        message = f"The Gemini upstream closed the session ({code}): {scrub(reason)}"
        out.append(ToClient(error_event(ecode, message, etype=etype)))
        out.append(Closed(close, f"{etype}.{ecode}"))
        return out

    def flush_usage(self) -> list[Out]:
        """Usage Gemini reported that no ``response.done`` carried yet, as a response of its
        own, so it is metered before the session ends."""
        return self._w.flush_usage()


def _format(session: dict[str, Any], side: str) -> str:
    audio = session.get("audio")
    sect = audio.get(side) if isinstance(audio, dict) else None
    fmt = sect.get("format") if isinstance(sect, dict) else None
    ftype = fmt.get("type") if isinstance(fmt, dict) else fmt
    return ftype if ftype in ("audio/pcmu", "audio/pcma") else "audio/pcm"


def _bytes_per_ms(fmt: str) -> int:
    """docs/protocol.md 5.6: PCM16 at 24 kHz is 48 bytes a millisecond, G.711 8."""
    return 48 if fmt == "audio/pcm" else 8


def _audio_message(pcm16k: bytes) -> dict[str, Any]:
    return {
        "realtimeInput": {
            "audio": {"mimeType": gs.GEMINI_INPUT_MIME, "data": base64.b64encode(pcm16k).decode()}
        }
    }


def _tool_result(output: str) -> dict[str, Any]:
    """A tool's output as Gemini's ``response``, which must be an object (protocol-gemini.md 3): a
    JSON object as it is, anything else as ``{"result": ...}``."""
    try:
        value = orjson.loads(output)
    except orjson.JSONDecodeError:
        return {"result": output}
    return value if isinstance(value, dict) else {"result": value}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
