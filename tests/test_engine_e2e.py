"""A real offline voice conversation through the gateway and its embedded local engine.

The user's speech is synthesised by piper, streamed in 20 ms appends with the official SDK; the
engine (Silero VAD, Whisper tiny.en, echo brain, piper voice) hears it, answers it aloud, and the
gateway meters it.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

import numpy as np
from openai import AsyncOpenAI

from rtgate.config import Settings
from tests.sdk_events import validate_server_event
from tests.speech import speak

SENTENCE = "What is the weather like in Paris today?"


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def word_errors(ref: str, hyp: str) -> int:
    r, h = normalise(ref).split(), normalise(hyp).split()
    d = list(range(len(h) + 1))
    for i in range(1, len(r) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(h) + 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
            prev, d[j] = d[j], cur
    return d[len(h)]


def voiced_edges_ms(pcm: bytes) -> tuple[int, int]:
    """First and last 20 ms frame louder than -45 dBFS."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    frames = x[: len(x) // 480 * 480].reshape(-1, 480)
    level = 20 * np.log10(np.sqrt(np.mean(frames**2, axis=1)) / 32768 + 1e-9)
    loud = np.nonzero(level > -45)[0]
    return int(loud[0]) * 20, (int(loud[-1]) + 1) * 20


async def test_a_spoken_turn_is_heard_answered_aloud_and_metered(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any]
) -> None:
    gw = await start_gateway(make_settings(OPENAI_API_KEY=""))
    key = await gw.new_key()
    client = AsyncOpenAI(api_key=key, base_url=f"{gw.http}/v1", websocket_base_url=f"{gw.ws}/v1")
    speech = bytes(48 * 600) + speak(SENTENCE) + bytes(48 * 1500)
    events: list[dict[str, Any]] = []
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(
            session={
                "type": "realtime",
                "audio": {
                    "input": {
                        "transcription": {"model": "gpt-4o-mini-transcribe"},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                    }
                },
            }
        )
        for off in range(0, len(speech), 960):
            await conn.input_audio_buffer.append(
                audio=base64.b64encode(speech[off : off + 960]).decode()
            )
        seen: set[str] = set()
        async for event in conn:
            raw = event.model_dump(exclude_unset=True)
            events.append(raw)
            seen.add(raw["type"])
            if {"response.done", "conversation.item.input_audio_transcription.completed"} <= seen:
                break
    for e in events:
        validate_server_event(e)
    types = [e["type"] for e in events]
    order = [
        "session.created",
        "session.updated",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "response.created",
        "response.output_audio.delta",
        "response.done",
    ]
    positions = [types.index(t) for t in order]
    assert positions == sorted(positions), list(zip(order, positions, strict=True))

    started = next(e for e in events if e["type"] == "input_audio_buffer.speech_started")
    stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
    onset, end = voiced_edges_ms(speak(SENTENCE))
    # audio_start_ms includes the 300 ms prefix padding; audio_end_ms the 500 ms silence.
    assert abs(started["audio_start_ms"] - (600 + onset - 300)) <= 150, started
    assert abs(stopped["audio_end_ms"] - (600 + end + 500)) <= 150, stopped
    assert started["item_id"] == stopped["item_id"]

    heard = next(
        e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"
    )
    assert word_errors(SENTENCE, heard["transcript"]) <= 1, heard["transcript"]
    assert heard["usage"]["type"] == "tokens" and heard["usage"]["input_tokens"] > 0

    done = next(e for e in events if e["type"] == "response.done")["response"]
    said = done["output"][0]["content"][0]["transcript"]
    assert word_errors(SENTENCE, said) <= 1, said  # the echo brain repeats what it heard
    audio = b"".join(
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )
    assert len(audio) % 2 == 0 and len(audio) > 48 * 1000  # PCM16, more than a second
    samples = np.frombuffer(audio, dtype="<i2").astype(np.float64)
    assert np.sqrt(np.mean(samples**2)) > 300  # speech, not silence
    usage = done["usage"]
    assert usage["output_token_details"]["audio_tokens"] == len(audio) // 48 // 50

    rows = {r.model: r for r in await gw.store.usage_summary()}
    assert rows["gpt-realtime"].usage.audio_out == usage["output_token_details"]["audio_tokens"]
    assert rows["gpt-realtime"].usage.audio_in == usage["input_token_details"]["audio_tokens"]
    assert rows["gpt-4o-mini-transcribe"].usage.audio_in == heard["usage"]["input_tokens"]
