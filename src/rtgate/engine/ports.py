"""The engine's stages as small ports; the adapters live in ``stt``, ``brain`` and ``tts``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rtgate.engine.brain import BrainOutput, BrainRequest


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    #: Seconds of audio transcribed (for duration usage).
    seconds: float


class Transcriber(Protocol):
    """Speech-to-text over 24 kHz PCM16 mono."""

    async def transcribe(self, pcm24k: bytes, model: str, language: str | None) -> Transcript: ...


class Brain(Protocol):
    """Produces the assistant's reply: text pieces as they come, and function calls."""

    def reply(self, request: BrainRequest) -> AsyncIterator[BrainOutput]: ...


class Synthesizer(Protocol):
    """Text-to-speech: 24 kHz PCM16 mono for one piece of text (a sentence)."""

    async def synthesize(self, text: str, voice: str) -> bytes: ...
