"""Serve legacy beta clients (``OpenAI-Beta: realtime=v1``) from a GA upstream (protocol.md 2.4).

OpenAI removed the beta event shapes in 2026-05 (protocol.md 0, fact 1), but old SDKs still send
the header. The gateway translates instead of refusing them: beta client events become GA ones on
the way up, GA server events become beta ones on the way down. Pure: strings in, strings out.

Rules:

* Only frames whose shape differs are rewritten; every other frame (including a parsed one whose
  translation came out equal) is returned as the very same string, so it reaches the other side
  byte for byte (STYLE.md habit 1).
* Frames are recognised cheaply: a prefix for the frequent deltas (renamed by string surgery, no
  parse), else a scan for the quoted names of the events that change. Only a frame that matches
  is parsed, and its parsed ``type`` decides.
* Downstream, ``conversation.item.done`` has no beta counterpart (beta's single
  ``conversation.item.created`` is GA's ``conversation.item.added``), so it is dropped.
* GA-only fields with no beta spelling (``prompt``, ``truncation``, ``reasoning``...) are left in
  place (beta clients ignore unknown fields); beta-only ones with no GA spelling
  (``temperature``, ``client_secret``) are dropped on the way up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

Event = dict[str, Any]

# -- audio formats and modalities -----------------------------------------------------------------
_FORMAT_TO_GA: dict[str, dict[str, Any]] = {
    "pcm16": {"type": "audio/pcm", "rate": 24000},
    "g711_ulaw": {"type": "audio/pcmu"},
    "g711_alaw": {"type": "audio/pcma"},
}
_FORMAT_TO_BETA = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}


def format_to_ga(fmt: Any) -> Any:
    """``"pcm16"`` -> ``{"type":"audio/pcm","rate":24000}``; anything unknown is kept."""
    if isinstance(fmt, str) and fmt in _FORMAT_TO_GA:
        return dict(_FORMAT_TO_GA[fmt])
    return fmt


def format_to_beta(fmt: Any) -> Any:
    if isinstance(fmt, dict) and isinstance(fmt.get("type"), str):
        return _FORMAT_TO_BETA.get(fmt["type"], fmt)
    return fmt


def modalities_to_ga(modalities: Any) -> Any:
    """GA takes one output modality: audio (which carries its transcript) or text."""
    if isinstance(modalities, list):
        return ["audio"] if "audio" in modalities else ["text"]
    return modalities


def modalities_to_beta(modalities: Any) -> Any:
    """Beta's audio always came with text: ``["audio"]`` -> ``["text","audio"]``."""
    if isinstance(modalities, list):
        return ["text", "audio"] if "audio" in modalities else ["text"]
    return modalities


# -- conversation items ---------------------------------------------------------------------------
_ASSISTANT_PART_TO_GA = {"text": "output_text", "audio": "output_audio"}
_INPUT_PART_TO_GA = {"text": "input_text"}
_PART_TO_BETA = {"output_text": "text", "output_audio": "audio"}


def _renamed_part(part: Any, names: dict[str, str]) -> Any:
    if isinstance(part, dict) and part.get("type") in names:
        return {**part, "type": names[part["type"]]}
    return part


def item_to_ga(item: Any) -> Any:
    """Beta message content ``text``/``audio`` -> GA ``output_*`` (assistant) or ``input_text``."""
    if not isinstance(item, dict) or not isinstance(item.get("content"), list):
        return item
    names = _ASSISTANT_PART_TO_GA if item.get("role") == "assistant" else _INPUT_PART_TO_GA
    return {**item, "content": [_renamed_part(p, names) for p in item["content"]]}


def item_to_beta(item: Any) -> Any:
    if not isinstance(item, dict) or not isinstance(item.get("content"), list):
        return item
    return {**item, "content": [_renamed_part(p, _PART_TO_BETA) for p in item["content"]]}


# -- sessions and responses, client -> upstream ---------------------------------------------------
# Beta flat session key -> (GA audio side, GA key); the value is converted by the function given.
_AUDIO_KEYS: dict[str, tuple[str, str, Callable[[Any], Any]]] = {
    "input_audio_format": ("input", "format", format_to_ga),
    "input_audio_transcription": ("input", "transcription", lambda v: v),
    "input_audio_noise_reduction": ("input", "noise_reduction", lambda v: v),
    "turn_detection": ("input", "turn_detection", lambda v: v),
    "output_audio_format": ("output", "format", format_to_ga),
    "voice": ("output", "voice", lambda v: v),
    "speed": ("output", "speed", lambda v: v),
}
_DROPPED_UP = frozenset({"temperature", "client_secret"})
# A GA transcription session has only ``audio.input`` and ``include`` (protocol.md 2.5).
_TRANSCRIPTION_KEEPS = frozenset({"include"})


