"""Legacy beta clients (``client.beta.realtime``) through the gateway to a GA provider."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import orjson
from openai import AsyncOpenAI
from openai.types.beta.realtime import RealtimeServerEvent as BetaServerEvent
from pydantic import TypeAdapter
from websockets.asyncio.client import connect

from rtgate.protocol.beta import GA_ONLY_SERVER_EVENTS
from tests.conftest import RunningGateway
from tests.provider import FakeProvider
from tests.test_beta_sdk_unions import GA_SERVER, minimal

_BETA_SERVER = TypeAdapter(BetaServerEvent)


def validate_beta_event(event: dict[str, Any]) -> None:
    """Raise if ``event`` is not a valid beta server event of its declared type."""
    parsed = _BETA_SERVER.validate_python(event)
    assert parsed.type == event["type"], (parsed.type, event["type"])


def client_for(gw: RunningGateway, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, base_url=f"{gw.http}/v1", websocket_base_url=f"{gw.ws}/v1")


async def collect_until(conn: Any, last: str) -> list[dict[str, Any]]:
    """Events up to ``last``; a ``last`` that never comes fails the test instead of hanging."""
    events = []
    async with asyncio.timeout(10):
        async for event in conn:
            raw = event.model_dump(exclude_unset=True)
            events.append(raw)
            if raw["type"] == last:
                break
    return events


async def test_beta_sdk_session_update_text_and_audio_turns_are_beta_and_metered(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    key = await gateway.new_key()
    async with client_for(gateway, key).beta.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(
            session={
                "modalities": ["text", "audio"],
                "instructions": "Be brief.",
                "voice": "ash",
                "input_audio_format": "pcm16",
                "output_audio_format": "g711_ulaw",
                "input_audio_transcription": {"model": "gpt-4o-mini-transcribe"},
                "turn_detection": None,
                "max_response_output_tokens": 200,
                "temperature": 0.7,
            }
        )
        events = await collect_until(conn, "session.updated")

        # A text-only turn.
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "good morning to you"}],
            }
        )
        await conn.response.create(response={"modalities": ["text"]})
        text_turn = await collect_until(conn, "response.done")

        # An audio turn, in the session's G.711 u-law.
        await conn.response.create(response={"modalities": ["audio", "text"]})
        audio_turn = await collect_until(conn, "response.done")
    events += text_turn + audio_turn

    for e in events:
        validate_beta_event(e)
    types = {e["type"] for e in events}
    assert not {t for t in types if "output_audio" in t or "output_text" in t}
    assert "conversation.item.added" not in types and "conversation.item.done" not in types

    # The GA session.update reached the provider: its answer, back in beta shape, shows it.
    assert events[0]["type"] == "session.created"
    updated = next(e for e in events if e["type"] == "session.updated")["session"]
    assert "type" not in updated and "audio" not in updated
    assert updated["modalities"] == ["text", "audio"]
    assert updated["voice"] == "ash"
    assert updated["instructions"] == "Be brief."
    assert updated["input_audio_format"] == "pcm16"
    assert updated["output_audio_format"] == "g711_ulaw"
    assert updated["input_audio_transcription"]["model"] == "gpt-4o-mini-transcribe"
    assert updated["turn_detection"] is None
    assert updated["max_response_output_tokens"] == 200

    # The text turn arrives as beta text events with beta content types.
    tt = [e["type"] for e in text_turn]
    assert "conversation.item.created" in tt
    assert "response.text.delta" in tt and "response.text.done" in tt
    text = "".join(e["delta"] for e in text_turn if e["type"] == "response.text.delta")
    assert text.strip() == "good morning to you"
    done = text_turn[-1]["response"]
    assert done["modalities"] == ["text"]
    assert done["output"][0]["content"][0]["type"] == "text"

    # The audio turn arrives as beta audio events.
    at = [e["type"] for e in audio_turn]
    for t in (
        "response.audio.delta",
        "response.audio.done",
        "response.audio_transcript.delta",
        "response.audio_transcript.done",
    ):
        assert t in at, t
    part = next(e for e in audio_turn if e["type"] == "response.content_part.added")["part"]
    assert part["type"] == "audio"
    audio = b"".join(
        base64.b64decode(e["delta"]) for e in audio_turn if e["type"] == "response.audio.delta"
    )
    assert len(audio) > 0
    done = audio_turn[-1]["response"]
    assert done["modalities"] == ["text", "audio"]
    assert done["output"][0]["content"][0]["type"] == "audio"
    assert done["output_audio_format"] == "g711_ulaw"
    assert "image_tokens" not in done["usage"]["input_token_details"]

    # The provider was dialled GA, and both responses were metered from the GA frames.
    assert "OpenAI-Beta" not in provider.upgrades[-1].headers
    (row,) = await gateway.store.usage_summary()
    assert row.model == "gpt-realtime"
    assert row.records == 2
    assert row.charged_nanos > 0
    usage = done["usage"]
    assert row.usage.audio_out == usage["output_token_details"]["audio_tokens"] > 0


async def test_beta_subprotocol_is_accepted_and_realtime_stays_selected(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    key = await gateway.new_key()
    url = f"{gateway.ws}/v1/realtime?model=gpt-realtime"
    offered = ["realtime", f"openai-insecure-api-key.{key}", "openai-beta.realtime-v1"]
    async with connect(url, subprotocols=offered) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "realtime"
        created = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        assert created["type"] == "session.created"
        assert "audio" not in created["session"] and "input_audio_format" in created["session"]
    async with connect(url, subprotocols=offered[1:]) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "openai-beta.realtime-v1"
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "session.created"
    assert all("OpenAI-Beta" not in u.headers for u in provider.upgrades)


async def test_ga_only_events_never_reach_a_beta_client(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    key = await gateway.new_key()
    url = f"{gateway.ws}/v1/realtime?model=gpt-realtime"
    offered = ["realtime", f"openai-insecure-api-key.{key}", "openai-beta.realtime-v1"]
    mcp_call = minimal(GA_SERVER["response.output_item.added"]) | {
        "item": {"type": "mcp_call", "id": "i", "server_label": "s", "name": "n", "arguments": ""}
    }
    text = {"type": "response.output_text.delta", "event_id": "e", "response_id": "r"}
    text |= {"item_id": "i", "output_index": 0, "content_index": 0, "delta": "hi"}
    async with connect(url, subprotocols=offered) as ws:  # type: ignore[arg-type]
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "session.created"
        for event in [*(minimal(GA_SERVER[t]) for t in sorted(GA_ONLY_SERVER_EVENTS)), mcp_call]:
            await ws.send(orjson.dumps({"type": "test.emit", "event": event}).decode())
        await ws.send(orjson.dumps({"type": "test.emit", "event": text}).decode())
        # Sent after all the others, and the first to arrive: the others were dropped.
        got = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
    assert got == {**text, "type": "response.text.delta"}
    validate_beta_event(got)
