"""Turn-taking, with no I/O: when a user turn starts and ends, and when the user stays silent.

Fed the 24 kHz PCM16 the client appends, on the session's audio clock (milliseconds of audio
appended since the session began, docs/protocol.md 5.7), ``TurnTaker`` says what happened;
``EngineSession`` turns that into events, commits and responses.

* ``server_vad``: ``threshold``, ``prefix_padding_ms`` and ``silence_duration_ms`` drive the
  detector as they are (defaults 0.5, 300 ms, 200 ms on the wire, docs/protocol.md 2.5).
* ``semantic_vad``: OpenAI ends the turn with a model that hears whether the user sounds finished,
  and waits at most 8 s (``low``), 4 s (``medium``, ``auto``) or 2 s (``high``) when they do not
  (the SDK's ``eagerness`` docstring). This engine has no such model, so eagerness picks the
  silence that ends a turn: a quarter of each documented maximum, 2000 / 1000 / 500 ms. A quarter,
  because every turn waits the whole silence (waiting the maximum would make each answer 2-8 s
  late); the documented 1:2:4 proportion holds, so ``low`` lets a user pause four times as long
  as ``high``; and even ``high`` waits longer than ``server_vad``'s 200 ms, since semantic turn
  detection exists not to cut users off in mid-thought pauses. Threshold and prefix padding,
  which ``semantic_vad`` has no fields for, keep ``server_vad``'s defaults.
* ``idle_timeout_ms`` (``server_vad`` only, as the SDK documents): armed when a response of the
  conversation ends, from the moment its audio will have finished playing: the audio clock at
  ``response.done`` plus the length of the audio the response produced (the SDK: "the
  ``response.done`` time plus audio playback duration"). When that much more audio has been
  appended with no speech started, the timeout fires once; the next response arms it again.
  Speech, a commit or a new response disarms it. Being on the audio clock, it needs the client
  to keep streaming (as a microphone or a phone line does), like the rest of turn detection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rtgate.engine.vad import SpeechStarted, VoiceActivityDetector
from rtgate.protocol.ids import new_id

#: End-of-turn silence per ``semantic_vad`` eagerness (see the module docstring for why).
SEMANTIC_SILENCE_MS = {"low": 2000, "medium": 1000, "auto": 1000, "high": 500}
VAD_TYPES = ("server_vad", "semantic_vad")


def default_server_vad() -> dict[str, Any]:
    return {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 200,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }


def default_semantic_vad() -> dict[str, Any]:
    return {
        "type": "semantic_vad",
        "eagerness": "auto",
        "create_response": True,
        "interrupt_response": True,
    }


def with_defaults(td: dict[str, Any]) -> dict[str, Any]:
    """A turn detector as the session shows it: the fields a client left out take defaults."""
    if td.get("type", "server_vad") == "server_vad":
        return {**default_server_vad(), **td}
    if td.get("type") == "semantic_vad":
        return {**default_semantic_vad(), **td}
    return td


def detector_settings(td: dict[str, Any]) -> tuple[float, int, int]:
    """(threshold, prefix_padding_ms, silence_duration_ms) for the voice activity detector."""
    base = default_server_vad()
    if td.get("type") == "semantic_vad":
        eagerness = td.get("eagerness") or "auto"
        return base["threshold"], base["prefix_padding_ms"], SEMANTIC_SILENCE_MS[eagerness]

    def field(name: str) -> Any:
        value = td.get(name)
        return base[name] if value is None else value

    return (
        float(field("threshold")),
        int(field("prefix_padding_ms")),
        int(field("silence_duration_ms")),
    )


@dataclass(frozen=True, slots=True)
class TurnStarted:
    """``input_audio_buffer.speech_started``: ``item_id`` is the future user item's."""

    item_id: str
    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class TurnEnded:
    """``speech_stopped``: the audio from ``audio_start_ms`` on becomes item ``item_id``."""

    item_id: str
    audio_start_ms: int
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class IdleTimeout:
    """``input_audio_buffer.timeout_triggered``: the silent segment becomes item ``item_id``."""

    item_id: str
    audio_start_ms: int
    audio_end_ms: int


TurnEdge = TurnStarted | TurnEnded | IdleTimeout


@dataclass
class TurnTaker:
    vad: VoiceActivityDetector | None = None
    #: The user item announced by ``speech_started``, until its turn ends.
    item_id: str | None = None
    start_ms: int = 0
    #: Audio clock from which silence counts toward ``idle_timeout_ms``; ``None``: not armed.
    idle_from_ms: float | None = None

    def configure(self, td: dict[str, Any] | None) -> None:
        if self.vad is not None and td and td.get("type") in VAD_TYPES:
            self.vad.configure(*detector_settings(td))

    def hear(
        self, pcm: bytes, td: dict[str, Any] | None, floor_ms: float, now_ms: float
    ) -> list[TurnEdge]:
        """Feed appended audio; ``floor_ms``: where the buffer starts; ``now_ms``: the clock."""
        if self.vad is None or not td or td.get("type") not in VAD_TYPES:
            return []
        out: list[TurnEdge] = []
        for edge in self.vad.feed(pcm, floor_ms=floor_ms):
            if isinstance(edge, SpeechStarted):
                self.idle_from_ms = None
                self.item_id = new_id("item")
                self.start_ms = edge.audio_start_ms
                out.append(TurnStarted(self.item_id, edge.audio_start_ms))
            else:
                item_id = self.item_id or new_id("item")
                self.item_id = None
                out.append(TurnEnded(item_id, self.start_ms, edge.audio_end_ms))
        idle = td.get("idle_timeout_ms")
        if (
            td.get("type") == "server_vad"
            and isinstance(idle, int)
            and idle > 0
            and self.idle_from_ms is not None
            and not self.vad.in_speech
            and now_ms >= self.idle_from_ms + idle
        ):
            out.append(IdleTimeout(new_id("item"), int(self.idle_from_ms), int(now_ms)))
            self.idle_from_ms = None
        return out

    def responded(self, played_out_ms: float) -> None:
        """A response of the conversation ended; its audio will have played by ``played_out_ms``.

        Not while the user is speaking (a barge-in's cancelled response): that turn comes first.
        """
        if self.vad is None or not self.vad.in_speech:
            self.idle_from_ms = played_out_ms

    def disarm(self) -> None:
        self.idle_from_ms = None

    def interrupt(self) -> str | None:
        """The client committed or cleared the buffer: a turn in progress is over.

        The detector forgets it, so speech that goes on starts a fresh turn with its own
        ``speech_started``. Returns the item id that turn's ``speech_started`` announced.
        """
        item_id = self.item_id
        self.item_id = None
        if self.vad is not None:
            self.vad.end_turn()
        return item_id
