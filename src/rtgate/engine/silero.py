"""Turn detection with ``server_vad`` semantics over the Silero v6 voice activity network.

An energy detector fires on any loud noise; Silero scores how speech-like each 32 ms window is,
and on this machine flagged no frame of white noise even at -20 dBFS (docs/local-engine.md,
section 1 and pitfall 6).

The network is the ``silero_vad_v6.onnx`` that faster-whisper 1.2.1 ships, so nothing is
downloaded; its sha256 is checked at load because the file is a third-party asset whose name and
I/O change between faster-whisper releases (docs/local-engine.md, pitfall 13). Its signature::

    input   float32 [n, 576]     per window: 64 context samples + 512 new samples, 16 kHz, +-1.0
    h, c    float32 [1, 1, 128]  LSTM state, carried from one call to the next
    -> speech_probs [n], hn, cn  one probability per window; the state after the last window

The ``n`` rows are consecutive windows of one stream (the state runs through them), so a chunk
holding several windows is scored in a single call.

Streaming rules:
- 24 kHz input is resampled to 16 kHz with a soxr stream that keeps its filter state across
  chunks, and the output is re-buffered into *exact* 512-sample windows: padding or truncating
  a short window cut utterances about 0.8 s early (docs/local-engine.md, pitfall 5).
- Times count 16 kHz samples from the first audio fed; 512 samples are exactly 32 ms, so the
  millisecond clock is the same as the session's 24 kHz one (docs/protocol.md 5.7).

The turn state machine, with Silero's usual hysteresis (``neg = max(threshold - 0.15, 0.01)``)::

    quiet   -- window prob >= threshold -->  speech   emit SpeechStarted(onset - prefix_padding)
    speech  -- window prob >= neg       -->  speech   (the voiced audio now ends at this window)
    speech  -- silence_duration_ms since voiced audio ended --> quiet
                                                      emit SpeechStopped(voiced end + silence)
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import soxr
from numpy.typing import NDArray

from rtgate.engine.vad import EnergyVad, SpeechStarted, SpeechStopped, VoiceActivityDetector
from rtgate.errors import ConfigError

MODEL_SHA256 = "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2"
MODEL_ASSET = ("assets", "silero_vad_v6.onnx")

RATE = 16000
WINDOW = 512
CONTEXT = 64
WINDOW_MS = WINDOW * 1000 // RATE
STATE_SHAPE = (1, 1, 128)
#: Windows per network call; bounds the scratch memory a very large append can take.
MAX_BATCH = 256


def bundled_model_path() -> Path:
    """Where faster-whisper's copy of the network is, found without importing faster-whisper.

    Importing it would pull in ctranslate2 and av just to read a path.
    """
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "The Silero VAD needs faster-whisper==1.2.1, which ships its model file; "
            "install it or use the energy VAD."
        )
    return Path(next(iter(spec.submodule_search_locations)), *MODEL_ASSET)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class SileroModel:
    """The verified network in one onnxruntime session; one instance can serve every connection.

    The session is stateless across calls (each detector keeps its own LSTM state) and
    onnxruntime allows concurrent ``run`` calls, so sharing it only saves the load (~7 ms) and
    memory. Threads are pinned to one: the VAD runs per 20 ms frame and must not take the cores
    STT and TTS need (docs/local-engine.md, pitfall 12).
    """

    def __init__(self, path: Path | None = None) -> None:
        path = bundled_model_path() if path is None else path
        if not path.is_file():
            raise ConfigError(f"Silero VAD model not found at {path}.")
        digest = _sha256(path)
        if digest != MODEL_SHA256:
            raise ConfigError(
                f"Silero VAD model at {path} has sha256 {digest}, expected {MODEL_SHA256}: "
                "the file was altered or comes from another faster-whisper release "
                "(pin faster-whisper==1.2.1)."
            )
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.path = path
        self._session: Any = ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )

    def score(
        self, frames: NDArray[np.float32], h: NDArray[np.float32], c: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        """Speech probability per ``[n, 576]`` row, and the LSTM state after the last row."""
        probs, hn, cn = self._session.run(None, {"input": frames, "h": h, "c": c})
        return probs.reshape(-1), hn, cn


class SileroVad:
    """``server_vad`` over Silero; the same contract as ``EnergyVad``, one per session."""

    def __init__(
        self,
        model: SileroModel | None = None,
        threshold: float = 0.5,
        prefix_padding_ms: int = 300,
        silence_duration_ms: int = 200,
    ) -> None:
        self.model = SileroModel() if model is None else model
        self.configure(threshold, prefix_padding_ms, silence_duration_ms)
        self._resampler = soxr.ResampleStream(24000, RATE, 1, dtype="float32", quality="HQ")
        self._odd = b""
        self._pending: NDArray[np.float32] = np.zeros(0, dtype=np.float32)
        self._context: NDArray[np.float32] = np.zeros(CONTEXT, dtype=np.float32)
        self._h: NDArray[np.float32] = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._c: NDArray[np.float32] = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._clock_ms = 0
        self._in_speech = False
        self._last_voice_end_ms = 0

    def configure(self, threshold: float, prefix_padding_ms: int, silence_duration_ms: int) -> None:
        self.threshold = max(0.0, min(1.0, threshold))
        self.neg_threshold = max(self.threshold - 0.15, 0.01)
        self.prefix_padding_ms = prefix_padding_ms
        self.silence_duration_ms = silence_duration_ms

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def end_turn(self) -> None:
        # The LSTM state is kept: it tracks the audio, not the turn.
        self._in_speech = False

    def feed(self, pcm: bytes, floor_ms: float = 0) -> list[SpeechStarted | SpeechStopped]:
        """Feed 24 kHz PCM16 of any length; return the turn edges it crossed, in order."""
        if self._odd:
            pcm = self._odd + pcm
        cut = len(pcm) - len(pcm) % 2
        self._odd = pcm[cut:]
        samples = np.frombuffer(pcm, dtype="<i2", count=cut // 2).astype(np.float32)
        samples *= 1.0 / 32768.0
        resampled: NDArray[np.float32] = self._resampler.resample_chunk(samples)
        pending = np.concatenate((self._pending, resampled)) if self._pending.size else resampled
        whole = len(pending) // WINDOW
        self._pending = pending[whole * WINDOW :].copy()
        out: list[SpeechStarted | SpeechStopped] = []
        for first in range(0, whole, MAX_BATCH):
            windows = pending[first * WINDOW : min(whole, first + MAX_BATCH) * WINDOW]
            for prob in self._score(windows.reshape(-1, WINDOW)):
                self._step(float(prob), int(floor_ms), out)
        return out

    def _score(self, windows: NDArray[np.float32]) -> NDArray[np.float32]:
        frames = np.empty((len(windows), CONTEXT + WINDOW), dtype=np.float32)
        frames[:, CONTEXT:] = windows
        frames[0, :CONTEXT] = self._context
        frames[1:, :CONTEXT] = windows[:-1, -CONTEXT:]
        self._context = windows[-1, -CONTEXT:].copy()
        probs, self._h, self._c = self.model.score(frames, self._h, self._c)
        return probs

    def _step(self, prob: float, floor_ms: int, out: list[SpeechStarted | SpeechStopped]) -> None:
        start = self._clock_ms
        self._clock_ms += WINDOW_MS
        if not self._in_speech:
            if prob >= self.threshold:
                self._in_speech = True
                self._last_voice_end_ms = self._clock_ms
                out.append(SpeechStarted(max(floor_ms, start - self.prefix_padding_ms)))
        elif prob >= self.neg_threshold:
            self._last_voice_end_ms = self._clock_ms
        elif self._clock_ms - self._last_voice_end_ms >= self.silence_duration_ms:
            self._in_speech = False
            out.append(SpeechStopped(self._last_voice_end_ms + self.silence_duration_ms))


def load_vad(kind: str, *, model: SileroModel | None = None) -> VoiceActivityDetector:
    """A fresh per-session detector: ``"silero"`` (default for real speech) or ``"energy"``.

    Pass ``model`` to share one loaded network between sessions.
    """
    if kind == "silero":
        return SileroVad(model)
    if kind == "energy":
        return EnergyVad()
    raise ConfigError(f"Unknown VAD {kind!r}: expected 'silero' or 'energy'.")
