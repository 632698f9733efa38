"""The local engine's protocol state, with no I/O: client events in, GA server events out.

Rules (docs/protocol.md 2, 5.7, 5.9, 8.3):
* ``session.created`` first; then client events strictly in order.
* One active response per conversation; ``response.cancel`` ends it with status ``cancelled``.
* Audio is appended to a buffer whose clock is its byte count (48 bytes/ms for 24 kHz PCM16).
  With ``server_vad`` or ``semantic_vad`` the buffer is cut into turns by the session's voice
  activity detector (``engine.turns``: speech started and stopped, the idle timeout); with
  ``turn_detection: null`` only ``input_audio_buffer.commit`` does. A commit or clear in the
  middle of a turn ends that turn.
* Every client event is checked against the GA event table (``protocol.client_schema``):
  unknown and beta-only fields, wrong types, values outside their sets and ranges are refused
  as OpenAI refuses them, and nothing of a refused event applies. A ``session.update`` then
  meets the session's own rules (``session_config``).
* A response stops at ``max_output_tokens`` (session or response; an integer 1-4096 or
  ``"inf"``) with status ``incomplete``, reason ``max_output_tokens``.
* The voice is fixed once the session has produced audio (``cannot_update_voice``).
* Every response ends with ``response.done`` carrying usage (audio 10 tokens/s in, 20/s out;
  text estimated at 4 characters a token), then ``rate_limits.updated``.
The conversation's items and what clients do to them live in ``engine.conversation``.
Responses themselves are produced by ``engine.server``, which owns the brain and the voice.
"""

from __future__ import annotations

import base64
import copy
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from rtgate.engine.conversation import (
    PCM_BYTES_PER_MS,
    Conversation,
    Item,
    UnattributedRefusal,
    public_item,
)
from rtgate.engine.response_plan import ResponsePlan
from rtgate.engine.session_config import (
    Refusal,
    check_update,
    default_session,
    format_type,
)
from rtgate.engine.tokens import count_tokens
from rtgate.engine.turns import IdleTimeout, TurnEnded, TurnStarted, TurnTaker, with_defaults
from rtgate.engine.vad import VoiceActivityDetector
from rtgate.protocol import client_schema
from rtgate.protocol.ids import new_id
from rtgate.protocol.session_fields import merge

Event = dict[str, Any]

MIN_COMMIT_MS = 100


def ev(etype: str, **fields: Any) -> Event:
    return {"type": etype, "event_id": new_id("event"), **fields}


def obfuscation() -> str:
    return secrets.token_urlsafe(9)


