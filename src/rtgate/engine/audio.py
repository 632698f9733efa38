"""The Realtime protocol's audio formats, and conversion to and from the engine's 24 kHz PCM16.

docs/protocol.md 5.6: a session's input and output audio is one of

    audio/pcm   16-bit signed little-endian mono, 24 kHz    48 bytes per ms
    audio/pcmu  G.711 mu-law, 8 kHz                          8 bytes per ms
    audio/pcma  G.711 A-law, 8 kHz                           8 bytes per ms

Every engine stage (VAD, STT, TTS) works on 24 kHz PCM16, so input is decoded to it on arrival and
output is encoded from it just before it is sent. The G.711 codecs follow ITU-T G.711 as coded in
the classic Sun ``g711.c`` (the reference CPython's removed ``audioop`` used), through numpy lookup
tables. Rate changes go through soxr, whose band-limited filters avoid the aliasing a linear
interpolation would add to speech.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cache
from typing import Any, Literal

import numpy as np
import soxr
from numpy.typing import NDArray

PCM_RATE = 24000
G711_RATE = 8000

#: soxr quality names; see ``InputConverter`` for the latency each one costs.
Quality = Literal["QQ", "LQ", "MQ", "HQ", "VHQ"]


class AudioFormat(StrEnum):
    PCM = "audio/pcm"
    PCMU = "audio/pcmu"
    PCMA = "audio/pcma"


# The beta API's names for the same formats (docs/protocol.md 2.4).
_BETA_NAMES = {
    "pcm16": AudioFormat.PCM,
    "g711_ulaw": AudioFormat.PCMU,
    "g711_alaw": AudioFormat.PCMA,
}


def audio_format(value: object) -> AudioFormat:
    """Read a session's format as GA (``{"type": "audio/pcmu"}``, a bare type) or beta name.

    Raises ``ValueError`` for anything else, including PCM at a rate other than 24 kHz, which
    the protocol does not allow (``rate`` is ``Literal[24000]``).
    """
    rate: Any = PCM_RATE
    if isinstance(value, dict):
        rate = value.get("rate", PCM_RATE)
        value = value.get("type")
    if isinstance(value, str):
        fmt = _BETA_NAMES.get(value)
        if fmt is None and value in AudioFormat._value2member_map_:
            fmt = AudioFormat(value)
        if fmt is not None and (fmt is not AudioFormat.PCM or rate in (None, PCM_RATE)):
            return fmt
    raise ValueError(f"unsupported audio format: {value!r} (rate {rate!r})")


def bytes_per_ms(fmt: AudioFormat) -> int:
    return 48 if fmt is AudioFormat.PCM else 8


def sample_rate(fmt: AudioFormat) -> int:
    return PCM_RATE if fmt is AudioFormat.PCM else G711_RATE


# --- G.711 -------------------------------------------------------------------------------------

_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _all_int16() -> NDArray[np.int32]:
    # Indexed by the sample's bit pattern read as uint16, so a table lookup needs no sign fix-up.
    return np.arange(65536, dtype=np.int32).astype(np.uint16).view(np.int16).astype(np.int32)


@cache
def _ulaw_encode_table() -> NDArray[np.uint8]:
    v = _all_int16() >> 2  # 14-bit magnitude domain
    mask = np.where(v < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(v), 8159) + 0x21  # clip, then add the bias (0x84 >> 2)
    seg = np.searchsorted(_ULAW_SEG_END, mag)
    code = (np.minimum(seg, 7) << 4) | ((mag >> (np.minimum(seg, 7) + 1)) & 0xF)
    code = np.where(seg >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8)


@cache
def _ulaw_decode_table() -> NDArray[np.int16]:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


@cache
def _alaw_encode_table() -> NDArray[np.uint8]:
    v = _all_int16() >> 3  # 13-bit magnitude domain
    mask = np.where(v >= 0, 0xD5, 0x55)
    mag = np.where(v >= 0, v, -v - 1)
    seg = np.searchsorted(_ALAW_SEG_END, mag)
    shift = np.where(seg < 2, 1, np.minimum(seg, 7))
    code = (np.minimum(seg, 7) << 4) | ((mag >> shift) & 0xF)
    code = np.where(seg >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8)


@cache
def _alaw_decode_table() -> NDArray[np.int16]:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


def ulaw_encode(samples: NDArray[np.int16]) -> bytes:
    return _ulaw_encode_table()[samples.view(np.uint16)].tobytes()


def ulaw_decode(data: bytes) -> NDArray[np.int16]:
    return _ulaw_decode_table()[np.frombuffer(data, dtype=np.uint8)]


def alaw_encode(samples: NDArray[np.int16]) -> bytes:
    return _alaw_encode_table()[samples.view(np.uint16)].tobytes()


def alaw_decode(data: bytes) -> NDArray[np.int16]:
    return _alaw_decode_table()[np.frombuffer(data, dtype=np.uint8)]


# --- PCM16 and resampling ----------------------------------------------------------------------


def pcm16_samples(pcm: bytes) -> NDArray[np.int16]:
    """Samples of little-endian PCM16, in native order; a trailing odd byte is ignored."""
    return np.frombuffer(pcm, dtype="<i2", count=len(pcm) // 2).astype(np.int16)


def pcm16_bytes(samples: NDArray[np.int16]) -> bytes:
    return samples.astype("<i2").tobytes()


def resample_pcm16(pcm: bytes, rate: int, to_rate: int = PCM_RATE) -> bytes:
    """One-shot rate change of a whole clip, e.g. a TTS voice's 22.05 kHz output to 24 kHz.

    The result holds ``round(n * to_rate / rate)`` samples, with soxr's filter delay removed.
    """
    if rate == to_rate:
        return pcm[: len(pcm) - len(pcm) % 2]
    out: NDArray[np.int16] = soxr.resample(pcm16_samples(pcm), rate, to_rate)
    return pcm16_bytes(out)


def _decode(data: bytes, fmt: AudioFormat) -> NDArray[np.int16]:
    if fmt is AudioFormat.PCMU:
        return ulaw_decode(data)
    if fmt is AudioFormat.PCMA:
        return alaw_decode(data)
    return pcm16_samples(data)


def _encode(samples: NDArray[np.int16], fmt: AudioFormat) -> bytes:
    if fmt is AudioFormat.PCMU:
        return ulaw_encode(samples)
    if fmt is AudioFormat.PCMA:
        return alaw_encode(samples)
    return pcm16_bytes(samples)


def to_pcm24k(data: bytes, fmt: AudioFormat) -> bytes:
    """Decode a complete clip in ``fmt`` to 24 kHz PCM16 (G.711: three samples per byte)."""
    if fmt is AudioFormat.PCM:
        return data[: len(data) - len(data) % 2]
    return resample_pcm16(pcm16_bytes(_decode(data, fmt)), G711_RATE, PCM_RATE)


def from_pcm24k(pcm: bytes, fmt: AudioFormat) -> bytes:
    """Encode a complete 24 kHz PCM16 clip in ``fmt`` (G.711: one byte per three samples)."""
    if fmt is AudioFormat.PCM:
        return pcm[: len(pcm) - len(pcm) % 2]
    return _encode(pcm16_samples(resample_pcm16(pcm, PCM_RATE, G711_RATE)), fmt)


class _StreamConverter:
    """A resampler that carries its filter state (and any odd PCM byte) from chunk to chunk.

    Resampling each 20 ms chunk on its own would restart the filter at every boundary and add a
    click 50 times a second. The stream instead holds back the samples whose filter window still
    needs future input, so output trails input: measured here with 20 ms chunks, about 43 ms on
    average (73 ms at most) for 8k->24k at "HQ", half that at "LQ", a fraction of a millisecond at
    "QQ" (cubic interpolation, no anti-imaging filter). ``flush`` releases the held samples.
    """

    def __init__(self, fmt: AudioFormat, in_rate: int, out_rate: int, quality: Quality) -> None:
        self.format = fmt
        self._rates = (in_rate, out_rate)
        self._quality = quality
        self._odd = b""
        self._stream = self._new_stream()

    def _new_stream(self) -> Any:
        in_rate, out_rate = self._rates
        if in_rate == out_rate:
            return None
        return soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=self._quality)

    def _even(self, data: bytes) -> bytes:
        """PCM16 bytes up to the last whole sample; an odd byte waits for the next chunk."""
        data = self._odd + data if self._odd else data
        cut = len(data) - len(data) % 2
        self._odd = data[cut:]
        return data[:cut]

    def _resample(self, samples: NDArray[np.int16], last: bool) -> NDArray[np.int16]:
        if self._stream is None:
            return samples
        out: NDArray[np.int16] = self._stream.resample_chunk(samples, last=last)
        return out


class InputConverter(_StreamConverter):
    """Decodes one session's appended audio, chunk by chunk, to PCM16 at ``out_rate`` (24 kHz
    for the engine; 16 kHz for a Gemini upstream, ``protocol/gemini.py``).

    Call ``flush`` when the input buffer is committed, so the turn's last few tens of ms are not
    left inside the resampler; it also starts a fresh stream for the next turn. Over a whole
    stream, G.711 input gives exactly three output samples per input byte at 24 kHz.
    """

    def __init__(
        self,
        fmt: AudioFormat,
        quality: Quality = "HQ",
        rate: int | None = None,
        out_rate: int = PCM_RATE,
    ) -> None:
        # ``rate``: PCM at another rate than 24 kHz (a GPT-Live session may send 16 kHz).
        super().__init__(fmt, rate or sample_rate(fmt), out_rate, quality)

    def feed(self, data: bytes) -> bytes:
        if self.format is AudioFormat.PCM:
            data = self._even(data)
        return pcm16_bytes(self._resample(_decode(data, self.format), last=False))

    def flush(self) -> bytes:
        self._odd = b""
        if self._stream is None:
            return b""
        tail = self._resample(np.zeros(0, dtype=np.int16), last=True)
        self._stream = self._new_stream()
        return pcm16_bytes(tail)


class OutputConverter(_StreamConverter):
    """Encodes one response's 24 kHz PCM16, piece by piece, to the session's output format.

    Call ``flush`` at the end of the response (or on cancel) to get the held-back tail.
    """

    def __init__(self, fmt: AudioFormat, quality: Quality = "HQ", rate: int | None = None) -> None:
        super().__init__(fmt, PCM_RATE, rate or sample_rate(fmt), quality)

    def feed(self, pcm: bytes) -> bytes:
        return _encode(self._resample(pcm16_samples(self._even(pcm)), last=False), self.format)

    def flush(self) -> bytes:
        self._odd = b""
        if self._stream is None:
            return b""
        tail = self._resample(np.zeros(0, dtype=np.int16), last=True)
        self._stream = self._new_stream()
        return _encode(tail, self.format)
