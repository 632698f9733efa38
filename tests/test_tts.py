"""Synthesizer adapters: every one yields 24 kHz PCM16 mono."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from rtgate.engine.models import ModelUnavailable
from rtgate.engine.tts import EspeakSynthesizer, PiperSynthesizer, ToneSynthesizer


def fake_espeak(tmp_path: Path) -> Path:
    """A stand-in for Debian's espeak-ng: writes a 22.05 kHz WAV of a tone to stdout, with the
    streaming header (nframes 0x7fffffff) espeak-ng writes when its output is a pipe."""
    script = tmp_path / "espeak-ng"
    script.write_text(
        f"#!{sys.executable}\n"
        "import math, struct, sys\n"
        "text = sys.argv[-1]\n"
        "n = 22050 * len(text) // 20\n"
        "data = struct.pack(f'<{n}h', *(int(8000 * math.sin(i / 5)) for i in range(n)))\n"
        "hdr = b'RIFF' + struct.pack('<I', 0x7FFFFFFF) + b'WAVEfmt ' + struct.pack(\n"
        "    '<IHHIIHH', 16, 1, 1, 22050, 44100, 2, 16) + b'data' + struct.pack('<I', 0x7FFFFFFF)\n"
        "sys.stdout.buffer.write(hdr + data)\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


async def test_espeak_output_is_resampled_to_24k(tmp_path: Path) -> None:
    tts = EspeakSynthesizer(str(fake_espeak(tmp_path)))
    pcm = await tts.synthesize("twenty characters!!!", "alloy")  # 1 s at 22.05 kHz
    assert abs(len(pcm) - 48000) <= 4
    assert await tts.synthesize("   ", "alloy") == b""


def test_espeak_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ModelUnavailable, match="espeak-ng"):
        EspeakSynthesizer()


async def test_piper_speaks_deterministically_at_24k() -> None:
    tts = PiperSynthesizer(deterministic=True)
    a = await tts.synthesize("Hello there.", "alloy")
    b = await tts.synthesize("Hello there.", "alloy")
    assert a == b and len(a) > 48 * 500
    samples = np.frombuffer(a, dtype="<i2").astype(np.float64)
    assert np.sqrt(np.mean(samples**2)) > 300


async def test_tone_length_follows_the_text() -> None:
    pcm = await ToneSynthesizer().synthesize("abcde", "alloy")
    assert len(pcm) == 48 * 300
