"""The official ``openai`` SDK's realtime client, through rtgate by base URL only, to a model
served by the fake Gemini Live upstream (``tests/gemini_fake.py``)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
import websockets
from openai import AsyncOpenAI

import tests.gemini_fake
from rtgate.api.live import SessionClosedByOperator
from rtgate.auth.policy import KeyPolicy
from rtgate.config import DEFAULT_PRICES, Settings
from rtgate.metering.cost import NANOS_PER_USD
from rtgate.relay.endpoint import GATEWAY
from tests.conftest import RunningGateway, events_until
from tests.gemini_fake import GEMINI_KEY, FakeGemini, inject, speech24k
from tests.polling import until as polled
from tests.sdk_events import beta_server_errors, validate_server_event
from tests.test_calls import OFFER, openai_error

CONFIG = """
[upstreams.gemini]
kind = "gemini"

[models.gemini-live]
upstream = "gemini"
upstream_model = "gemini-3.8-live"
"""


@pytest.fixture
async def fake() -> AsyncIterator[FakeGemini]:
    f = FakeGemini()
    await f.start()
    yield f
    await f.stop()


@pytest.fixture
async def gw(
    tmp_path: Path,
    fake: FakeGemini,
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
) -> RunningGateway:
    config = tmp_path / "rtgate.toml"
    config.write_text(CONFIG)
    settings = make_settings(
        RTGATE_CONFIG=str(config), RTGATE_GEMINI_BASE_URL=fake.base_url, GEMINI_API_KEY=GEMINI_KEY
    )
    started: RunningGateway = await start_gateway(settings)
    return started


def sdk(gw: RunningGateway, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, base_url=f"{gw.http}/v1", websocket_base_url=f"{gw.ws}/v1")


async def until(conn: Any, last: str) -> list[dict[str, Any]]:
    """The events up to and including the first ``last``, each validated with the SDK's types."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        async for event in conn:
            raw = event.model_dump(exclude_unset=True)
            validate_server_event(raw)
            events.append(raw)
            if raw["type"] == last:
                return events
    raise AssertionError(f"closed before {last}: {[e['type'] for e in events]}")


async def say(conn: Any, text: str) -> None:
    await conn.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    )
    await conn.response.create()


async def append(conn: Any, pcm: bytes) -> None:
    for off in range(0, len(pcm), 960):  # 20 ms
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[off : off + 960]).decode())


def priced_nanos(meta: dict[str, Any]) -> int:
    """One ``usageMetadata`` the fake sent, priced by hand at the gemini-3.8-live row: the text
    gap and thinking tokens at the text rates, cached input none (the fake reports none)."""
    p = DEFAULT_PRICES["gemini-3.8-live"]
    by = {d["modality"]: d["tokenCount"] for d in meta["promptTokensDetails"]}
    text_in = meta["promptTokenCount"] - by["AUDIO"]  # the TEXT details plus the gap
    out = meta.get("responseTokenCount", meta.get("candidatesTokenCount", 0))
    exact = (
        (
            text_in * p.text_in
            + by["AUDIO"] * p.audio_in
            + out * p.audio_out
            + meta["thoughtsTokenCount"] * p.text_out
        )
        * NANOS_PER_USD
        / Decimal(1_000_000)
    )
    return int(exact.to_integral_value())


