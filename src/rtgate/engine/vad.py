"""Turn detection with ``server_vad`` semantics over an energy detector.

Fed 24 kHz PCM16 in any chunk size, it looks at 20 ms windows. ``threshold`` (0..1) maps to an
RMS level; ``prefix_padding_ms`` moves ``audio_start_ms`` back; ``silence_duration_ms`` of quiet
ends the turn, and ``audio_end_ms`` includes that silence (docs/protocol.md 5.7). Times are offsets
from the first audio appended in the session.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from typing import Protocol

WINDOW_MS = 20
WINDOW_BYTES = 48 * WINDOW_MS


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    audio_end_ms: int


class VoiceActivityDetector(Protocol):
    """What the engine server needs from a ``server_vad`` turn detector (Silero or energy)."""

    def configure(
        self, threshold: float, prefix_padding_ms: int, silence_duration_ms: int
    ) -> None: ...

    @property
    def in_speech(self) -> bool: ...

    def feed(self, pcm: bytes, floor_ms: float = 0) -> list[SpeechStarted | SpeechStopped]:
        """Feed 24 kHz PCM16; return the turn edges crossed. ``floor_ms``: buffer start."""
        ...

    def end_turn(self) -> None:
        """Forget a turn in progress (the client committed it): the next speech starts anew."""
        ...


def rms(pcm: bytes) -> float:
    samples = array("h", pcm)
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples)) / 32768.0


class EnergyVad:
    def __init__(
        self, threshold: float = 0.5, prefix_padding_ms: int = 300, silence_duration_ms: int = 200
    ) -> None:
        self.configure(threshold, prefix_padding_ms, silence_duration_ms)
        self._pending = bytearray()
        self._clock_ms = 0
        self._in_speech = False
        self._last_voice_end_ms = 0

    def configure(self, threshold: float, prefix_padding_ms: int, silence_duration_ms: int) -> None:
        # 0.5 -> about -30 dBFS; the scale keeps 0..1 monotonic like Silero's probability.
        self.level = 0.002 + 0.056 * max(0.0, min(1.0, threshold))
        self.prefix_padding_ms = prefix_padding_ms
        self.silence_duration_ms = silence_duration_ms

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def reset_clock(self, ms: float) -> None:
        self._clock_ms = int(ms)

    def end_turn(self) -> None:
        self._in_speech = False

    def feed(self, pcm: bytes, floor_ms: float = 0) -> list[SpeechStarted | SpeechStopped]:
        """Feed audio; return the turn boundaries it crossed. ``floor_ms``: buffer start."""
        self._pending.extend(pcm)
        out: list[SpeechStarted | SpeechStopped] = []
        while len(self._pending) >= WINDOW_BYTES:
            window = bytes(self._pending[:WINDOW_BYTES])
            del self._pending[:WINDOW_BYTES]
            start = self._clock_ms
            self._clock_ms += WINDOW_MS
            voiced = rms(window) >= self.level
            if voiced:
                self._last_voice_end_ms = self._clock_ms
                if not self._in_speech:
                    self._in_speech = True
                    out.append(SpeechStarted(max(int(floor_ms), start - self.prefix_padding_ms)))
            elif self._in_speech and self._clock_ms - self._last_voice_end_ms >= (
                self.silence_duration_ms
            ):
                self._in_speech = False
                out.append(SpeechStopped(self._last_voice_end_ms + self.silence_duration_ms))
        return out
