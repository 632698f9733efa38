from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from rtgate.engine.audio import (
    AudioFormat,
    InputConverter,
    OutputConverter,
    alaw_decode,
    alaw_encode,
    audio_format,
    bytes_per_ms,
    from_pcm24k,
    resample_pcm16,
    to_pcm24k,
    ulaw_decode,
    ulaw_encode,
)

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
G711 = [AudioFormat.PCMU, AudioFormat.PCMA]


def tone(rate: int, seconds: float, amplitude: float = 8000.0) -> NDArray[np.int16]:
    """Two partials well inside the telephone band, so 8 kHz keeps them."""
    t = np.arange(int(rate * seconds)) / rate
    wave = amplitude * np.sin(2 * np.pi * 440 * t) + amplitude / 4 * np.sin(2 * np.pi * 1234 * t)
    return np.round(wave).astype(np.int16)


def samples(pcm: bytes) -> NDArray[np.int32]:
    return np.frombuffer(pcm, dtype="<i2").astype(np.int32)


def test_bytes_per_ms_match_the_protocol_table() -> None:
    # docs/protocol.md 5.6: a 20 ms frame is 960 B of PCM16 at 24 kHz, 160 B of G.711.
    assert bytes_per_ms(AudioFormat.PCM) * 20 == 960
    assert bytes_per_ms(AudioFormat.PCMU) * 20 == 160
    assert bytes_per_ms(AudioFormat.PCMA) * 20 == 160


def test_session_formats_are_read_in_ga_and_beta_spelling() -> None:
    assert audio_format({"type": "audio/pcm", "rate": 24000}) is AudioFormat.PCM
    assert audio_format({"type": "audio/pcmu"}) is AudioFormat.PCMU
    assert audio_format("audio/pcma") is AudioFormat.PCMA
    assert audio_format("pcm16") is AudioFormat.PCM
    assert audio_format("g711_ulaw") is AudioFormat.PCMU
    assert audio_format("g711_alaw") is AudioFormat.PCMA
    for bad in ({"type": "audio/pcm", "rate": 16000}, "audio/mp3", None, {"type": 7}):
        with pytest.raises(ValueError, match="unsupported audio format"):
            audio_format(bad)


# Reference points of ITU-T G.711 as coded in Sun's g711.c; they were checked against CPython
# 3.11's audioop (lin2ulaw, lin2alaw, ulaw2lin, alaw2lin), which is bit-exact with these tables
# over all 65,536 inputs.
@pytest.mark.parametrize(
    ("linear", "ulaw", "alaw"),
    [
        (0, 0xFF, 0xD5),
        (-1, 0x7E, 0x55),
        (100, 0xF2, 0xD3),
        (-100, 0x72, 0x53),
        (1000, 0xCE, 0xFA),
        (32767, 0x80, 0xAA),
        (-32768, 0x00, 0x2A),
    ],
)
def test_g711_encodes_reference_values(linear: int, ulaw: int, alaw: int) -> None:
    x = np.array([linear], dtype=np.int16)
    assert ulaw_encode(x) == bytes([ulaw])
    assert alaw_encode(x) == bytes([alaw])


@pytest.mark.parametrize(
    ("code", "from_ulaw", "from_alaw"),
    [(0x00, -32124, -5504), (0x80, 32124, 5504), (0xFF, 0, 848), (0x7F, 0, -848),
     (0xD5, 716, 8), (0x55, -716, -8), (0xAA, 5372, 32256), (0x2A, -5372, -32256)],
)  # fmt: skip
def test_g711_decodes_reference_values(code: int, from_ulaw: int, from_alaw: int) -> None:
    assert int(ulaw_decode(bytes([code]))[0]) == from_ulaw
    assert int(alaw_decode(bytes([code]))[0]) == from_alaw