async def test_a_text_turn_is_translated_validated_and_billed_to_the_nano_dollar(
    gw: RunningGateway, fake: FakeGemini
) -> None:
    key = await gw.new_key()
    async with sdk(gw, key).realtime.connect(model="gemini-live") as conn:
        await conn.session.update(session={"type": "realtime", "instructions": "Be brief."})
        await say(conn, "good morning")
        events = await until(conn, "response.done")
    types = [e["type"] for e in events]
    assert types[0] == "session.created"
    assert "error" not in types
    assert types.index("response.created") < types.index("response.output_audio.delta")
    done = events[-1]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"][0]["transcript"] == fake.answer
    # Google's protocol upstream: the model in setup, its own key header, nothing of ours.
    (up,) = fake.connections
    assert up["headers"]["x-goog-api-key"] == GEMINI_KEY
    assert "Authorization" not in up["headers"]
    assert key not in str(up["headers"])
    setup = fake.received[0]["setup"]
    assert setup["model"] == "models/gemini-3.8-live"
    assert setup["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    # Billed per turn at the Gemini row, to the nano-dollar, from what the fake reported.
    (row,) = await gw.store.usage_summary()
    assert row.model == "gemini-live"
    assert row.records == 1
    (meta,) = fake.usage_sent
    assert row.usage.audio_out == meta["responseTokenCount"] > 0
    assert row.usage.text_out == meta["thoughtsTokenCount"]
    assert row.provider_nanos == row.charged_nanos == priced_nanos(meta)


async def test_a_spoken_turn_with_transcripts_resampled_to_16k(
    gw: RunningGateway, fake: FakeGemini
) -> None:
    key = await gw.new_key()
    async with sdk(gw, key).realtime.connect(model="gemini-live") as conn:
        await conn.session.update(
            session={"type": "realtime", "audio": {"input": {"transcription": {"model": "x"}}}}
        )
        await append(conn, speech24k(600) + bytes(48 * 600))
        events = await until(conn, "response.done")
    types = [e["type"] for e in events]
    completed = next(
        e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"
    )
    assert completed["transcript"].strip() == fake.heard
    assert "conversation.item.input_audio_transcription.delta" in types
    assert types.index("conversation.item.input_audio_transcription.completed") < types.index(
        "response.created"
    )
    assert [e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta"]
    assert events[-1]["response"]["output"][0]["content"][0]["transcript"] == fake.answer
    assert fake.audio_rates == {"16000"}
    # 1.2 s of 24 kHz input reached Gemini as about 1.2 s at 16 kHz (the filter's tail held).
    heard = sum(
        len(base64.b64decode(m["realtimeInput"]["audio"]["data"]))
        for m in fake.received
        if "audio" in m.get("realtimeInput", {})
    )
    assert 2 * 16000 * 1.1 <= heard <= 2 * 16000 * 1.2
    rows = await gw.store.usage_summary()
    assert sum(r.records for r in rows) == 1  # the transcript carries no usage of its own


async def test_a_tool_call_round_trip(gw: RunningGateway, fake: FakeGemini) -> None:
    key = await gw.new_key()
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    async with sdk(gw, key).realtime.connect(model="gemini-live") as conn:
        await conn.session.update(session={"type": "realtime", "tools": [tool]})
        await say(conn, "what's the weather in Paris")
        first = await until(conn, "response.done")
        call = next(e for e in first if e["type"] == "response.function_call_arguments.done")
        assert call["name"] == "get_weather"
        assert call["arguments"] == '{"city":"Paris"}'
        assert first[-1]["response"]["output"][0]["type"] == "function_call"
        await conn.conversation.item.create(
            item={
                "type": "function_call_output",
                "call_id": call["call_id"],
                "output": '{"sky": "18C cloudy"}',
            }
        )
        await conn.response.create()
        second = await until(conn, "response.done")
    assert "error" not in [e["type"] for e in first + second]
    assert second[-1]["response"]["status"] == "completed"
    assert second[-1]["response"]["output"][0]["content"][0]["transcript"] == "It is 18C cloudy"
    (resp,) = [m["toolResponse"] for m in fake.received if "toolResponse" in m]
    assert resp["functionResponses"] == [
        {"id": call["call_id"], "name": "get_weather", "response": {"sky": "18C cloudy"}}
    ]
    # Both turns billed, each re-billing the whole context, summed (docs/protocol-gemini.md 2).
    (row,) = await gw.store.usage_summary()
    assert row.records == 2 == len(fake.usage_sent)
    assert row.charged_nanos == sum(priced_nanos(m) for m in fake.usage_sent)


async def test_barge_in_ends_the_response_cancelled(gw: RunningGateway, fake: FakeGemini) -> None:
    fake.answer = "one two three four five six seven eight nine ten eleven twelve"
    fake.pace = 0.05
    key = await gw.new_key()
    async with sdk(gw, key).realtime.connect(model="gemini-live") as conn:
        await say(conn, "count for me")
        await until(conn, "response.output_audio.delta")
        await append(conn, speech24k(300))
        events = await until(conn, "response.done")
    types = [e["type"] for e in events]
    assert "input_audio_buffer.speech_started" in types
    assert types.index("input_audio_buffer.speech_started") < types.index("response.done")
    done = events[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    # The interrupted turn is billed too.
    (row,) = await gw.store.usage_summary()
    assert row.charged_nanos == priced_nanos(fake.usage_sent[-1]) > 0


async def test_go_away_is_resumed_without_the_client_noticing(
    gw: RunningGateway, fake: FakeGemini
) -> None:
    key = await gw.new_key()
    async with sdk(gw, key).realtime.connect(model="gemini-live") as conn:
        await say(conn, "first")
        first = await until(conn, "response.done")
        await fake.go_away(0.3)
        await asyncio.sleep(0.6)  # the old connection is gone by now
        await say(conn, "second")
        second = await until(conn, "response.done")
    assert len(fake.connections) == 2
    setups = [m["setup"] for m in fake.received if "setup" in m]
    assert "handle" not in setups[0]["sessionResumption"]
    assert setups[1]["sessionResumption"]["handle"].startswith("h_")
    types = [e["type"] for e in first + second]
    assert types.count("session.created") == 1
    assert "error" not in types
    assert second[-1]["response"]["status"] == "completed"
    (row,) = await gw.store.usage_summary()
    assert row.records == 2


async def test_malformed_and_unexpected_gemini_messages_get_a_clear_error(
    gw: RunningGateway, fake: FakeGemini
) -> None:
    key = await gw.new_key()
    async with sdk(gw, key).realtime.connect(model="gemini-live") as conn:
        await say(conn, "hello")
        await until(conn, "response.done")
        await inject(fake, "{not json")
        err = (await until(conn, "error"))[-1]["error"]
        assert err["code"] == "upstream_protocol_error"
        await inject(fake, '{"brandNewMessage": {}}')
        err = (await until(conn, "error"))[-1]["error"]
        assert "brandNewMessage" in err["message"]
        # The session goes on.
        await say(conn, "again")
        assert (await until(conn, "response.done"))[-1]["response"]["status"] == "completed"


async def test_a_refused_gemini_key_is_an_error_event_and_a_close(
    gw: RunningGateway, fake: FakeGemini
) -> None:
    fake.key = "AIzaSomeOtherKey0123456789abcdefghijklmno"
    key = await gw.new_key()
    async with sdk(gw, key).realtime.connect(model="gemini-live") as conn:
        await say(conn, "hello")
        events = await until(conn, "error")
    err = events[-1]["error"]
    # Our key was refused, not the client's: reworded, and no key quoted.
    assert err["code"] == "upstream_auth_failed"
    assert GEMINI_KEY not in str(events)


async def test_a_later_session_update_is_refused_and_the_session_goes_on(
    gw: RunningGateway, fake: FakeGemini
) -> None:
    key = await gw.new_key()
    async with sdk(gw, key).realtime.connect(model="gemini-live") as conn:
        await say(conn, "hello")
        await until(conn, "response.done")
        await conn.session.update(session={"type": "realtime", "instructions": "Be verbose."})
        err = (await until(conn, "error"))[-1]["error"]
        assert err["code"] == "session_update_not_supported"
        await say(conn, "again")
        assert (await until(conn, "response.done"))[-1]["response"]["status"] == "completed"
    assert sum("setup" in m for m in fake.received) == 1
    assert fake.closes == []


async def test_policy_transcripts_and_a_forced_close_apply_unchanged(
    gw: RunningGateway, fake: FakeGemini
) -> None:
    g = gw.app[GATEWAY]
    _, key = await g.keyring.create("scribe", KeyPolicy(keep_transcripts=True))
    async with sdk(gw, key).realtime.connect(model="gemini-live") as conn:
        await conn.session.update(
            session={"type": "realtime", "audio": {"input": {"transcription": {"model": "x"}}}}
        )
        await say(conn, "note this")
        await until(conn, "response.done")
        (live,) = g.live.values()
        session_id = live.session.session_id
        await live.terminate(SessionClosedByOperator("Closed by the operator."))
        err = (await until(conn, "error"))[-1]["error"]
        assert err["code"] == SessionClosedByOperator.code
    await g.live.none_left()
    entries = await gw.store.session_transcript(session_id)
    said = [(e.role, e.text) for e in entries if e.role in ("user", "assistant")]
    assert said == [("user", "note this"), ("assistant", fake.answer)]
    # A key that may not use the model is refused the existing way, before any dial.
    _, other = await g.keyring.create("other", KeyPolicy(models=("gpt-realtime",)))
    dialled = len(fake.connections)
    async with sdk(gw, other).realtime.connect(model="gemini-live") as conn:
        refused = await until(conn, "error")
    assert refused[-1]["error"]["code"] == "model_not_allowed"
    assert len(fake.connections) == dialled


async def test_sessions_gemini_cannot_serve_are_refused_before_dialling(
    gw: RunningGateway, fake: FakeGemini
) -> None:
    key = await gw.new_key()
    async with websockets.connect(
        f"{gw.ws}/v1/realtime?model=gemini-live&intent=transcription",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        (event,) = await events_until(ws, "error")
        assert event["error"]["code"] == "unsupported_upstream"
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1008
    assert fake.connections == []


async def test_a_beta_client_talks_to_gemini_through_both_translations(
    gw: RunningGateway, fake: FakeGemini
) -> None:
    key = await gw.new_key()
    async with sdk(gw, key).beta.realtime.connect(model="gemini-live") as conn:
        await conn.session.update(
            session={
                "instructions": "Be brief.",
                "voice": "ash",
                "output_audio_format": "g711_ulaw",
            }
        )
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "hi"}],
            }
        )
        await conn.response.create()
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            async for event in conn:
                raw = event.model_dump(exclude_unset=True)
                assert beta_server_errors(raw) == []
                events.append(raw)
                if raw["type"] == "response.done":
                    break
    types = [e["type"] for e in events]
    assert "error" not in types
    assert "response.audio.delta" in types  # the beta name
    assert events[-1]["response"]["status"] == "completed"
    setup = fake.received[0]["setup"]
    assert setup["generationConfig"]["speechConfig"]["voiceConfig"]["prebuiltVoiceConfig"] == {
        "voiceName": "Charon"
    }
    # G.711 mu-law at 8 kHz: 8 bytes a millisecond of the 24 kHz PCM Gemini sent.
    ulaw = sum(
        len(base64.b64decode(e["delta"])) for e in events if e["type"] == "response.audio.delta"
    )
    pcm = sum(
        len(base64.b64decode(p["inlineData"]["data"]))
        for m in fake.sent
        for p in m.get("serverContent", {}).get("modelTurn", {}).get("parts", [])
    )
    assert abs(ulaw - pcm // 6) <= 16


async def test_a_call_to_a_gemini_model_is_refused(gw: RunningGateway, fake: FakeGemini) -> None:
    key = await gw.new_key()
    async with sdk(gw, key) as client:
        with pytest.raises(openai.APIStatusError) as refused:
            await client.realtime.calls.create(
                sdp=OFFER, session={"type": "realtime", "model": "gemini-live"}
            )
    assert refused.value.status_code == 400
    assert openai_error(refused.value)["code"] == "unsupported_upstream"
    assert fake.connections == []


async def test_a_budget_the_cap_and_the_metrics_apply_to_a_gemini_session(
    gw: RunningGateway, fake: FakeGemini
) -> None:
    """Everything else applies unchanged: a budget crossed by a Gemini turn's usage ends the
    session with ``insufficient_quota``, a key's ``max_duration`` ends another with
    ``session_expired``, and /metrics counts both under the catalog's model name."""
    g = gw.app[GATEWAY]
    _, capped = await g.keyring.create("capped", KeyPolicy(budget_total_nanos=1))
    async with sdk(gw, capped).realtime.connect(model="gemini-live") as conn:
        await say(conn, "hello")
        events = await until(conn, "error")
        done = [e for e in events if e["type"] == "response.done"]
        assert done and done[0]["response"]["usage"]["total_tokens"] > 0  # billed, then sent
        assert events[-1]["error"]["code"] == "insufficient_quota"
        with pytest.raises(websockets.ConnectionClosed):
            await conn.recv()
    _, brief = await g.keyring.create("brief", KeyPolicy(max_duration_s=1))
    async with sdk(gw, brief).realtime.connect(model="gemini-live") as conn:
        await until(conn, "session.created")
        err = (await until(conn, "error"))[-1]["error"]
        assert err["code"] == "session_expired"
    await g.live.none_left()
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{gw.http}/metrics") as r,
    ):
        metrics = await r.text()
    assert 'rtgate_sessions_started_total{model="gemini-live"} 2.0' in metrics
    assert 'rtgate_tokens_total{kind="text_out",model="gemini-live"}' in metrics
    assert 'rtgate_sessions_ended_total{by="gateway",code="3000"} 1.0' in metrics  # the budget
    assert 'rtgate_sessions_ended_total{by="gateway",code="1001"} 1.0' in metrics  # the cap


