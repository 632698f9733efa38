"""The audio of a translation session, counted by the gateway (no I/O).

``/v1/realtime/translations`` reports no usage on any event (docs/protocol.md 10: ``session.closed``
is only ``event_id`` and ``type``), yet it is billed by audio duration, and which audio is not
documented. So rtgate counts it itself, by the basis ``translation_billed_audio`` names:

* ``input`` (the default, as the reference advises): the audio the client appends,
  ``session.input_audio_buffer.append{audio}``, as its duration at the session's format: 24 kHz
  PCM16 mono, 48,000 bytes a second (48 a millisecond), the only input format the route takes;
* ``output``: the translated audio the provider sends, ``session.output_audio.delta{delta}``,
  PCM16 mono at its ``sample_rate`` (24 kHz when it names none).

The audio is never decoded: its decoded length follows from the base64 text's length and its
``=`` padding (RFC 4648 4). A frame is recognised by its prefix (as the SDKs and the reference's
examples serialise it, the audio unescaped and not repeated); every other client frame of the
session is parsed (``appended_bytes``), so no spelling carries audio past the count.

What the gateway counts is billed in chunks (``AudioMeter.appended`` answers a chunk's
milliseconds once ``chunk_ms`` have gathered) and the remainder at the session's end
(``AudioMeter.rest``): a crash loses at most the audio of one chunk not yet recorded.
"""

from __future__ import annotations

from typing import Literal

from rtgate.protocol.client_frames import read_client
from rtgate.protocol.relay_session import parse_event

#: Which audio a translation session is billed by (``Settings.translation_billed_audio``).
Basis = Literal["input", "output"]

#: Bytes of 24 kHz PCM16 mono audio per millisecond (24 samples x 2 bytes).
BYTES_PER_MS = 48
APPEND_TYPE = "session.input_audio_buffer.append"
#: Every client event a translation session defines, with its members (the SDK's
#: ``RealtimeTranslationClientEvent``): what a key's blocked events may name for it.
CLIENT_MEMBERS = {
    "session.update": frozenset({"type", "event_id", "session"}),
    APPEND_TYPE: frozenset({"type", "event_id", "audio"}),
    "session.close": frozenset({"type", "event_id"}),
}
_PREFIXES = (
    '{"type":"session.input_audio_buffer.append","audio":"',
    '{"type": "session.input_audio_buffer.append", "audio": "',
)


def decoded_length(b64: str, start: int = 0, end: int | None = None) -> int:
    """The byte length ``b64[start:end]`` decodes to, without decoding it or copying it: 3 bytes
    per 4 characters, less one per ``=`` of padding (RFC 4648 4); a truncated last group counts
    what it holds."""
    if end is None:
        end = len(b64)
    n = end - start
    if n > 0 and b64[end - 1] == "=":
        n -= 2 if n > 1 and b64[end - 2] == "=" else 1
    return n // 4 * 3 + max(0, n % 4 - 1)


def appended_bytes(data: str) -> int | None:
    """The decoded audio bytes of a client frame, or None when it is no
    ``session.input_audio_buffer.append`` (then it is relayed as any frame).

    Counted in place only when the frame starts as the SDKs write it, holds no escape, and its
    audio is its only ``"audio"`` member and its type its only ``"type"`` (a parser reads a
    repeated one, the last: client_frames.py); any other frame is parsed, so no spelling (an
    escaped name, members reordered or repeated) carries audio past the count. Other client
    events on this route are few. Raises ``DuplicateMember`` for a frame that repeats a name,
    ``UnreadableEvent`` for one that is no JSON object (``client_frames.py``)."""
    for prefix in _PREFIXES:
        if data.startswith(prefix):
            start = len(prefix)
            end = data.find('"', start)
            if (
                end >= 0
                and data.find("\\", start) < 0
                and data.find('"audio"', end) < 0
                and data.find('"type"', end) < 0
            ):
                return decoded_length(data, start, end)
            break
    # Tolerant, as for metered upstream frames: what orjson refuses but JSON allows (a lone
    # surrogate escape) still counts; what no parser of ours reads is refused, not forwarded.
    event = read_client(data)
    if event.get("type") != APPEND_TYPE:
        return None
    audio = event.get("audio")
    return decoded_length(audio) if isinstance(audio, str) else 0


OUTPUT_TYPE = "session.output_audio.delta"
#: Rates a delta's ``sample_rate`` may name; anything else counts at 24 kHz.
_RATES = (8000, 16000, 22050, 24000, 44100, 48000)


def delivered_bytes(data: str) -> int | None:
    """The translated audio of an upstream frame, as bytes of 24 kHz PCM16 (a delta at another
    ``sample_rate`` scaled to it), or None when it is no ``session.output_audio.delta``. The
    provider's member order is not documented, so a frame naming the type is parsed; the
    route sends about five a second."""
    if OUTPUT_TYPE not in data:
        return None
    event = parse_event(data)
    if not isinstance(event, dict) or event.get("type") != OUTPUT_TYPE:
        return None
    delta = event.get("delta")
    n = decoded_length(delta) if isinstance(delta, str) else 0
    rate = event.get("sample_rate")
    if rate in _RATES and rate != 24000:
        n = n * 24000 // rate
    return n


class AudioMeter:
    """The audio of one translation session counted on ``basis``, released in chunks of
    ``chunk_ms``."""

    def __init__(self, chunk_ms: int, basis: Basis = "input") -> None:
        self.chunk_ms = max(1, chunk_ms)
        self.basis = basis
        #: Bytes counted and not yet billed (a part of a millisecond stays until the end).
        self._pending = 0
        #: Every byte counted in the session.
        self.total_bytes = 0

    def appended(self, data: str) -> int | None:
        """A client frame: None when it is no append or the basis is the output; else the
        milliseconds to bill now (0 until a chunk has gathered)."""
        return self._count(appended_bytes(data)) if self.basis == "input" else None

    def delivered(self, data: str) -> int | None:
        """An upstream frame: None when it is no output audio or the basis is the input; else
        the milliseconds to bill now (0 until a chunk has gathered)."""
        return self._count(delivered_bytes(data)) if self.basis == "output" else None

    def _count(self, n: int | None) -> int | None:
        if n is None:
            return None
        self.total_bytes += n
        self._pending += n
        if self._pending < self.chunk_ms * BYTES_PER_MS:
            return 0
        ms, self._pending = divmod(self._pending, BYTES_PER_MS)
        return ms

    def rest(self) -> int:
        """The milliseconds counted and not billed yet, for the session's end (a remainder
        under a millisecond, under 48 bytes, is not billed)."""
        ms, self._pending = self._pending // BYTES_PER_MS, 0
        return ms