def test_ulaw_round_trip_stays_within_half_a_step() -> None:
    # mu-law steps double per segment, from 8 to 1024 in the 16-bit domain; the decoder returns
    # the middle of a step, so the error is at most about |x|/16 + 8. Above 32124 it clips.
    x = ALL_INT16.astype(np.int32)
    y = ulaw_decode(ulaw_encode(ALL_INT16)).astype(np.int32)
    inside = np.abs(x) <= 32124
    assert np.all(np.abs(y - x)[inside] <= np.abs(x[inside]) // 16 + 8)
    assert set(y[~inside].tolist()) == {-32124, 32124}
    assert np.all(np.sign(y[np.abs(x) > 8]) == np.sign(x[np.abs(x) > 8]))


def test_alaw_round_trip_stays_within_half_a_step() -> None:
    # A-law steps are 16 in the first two segments, then double, up to 1024; half a step is at
    # most |x|/32 + 8 over the whole 16-bit range.
    x = ALL_INT16.astype(np.int32)
    y = alaw_decode(alaw_encode(ALL_INT16)).astype(np.int32)
    assert np.all(np.abs(y - x) <= np.abs(x) // 32 + 8)
    assert int(y.max()) == 32256 and int(y.min()) == -32256


def test_every_g711_code_survives_decode_then_encode() -> None:
    codes = bytes(range(256))
    assert alaw_encode(alaw_decode(codes)) == codes
    # mu-law has two zeros; the negative one (0x7F) comes back as the positive one (0xFF).
    assert ulaw_encode(ulaw_decode(codes)) == codes[:0x7F] + b"\xff" + codes[0x80:]


@pytest.mark.parametrize("fmt", G711)
def test_g711_one_shot_conversion_keeps_the_signal(fmt: AudioFormat) -> None:
    pcm = tone(24000, 0.5).astype("<i2").tobytes()
    wire = from_pcm24k(pcm, fmt)
    assert len(wire) == 4000  # 0.5 s at 8 kHz, one byte a sample
    back = samples(to_pcm24k(wire, fmt))
    assert len(back) == 12000
    # Both partials are below 4 kHz, so only G.711 quantization noise should remain.
    ref = samples(pcm).astype(np.float64)
    noise = back[100:-100] - ref[100:-100]
    snr = 10 * np.log10(np.mean(ref[100:-100] ** 2) / np.mean(noise**2))
    assert snr > 30


@pytest.mark.parametrize("fmt", G711)
def test_streaming_input_equals_one_shot(fmt: AudioFormat) -> None:
    wire = from_pcm24k(tone(24000, 1.0).astype("<i2").tobytes(), fmt)
    one_shot = samples(to_pcm24k(wire, fmt))
    conv = InputConverter(fmt)
    parts = [conv.feed(wire[i : i + 160]) for i in range(0, len(wire), 160)]
    # The resampler holds samples back while its filter waits for more input ...
    assert sum(map(len, parts)) < len(wire) * 6
    parts.append(conv.flush())
    streamed = samples(b"".join(parts))
    # ... and the flush releases them: three 24 kHz samples per G.711 byte, as in one shot.
    assert len(streamed) == len(one_shot) == 3 * len(wire)
    assert int(np.abs(streamed - one_shot).max()) <= 4
    # A flush starts a fresh stream, so the next turn's arithmetic is exact again.
    again = conv.feed(wire[:800]) + conv.flush()
    assert len(again) == 2 * 3 * 800


def test_streaming_pcm_input_passes_through_odd_chunks() -> None:
    pcm = tone(24000, 0.2).astype("<i2").tobytes()
    conv = InputConverter(AudioFormat.PCM)
    out = b"".join(conv.feed(pcm[i : i + 7]) for i in range(0, len(pcm), 7)) + conv.flush()
    assert out == pcm


@pytest.mark.parametrize("fmt", G711)
def test_streaming_output_equals_one_shot(fmt: AudioFormat) -> None:
    pcm = tone(24000, 1.0).astype("<i2").tobytes()
    decode = ulaw_decode if fmt is AudioFormat.PCMU else alaw_decode
    one_shot = decode(from_pcm24k(pcm, fmt)).astype(np.int32)
    conv = OutputConverter(fmt)
    # 4,801 bytes: the odd byte must wait for its partner in the next piece.
    wire = b"".join(conv.feed(pcm[i : i + 4801]) for i in range(0, len(pcm), 4801)) + conv.flush()
    assert len(wire) == len(one_shot) == 8000
    streamed = decode(wire).astype(np.int32)
    # Tiny float differences can tip a sample into the neighbouring G.711 step, no further.
    assert np.all(np.abs(streamed - one_shot) <= np.abs(one_shot) // 8 + 16)


def test_pcm_output_is_unchanged() -> None:
    pcm = tone(24000, 0.1).astype("<i2").tobytes()
    conv = OutputConverter(AudioFormat.PCM)
    assert conv.feed(pcm[:101]) + conv.feed(pcm[101:]) + conv.flush() == pcm
    assert from_pcm24k(pcm, AudioFormat.PCM) == pcm == to_pcm24k(pcm, AudioFormat.PCM)


@pytest.mark.parametrize("n", [22050, 1000, 1001, 7])
def test_resample_22050_to_24000_length(n: int) -> None:
    out = resample_pcm16(np.zeros(n, dtype="<i2").tobytes(), 22050)
    assert len(out) == 2 * round(n * 24000 / 22050)


def test_resample_22050_to_24000_keeps_pitch() -> None:
    t = np.arange(22050) / 22050
    pcm = np.round(10000 * np.sin(2 * np.pi * 1000 * t)).astype("<i2").tobytes()
    out = samples(resample_pcm16(pcm, 22050)).astype(np.float64)
    assert len(out) == 24000
    spectrum = np.abs(np.fft.rfft(out))
    assert int(np.argmax(spectrum)) == 1000  # 1 Hz bins over exactly one second
    assert np.sqrt(np.mean(out[500:-500] ** 2)) == pytest.approx(10000 / np.sqrt(2), rel=0.01)
