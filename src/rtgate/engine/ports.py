"""The engine's stages as small ports, each with a trivial implementation beside the real ones."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    #: Seconds of audio transcribed (for duration usage).
    seconds: float


class Transcriber(Protocol):
    """Speech-to-text over 24 kHz PCM16 mono."""

    async def transcribe(self, pcm24k: bytes, model: str, language: str | None) -> Transcript: ...


class Brain(Protocol):
    """Produces the assistant's reply text from the conversation, streamed in pieces."""

    def reply(
        self, instructions: str, items: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]
    ) -> AsyncIterator[str]: ...


class Synthesizer(Protocol):
    """Text-to-speech: 24 kHz PCM16 mono for one piece of text."""

    async def synthesize(self, text: str, voice: str) -> bytes: ...


class EchoBrain:
    """Deterministic: repeats the last user text (or says how much audio it heard)."""

    async def reply(
        self, instructions: str, items: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]
    ) -> AsyncIterator[str]:
        text = "I am listening."
        for item in reversed(items):
            if item.get("type") == "message" and item.get("role") == "user":
                text = _user_text(item) or text
                break
        for word in text.split(" "):
            yield word + " "


def _user_text(item: dict[str, Any]) -> str:
    parts = []
    for c in item.get("content") or []:
        if c.get("type") == "input_text":
            parts.append(str(c.get("text") or ""))
        elif c.get("type") == "input_audio" and c.get("transcript"):
            parts.append(str(c["transcript"]))
    return " ".join(p for p in parts if p).strip()


class ToneSynthesizer:
    """A stand-in voice: a soft two-tone chime, 60 ms per character, capped at 4 s.

    It exists so the protocol path (audio deltas, usage, truncation) is exercised without a
    speech engine installed; the real synthesizers are separate adapters.
    """

    async def synthesize(self, text: str, voice: str) -> bytes:
        import math
        import struct

        ms = min(4000, 60 * len(text.strip()))
        n = 24 * ms
        freq = 440.0 if len(voice) % 2 else 523.25
        amp = 3000
        return struct.pack(
            f"<{n}h",
            *(int(amp * math.sin(2 * math.pi * freq * i / 24000)) for i in range(n)),
        )
