"""The top-level fields of the session objects rtgate takes, for the places that refuse the ones
they do not know (OpenAI's ``unknown_parameter``).

GA (docs/protocol.md 2.5): ``RealtimeSessionCreateRequest`` and
``RealtimeTranscriptionSessionCreateRequest``. Beta (docs/protocol.md 3, the 3.57 SDK's
``beta/realtime/session_create_params.py`` and ``transcription_session_create_params.py``): the
flat sessions of ``POST /v1/realtime/sessions`` and ``/transcription_sessions``.
"""

from __future__ import annotations

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
