"""The local engine's protocol state, with no I/O: client events in, GA server events out.

Rules (protocol.md 2, 5.7, 5.9, 8.3):
* ``session.created`` first; then client events strictly in order.
* One active response per conversation; ``response.cancel`` ends it with status ``cancelled``.
* Audio is appended to a buffer whose clock is its byte count (48 bytes/ms for 24 kHz PCM16).
  With ``server_vad`` the buffer is cut into turns by the energy detector; with
  ``turn_detection: null`` only ``input_audio_buffer.commit`` does.
* Every response ends with ``response.done`` carrying usage (audio 10 tokens/s in, 20/s out;
  text estimated at 4 characters a token), then ``rate_limits.updated``.
Responses themselves are produced by ``engine.server``, which owns the brain and the voice.
"""

from __future__ import annotations

import base64
import copy
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from rtgate.engine.tokens import count_tokens
from rtgate.protocol.ids import new_id

Event = dict[str, Any]

PCM_BYTES_PER_MS = 48
MIN_COMMIT_MS = 100

_CLIENT_TYPES = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "output_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
)

DEFAULT_INSTRUCTIONS = "You are a helpful, witty, and friendly AI running locally inside rtgate."

_REALTIME_KEYS = frozenset(
    {
        "type",
        "audio",
        "include",
        "instructions",
        "max_output_tokens",
        "model",
        "output_modalities",
        "parallel_tool_calls",
        "prompt",
        "reasoning",
        "tool_choice",
        "tools",
        "tracing",
        "truncation",
    }
)
_TRANSCRIPTION_KEYS = frozenset({"type", "audio", "include"})


def ev(etype: str, **fields: Any) -> Event:
    return {"type": etype, "event_id": new_id("event"), **fields}


def obfuscation() -> str:
    return secrets.token_urlsafe(9)


def default_turn_detection() -> dict[str, Any]:
    return {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 200,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }


def default_session(model: str, transcription: bool, expires_at: int) -> dict[str, Any]:
    fmt = {"type": "audio/pcm", "rate": 24000}
    if transcription:
        return {
            "type": "transcription",
            "object": "realtime.transcription_session",
            "id": new_id("sess"),
            "expires_at": expires_at,
            "include": None,
            "audio": {
                "input": {
                    "format": fmt,
                    "noise_reduction": None,
                    "transcription": None,
                    "turn_detection": default_turn_detection(),
                }
            },
        }
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": new_id("sess"),
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "prompt": None,
        "include": None,
        "truncation": "auto",
        "expires_at": expires_at,
        "audio": {
            "input": {
                "format": fmt,
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": default_turn_detection(),
            },
            "output": {"format": dict(fmt), "voice": "alloy", "speed": 1.0},
        },
    }


_WHOLE = frozenset({"turn_detection", "format"})


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        # A turn detector or an audio format is replaced whole: a new format keeps no old rate.
        if isinstance(v, dict) and isinstance(dst.get(k), dict) and k not in _WHOLE:
            _merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


@dataclass
class ResponsePlan:
    """What ``engine.server`` needs to produce one response."""

    response: dict[str, Any]
    modalities: list[str]
    instructions: str
    voice: str
    conversation: bool
    input_items: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: Any = "auto"
    cancelled: bool = False
    cancel_reason: str = "client_cancelled"
    #: Output counted so far (text tokens, audio milliseconds).
    text_out: int = 0
    audio_out_ms: int = 0