async def test_a_client_that_leaves_before_the_turn_completes_is_billed_for_it(
    gw: RunningGateway, fake: FakeGemini, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gemini's ``turnComplete``, with the turn's usage, trails the answer; a client that has
    the whole answer and leaves still pays for the turn Gemini ran (an audit's proof of
    concept: nothing was recorded, and a key's budget never moved)."""
    finish = tests.gemini_fake._Conn.finish_turn

    async def trailing(self: Any, interrupted: bool) -> None:
        await asyncio.sleep(0.4)
        await finish(self, interrupted)

    monkeypatch.setattr(tests.gemini_fake._Conn, "finish_turn", trailing)
    _, key = await gw.app[GATEWAY].keyring.create("leaver", KeyPolicy(budget_total_nanos=1))
    url = f"{gw.ws}/v1/realtime?model=gemini-live"
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        await ws.send(orjson.dumps({"type": "conversation.item.create", "item": item}).decode())
        await ws.send('{"type":"response.create"}')
        await events_until(ws, "response.output_audio_transcript.done")

    async def recorded() -> bool:
        rows = await gw.store.usage_summary()
        return bool(rows) and rows[0].records == 1

    await polled(recorded)
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        assert orjson.loads(await ws.recv())["error"]["code"] == "insufficient_quota"
