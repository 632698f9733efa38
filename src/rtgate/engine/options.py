"""What a running engine is made of: its stages and its pacing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from rtgate.engine.brain import EchoBrain
from rtgate.engine.ports import Brain, Synthesizer, Transcriber
from rtgate.engine.tts import ToneSynthesizer
from rtgate.engine.vad import EnergyVad, VoiceActivityDetector


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