@dataclass
class EngineSession:
    model: str
    transcription: bool = False
    max_seconds: int = 3600
    session: dict[str, Any] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)
    buffer: bytearray = field(default_factory=bytearray)
    #: Milliseconds of audio appended over the whole session (the VAD clock).
    appended_ms: float = 0.0
    buffer_start_ms: float = 0.0
    active: ResponsePlan | None = None
    #: Every response not yet done, out-of-band ones included, by id (for response.cancel).
    running: dict[str, ResponsePlan] = field(default_factory=dict)
    conversation_id: str = field(default_factory=lambda: new_id("conv"))
    #: Audio milliseconds produced per assistant item (for truncate).
    audio_ms_by_item: dict[str, int] = field(default_factory=dict)
    #: The last append, as 24 kHz PCM16 (what the VAD reads next).
    last_pcm: bytes = b""
    _in_conv: Any = None

    def __post_init__(self) -> None:
        self.session = default_session(
            self.model, self.transcription, int(time.time()) + self.max_seconds
        )

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

    def created(self) -> list[Event]:
        return [ev("session.created", session=copy.deepcopy(self.session))]

    def _last_item_id(self) -> str | None:
        return self.items[-1]["id"] if self.items else None

    def find(self, item_id: str) -> dict[str, Any] | None:
        for it in self.items:
            if it.get("id") == item_id:
                return it
        return None

    # -- dispatch -----------------------------------------------------------------------------
    def handle(self, event: Any) -> tuple[list[Event], ResponsePlan | None]:
        """Apply one client event; return the events to send and a response to start, if any."""
        eid = event.get("event_id") if isinstance(event, dict) else None
        eid = eid if isinstance(eid, str) else None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return [self.error("invalid_event", "The 'type' field is missing.", "type", eid)], None
        etype = event["type"]
        if etype not in _CLIENT_TYPES:
            return [
                self.error(
                    "invalid_value",
                    f"Invalid value: '{etype}'. Supported values are: "
                    + ", ".join(f"'{t}'" for t in _CLIENT_TYPES)
                    + ".",
                    "type",
                    eid,
                )
            ], None
        handler = getattr(self, "_on_" + etype.replace(".", "_"))
        result: tuple[list[Event], ResponsePlan | None] = handler(event, eid)
        return result

    def _on_session_update(self, e: Event, eid: str | None) -> tuple[list[Event], None]:
        sess = e.get("session")
        if not isinstance(sess, dict):
            return [
                self.error(
                    "missing_required_parameter",
                    "Missing required parameter: 'session'.",
                    "session",
                    eid,
                )
            ], None
        stype = sess.get("type")
        if stype is None:
            return [
                self.error(
                    "missing_required_parameter",
                    "Missing required parameter: 'session.type'.",
                    "session.type",
                    eid,
                )
            ], None
        want = "transcription" if self.transcription else "realtime"
        if stype != want:
            return [
                self.error(
                    "invalid_value",
                    f"Invalid value: '{stype}'. This session is a '{want}' session.",
                    "session.type",
                    eid,
                )
            ], None
        allowed = _TRANSCRIPTION_KEYS if self.transcription else _REALTIME_KEYS
        for k in sess:
            if k not in allowed:
                return [
                    self.error(
                        "unknown_parameter",
                        f"Unknown parameter: 'session.{k}'.",
                        f"session.{k}",
                        eid,
                    )
                ], None
        if "model" in sess and sess["model"] != self.session.get("model"):
            sess = {k: v for k, v in sess.items() if k != "model"}
        audio = sess.get("audio") if isinstance(sess.get("audio"), dict) else {}
        assert isinstance(audio, dict)
        for side in ("input", "output"):
            fmt = (
                (audio.get(side) or {}).get("format") if isinstance(audio.get(side), dict) else None
            )
            if fmt is not None and not _valid_format(fmt):
                return [
                    self.error(
                        "invalid_value",
                        f"Invalid value for 'session.audio.{side}.format': {fmt!r}. "
                        "Supported: audio/pcm (24000 Hz), audio/pcmu, audio/pcma.",
                        f"session.audio.{side}.format",
                        eid,
                    )
                ], None
        _merge(self.session, {k: v for k, v in sess.items() if k != "type"})
        td = self.session["audio"]["input"].get("turn_detection")
        if isinstance(td, dict) and td.get("type", "server_vad") == "server_vad":
            # Fields a client leaves out take their defaults (threshold 0.5, prefix 300 ms...).
            self.session["audio"]["input"]["turn_detection"] = {**default_turn_detection(), **td}
        self._in_conv = None
        return [ev("session.updated", session=copy.deepcopy(self.session))], None

    def append_audio(self, pcm: bytes) -> None:
        self.buffer.extend(pcm)
        self.appended_ms += len(pcm) / PCM_BYTES_PER_MS

    def _on_input_audio_buffer_append(self, e: Event, eid: str | None) -> tuple[list[Event], None]:
        audio = e.get("audio")
        if not isinstance(audio, str):
            return [
                self.error(
                    "missing_required_parameter",
                    "Missing required parameter: 'audio'.",
                    "audio",
                    eid,
                )
            ], None
        try:
            pcm = base64.b64decode(audio, validate=True)
        except ValueError:
            return [
                self.error("invalid_value", "Invalid 'audio': not valid base64.", "audio", eid)
            ], None
        self.last_pcm = self.decode_input(pcm)
        self.append_audio(self.last_pcm)
        return [], None

    @property
    def input_format(self) -> str:
        return _format_type(self.session["audio"]["input"].get("format"))

    @property
    def output_format(self) -> str:
        out = self.session["audio"].get("output") or {}
        return _format_type(out.get("format"))

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
        prev = self._last_item_id()
        item: dict[str, Any] = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        item["_audio"] = bytes(self.buffer)
        self.buffer.clear()
        self.buffer_start_ms = self.appended_ms
        self.items.append(item)
        public = public_item(item)
        out = [ev("input_audio_buffer.committed", previous_item_id=prev, item_id=item_id)]
        out.append(ev("conversation.item.added", previous_item_id=prev, item=public))
        out.append(ev("conversation.item.done", previous_item_id=prev, item=public))
        return out

    def _on_input_audio_buffer_commit(self, e: Event, eid: str | None) -> tuple[list[Event], None]:
        if self._in_conv is not None:
            # The resampler holds back a few ms; a manual commit ends the turn, so release them.
            self.append_audio(self._in_conv.flush())
            self._in_conv = None
        ms = len(self.buffer) / PCM_BYTES_PER_MS
        if ms < MIN_COMMIT_MS:
            return [
                self.error(
                    "input_audio_buffer_commit_empty",
                    "Error committing input audio buffer: buffer too small. Expected at least "
                    f"100ms of audio, but buffer only has {ms:.2f}ms of audio.",
                    None,
                    eid,
                )
            ], None
        return self.commit(), None

    def _on_input_audio_buffer_clear(self, e: Event, eid: str | None) -> tuple[list[Event], None]:
        self.buffer.clear()
        self.buffer_start_ms = self.appended_ms
        self._in_conv = None  # the resampler's held-back samples are cleared audio too
        return [ev("input_audio_buffer.cleared")], None

    def _on_output_audio_buffer_clear(self, e: Event, eid: str | None) -> tuple[list[Event], None]:
        return [
            self.error(
                "invalid_value",
                "output_audio_buffer.clear is only supported for WebRTC and SIP.",
                "type",
                eid,
            )
        ], None

    def _on_conversation_item_create(self, e: Event, eid: str | None) -> tuple[list[Event], None]:
        item = e.get("item")
        if not isinstance(item, dict) or "type" not in item:
            return [
                self.error(
                    "missing_required_parameter",
                    "Missing required parameter: 'item.type'.",
                    "item.type",
                    eid,
                )
            ], None
        prev_req = e.get("previous_item_id")
        item = copy.deepcopy(item)
        item.setdefault("id", new_id("item"))
        item["object"] = "realtime.item"
        item.setdefault("status", "completed")
        if item["type"] == "message":
            for c in item.get("content") or []:
                if c.get("type") == "input_audio" and isinstance(c.get("audio"), str):
                    try:
                        clip = base64.b64decode(c["audio"], validate=True)
                    except ValueError:
                        return [
                            self.error(
                                "invalid_value",
                                "Invalid 'item.content.audio': not valid base64.",
                                "item.content.audio",
                                eid,
                            )
                        ], None
                    # Like appended audio, it is in the session's input format.
                    item["_audio"] = self.decode(clip, self.input_format)
        if prev_req is None:
            prev = self._last_item_id()
            self.items.append(item)
        elif prev_req == "root":
            prev = None
            self.items.insert(0, item)
        else:
            idx = next((i for i, it in enumerate(self.items) if it["id"] == prev_req), None)
            if idx is None:
                return [
                    self.error(
                        "invalid_value",
                        f"Previous item with id '{prev_req}' not found.",
                        "previous_item_id",
                        eid,
                    )
                ], None
            prev = prev_req
            self.items.insert(idx + 1, item)
        public = public_item(item)
        return [
            ev("conversation.item.added", previous_item_id=prev, item=public),
            ev("conversation.item.done", previous_item_id=prev, item=public),
        ], None

    def _on_conversation_item_retrieve(self, e: Event, eid: str | None) -> tuple[list[Event], None]:
        item = self.find(str(e.get("item_id")))
        if item is None:
            return [
                self.error(
                    "invalid_value",
                    f"Item with item_id '{e.get('item_id')}' not found.",
                    "item_id",
                    eid,
                )
            ], None
        full = public_item(item)
        if "_audio" in item and full.get("content"):
            fmt = self.input_format if item.get("role") == "user" else self.output_format
            audio = self.encode(item["_audio"], fmt)
            full["content"][0]["audio"] = base64.b64encode(audio).decode()
        return [ev("conversation.item.retrieved", item=full)], None

    def _on_conversation_item_delete(self, e: Event, eid: str | None) -> tuple[list[Event], None]:
        item = self.find(str(e.get("item_id")))
        if item is None:
            return [
                self.error(
                    "invalid_value",
                    f"Item with item_id '{e.get('item_id')}' not found.",
                    "item_id",
                    eid,
                )
            ], None
        self.items.remove(item)
        return [ev("conversation.item.deleted", item_id=item["id"])], None

    def _on_conversation_item_truncate(self, e: Event, eid: str | None) -> tuple[list[Event], None]:
        item_id = str(e.get("item_id"))
        item = self.find(item_id)
        if item is None or item.get("role") != "assistant":
            return [
                self.error(
                    "invalid_value", "Only assistant messages can be truncated.", "item_id", eid
                )
            ], None
        end = e.get("audio_end_ms")
        produced = self.audio_ms_by_item.get(item_id, 0)
        if not isinstance(end, int) or end < 0 or end > produced:
            return [
                self.error(
                    "invalid_value",
                    f"audio_end_ms {end} exceeds the audio length ({produced} ms).",
                    "audio_end_ms",
                    eid,
                )
            ], None
        self.audio_ms_by_item[item_id] = end
        if "_audio" in item:
            item["_audio"] = item["_audio"][: end * PCM_BYTES_PER_MS]
        for c in item.get("content") or []:
            if c.get("type") == "output_audio" and produced:
                text = c.get("transcript") or ""
                c["transcript"] = text[: int(len(text) * end / produced)]
        return [
            ev(
                "conversation.item.truncated",
                item_id=item_id,
                content_index=int(e.get("content_index") or 0),
                audio_end_ms=end,
            )
        ], None

    def _on_response_create(
        self, e: Event, eid: str | None
    ) -> tuple[list[Event], ResponsePlan | None]:
        if self.transcription:
            return [
                self.error(
                    "invalid_value",
                    "response.create is not supported in transcription sessions.",
                    "type",
                    eid,
                )
            ], None
        params = e.get("response") if isinstance(e.get("response"), dict) else {}
        assert isinstance(params, dict)
        conversation = params.get("conversation", "auto") != "none"
        # A cancelled response is over for the client (its response.done is on the way, and
        # engine.server sends it before the next response starts).
        if conversation and self.active is not None and not self.active.cancelled:
            rid = self.active.response["id"]
            return [
                self.error(
                    "conversation_already_has_active_response",
                    f"Conversation already has an active response in progress: {rid}. Wait until "
                    "the response is finished before creating a new one.",
                    None,
                    eid,
                )
            ], None
        for ref in params.get("input") or []:
            if (
                isinstance(ref, dict)
                and ref.get("type") == "item_reference"
                and self.find(str(ref.get("id"))) is None
            ):
                return [
                    self.error(
                        "invalid_value",
                        f"Item with id '{ref.get('id')}' not found.",
                        "response.input",
                        eid,
                    )
                ], None
        return [], self.plan_response(params, conversation)

    def plan_response(self, params: dict[str, Any], conversation: bool = True) -> ResponsePlan:
        modalities = list(params.get("output_modalities") or self.session["output_modalities"])
        out_cfg = self.session["audio"]["output"]
        voice = str(
            ((params.get("audio") or {}).get("output") or {}).get("voice")
            or out_cfg.get("voice")
            or "alloy"
        )
        response = {
            "object": "realtime.response",
            "id": new_id("resp"),
            "status": "in_progress",
            "status_details": None,
            "output": [],
            "conversation_id": self.conversation_id if conversation else None,
            "output_modalities": modalities,
            "max_output_tokens": params.get("max_output_tokens", self.session["max_output_tokens"]),
            "audio": {"output": {"format": dict(out_cfg["format"]), "voice": voice}},
            "usage": None,
            "metadata": params.get("metadata"),
        }
        inp = params.get("input")
        items = [public_item(i) for i in self.items] if inp is None else [self._ref(i) for i in inp]
        plan = ResponsePlan(
            response=response,
            modalities=modalities,
            instructions=str(params.get("instructions") or self.session.get("instructions") or ""),
            voice=voice,
            conversation=conversation,
            input_items=items,
            tools=list(params.get("tools") or self.session.get("tools") or []),
            tool_choice=params.get("tool_choice", self.session.get("tool_choice", "auto")),
        )
        if conversation:
            self.active = plan
        self.running[response["id"]] = plan
        return plan

    def _ref(self, item: Any) -> Any:
        """An ``item_reference`` in a response's input, as the conversation item it names."""
        if isinstance(item, dict) and item.get("type") == "item_reference":
            return self.find(str(item.get("id"))) or item
        return item

    def finished(self, plan: ResponsePlan) -> None:
        """``plan`` has sent its ``response.done``."""
        self.running.pop(plan.response["id"], None)
        if self.active is plan:
            self.active = None

    def _on_response_cancel(self, e: Event, eid: str | None) -> tuple[list[Event], None]:
        # With an id, any running response (out-of-band too); without, the conversation's.
        rid = e.get("response_id")
        plan = self.running.get(rid) if rid else self.active
        if plan is None or plan.cancelled:
            return [
                self.error(
                    "response_cancel_not_active",
                    "Cancellation failed: no active response found",
                    None,
                    eid,
                )
            ], None
        plan.cancelled = True
        plan.cancel_reason = "client_cancelled"
        return [], None

    def input_usage(self, plan: ResponsePlan) -> tuple[int, int]:
        """(text, audio) input tokens: the instructions plus the whole conversation, re-read."""
        text = count_tokens(plan.instructions)
        audio = 0
        for it in self.items if plan.conversation else plan.input_items:
            for c in it.get("content") or []:
                t = c.get("type")
                if t in ("input_text", "output_text", "text"):
                    text += count_tokens(str(c.get("text") or ""))
                elif t == "input_audio":
                    ms = len(it.get("_audio", b"")) / PCM_BYTES_PER_MS
                    audio += int(ms // 100) + 1
                elif t == "output_audio":
                    audio += self.audio_ms_by_item.get(it["id"], 0) // 50
            if it.get("type") == "function_call_output":
                text += count_tokens(str(it.get("output") or ""))
        return text, audio


def _format_type(fmt: Any) -> str:
    if isinstance(fmt, dict):
        return str(fmt.get("type") or "audio/pcm")
    return str(fmt or "audio/pcm")


def _valid_format(fmt: Any) -> bool:
    # GA formats are objects (``{"type": "audio/pcmu"}``); a bare string is the beta shape.
    if not isinstance(fmt, dict):
        return False
    t, rate = fmt.get("type"), fmt.get("rate", 24000)
    if t == "audio/pcm":
        return rate in (None, 24000)
    return t in ("audio/pcmu", "audio/pcma")


def public_item(item: dict[str, Any]) -> dict[str, Any]:
    """An item as events show it: internal fields dropped, audio bytes never included."""
    out = {k: copy.deepcopy(v) for k, v in item.items() if not k.startswith("_")}
    for c in out.get("content") or []:
        c.pop("audio", None)
    return out