def session_to_ga(session: Any, *, transcription: bool) -> Any:
    """A beta flat session (or transcription session) -> the GA nested ``session``."""
    if not isinstance(session, dict):
        return session
    out: Event = {"type": "transcription" if transcription else "realtime"}
    audio: dict[str, Event] = {}
    for key, value in session.items():
        if key in _AUDIO_KEYS:
            side, name, convert = _AUDIO_KEYS[key]
            if transcription and side == "output":
                continue
            audio.setdefault(side, {})[name] = convert(value)
        elif key in _DROPPED_UP or (
            transcription and key not in _TRANSCRIPTION_KEEPS and key != "audio"
        ):
            continue
        elif key == "modalities":
            out["output_modalities"] = modalities_to_ga(value)
        elif key == "max_response_output_tokens":
            out["max_output_tokens"] = value
        elif key == "audio" and isinstance(value, dict):
            # Already GA-shaped parts win over nothing, and merge with translated ones.
            for side, part in value.items():
                if isinstance(part, dict):
                    audio.setdefault(side, {}).update(part)
        elif key != "type":
            out[key] = value
    if audio:
        out["audio"] = audio
    return out


def response_to_ga(response: Any) -> Any:
    """Beta ``response.create.response`` (flat) -> GA (``output_modalities``, ``audio.output``)."""
    if not isinstance(response, dict):
        return response
    out: Event = {}
    output: Event = {}
    for key, value in response.items():
        if key == "modalities":
            out["output_modalities"] = modalities_to_ga(value)
        elif key == "voice":
            output["voice"] = value
        elif key == "output_audio_format":
            output["format"] = format_to_ga(value)
        elif key == "max_response_output_tokens":
            out["max_output_tokens"] = value
        elif key == "temperature":
            continue
        elif key == "input" and isinstance(value, list):
            out["input"] = [item_to_ga(i) for i in value]
        else:
            out[key] = value
    if output:
        audio = out.get("audio")
        merged = dict(audio) if isinstance(audio, dict) else {}
        prior = merged.get("output")
        merged["output"] = {**(prior if isinstance(prior, dict) else {}), **output}
        out["audio"] = merged
    return out


# -- sessions and responses, upstream -> client ---------------------------------------------------
_INPUT_TO_BETA = {
    "format": ("input_audio_format", format_to_beta),
    "transcription": ("input_audio_transcription", lambda v: v),
    "noise_reduction": ("input_audio_noise_reduction", lambda v: v),
    "turn_detection": ("turn_detection", lambda v: v),
}
_OUTPUT_TO_BETA = {
    "format": ("output_audio_format", format_to_beta),
    "voice": ("voice", lambda v: v),
    "speed": ("speed", lambda v: v),
}


def _flatten_audio(audio: Any, out: Event) -> None:
    if not isinstance(audio, dict):
        return
    for side, names in (("input", _INPUT_TO_BETA), ("output", _OUTPUT_TO_BETA)):
        part = audio.get(side)
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key in names:
                name, convert = names[key]
                out[name] = convert(value)


def session_to_beta(session: Any) -> Any:
    """A GA session object -> the beta flat one (``type`` dropped, ``audio`` flattened)."""
    if not isinstance(session, dict):
        return session
    out: Event = {}
    for key, value in session.items():
        if key == "audio":
            _flatten_audio(value, out)
        elif key == "output_modalities":
            out["modalities"] = modalities_to_beta(value)
        elif key == "max_output_tokens":
            out["max_response_output_tokens"] = value
        elif key != "type":
            out[key] = value
    return out


def usage_to_beta(usage: Any) -> Any:
    """Beta usage has no ``image_tokens`` (protocol.md 2.3); the rest is the same."""
    if not isinstance(usage, dict):
        return usage
    details = usage.get("input_token_details")
    if not isinstance(details, dict):
        return usage
    details = {k: v for k, v in details.items() if k != "image_tokens"}
    cached = details.get("cached_tokens_details")
    if isinstance(cached, dict):
        details["cached_tokens_details"] = {k: v for k, v in cached.items() if k != "image_tokens"}
    return {**usage, "input_token_details": details}


def response_to_beta(response: Any) -> Any:
    if not isinstance(response, dict):
        return response
    out: Event = {}
    for key, value in response.items():
        if key == "output_modalities":
            out["modalities"] = modalities_to_beta(value)
        elif key == "audio":
            if isinstance(value, dict) and isinstance(value.get("output"), dict):
                output = value["output"]
                if "voice" in output:
                    out["voice"] = output["voice"]
                if "format" in output:
                    out["output_audio_format"] = format_to_beta(output["format"])
        elif key == "output" and isinstance(value, list):
            out["output"] = [item_to_beta(i) for i in value]
        elif key == "usage":
            out["usage"] = usage_to_beta(value)
        else:
            out[key] = value
    return out


# -- whole events ---------------------------------------------------------------------------------
def _renamed(new_type: str) -> Callable[[Event], Event | None]:
    def rename(event: Event) -> Event:
        return {**event, "type": new_type}

    return rename


