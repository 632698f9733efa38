"""What was said in a session, as text: for keys that keep transcripts (never audio).

Fed the same frames as the relay, only when the key's policy asks for it, so sessions that
keep nothing pay nothing. Entries:

* ``user`` / ``text``: a ``conversation.item.create`` message with ``input_text`` parts;
* ``user`` / ``transcript``: ``conversation.item.input_audio_transcription.completed``;
* ``assistant`` / ``transcript`` or ``text``: ``response.output_audio_transcript.done``,
  ``response.output_text.done``;
* ``assistant`` / ``function_call``: ``response.function_call_arguments.done`` (name, arguments);
* ``tool`` / ``function_call_output``: a client ``conversation.item.create`` of that type;
* ``usage``: each ``response.done``'s usage block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

UPSTREAM_MARKS = (
    '"conversation.item.input_audio_transcription.completed"',
    '"response.output_audio_transcript.done"',
    '"response.output_text.done"',
    '"response.function_call_arguments.done"',
    '"response.done"',
)
CLIENT_MARK = '"conversation.item.create"'


#: The longest item id a transcript line keeps (the column's width, store/schema.py).
ITEM_ID_MAX = 100


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    session_id: str
    key_id: str
    seq: int
    created_at: float
    role: str
    kind: str
    text: str
    item_id: str | None = None
    data: str | None = None


class TranscriptRecorder:
    def __init__(self, session_id: str, key_id: str) -> None:
        self.session_id = session_id
        self.key_id = key_id
        self._seq = 0
        self.pending: list[TranscriptEntry] = []

    def drain(self) -> list[TranscriptEntry]:
        out, self.pending = self.pending, []
        return out

    def _add(
        self, now: float, role: str, kind: str, text: str, item_id: Any = None, data: Any = None
    ) -> None:
        self._seq += 1
        self.pending.append(
            TranscriptEntry(
                self.session_id,
                self.key_id,
                self._seq,
                now,
                role,
                kind,
                text,
                # A client names its own items: one longer than the column (VARCHAR(100),
                # store/schema.py) would have PostgreSQL refuse the line; the text is kept.
                item_id if isinstance(item_id, str) and len(item_id) <= ITEM_ID_MAX else None,
                orjson.dumps(data).decode() if data is not None else None,
            )
        )

    def on_upstream(self, data: str, now: float) -> None:
        if data.startswith('{"type":"response.output_audio.delta"'):
            return
        if not any(m in data for m in UPSTREAM_MARKS):
            return
        event = _parse(data)
        if event is not None:
            self.on_upstream_event(event, now)

    def on_upstream_event(self, event: dict[str, Any], now: float) -> None:
        """``on_upstream`` for a frame parsed already (by the relay core, once)."""
        t = event.get("type")
        if t == "conversation.item.input_audio_transcription.completed":
            self._add(
                now, "user", "transcript", str(event.get("transcript") or ""), event.get("item_id")
            )
        elif t == "response.output_audio_transcript.done":
            self._add(
                now,
                "assistant",
                "transcript",
                str(event.get("transcript") or ""),
                event.get("item_id"),
            )
        elif t == "response.output_text.done":
            self._add(now, "assistant", "text", str(event.get("text") or ""), event.get("item_id"))
        elif t == "response.function_call_arguments.done":
            self._add(
                now,
                "assistant",
                "function_call",
                str(event.get("name") or ""),
                event.get("item_id"),
                {"call_id": event.get("call_id"), "arguments": event.get("arguments")},
            )
        elif t == "response.done":
            resp = event.get("response") if isinstance(event.get("response"), dict) else {}
            assert isinstance(resp, dict)
            if resp.get("usage") is not None:
                self._add(
                    now,
                    "usage",
                    "response",
                    str(resp.get("status") or ""),
                    resp.get("id"),
                    resp.get("usage"),
                )

    def on_client(self, data: str, now: float) -> None:
        if CLIENT_MARK not in data:
            return
        event = _parse(data)
        if event is not None:
            self.on_client_event(event, now)

    def on_client_event(self, event: dict[str, Any], now: float) -> None:
        """``on_client`` for a frame parsed already (by the relay core, once)."""
        if event.get("type") != "conversation.item.create":
            return
        item = event.get("item")
        if not isinstance(item, dict):
            return
        if item.get("type") == "function_call_output":
            self._add(
                now,
                "tool",
                "function_call_output",
                str(item.get("output") or ""),
                item.get("id"),
                {"call_id": item.get("call_id")},
            )
        elif item.get("type") == "message":
            texts = [
                str(c.get("text") or "")
                for c in item.get("content") or []
                if isinstance(c, dict) and c.get("type") == "input_text"
            ]
            if texts:
                self._add(
                    now, str(item.get("role") or "user"), "text", " ".join(texts), item.get("id")
                )


def _parse(data: str) -> dict[str, Any] | None:
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None
