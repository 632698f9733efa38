"""What a running engine is made of: its stages and its pacing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from rtgate.engine.brain import EchoBrain
from rtgate.engine.ports import Brain, Synthesizer, Transcriber
from rtgate.engine.tts import ToneSynthesizer
from rtgate.engine.vad import EnergyVad, VoiceActivityDetector

#: Transcription models OpenAI bills by the minute: the engine reports their usage as a duration
#: (``{"type": "duration", "seconds": …}``, docs/protocol.md 4.2), the others' as tokens. Which
#: variant the newer ones send on Realtime is unconfirmed; duration is what their price implies.
DURATION_MODELS = frozenset(
    {"whisper-1", "gpt-transcribe", "gpt-live-transcribe", "gpt-realtime-whisper"}
)


def _nothing() -> None:
    return None


@dataclass
class EngineOptions:
    token: str
    brain: Brain = field(default_factory=EchoBrain)
    synthesizer: Synthesizer = field(default_factory=ToneSynthesizer)
    transcriber: Transcriber | None = None
    #: A new turn detector per session (they keep state); the model behind it is shared.
    vad_factory: Callable[[], VoiceActivityDetector] = EnergyVad
    #: Size of each ``response.output_audio.delta``; audio is sent faster than real time.
    audio_chunk_ms: int = 100
    max_session_seconds: int = 3600
    #: The largest client message it takes: the gateway's ``max_message_bytes``, which the
    #: gateway enforced already (its own 16 MiB refused a message of exactly that size, an
    #: operator's find).
    max_message_bytes: int = 16 * 1024 * 1024
    #: How often a Live session reports its cumulative usage (``session.usage.updated``);
    #: OpenAI's does about once a minute.
    live_usage_seconds: float = 60.0
    #: Load the models now rather than at the first session (``stack.build_engine``).
    preload: Callable[[], None] = _nothing
