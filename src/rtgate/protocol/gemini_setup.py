"""An OpenAI Realtime session (GA shape) as Gemini Live's one ``setup`` message.

Gemini fixes a connection's configuration in its first message, ``setup``, and closes a second
one with 1007 (docs/protocol-gemini.md 3). The translator (``protocol/gemini.py``) therefore keeps
the client's session as OpenAI describes it (``session.created`` / ``session.updated`` show it), and
builds ``setup`` from it once, when the first turn needs the model. What maps (the fields:
docs/protocol-gemini.md 3; the voices: 8):

==========================================  ================================================
OpenAI session field                        Gemini ``setup`` field
==========================================  ================================================
(route)                                     ``model``: ``models/<upstream_model>``
``instructions``                            ``systemInstruction.parts[0].text``
``output_modalities`` ``["audio"|"text"]``  ``generationConfig.responseModalities``
``max_output_tokens`` (a number)            ``generationConfig.maxOutputTokens``
``audio.output.voice``                      ``generationConfig.speechConfig`` (OpenAI names
                                            mapped as LiteLLM does; other names as given)
``tools`` (``type: function``)              ``tools[0].functionDeclarations``, JSON Schema
                                            types upper-cased (Gemini's OpenAPI subset)
``audio.input.transcription`` not null      ``inputAudioTranscription: {}``
audio output                                ``outputAudioTranscription: {}`` (OpenAI always
                                            sends the output transcript)
``audio.input.turn_detection``              ``realtimeInputConfig.automaticActivityDetection``
                                            (null: ``disabled``, manual turns)
(always)                                    ``sessionResumption: {transparent: true}`` (for
                                            ``goAway``, protocol-gemini.md 10, item 1) and
                                            ``contextWindowCompression.slidingWindow`` (audio
                                            sessions end at 15 min without it, protocol-gemini.md 6)
==========================================  ================================================

Not translated (no Gemini equivalent): ``tool_choice``, ``audio.input.noise_reduction``,
``audio.output.speed``, ``tracing``, ``prompt``, ``include``, ``truncation``, and
``turn_detection``'s ``threshold``/``eagerness``/``idle_timeout_ms``/``create_response``
(Gemini always answers a detected turn). Audio formats are the gateway's own business: it
converts them (``GeminiTranslator``), so they never reach ``setup``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from rtgate.protocol.session_fields import merge

#: Gemini's native input rate (docs/protocol-gemini.md 5); its output is 24 kHz like OpenAI's.
GEMINI_INPUT_RATE = 16000
GEMINI_INPUT_MIME = f"audio/pcm;rate={GEMINI_INPUT_RATE}"

#: OpenAI's voices to Gemini's prebuilt ones, as LiteLLM maps them (docs/protocol-gemini.md 8). A
#: voice not named here is sent as it is: a Gemini voice name (``Kore``) works directly.
VOICES = {
    "alloy": "Zephyr",
    "ash": "Charon",
    "ballad": "Fenrir",
    "cedar": "Charon",
    "coral": "Aoede",
    "echo": "Puck",
    "marin": "Aoede",
    "sage": "Kore",
    "shimmer": "Leda",
    "verse": "Orus",
}

#: JSON Schema keys Gemini's schema subset refuses; dropped from tool parameters.
_SCHEMA_DROPPED = frozenset({"$schema", "additionalProperties", "strict"})


def model_path(model: str) -> str:
    """The model as Gemini names it in ``setup.model`` (``models/NAME``, protocol-gemini.md 1); a
    name that has a path already (``models/...``, Vertex's ``projects/...``) is kept."""
    return model if "/" in model else f"models/{model}"


def default_session(model: str, session_id: str) -> dict[str, Any]:
    """The session ``session.created`` shows before any update: OpenAI's GA defaults
    (docs/protocol.md 2.5) as far as a Gemini session honours them."""
    fmt = {"type": "audio/pcm", "rate": 24000}
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "audio": {
            "input": {
                "format": dict(fmt),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 500,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": dict(fmt), "voice": "marin", "speed": 1.0},
        },
    }


def updated(session: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``session`` with ``update`` applied (omitted fields left alone, docs/protocol.md 2.5);
    the read-only fields (``id``, ``object``, ``model``, ``type``) keep their values."""
    out = copy.deepcopy(dict(session))
    merge(out, {k: v for k, v in update.items() if k not in ("id", "object", "model", "type")})
    return out


def _section(session: Mapping[str, Any], *path: str) -> Mapping[str, Any]:
    cur: Any = session
    for key in path:
        cur = cur.get(key) if isinstance(cur, Mapping) else None
    return cur if isinstance(cur, Mapping) else {}


def manual_turns(session: Mapping[str, Any]) -> bool:
    """Whether the client ends its own turns (``turn_detection: null``): Gemini then wants
    ``activityStart``/``activityEnd`` around speech (docs/protocol-gemini.md 3)."""
    inp = _section(session, "audio", "input")
    return "turn_detection" in inp and inp["turn_detection"] is None


def output_modality(session: Mapping[str, Any]) -> str:
    mods = session.get("output_modalities")
    return "text" if isinstance(mods, list) and mods == ["text"] else "audio"


def gemini_schema(schema: Any) -> Any:
    """A JSON Schema as Gemini's function-declaration schema: ``type`` names upper-cased
    (``object`` -> ``OBJECT``), keys Gemini refuses dropped, the rest kept."""
    if isinstance(schema, list):
        return [gemini_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k in _SCHEMA_DROPPED:
            continue
        if k == "type" and isinstance(v, str):
            out[k] = v.upper()
        elif k == "properties" and isinstance(v, dict):
            out[k] = {name: gemini_schema(p) for name, p in v.items()}
        else:
            out[k] = gemini_schema(v)
    return out


def _declarations(tools: Any) -> list[dict[str, Any]]:
    decls: list[dict[str, Any]] = []
    if not isinstance(tools, list):
        return decls
    for tool in tools:
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
            continue
        name = tool.get("name")
        if not isinstance(name, str):
            continue
        decl: dict[str, Any] = {"name": name}
        if isinstance(tool.get("description"), str):
            decl["description"] = tool["description"]
        if isinstance(tool.get("parameters"), Mapping):
            decl["parameters"] = gemini_schema(tool["parameters"])
        decls.append(decl)
    return decls


def _activity_detection(session: Mapping[str, Any]) -> dict[str, Any]:
    inp = _section(session, "audio", "input")
    td = inp.get("turn_detection")
    if "turn_detection" in inp and td is None:
        return {"disabled": True}
    out: dict[str, Any] = {"disabled": False}
    if isinstance(td, Mapping):
        for ours, theirs in (
            ("prefix_padding_ms", "prefixPaddingMs"),
            ("silence_duration_ms", "silenceDurationMs"),
        ):
            if isinstance(td.get(ours), int) and not isinstance(td.get(ours), bool):
                out[theirs] = td[ours]
    return out


def setup_message(session: Mapping[str, Any], upstream_model: str) -> dict[str, Any]:
    """The ``setup`` object for ``session`` (the value of the message's ``setup`` key), without
    a resumption handle (``with_handle`` adds one)."""
    modality = output_modality(session)
    gen: dict[str, Any] = {"responseModalities": [modality.upper()]}
    mot = session.get("max_output_tokens")
    if isinstance(mot, int) and not isinstance(mot, bool):
        gen["maxOutputTokens"] = mot
    voice = _section(session, "audio", "output").get("voice")
    if modality == "audio" and isinstance(voice, str) and voice:
        name = VOICES.get(voice, voice)
        gen["speechConfig"] = {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": name}}}
    setup: dict[str, Any] = {"model": model_path(upstream_model), "generationConfig": gen}
    instructions = session.get("instructions")
    if isinstance(instructions, str) and instructions:
        setup["systemInstruction"] = {"parts": [{"text": instructions}]}
    decls = _declarations(session.get("tools"))
    if decls:
        setup["tools"] = [{"functionDeclarations": decls}]
    setup["realtimeInputConfig"] = {"automaticActivityDetection": _activity_detection(session)}
    if _section(session, "audio", "input").get("transcription") is not None:
        setup["inputAudioTranscription"] = {}
    if modality == "audio":
        setup["outputAudioTranscription"] = {}
    setup["sessionResumption"] = {"transparent": True}
    setup["contextWindowCompression"] = {"slidingWindow": {}}
    return setup


def with_handle(setup: Mapping[str, Any], handle: str) -> dict[str, Any]:
    """``setup`` resuming the session a ``sessionResumptionUpdate.newHandle`` names
    (protocol-gemini.md 10)."""
    out = dict(setup)
    out["sessionResumption"] = {"handle": handle, "transparent": True}
    return out
