"""Input audio of a translation session, counted by the gateway (no I/O).

``/v1/realtime/translations`` reports no usage on any event (voice-apis.md 2.4: ``session.closed``
is only ``event_id`` and ``type``), yet it is billed by audio duration. So rtgate counts the audio
the client appends, ``session.input_audio_buffer.append{audio}``, as its duration at the session's
format: 24 kHz PCM16 mono, 48,000 bytes a second (48 a millisecond), the only input format the
route takes.

The audio is never decoded: its decoded length follows from the base64 text's length and its
``=`` padding (RFC 4648 4). A frame is recognised by its prefix (as the SDKs and the reference's
examples serialise it, the audio unescaped and not repeated); every other client frame of the
session is parsed (``appended_bytes``), so no spelling carries audio past the count.

What the gateway counts is billed in chunks (``AudioMeter.appended`` answers a chunk's
milliseconds once ``chunk_ms`` have gathered) and the remainder at the session's end
(``AudioMeter.rest``): a crash loses at most the audio of one chunk not yet recorded.
"""

from __future__ import annotations

from rtgate.protocol.relay_session import parse_event

#: Bytes of 24 kHz PCM16 mono audio per millisecond (24 samples x 2 bytes).
BYTES_PER_MS = 48
APPEND_TYPE = "session.input_audio_buffer.append"
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

    Counted in place only when the frame starts as the SDKs write it and its audio holds no
    escape and is its only ``"audio"`` member (the provider's parser would read a repeated one,
    the last); any other frame is parsed, so no spelling (an escaped name, members reordered or
    repeated) carries audio past the count. Other client events on this route are few."""
    for prefix in _PREFIXES:
        if data.startswith(prefix):
            start = len(prefix)
            end = data.find('"', start)
            if end >= 0 and data.find("\\", start, end) < 0 and data.find('"audio"', end) < 0:
                return decoded_length(data, start, end)
            break
    # Tolerant, as for metered upstream frames: what orjson refuses but JSON allows (a lone
    # surrogate escape) still counts.
    event = parse_event(data)
    if not isinstance(event, dict) or event.get("type") != APPEND_TYPE:
        return None
    audio = event.get("audio")
    return decoded_length(audio) if isinstance(audio, str) else 0


class AudioMeter:
    """Input audio counted for one translation session, released in chunks of ``chunk_ms``."""

    def __init__(self, chunk_ms: int) -> None:
        self.chunk_ms = max(1, chunk_ms)
        #: Bytes counted and not yet billed (a part of a millisecond stays until the end).
        self._pending = 0
        #: Every byte counted in the session.
        self.total_bytes = 0

    def appended(self, data: str) -> int | None:
        """None when ``data`` is no append; else the milliseconds to bill now (0 until a chunk
        has gathered)."""
        n = appended_bytes(data)
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