def _with_item(new_type: str | None = None) -> Callable[[Event], Event | None]:
    def convert(event: Event) -> Event:
        out = {**event, "item": item_to_beta(event.get("item"))}
        if new_type is not None:
            out["type"] = new_type
        return out

    return convert


def _part(event: Event) -> Event:
    return {**event, "part": _renamed_part(event.get("part"), _PART_TO_BETA)}


def _response(event: Event) -> Event:
    return {**event, "response": response_to_beta(event.get("response"))}


def _session(suffix: str) -> Callable[[Event], Event | None]:
    def convert(event: Event) -> Event:
        session = event.get("session")
        transcription = isinstance(session, dict) and session.get("type") == "transcription"
        out = {**event, "session": session_to_beta(session)}
        if transcription:
            out["type"] = "transcription_session." + suffix
        return out

    return convert


def _drop(event: Event) -> None:
    return None


# GA server event type -> its beta form (None: no beta counterpart, drop the frame).
_DOWN: dict[str, Callable[[Event], Event | None]] = {
    "response.output_audio.delta": _renamed("response.audio.delta"),
    "response.output_audio.done": _renamed("response.audio.done"),
    "response.output_audio_transcript.delta": _renamed("response.audio_transcript.delta"),
    "response.output_audio_transcript.done": _renamed("response.audio_transcript.done"),
    "response.output_text.delta": _renamed("response.text.delta"),
    "response.output_text.done": _renamed("response.text.done"),
    "conversation.item.added": _with_item("conversation.item.created"),
    "conversation.item.done": _drop,
    "conversation.item.retrieved": _with_item(),
    "response.output_item.added": _with_item(),
    "response.output_item.done": _with_item(),
    "response.content_part.added": _part,
    "response.content_part.done": _part,
    "response.created": _response,
    "response.done": _response,
    "session.created": _session("created"),
    "session.updated": _session("updated"),
}
# The frequent deltas: renamed by their prefix, never parsed.
_DOWN_PREFIXES = tuple(
    (f'{{"type":"{ga}"', f'{{"type":"response.{beta}"')
    for ga, beta in (
        ("response.output_audio.delta", "audio.delta"),
        ("response.output_audio_transcript.delta", "audio_transcript.delta"),
        ("response.output_text.delta", "text.delta"),
    )
)
# A frame holding none of these quoted names needs no change (names quoted inside JSON strings
# read ``\\"name\\"`` and do not match).
_DOWN_MARKS = (
    '"response.output_',
    '"response.content_part.',
    '"response.created"',
    '"response.done"',
    '"conversation.item.added"',
    '"conversation.item.done"',
    '"conversation.item.retrieved"',
    '"session.created"',
    '"session.updated"',
)


def _item_create(event: Event) -> Event:
    return {**event, "item": item_to_ga(event.get("item"))}


_UP_MARKS = (
    '"session.update"',
    '"transcription_session.update"',
    '"response.create"',
    '"conversation.item.create"',
)
_UP_SKIP = '{"type":"input_audio_buffer.append"'


class BetaTranslator:
    """Both directions of one beta client's session. ``transcription``: the client connected
    with ``?intent=transcription``, so its ``session.update`` configures a transcription
    session."""

    def __init__(self, *, transcription: bool = False) -> None:
        self.transcription = transcription

    def to_upstream(self, data: str) -> str:
        """A beta client frame -> the GA frame to send (``data`` itself when nothing differs)."""
        if data.startswith(_UP_SKIP) or not any(m in data for m in _UP_MARKS):
            return data
        event = _loads(data)
        if event is None:
            return data
        etype = event.get("type")
        if etype == "session.update":
            session = session_to_ga(event.get("session"), transcription=self.transcription)
            out = {**event, "session": session}
        elif etype == "transcription_session.update":
            out = {
                **event,
                "type": "session.update",
                "session": session_to_ga(event.get("session"), transcription=True),
            }
        elif etype == "response.create" and "response" in event:
            out = {**event, "response": response_to_ga(event["response"])}
        elif etype == "conversation.item.create":
            out = _item_create(event)
        else:
            return data
        # A user's input_text message, say, is already GA: keep its bytes.
        return data if out == event else orjson.dumps(out).decode()

    def to_client(self, data: str) -> str | None:
        """A GA server frame -> the beta frame to send (``data`` itself when nothing differs),
        or None when the event has no beta counterpart."""
        for ga, beta in _DOWN_PREFIXES:
            if data.startswith(ga):
                return beta + data[len(ga) :]
        if not any(m in data for m in _DOWN_MARKS):
            return data
        event = _loads(data)
        if event is None:
            return data
        etype = event.get("type")
        convert = _DOWN.get(etype) if isinstance(etype, str) else None
        if convert is None:
            return data
        out = convert(event)
        if out is None:
            return None
        # A function_call item, say, reads the same in both shapes: keep its bytes.
        return data if out == event else orjson.dumps(out).decode()


def _loads(data: str) -> Event | None:
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None
