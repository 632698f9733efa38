"""The official SDK, unchanged but for its URLs, through the gateway to the fake provider."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

from openai import AsyncOpenAI

from rtgate.metering.cost import usd
from tests.conftest import RunningGateway
from tests.provider import FakeProvider
from tests.sdk_events import validate_server_event


def client_for(gw: RunningGateway, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, base_url=f"{gw.http}/v1", websocket_base_url=f"{gw.ws}/v1")


def tone(ms: int, amp: int = 8000) -> bytes:
    n = 24 * ms
    return struct.pack(
        f"<{n}h", *(int(amp * math.sin(2 * math.pi * 300 * i / 24000)) for i in range(n))
    )


async def collect_until(conn: Any, last: str) -> list[dict[str, Any]]:
    events = []
    async for event in conn:
        raw = event.model_dump(exclude_unset=True)
        events.append(raw)
        if raw["type"] == last:
            break
    return events


async def test_text_turn_through_sdk_is_relayed_validated_and_metered(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    key = await gateway.new_key()
    client = client_for(gateway, key)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={"type": "realtime", "instructions": "Be brief."})
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "good morning to you"}],
            }
        )
        await conn.response.create()
        events = await collect_until(conn, "response.done")
    for e in events:
        validate_server_event(e)
    types = [e["type"] for e in events]
    assert types[0] == "session.created"
    assert "session.updated" in types
    assert types.index("response.created") < types.index("response.output_audio.delta")
    done = events[-1]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"][0]["transcript"] == "good morning to you"
    audio = b"".join(
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )
    assert len(audio) > 0 and len(audio) % 2 == 0

    # The provider saw the provider key and the upstream model, never the gateway key.
    up = provider.upgrades[-1]
    assert up.headers["Authorization"] == f"Bearer {provider.key}"
    assert key not in str(up.headers)
    assert up.query["model"] == "gpt-realtime"
    assert "OpenAI-Beta" not in up.headers

    usage = done["usage"]
    rows = await gateway.store.usage_summary()
    assert len(rows) == 1
    row = rows[0]
    assert row.model == "gpt-realtime"
    assert row.records == 1
    itd, otd = usage["input_token_details"], usage["output_token_details"]
    assert row.usage.text_in == itd["text_tokens"]
    assert row.usage.audio_in == itd["audio_tokens"]
    assert row.usage.text_out == otd["text_tokens"]
    assert row.usage.audio_out == otd["audio_tokens"]
    # $4 / $16 text and $32 / $64 audio per 1M tokens (the seed's prices).
    expected = (
        itd["text_tokens"] * 4
        + itd["audio_tokens"] * 32
        + otd["text_tokens"] * 16
        + otd["audio_tokens"] * 64
    ) * 1000
    assert row.charged_nanos == expected == row.provider_nanos
    assert usd(row.charged_nanos) > 0


async def test_voice_turn_with_server_vad_and_input_transcription(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    key = await gateway.new_key()
    client = client_for(gateway, key)
    async with client.realtime.connect(model="gpt-realtime-mini") as conn:
        await conn.session.update(
            session={
                "type": "realtime",
                "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}},
            }
        )
        speech = tone(600) + bytes(48 * 400)
        for off in range(0, len(speech), 960):
            await conn.input_audio_buffer.append(
                audio=base64.b64encode(speech[off : off + 960]).decode()
            )
        events = await collect_until(conn, "response.done")
        seen = {e["type"] for e in events}
        if "conversation.item.input_audio_transcription.completed" not in seen:
            events += await collect_until(
                conn, "conversation.item.input_audio_transcription.completed"
            )
    for e in events:
        validate_server_event(e)
    types = [e["type"] for e in events]
    for t in (
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "response.done",
    ):
        assert t in types, t
    started = next(e for e in events if e["type"] == "input_audio_buffer.speech_started")
    stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
    assert started["audio_start_ms"] == 0
    assert 600 <= stopped["audio_end_ms"] <= 900
    rows = await gateway.store.usage_summary()
    by_model = {r.model: r for r in rows}
    assert by_model["gpt-4o-mini-transcribe"].usage.audio_in > 0
    assert by_model["gpt-realtime-mini"].records == 1


async def test_without_a_provider_key_the_local_engine_answers(
    make_settings: Any, start_gateway: Any, provider: FakeProvider
) -> None:
    gw = await start_gateway(make_settings(OPENAI_API_KEY=""))
    assert gw.settings.default_upstream == "local"
    key = await gw.new_key()
    async with client_for(gw, key).realtime.connect(model="gpt-realtime") as conn:
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "offline hello"}],
            }
        )
        await conn.response.create(response={"output_modalities": ["text"]})
        events = await collect_until(conn, "response.done")
    for e in events:
        validate_server_event(e)
    assert provider.upgrades == []
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text.strip() == "offline hello"
    (sess,) = await gw.store.recent_sessions()
    assert sess.upstream == "local"
    (row,) = await gw.store.usage_summary()
    assert row.usage.text_out > 0
    assert row.charged_nanos == 0  # the local engine is free
