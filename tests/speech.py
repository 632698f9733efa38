"""Real speech for tests, synthesised offline with piper's joe voice (the ``piper`` extra).

Sampling noise is off, so the same text gives the same audio on the same machine.
"""

from __future__ import annotations

import functools
from typing import Any

from rtgate.engine.audio import resample_pcm16
from rtgate.engine.models import piper_joe_files


@functools.cache
def _voice() -> Any:
    from piper import PiperVoice

    model, config = piper_joe_files()
    return PiperVoice.load(str(model), str(config))


@functools.cache
def speak(text: str) -> bytes:
    """``text`` spoken as 24 kHz PCM16 mono."""
    from piper import SynthesisConfig

    cfg = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    rate, pcm = 22050, bytearray()
    for chunk in _voice().synthesize(text, syn_config=cfg):
        rate = chunk.sample_rate
        pcm += chunk.audio_int16_bytes
    return resample_pcm16(bytes(pcm), rate)
