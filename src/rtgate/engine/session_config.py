"""The local engine's GA session object: its defaults, and what a ``session.update`` may change.

Pure functions over plain dicts. A refused update is a ``Refusal``, which ``EngineSession`` sends
as an ``error`` event with the client's ``event_id`` (protocol.md 5.3, 8.3); nothing of a
refused update is applied. Checked in this order:

1. ``session`` and ``session.type`` present (``missing_required_parameter``), the type this
   session has (``invalid_value``), no key its type does not know (``unknown_parameter``);
2. ``audio``, ``audio.input``, ``audio.output`` are objects, a turn detector an object or null
   (``invalid_type``); audio formats: ``audio/pcm`` at 24 kHz, ``audio/pcmu``, ``audio/pcma``
   (protocol.md 5.6);
3. ``max_output_tokens``: an integer 1-4096 or ``"inf"`` (protocol.md 2.1, 5.2);
4. ``semantic_vad`` eagerness: ``low``, ``medium``, ``high`` or ``auto``;
5. the voice: it cannot change once the session has produced audio (protocol.md 2.5, 5.9).
The model is fixed for the session: a different one is ignored, as OpenAI does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rtgate.engine.turns import EAGERNESS, default_server_vad
from rtgate.protocol import session_fields
from rtgate.protocol.ids import new_id

DEFAULT_INSTRUCTIONS = "You are a helpful, witty, and friendly AI running locally inside rtgate."
MAX_OUTPUT_TOKENS = 4096


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a client event is refused: the ``error`` event's code, message and param."""

    code: str | None
    message: str
    param: str | None = None


def default_turn_detection() -> dict[str, Any]:
    return default_server_vad()


def default_session(model: str, transcription: bool, expires_at: int) -> dict[str, Any]:
    """The session ``session.created`` shows (protocol.md 2.5, the GA wire defaults)."""
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
                    # The product page's URL alone must transcribe (protocol.md 2.5).
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
    sess: Any, current: dict[str, Any], *, transcription: bool, audio_produced: bool
) -> dict[str, Any] | Refusal:
    """The part of ``session.update``'s ``session`` to merge into ``current``, or a refusal."""
    if not isinstance(sess, dict):
        return Refusal(
            "missing_required_parameter", "Missing required parameter: 'session'.", "session"
        )
    stype = sess.get("type")
    if stype is None:
        return Refusal(
            "missing_required_parameter",
            "Missing required parameter: 'session.type'.",
            "session.type",
        )
    want = "transcription" if transcription else "realtime"
    if stype != want:
        return Refusal(
            "invalid_value",
            f"Invalid value: '{stype}'. This session is a '{want}' session.",
            "session.type",
        )
    allowed = session_fields.TRANSCRIPTION if transcription else session_fields.REALTIME
    for k in sess:
        if k not in allowed:
            return Refusal(
                "unknown_parameter", f"Unknown parameter: 'session.{k}'.", f"session.{k}"
            )
    shape = _shape_refusal(sess)
    if shape is not None:
        return shape
    audio = _object(sess.get("audio"))
    inp, out = _object(audio.get("input")), _object(audio.get("output"))
    for side, part in (("input", inp), ("output", out)):
        fmt = part.get("format")
        if fmt is not None and not valid_format(fmt):
            return Refusal(
                "invalid_value",
                f"Invalid value for 'session.audio.{side}.format': {fmt!r}. "
                "Supported: audio/pcm (24000 Hz), audio/pcmu, audio/pcma.",
                f"session.audio.{side}.format",
            )
    if "max_output_tokens" in sess:
        refused = check_max_output_tokens(sess["max_output_tokens"], "session.max_output_tokens")
        if refused is not None:
            return refused
    td = inp.get("turn_detection")
    if isinstance(td, dict) and td.get("type") == "semantic_vad":
        eagerness = td.get("eagerness")
        if eagerness is not None and eagerness not in EAGERNESS:
            return Refusal(
                "invalid_value",
                f"Invalid value: '{eagerness}'. Supported values are: "
                + ", ".join(f"'{v}'" for v in EAGERNESS)
                + ".",
                "session.audio.input.turn_detection.eagerness",
            )
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


def _shape_refusal(sess: dict[str, Any]) -> Refusal | None:
    """A refusal if ``audio``, its ``input`` or ``output``, or a turn detector (which may be
    null: none) is not an object; merged, it would break every later event."""
    checks: list[tuple[str, Any, bool]] = []
    if "audio" in sess:
        audio = sess["audio"]
        checks.append(("session.audio", audio, False))
        if isinstance(audio, dict):
            for side in ("input", "output"):
                if side in audio:
                    checks.append((f"session.audio.{side}", audio[side], False))
            inp = audio.get("input")
            if isinstance(inp, dict) and "turn_detection" in inp:
                td = inp["turn_detection"]
                checks.append(("session.audio.input.turn_detection", td, True))
    for param, value, nullable in checks:
        if isinstance(value, dict) or (nullable and value is None):
            continue
        return Refusal(
            "invalid_type",
            f"Invalid type for '{param}': expected an object, but got "
            f"{type(value).__name__} instead.",
            param,
        )
    return None


def check_max_output_tokens(value: Any, param: str) -> Refusal | None:
    """A refusal if ``value`` is not an integer 1-4096 or ``"inf"``, in the wording OpenAI
    uses to validate parameters."""
    if value == "inf":
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        return Refusal(
            "invalid_type",
            f"Invalid type for '{param}': expected an integer or 'inf', "
            f"but got {type(value).__name__} instead.",
            param,
        )
    if value < 1:
        return Refusal(
            "integer_below_min_value",
            f"Invalid '{param}': integer below minimum value. Expected a value >= 1, "
            f"but got {value} instead.",
            param,
        )
    if value > MAX_OUTPUT_TOKENS:
        return Refusal(
            "integer_above_max_value",
            f"Invalid '{param}': integer above maximum value. Expected a value <= "
            f"{MAX_OUTPUT_TOKENS}, but got {value} instead.",
            param,
        )
    return None


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def format_type(fmt: Any) -> str:
    if isinstance(fmt, dict):
        return str(fmt.get("type") or "audio/pcm")
    return str(fmt or "audio/pcm")


def valid_format(fmt: Any) -> bool:
    # GA formats are objects (``{"type": "audio/pcmu"}``); a bare string is the beta shape.
    if not isinstance(fmt, dict):
        return False
    t, rate = fmt.get("type"), fmt.get("rate", 24000)
    if t == "audio/pcm":
        return rate in (None, 24000)
    return t in ("audio/pcmu", "audio/pcma")
