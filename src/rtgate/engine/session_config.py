"""The local engine's GA session object: its defaults, and what a ``session.update`` may change.

Pure functions over plain dicts. Every field of an update has been checked against the GA event
table (``protocol.client_schema``: unknown fields, types, formats, ``max_output_tokens``,
eagerness...) before it gets here; what is left are the rules of this session, each a
``Refusal`` that ``EngineSession`` sends as an ``error`` event with the client's ``event_id``
(docs/protocol.md 5.3, 8.3), nothing of the update applied:

1. ``session.type`` is this session's type (``invalid_value``, in the words OpenAI uses);
2. the voice cannot change once the session has produced audio (docs/protocol.md 2.5, 5.9).
The model is fixed for the session: a different one is ignored, as OpenAI does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rtgate.engine.turns import default_server_vad
from rtgate.protocol import session_fields
from rtgate.protocol.ids import new_id

DEFAULT_INSTRUCTIONS = "You are a helpful, witty, and friendly AI running locally inside rtgate."


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a client event is refused: the ``error`` event's code, message and param."""

    code: str | None
    message: str
    param: str | None = None


def default_turn_detection() -> dict[str, Any]:
    return default_server_vad()


def default_session(model: str, transcription: bool, expires_at: int) -> dict[str, Any]:
    """The session ``session.created`` shows (docs/protocol.md 2.5, the GA wire defaults)."""
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
                    # The product page's URL alone must transcribe (docs/protocol.md 2.5).
                    "transcription": {"model": session_fields.DEFAULT_TRANSCRIPTION_MODEL},
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


def check_update(
    sess: dict[str, Any], current: dict[str, Any], *, transcription: bool, audio_produced: bool
) -> dict[str, Any] | Refusal:
    """The part of a well-formed ``session.update``'s ``session`` to merge into ``current``
    (its fields were checked against the GA event table already), or a refusal."""
    stype = sess["type"]
    want = "transcription" if transcription else "realtime"
    if stype != want:
        return Refusal(
            "invalid_value",
            f"Passing a {stype} session update event to a {want} session is not allowed.",
            "session.type",
        )
    out = _object(_object(sess.get("audio")).get("output"))
    voice = out.get("voice")
    if (
        voice is not None
        and audio_produced
        and voice != (current["audio"].get("output") or {}).get("voice")
    ):
        # The code and wording OpenAI sends (openai/openai-python#2607); param is null there.
        return Refusal(
            "cannot_update_voice",
            "Cannot update a conversation's voice if assistant audio is present.",
        )
    return {k: v for k, v in sess.items() if k != "type" and k != "model"}


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def format_type(fmt: Any) -> str:
    if isinstance(fmt, dict):
        return str(fmt.get("type") or "audio/pcm")
    return str(fmt or "audio/pcm")
