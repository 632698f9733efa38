"""Silero ``server_vad`` on real speech.

Pure tones need not look like speech to Silero, so the speech here is synthesized offline by
piper (``tests.speech``), resampled from 22.05 kHz to 24 kHz.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from rtgate.engine.silero import (
    MODEL_SHA256,
    SileroModel,
    SileroVad,
    bundled_model_path,
    load_vad,
)
from rtgate.engine.vad import EnergyVad, SpeechStarted, SpeechStopped
from rtgate.errors import ConfigError
from tests.speech import speak

LEAD_MS = 600
TAIL_MS = 1500
FRAME = 960  # 20 ms of 24 kHz PCM16, the usual append size
TOLERANCE_MS = 200


@dataclass(frozen=True)
class Utterance:
    """One spoken phrase at 24 kHz and where its voiced part starts and ends, in ms."""

    samples: NDArray[np.int16]
    voiced_from_ms: int
    voiced_to_ms: int


def spoken(text: str) -> Utterance:
    x = np.frombuffer(speak(text), dtype="<i2").astype(np.int16)
    # The true edges: the first and last 20 ms frames louder than -45 dBFS (piper leaves
    # near-digital silence around the phrase).
    frames = x[: len(x) // 480 * 480].reshape(-1, 480).astype(np.float64)
    level = 20 * np.log10(np.sqrt(np.mean(frames**2, axis=1)) / 32768 + 1e-9)
    loud = np.nonzero(level > -45)[0]
    assert loud.size, "piper produced no audible audio"
    return Utterance(x, int(loud[0]) * 20, (int(loud[-1]) + 1) * 20)


@pytest.fixture(scope="module")
def utterance() -> Utterance:
    return spoken("What is the weather like in Paris today?")


@pytest.fixture(scope="module")
def model() -> SileroModel:
    return SileroModel()


def silence(ms: int) -> NDArray[np.int16]:
    return np.zeros(24 * ms, dtype=np.int16)


def noise(ms: float, dbfs: float, seed: int = 0) -> NDArray[np.int16]:
    rms = 32768 * 10 ** (dbfs / 20)
    x = np.random.default_rng(seed).standard_normal(round(24 * ms)) * rms
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def mix(*parts: NDArray[np.int16], floor_dbfs: float = -60) -> bytes:
    """Concatenate, then add a faint noise floor so "silence" is not digital zero."""
    x = np.concatenate(parts).astype(np.int32)
    y: NDArray[np.int32] = np.clip(x + noise(len(x) / 24, floor_dbfs, seed=1), -32768, 32767)
    return y.astype("<i2").tobytes()


def run(
    vad: SileroVad | EnergyVad, pcm: bytes, chunk: int = FRAME, floor_ms: float = 0
) -> list[tuple[SpeechStarted | SpeechStopped, int, bool]]:
    """Each edge, with how much audio (ms) had been fed when it came out, and ``in_speech``."""
    out = []
    for i in range(0, len(pcm), chunk):
        for edge in vad.feed(pcm[i : i + chunk], floor_ms):
            out.append((edge, min(i + chunk, len(pcm)) // 48, vad.in_speech))
    return out


def test_speech_edges_land_near_the_true_edges(model: SileroModel, utterance: Utterance) -> None:
    vad = SileroVad(model, threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500)
    pcm = mix(silence(LEAD_MS), utterance.samples, silence(TAIL_MS))
    events = run(vad, pcm)
    assert [type(e) for e, _, _ in events] == [SpeechStarted, SpeechStopped]
    (started, fed_at_start, speaking), (stopped, fed_at_stop, still_speaking) = events
    assert isinstance(started, SpeechStarted) and isinstance(stopped, SpeechStopped)
    true_start = LEAD_MS + utterance.voiced_from_ms
    true_end = LEAD_MS + utterance.voiced_to_ms
    # audio_start_ms includes the prefix padding; audio_end_ms includes the silence window.
    assert abs(started.audio_start_ms + 300 - true_start) <= TOLERANCE_MS
    assert abs(stopped.audio_end_ms - 500 - true_end) <= TOLERANCE_MS
    assert speaking and not still_speaking and not vad.in_speech
    # The edges are reported soon after the audio that proves them, not a chunk later: within
    # one 32 ms window plus the resampler's hold-back and one 20 ms frame.
    assert 0 <= fed_at_start - (started.audio_start_ms + 300) <= 120
    assert 0 <= fed_at_stop - stopped.audio_end_ms <= 120


@pytest.mark.parametrize("chunk", [7, 480, 4800, 10**9])
def test_chunk_size_does_not_move_the_edges(
    model: SileroModel, utterance: Utterance, chunk: int
) -> None:
    # Exact 512-sample windows whatever the chunking (docs/local-engine.md pitfall 5); odd chunks
    # split samples between appends.
    pcm = mix(silence(LEAD_MS), utterance.samples, silence(TAIL_MS))
    reference = [e for e, _, _ in run(SileroVad(model, silence_duration_ms=500), pcm)]
    edges = [e for e, _, _ in run(SileroVad(model, silence_duration_ms=500), pcm, chunk)]
    assert edges == reference and len(edges) == 2


def test_window_scores_match_faster_whispers_batch_silero(
    model: SileroModel, utterance: Utterance
) -> None:
    # faster-whisper's own wrapper scores a whole 16 kHz clip at once; streaming 20 ms frames
    # through the resampler, the re-buffering and the carried context and state must agree.
    import soxr
    from faster_whisper.vad import SileroVADModel

    class Recording(SileroVad):
        def __init__(self) -> None:
            super().__init__(model)
            self.probs: list[float] = []

        def _step(
            self, prob: float, floor_ms: int, out: list[SpeechStarted | SpeechStopped]
        ) -> None:
            self.probs.append(prob)
            super()._step(prob, floor_ms, out)

    pcm = mix(silence(LEAD_MS), utterance.samples, silence(TAIL_MS))
    vad = Recording()
    run(vad, pcm)
    clip16k = soxr.resample(
        np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768, 24000, 16000
    )
    n = len(vad.probs)
    # The resampler and the window buffer still hold the last window or two.
    assert len(clip16k) // 512 - 2 <= n <= len(clip16k) // 512
    reference = SileroVADModel(str(bundled_model_path()))(clip16k[: n * 512]).reshape(-1)
    assert float(np.abs(reference - np.array(vad.probs)).max()) < 2e-3
    assert float(reference.max()) > 0.9  # the clip does contain speech


@pytest.mark.parametrize("dbfs", [-40, -30, -20])
def test_white_noise_triggers_nothing(model: SileroModel, dbfs: float) -> None:
    vad = SileroVad(model, threshold=0.5, prefix_padding_ms=300, silence_duration_ms=200)
    assert run(vad, noise(5000, dbfs).astype("<i2").tobytes()) == []
    assert not vad.in_speech


def test_energy_vad_does_fire_on_that_noise() -> None:
    # The reason Silero exists here: the same -30 dBFS noise is a "turn" to the energy detector.
    edges = run(EnergyVad(), noise(2000, -30).astype("<i2").tobytes())
    assert edges and isinstance(edges[0][0], SpeechStarted)


def test_silence_duration_decides_whether_a_pause_ends_the_turn(
    model: SileroModel, utterance: Utterance
) -> None:
    # The phrase twice with 800 ms between the clips: over 800 ms of unvoiced audio in all.
    pcm = mix(silence(LEAD_MS), utterance.samples, silence(800), utterance.samples, silence(2500))
    short = [type(e) for e, _, _ in run(SileroVad(model, silence_duration_ms=500), pcm)]
    assert short == [SpeechStarted, SpeechStopped, SpeechStarted, SpeechStopped]
    long = [type(e) for e, _, _ in run(SileroVad(model, silence_duration_ms=2000), pcm)]
    assert long == [SpeechStarted, SpeechStopped]


def test_prefix_padding_stops_at_the_buffer_start(model: SileroModel, utterance: Utterance) -> None:
    pcm = mix(silence(LEAD_MS), utterance.samples, silence(TAIL_MS))
    vad = SileroVad(model, prefix_padding_ms=300, silence_duration_ms=500)
    floor = LEAD_MS + utterance.voiced_from_ms - 100
    started = run(vad, pcm, floor_ms=floor)[0][0]
    assert started == SpeechStarted(floor)


def test_configure_changes_the_detector(model: SileroModel, utterance: Utterance) -> None:
    pcm = mix(silence(LEAD_MS), utterance.samples, silence(TAIL_MS))
    vad = SileroVad(model)
    vad.configure(threshold=0.5, prefix_padding_ms=0, silence_duration_ms=700)
    started, stopped = (e for e, _, _ in run(vad, pcm))
    assert isinstance(started, SpeechStarted) and isinstance(stopped, SpeechStopped)
    assert abs(started.audio_start_ms - (LEAD_MS + utterance.voiced_from_ms)) <= TOLERANCE_MS
    assert abs(stopped.audio_end_ms - 700 - (LEAD_MS + utterance.voiced_to_ms)) <= TOLERANCE_MS


def test_the_bundled_model_is_the_expected_file() -> None:
    import hashlib

    path = bundled_model_path()
    assert path.name == "silero_vad_v6.onnx"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == MODEL_SHA256


def test_a_tampered_model_is_refused(tmp_path: Path) -> None:
    data = bytearray(bundled_model_path().read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered = tmp_path / "silero_vad_v6.onnx"
    tampered.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=f"expected {MODEL_SHA256}"):
        SileroModel(tampered)


def test_a_missing_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        SileroModel(tmp_path / "silero_vad_v6.onnx")


def test_load_vad_by_name(model: SileroModel) -> None:
    assert isinstance(load_vad("silero", model=model), SileroVad)
    assert isinstance(load_vad("silero"), SileroVad)
    assert isinstance(load_vad("energy"), EnergyVad)
    with pytest.raises(ConfigError, match="Unknown VAD"):
        load_vad("webrtc")
