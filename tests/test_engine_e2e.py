"""A real offline voice conversation through the gateway and its embedded local engine.

The user's speech is synthesised by piper, streamed in 20 ms appends with the official SDK; the
engine (Silero VAD, Whisper tiny.en, echo brain, piper voice) hears it, answers it aloud, and the
gateway meters it.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from openai import AsyncOpenAI
from websockets.asyncio.client import connect

from rtgate.config import Settings
from tests.conftest import events_until
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


async def spoken_session(gw: Any, key: str, transcription_model: str, *, intent: str = "") -> None:
    """One spoken turn on the local engine, transcribed by ``transcription_model``: a realtime
    session also answers it (``response.done``), a transcription session only transcribes."""
    query = "?intent=transcription" if intent else "?model=gpt-realtime"
    kind = "transcription" if intent else "realtime"
    speech = bytes(48 * 300) + speak("Hello there.") + bytes(48 * 1200)
    async with connect(
        f"{gw.ws}/v1/realtime{query}", additional_headers={"Authorization": f"Bearer {key}"}
    ) as ws:
        await ws.send(
            orjson.dumps(
                {
                    "type": "session.update",
                    "session": {
                        "type": kind,
                        "audio": {"input": {"transcription": {"model": transcription_model}}},
                    },
                }
            ).decode()
        )
        await events_until(ws, "session.updated")
        for off in range(0, len(speech), 960):
            chunk = base64.b64encode(speech[off : off + 960]).decode()
            event = {"type": "input_audio_buffer.append", "audio": chunk}
            await ws.send(orjson.dumps(event).decode())
        wanted = {"conversation.item.input_audio_transcription.completed"}
        if not intent:
            wanted.add("response.done")
        while wanted:
            wanted.discard(orjson.loads(await asyncio.wait_for(ws.recv(), 30))["type"])


@pytest.mark.parametrize("priced", [False, True], ids=["free", "priced-by-operator"])
async def test_everything_the_local_engine_serves_costs_what_prices_local_says(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    tmp_path: Path,
    priced: bool,
) -> None:
    # Realtime tokens, transcription tokens (gpt-4o-mini-transcribe) and transcription minutes
    # (whisper-1), all served by the embedded engine: priced by the `local` row, never by
    # OpenAI's list prices for the names the client chose. Cached rates equal the uncached ones,
    # so what was cached does not change the sum.
    cfg = tmp_path / "rtgate.toml"
    cfg.write_text(
        '[prices.local]\ntext_in = "1"\ntext_cached = "1"\naudio_in = "2"\naudio_cached = "2"\n'
        'text_out = "3"\naudio_out = "4"\nunit = "minute"\nrate = "0.06"\nmarkup_percent = "50"\n'
        if priced
        else ""
    )
    gw = await start_gateway(make_settings(OPENAI_API_KEY="", RTGATE_CONFIG=str(cfg)))
    key = await gw.new_key()
    await spoken_session(gw, key, "gpt-4o-mini-transcribe")
    await spoken_session(gw, key, "whisper-1", intent="transcription")

    rows = {r.model: r for r in await gw.store.usage_summary()}
    assert set(rows) == {"gpt-realtime", "gpt-4o-mini-transcribe", "whisper-1"}
    assert rows["gpt-4o-mini-transcribe"].usage.audio_in > 0
    assert rows["whisper-1"].usage.audio_ms > 0
    for row in rows.values():
        u = row.usage
        # $1 / 1M tokens is 1000 nano-dollars a token; $0.06 a minute is 1000 a millisecond.
        listed = 1000 * u.text_in + 2000 * u.audio_in + 3000 * u.text_out + 4000 * u.audio_out
        listed += 1000 * u.audio_ms
        expected = listed if priced else 0
        assert (row.model, row.provider_nanos, row.charged_nanos) == (
            row.model,
            expected,
            expected * 3 // 2,
        )


@pytest.mark.parametrize(
    "query", ["intent=transcription", "model=gpt-realtime&intent=transcription"]
)
async def test_the_product_pages_transcription_url_transcribes_with_no_setup(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any], query: str
) -> None:
    # wss://HOST/v1/realtime?intent=transcription, speech appended, no session.update.
    gw = await start_gateway(make_settings(OPENAI_API_KEY=""))
    key = await gw.new_key()
    speech = bytes(48 * 300) + speak(SENTENCE) + bytes(48 * 1200)
    async with connect(
        f"{gw.ws}/v1/realtime?{query}", additional_headers={"Authorization": f"Bearer {key}"}
    ) as ws:
        created = orjson.loads(await ws.recv())
        validate_server_event(created)
        assert created["type"] == "session.created"
        session = created["session"]
        assert session["type"] == "transcription"
        assert session["audio"]["input"]["transcription"]["model"] == "gpt-4o-mini-transcribe"
        for off in range(0, len(speech), 960):
            chunk = base64.b64encode(speech[off : off + 960]).decode()
            await ws.send(
                orjson.dumps({"type": "input_audio_buffer.append", "audio": chunk}).decode()
            )
        while True:
            event = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
            validate_server_event(event)
            assert not event["type"].startswith("response."), event
            if event["type"] == "conversation.item.input_audio_transcription.completed":
                break
    assert word_errors(SENTENCE, event["transcript"]) <= 1, event["transcript"]
    (row,) = await gw.store.usage_summary()
    assert row.model == "gpt-4o-mini-transcribe" and row.usage.audio_in > 0


async def test_a_model_on_the_other_protocols_route_is_refused_as_the_provider_does(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any]
) -> None:
    """A newcomer's find: offline, ``gpt-realtime`` on ``/v1/live/sessions`` was served (and
    ``gpt-live-1`` on ``/v1/realtime``, the translation model too), where OpenAI refuses them,
    so a client tested against the engine passed and then failed on the provider. Refused
    before any dial, so no session is recorded."""
    gw = await start_gateway(make_settings(OPENAI_API_KEY=""))
    key = await gw.new_key()
    client = AsyncOpenAI(api_key=key, base_url=f"{gw.http}/v1", max_retries=0)
    async with client.live.connect() as live:
        await live.session.start(session={"model": "gpt-realtime"}, event_id="s1")
        error = orjson.loads(await asyncio.wait_for(live.recv_bytes(), 10))
        assert error["type"] == "error", error
        assert (error["error"]["code"], error["error"]["param"]) == (
            "model_not_found",
            "session.model",
        )
        assert error["error"]["client_event_id"] == "s1"
        with pytest.raises(Exception, match="4004"):
            await asyncio.wait_for(live.recv_bytes(), 10)
    for model in ("gpt-live-1", "gpt-realtime-translate"):
        async with connect(
            f"{gw.ws}/v1/realtime?model={model}",
            additional_headers={"Authorization": f"Bearer {key}"},
        ) as ws:
            error = orjson.loads(await ws.recv())
            validate_server_event(error)
            assert error["error"]["code"] == "model_not_found"
            assert f"`{model}` cannot be used on /v1/realtime" in error["error"]["message"]
            await ws.wait_closed()
        assert ws.close_code == 4004
    assert await gw.store.recent_sessions() == []
    # The engine's own name is served on both.
    async with client.live.connect() as live:
        await live.session.start(session={"model": "local"})
        started = orjson.loads(await asyncio.wait_for(live.recv_bytes(), 10))
        assert started["type"] == "session.started"
