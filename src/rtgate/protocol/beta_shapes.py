"""Beta <-> GA value shapes: audio formats, modalities, items, tool choice, voices, sessions,
responses and usage (docs/protocol.md 2.3, 2.4). Pure functions over parsed JSON values; the event
tables and the hot-path recognition that call them are in ``rtgate.protocol.beta``, whose
docstring gives the rules these follow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
# The item types the beta ``ConversationItem`` spells; GA adds ``mcp_list_tools``, ``mcp_call``,
# ``mcp_approval_request`` and ``mcp_approval_response``.
_BETA_ITEMS = frozenset({"message", "function_call", "function_call_output"})
# GA content parts a beta item cannot hold: beta had no image input.
_GA_ONLY_PARTS = frozenset({"input_image"})


def part_to_beta(part: Any) -> Any:
    """A GA assistant content part (``output_text``/``output_audio``) as beta spells it."""
    return _renamed_part(part, _PART_TO_BETA)


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


def is_beta_item(item: Any) -> bool:
    """False for an item whose ``type`` the beta union cannot spell (the MCP items)."""
    return not isinstance(item, dict) or item.get("type", "message") in _BETA_ITEMS


def item_to_beta(item: Any) -> Any:
    """GA content ``output_*`` -> beta ``text``/``audio``; ``input_image`` parts are left out."""
    if not isinstance(item, dict) or not isinstance(item.get("content"), list):
        return item
    content = [
        _renamed_part(p, _PART_TO_BETA)
        for p in item["content"]
        if not (isinstance(p, dict) and p.get("type") in _GA_ONLY_PARTS)
    ]
    return {**item, "content": content}


# -- tool choice and voice ------------------------------------------------------------------------
# Returned for a value the beta types cannot spell: its key is left out.
_OMIT: Any = object()
# Beta's ``tool_choice`` is a string: one of these, or the name of the function to call.
_TOOL_CHOICE_MODES = frozenset({"auto", "none", "required"})


def tool_choice_to_ga(choice: Any) -> Any:
    """A beta function name -> GA ``{"type":"function","name":...}``; the modes are the same."""
    if isinstance(choice, str) and choice not in _TOOL_CHOICE_MODES:
        return {"type": "function", "name": choice}
    return choice


def tool_choice_to_beta(choice: Any) -> Any:
    """GA ``{"type":"function","name":...}`` -> the name; an MCP choice -> ``_OMIT``."""
    if isinstance(choice, dict):
        name = choice.get("name")
        return name if choice.get("type") == "function" and isinstance(name, str) else _OMIT
    return choice


def voice_to_beta(voice: Any) -> Any:
    """A voice name is kept; a custom voice (``{"id": "voice_..."}``) -> ``_OMIT``."""
    return voice if voice is None or isinstance(voice, str) else _OMIT


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
# A GA transcription session has only ``audio.input`` and ``include`` (docs/protocol.md 2.5).
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
        elif key == "tool_choice":
            out[key] = tool_choice_to_ga(value)
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
        elif key == "tool_choice":
            out[key] = tool_choice_to_ga(value)
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
    "voice": ("voice", voice_to_beta),
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
                converted = convert(value)
                if converted is not _OMIT:
                    out[name] = converted


def param_to_beta(path: str) -> str:
    """A GA session's (or response's) member path as an error's ``param`` names it, after its
    root (``audio.output.voice``) -> the beta flat one's (``voice``), so a beta client is told
    about the field it sent; any other path as it is. A format is a plain string in beta
    (``pcm16``), so what GA nests under it names the format itself."""
    parts = path.split(".")
    if parts[0] == "audio" and len(parts) >= 3:
        names = {"input": _INPUT_TO_BETA, "output": _OUTPUT_TO_BETA}.get(parts[1], {})
        if parts[2] in names:
            name = names[parts[2]][0]
            return name if parts[2] == "format" else ".".join([name, *parts[3:]])
    elif parts[0] == "output_modalities":
        parts[0] = "modalities"
    elif parts[0] == "max_output_tokens":
        parts[0] = "max_response_output_tokens"
    return ".".join(parts)


def session_to_beta(session: Any) -> Any:
    """A GA session object -> the beta flat one (``type`` dropped, ``audio`` flattened, only
    function tools)."""
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
        elif key == "tool_choice":
            choice = tool_choice_to_beta(value)
            if choice is not _OMIT:
                out[key] = choice
        elif key == "tools" and isinstance(value, list):
            out[key] = [t for t in value if not isinstance(t, dict) or t.get("type") != "mcp"]
        elif key != "type":
            out[key] = value
    return out


def usage_to_beta(usage: Any) -> Any:
    """Beta usage has no ``image_tokens`` (docs/protocol.md 2.3); the rest is the same."""
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
                voice = voice_to_beta(output.get("voice"))
                if "voice" in output and voice is not _OMIT:
                    out["voice"] = voice
                if "format" in output:
                    out["output_audio_format"] = format_to_beta(output["format"])
        elif key == "output" and isinstance(value, list):
            out["output"] = [item_to_beta(i) for i in value if is_beta_item(i)]
        elif key == "usage":
            out["usage"] = usage_to_beta(value)
        else:
            out[key] = value
    return out
