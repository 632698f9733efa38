"""The session objects rtgate takes: their top-level fields, for the places that refuse the ones
they do not know (OpenAI's ``unknown_parameter``), how an update applies (``merge``), and the
transcription model a transcription session that names none transcribes with.

GA (docs/protocol.md 2.5): ``RealtimeSessionCreateRequest`` and
``RealtimeTranscriptionSessionCreateRequest``. Beta (docs/protocol.md 3, the 3.57 SDK's
``beta/realtime/session_create_params.py`` and ``transcription_session_create_params.py``): the
flat sessions of ``POST /v1/realtime/sessions`` and ``/transcription_sessions``. GPT-Live
(docs/protocol-live.md 2): ``SessionConfig``, a strict object.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

#: A transcription session that names no model transcribes with this one, on the local engine
#: and (sent by rtgate as the session opens) on a provider. OpenAI's realtime transcription
#: guide names it; it is the cheapest of OpenAI's transcription models (docs/engine-fidelity.md).
DEFAULT_TRANSCRIPTION_MODEL = "gpt-4o-mini-transcribe"

#: The transcription models a session may name (docs/protocol.md 2.5): the SDK's "current
#: options" (``AudioTranscriptionParam.model``, pinned by ``tests/test_client_schema.py``). The
#: SDK also takes any other string; the engine refuses one, as OpenAI refuses a value outside
#: a closed set, and the gateway takes one only when its catalog prices it (``Catalog``).
TRANSCRIPTION_MODELS = (
    "whisper-1",
    "gpt-transcribe",
    "gpt-live-transcribe",
    "gpt-4o-mini-transcribe",
    "gpt-4o-mini-transcribe-2025-12-15",
    "gpt-4o-transcribe",
    "gpt-4o-transcribe-diarize",
    "gpt-realtime-whisper",
)

#: GPT-Live's session objects, each strict (docs/protocol-live.md 2, 9), as the SDK types them
#: (``tests/test_live_core.py`` walks those types): ``session.start``'s (``SessionConfig``).
LIVE = frozenset(
    {
        "model",
        "audio",
        "client",
        "delegation",
        "input",
        "instructions",
        "safety_identifier",
        "store",
        "triggers",
    }
)
#: A WebRTC session's ``POST`` (``MediaSessionConfigParam``): no media format (WebRTC
#: negotiates it), a wake policy and an idle timeout.
LIVE_MEDIA = LIVE | {"idle_timeout_s", "wake_policy"}
#: A SIP call's ``accept`` (``session_accept_params.Session``): ``type`` (``"live"``), no
#: ``client``.
LIVE_ACCEPT = (LIVE - {"client"}) | {"type"}
#: The members of ``session.start`` itself (``SessionStartEventParam``).
LIVE_START = frozenset({"type", "event_id", "session"})
#: Of a session's ``POST`` (``LiveCreateParams``) and its ``transport``; of an ``accept``.
LIVE_CREATE = frozenset({"session", "transport"})
LIVE_TRANSPORT = frozenset({"type", "sdp"})
LIVE_ACCEPT_BODY = frozenset({"session"})

#: A turn detector or an audio format is replaced whole: a new format keeps no old rate.
_WHOLE = frozenset({"turn_detection", "format"})

REALTIME = frozenset(
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
TRANSCRIPTION = frozenset({"type", "audio", "include"})
#: A translation session (docs/protocol.md 10): its model and its audio (``output.language``,
#: ``input.transcription``, ``input.noise_reduction``); no instructions, tools or responses.
TRANSLATION = frozenset({"type", "audio", "model"})

_BETA_COMMON = frozenset(
    {
        "client_secret",
        "include",
        "input_audio_format",
        "input_audio_noise_reduction",
        "input_audio_transcription",
        "modalities",
        "turn_detection",
    }
)
BETA_REALTIME = _BETA_COMMON | {
    "instructions",
    "max_response_output_tokens",
    "model",
    "output_audio_format",
    "speed",
    "temperature",
    "tool_choice",
    "tools",
    "tracing",
    "voice",
}
#: ``model`` too: the product page's ``{"model": "gpt-4o-mini-transcribe"}`` names the
#: transcription model (``client_secrets.with_transcription_model``).
BETA_TRANSCRIPTION = _BETA_COMMON | {"model"}


def merge(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    """Apply a session update to ``dst``: omitted fields are left alone (docs/protocol.md 2.5)."""
    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict) and k not in _WHOLE:
            merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


def chooses_transcription(session: Mapping[str, Any]) -> bool:
    """Whether a GA session (or update) says how its input is transcribed, null included."""
    audio = session.get("audio")
    inp = audio.get("input") if isinstance(audio, Mapping) else None
    return isinstance(inp, Mapping) and "transcription" in inp


def transcription_models(session: Mapping[str, Any]) -> list[str]:
    """The transcription models a session (or an update) names: GA
    ``audio.input.transcription.model``, then beta ``input_audio_transcription.model`` (a
    client may send both; each must pass a key's check)."""
    audio = session.get("audio")
    inp = audio.get("input") if isinstance(audio, Mapping) else None
    found = []
    for tr in (
        inp.get("transcription") if isinstance(inp, Mapping) else None,
        session.get("input_audio_transcription"),
    ):
        model = tr.get("model") if isinstance(tr, Mapping) else None
        if isinstance(model, str):
            found.append(model)
    return found


def transcription_model(session: Mapping[str, Any]) -> str | None:
    """The transcription model a session names (``transcription_models``' first)."""
    return next(iter(transcription_models(session)), None)


def applicable(defaults: Mapping[str, Any], transcription: bool) -> dict[str, Any]:
    """A key's session defaults (fields of either session type) as far as a session of this
    type has them: a transcription session has only ``include`` and ``audio.input``."""
    if not transcription:
        return dict(defaults)
    out: dict[str, Any] = {k: v for k, v in defaults.items() if k == "include"}
    audio = defaults.get("audio")
    if isinstance(audio, Mapping) and "input" in audio:
        out["audio"] = {"input": audio["input"]}
    return out