@dataclass
class EngineSession:
    model: str
    transcription: bool = False
    max_seconds: int = 3600
    session: dict[str, Any] = field(default_factory=dict)
    conversation: Conversation = field(default_factory=Conversation)
    buffer: bytearray = field(default_factory=bytearray)
    #: Milliseconds of audio appended over the whole session (the VAD clock).
    appended_ms: float = 0.0
    buffer_start_ms: float = 0.0
    active: ResponsePlan | None = None
    #: Every response not yet done, out-of-band ones included, by id (for response.cancel).
    running: dict[str, ResponsePlan] = field(default_factory=dict)
    #: The last append, as 24 kHz PCM16 (what the VAD reads next).
    last_pcm: bytes = b""
    #: Turn detection over the voice activity detector (``use_vad``; none: no VAD events).
    turns: TurnTaker = field(default_factory=TurnTaker)
    #: Set with the first assistant audio: from then on the voice cannot change.
    audio_produced: bool = False
    _in_conv: Any = None

    def __post_init__(self) -> None:
        self.session = default_session(
            self.model, self.transcription, int(time.time()) + self.max_seconds
        )

    def use_vad(self, vad: VoiceActivityDetector) -> None:
        """Detect turns with ``vad`` (one per session: it keeps state)."""
        self.turns.vad = vad
        self.turns.configure(self.turn_detection)

    # -- helpers ------------------------------------------------------------------------------
    @property
    def turn_detection(self) -> dict[str, Any] | None:
        td: dict[str, Any] | None = self.session["audio"]["input"].get("turn_detection")
        return td

    @property
    def transcription_config(self) -> dict[str, Any] | None:
        tr: dict[str, Any] | None = self.session["audio"]["input"].get("transcription")
        return tr

    def error(
        self,
        code: str | None,
        message: str,
        param: str | None = None,
        event_id: str | None = None,
        etype: str = "invalid_request_error",
    ) -> Event:
        return ev(
            "error",
            error={
                "type": etype,
                "code": code,
                "message": message,
                "param": param,
                "event_id": event_id,
            },
        )

    def refuse(self, refusal: Refusal, event_id: str | None) -> Event:
        if isinstance(refusal, UnattributedRefusal):
            event_id = None
        return self.error(refusal.code, refusal.message, refusal.param, event_id)

    def created(self) -> list[Event]:
        return [ev("session.created", session=copy.deepcopy(self.session))]

    @property
    def conversation_id(self) -> str:
        return self.conversation.id

    @property
    def items(self) -> list[Item]:
        return self.conversation.items

    @property
    def audio_ms_by_item(self) -> dict[str, int]:
        return self.conversation.audio_ms_by_item

    def find(self, item_id: str) -> Item | None:
        return self.conversation.find(item_id)

    # -- dispatch -----------------------------------------------------------------------------
    def handle(self, event: Any) -> tuple[list[Event], ResponsePlan | None]:
        """Apply one client event; return the events to send and a response to start, if any.

        A handler may return a ``Refusal`` instead: it is sent as an ``error`` event that
        echoes the client's ``event_id`` (docs/protocol.md 5.3), unless it is unattributed."""
        eid = event.get("event_id") if isinstance(event, dict) else None
        eid = eid if isinstance(eid, str) else None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return [self.error("invalid_event", "The 'type' field is missing.", "type", eid)], None
        etype = event["type"]
        refused: client_schema.Problem | None
        if etype not in client_schema.CLIENT_EVENTS:
            refused = client_schema.invalid_value(etype, list(client_schema.CLIENT_EVENTS), "type")
        else:
            # Every field of every event, as OpenAI's GA interface checks it (docs/protocol.md 5.3).
            refused = client_schema.problem(event)
        if refused is not None:
            return [self.error(refused.code, refused.message, refused.param, eid)], None
        handler = getattr(self, "_on_" + etype.replace(".", "_"))
        result: tuple[list[Event], ResponsePlan | None] | Refusal = handler(event)
        if isinstance(result, Refusal):
            return [self.refuse(result, eid)], None
        return result

    def _on_session_update(self, e: Event) -> tuple[list[Event], None] | Refusal:
        update = check_update(
            e["session"],
            self.session,
            transcription=self.transcription,
            audio_produced=self.audio_produced,
        )
        if isinstance(update, Refusal):
            return update
        merge(self.session, update)
        td = self.session["audio"]["input"].get("turn_detection")
        if isinstance(td, dict):
            # Fields a client leaves out take their defaults (threshold 0.5, prefix 300 ms...).
            self.session["audio"]["input"]["turn_detection"] = with_defaults(td)
            self.turns.configure(self.turn_detection)
        else:
            self.turns.interrupt()  # manual turns from now on: no turn is in progress
        self._in_conv = None
        return [ev("session.updated", session=copy.deepcopy(self.session))], None

    def append_audio(self, pcm: bytes) -> None:
        self.buffer.extend(pcm)
        self.appended_ms += len(pcm) / PCM_BYTES_PER_MS

    def _on_input_audio_buffer_append(
        self, e: Event
    ) -> tuple[list[Event], ResponsePlan | None] | Refusal:
        try:
            pcm = base64.b64decode(e["audio"], validate=True)
        except ValueError:
            return Refusal("invalid_value", "Invalid 'audio': not valid base64.", "audio")
        self.last_pcm = self.decode_input(pcm)
        self.append_audio(self.last_pcm)
        return self.hear(self.last_pcm)

    def hear(self, pcm: bytes) -> tuple[list[Event], ResponsePlan | None]:
        """Turn detection over appended audio (docs/protocol.md 5.7): speech started and stopped,
        the idle timeout; the commits they make, barge-in, and the response a turn asks for."""
        td = self.turn_detection
        out: list[Event] = []
        plan: ResponsePlan | None = None
        for edge in self.turns.hear(pcm, td, self.buffer_start_ms, self.appended_ms):
            assert td is not None
            if isinstance(edge, TurnStarted):
                out.append(
                    ev(
                        "input_audio_buffer.speech_started",
                        audio_start_ms=edge.audio_start_ms,
                        item_id=edge.item_id,
                    )
                )
                if not td.get("interrupt_response", True):
                    continue
                if plan is not None:
                    # Planned by a turn earlier in this same append and never started: nothing
                    # of it reached the client, so it is dropped rather than cancelled.
                    self._drop(plan)
                    plan = None
                active = self.active
                if active is not None and not active.cancelled:
                    # engine.server stops it; it ends with status cancelled, turn_detected.
                    active.cancelled = True
                    active.cancel_reason = "turn_detected"
                continue
            if isinstance(edge, TurnEnded):
                out.append(
                    ev(
                        "input_audio_buffer.speech_stopped",
                        audio_end_ms=edge.audio_end_ms,
                        item_id=edge.item_id,
                    )
                )
            else:
                assert isinstance(edge, IdleTimeout)
                out.append(
                    ev(
                        "input_audio_buffer.timeout_triggered",
                        audio_start_ms=edge.audio_start_ms,
                        audio_end_ms=edge.audio_end_ms,
                        item_id=edge.item_id,
                    )
                )
            # The item holds the turn's audio only: from its (padded) start, or for a timeout
            # the silent segment after the last response played out.
            start = max(0, int((edge.audio_start_ms - self.buffer_start_ms) * PCM_BYTES_PER_MS))
            del self.buffer[: start - start % 2]
            out.extend(self.commit(edge.item_id))
            if (
                td.get("create_response", True)
                and not self.transcription
                and (self.active is None or self.active.cancelled)
            ):
                # A response this turn interrupted may still be closing; engine.server starts
                # the new one after it, so its response.done comes first.
                plan = self.plan_response({})
        return out, plan

    @property
    def input_format(self) -> str:
        return format_type(self.session["audio"]["input"].get("format"))

    @property
    def output_format(self) -> str:
        out = self.session["audio"].get("output") or {}
        return format_type(out.get("format"))

    def decode_input(self, data: bytes) -> bytes:
        """Client audio in the session's input format -> 24 kHz PCM16, resampler state kept."""
        fmt = self.input_format
        if fmt == "audio/pcm":
            return data
        if self._in_conv is None:
            from rtgate.engine.audio import InputConverter, audio_format

            self._in_conv = InputConverter(audio_format(fmt))
        pcm: bytes = self._in_conv.feed(data)
        return pcm

    def encode_output(self, pcm24k: bytes) -> bytes:
        """24 kHz PCM16 -> the session's output format (a whole sentence at a time)."""
        return self.encode(pcm24k, self.output_format)

    @staticmethod
    def decode(clip: bytes, fmt: str) -> bytes:
        """A whole clip in ``fmt`` -> 24 kHz PCM16."""
        if fmt == "audio/pcm":
            return clip[: len(clip) - len(clip) % 2]
        from rtgate.engine.audio import audio_format, to_pcm24k

        return to_pcm24k(clip, audio_format(fmt))

    @staticmethod
    def encode(pcm24k: bytes, fmt: str) -> bytes:
        if fmt == "audio/pcm":
            return pcm24k
        from rtgate.engine.audio import audio_format, from_pcm24k

        return from_pcm24k(pcm24k, audio_format(fmt))

    def output_bytes_per_ms(self) -> int:
        return PCM_BYTES_PER_MS if self.output_format == "audio/pcm" else 8

    def commit(self, item_id: str | None = None) -> list[Event]:
        """Turn the buffer into a user audio item (manual commit or VAD end of turn)."""
        item_id = item_id or new_id("item")
        item, prev = self.conversation.add_user_audio(item_id, bytes(self.buffer))
        self.buffer.clear()
        self.buffer_start_ms = self.appended_ms
        self.turns.disarm()  # the user took a turn: no idle timeout until the next response
        public = public_item(item)
        out = [ev("input_audio_buffer.committed", previous_item_id=prev, item_id=item_id)]
        out.append(ev("conversation.item.added", previous_item_id=prev, item=public))
        out.append(ev("conversation.item.done", previous_item_id=prev, item=public))
        return out

    def _on_input_audio_buffer_commit(self, e: Event) -> tuple[list[Event], None] | Refusal:
        if self._in_conv is not None:
            # The resampler holds back a few ms; a manual commit ends the turn, so release them.
            self.append_audio(self._in_conv.flush())
            self._in_conv = None
        ms = len(self.buffer) / PCM_BYTES_PER_MS
        if ms < MIN_COMMIT_MS:
            return Refusal(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"100ms of audio, but buffer only has {ms:.2f}ms of audio.",
            )
        # Committed while the VAD hears speech: that turn ends here, as the item its
        # speech_started announced; speech that goes on starts a fresh turn.
        return self.commit(self.turns.interrupt()), None

    def _on_input_audio_buffer_clear(self, e: Event) -> tuple[list[Event], None] | Refusal:
        self.buffer.clear()
        self.buffer_start_ms = self.appended_ms
        self._in_conv = None  # the resampler's held-back samples are cleared audio too
        self.turns.interrupt()  # a turn in progress lost its audio: speech starts a new one
        return [ev("input_audio_buffer.cleared")], None

    def _on_output_audio_buffer_clear(self, e: Event) -> tuple[list[Event], None] | Refusal:
        return Refusal(
            "invalid_value",
            "output_audio_buffer.clear is only supported for WebRTC and SIP.",
            "type",
        )

    def _on_conversation_item_create(self, e: Event) -> tuple[list[Event], None] | Refusal:
        item = e["item"]
        audio: bytes | None = None
        if item["type"] == "message":
            for c in item.get("content") or []:
                if c.get("type") == "input_audio" and isinstance(c.get("audio"), str):
                    try:
                        clip = base64.b64decode(c["audio"], validate=True)
                    except ValueError:
                        return Refusal(
                            "invalid_value",
                            "Invalid 'item.content.audio': not valid base64.",
                            "item.content.audio",
                        )
                    # Like appended audio, it is in the session's input format.
                    audio = self.decode(clip, self.input_format)
        created = self.conversation.create(item, e.get("previous_item_id"), audio)
        if isinstance(created, Refusal):
            return created
        added, prev = created
        public = public_item(added)
        return [
            ev("conversation.item.added", previous_item_id=prev, item=public),
            ev("conversation.item.done", previous_item_id=prev, item=public),
        ], None

    def _on_conversation_item_retrieve(self, e: Event) -> tuple[list[Event], None] | Refusal:
        item = self.conversation.get(str(e.get("item_id")))
        if isinstance(item, Refusal):
            return item
        full = public_item(item)
        if "_audio" in item and full.get("content"):
            fmt = self.input_format if item.get("role") == "user" else self.output_format
            audio = self.encode(item["_audio"], fmt)
            full["content"][0]["audio"] = base64.b64encode(audio).decode()
        return [ev("conversation.item.retrieved", item=full)], None

    def _on_conversation_item_delete(self, e: Event) -> tuple[list[Event], None] | Refusal:
        item = self.conversation.delete(str(e.get("item_id")))
        if isinstance(item, Refusal):
            return item
        return [ev("conversation.item.deleted", item_id=item["id"])], None

    def _on_conversation_item_truncate(self, e: Event) -> tuple[list[Event], None] | Refusal:
        item_id, index, end = str(e["item_id"]), e["content_index"], e["audio_end_ms"]
        refused = self.conversation.truncate(item_id, index, end)
        if refused is not None:
            return refused
        return [
            ev(
                "conversation.item.truncated",
                item_id=item_id,
                content_index=index,
                audio_end_ms=end,
            )
        ], None

    def _on_response_create(self, e: Event) -> tuple[list[Event], ResponsePlan | None] | Refusal:
        if self.transcription:
            return Refusal(
                "invalid_value",
                "response.create is not supported in transcription sessions.",
                "type",
            )
        params: dict[str, Any] = e.get("response") or {}
        conversation = params.get("conversation", "auto") != "none"
        # A cancelled response is over for the client (its response.done is on the way, and
        # engine.server sends it before the next response starts).
        if conversation and self.active is not None and not self.active.cancelled:
            rid = self.active.response["id"]
            return Refusal(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {rid}. Wait until "
                "the response is finished before creating a new one.",
            )
        unknown = self.conversation.unknown_reference(params.get("input") or [])
        if unknown is not None:
            return unknown
        return [], self.plan_response(params, conversation)

    def plan_response(self, params: dict[str, Any], conversation: bool = True) -> ResponsePlan:
        modalities = list(params.get("output_modalities") or self.session["output_modalities"])
        out_cfg = self.session["audio"]["output"]
        # A voice is a name or a custom voice's {"id": ...}; the response shows it as given.
        shown = ((params.get("audio") or {}).get("output") or {}).get("voice") or out_cfg.get(
            "voice"
        )
        shown = shown or "alloy"
        voice = shown["id"] if isinstance(shown, dict) else str(shown)
        response = {
            "object": "realtime.response",
            "id": new_id("resp"),
            "status": "in_progress",
            "status_details": None,
            "output": [],
            "conversation_id": self.conversation.id if conversation else None,
            "output_modalities": modalities,
            "max_output_tokens": params.get("max_output_tokens", self.session["max_output_tokens"]),
            "audio": {"output": {"format": dict(out_cfg["format"]), "voice": shown}},
            "usage": None,
            "metadata": params.get("metadata"),
        }
        inp = params.get("input")
        items = (
            [public_item(i) for i in self.items] if inp is None else self.conversation.resolve(inp)
        )
        limit = response["max_output_tokens"]
        plan = ResponsePlan(
            response=response,
            modalities=modalities,
            instructions=str(params.get("instructions") or self.session.get("instructions") or ""),
            voice=voice,
            conversation=conversation,
            input_items=items,
            tools=list(params.get("tools") or self.session.get("tools") or []),
            tool_choice=params.get("tool_choice", self.session.get("tool_choice", "auto")),
            max_output_tokens=limit if isinstance(limit, int) else None,
        )
        if conversation:
            self.active = plan
            self.turns.disarm()  # armed again when this response is over
        self.running[response["id"]] = plan
        return plan

    def finished(self, plan: ResponsePlan) -> None:
        """``plan`` is sending its ``response.done``: the idle timeout counts from when its
        audio will have played out (``engine.turns``)."""
        self._drop(plan)
        if plan.conversation:
            self.turns.responded(self.appended_ms + plan.audio_out_ms)

    def _drop(self, plan: ResponsePlan) -> None:
        self.running.pop(plan.response["id"], None)
        if self.active is plan:
            self.active = None

    def _on_response_cancel(self, e: Event) -> tuple[list[Event], None] | Refusal:
        # With an id, any running response (out-of-band too); without, the conversation's.
        rid = e.get("response_id")
        plan = self.running.get(rid) if rid else self.active
        if plan is None or plan.cancelled:
            return Refusal(
                "response_cancel_not_active", "Cancellation failed: no active response found"
            )
        plan.cancelled = True
        plan.cancel_reason = "client_cancelled"
        return [], None

    def input_usage(self, plan: ResponsePlan) -> tuple[int, int]:
        """(text, audio) input tokens: the instructions plus the whole conversation, re-read."""
        items = self.conversation.items if plan.conversation else plan.input_items
        text, audio = self.conversation.input_tokens(items)
        return count_tokens(plan.instructions) + text, audio
