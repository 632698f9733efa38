"""``/v1/realtime/translations`` over real sockets: the official SDK's
``client.realtime.translations`` through rtgate to a fake of the provider's route
(``tests/translator.py``), the input audio metered by the gateway and billed to the nano-dollar,
translation client secrets, the key's policy and the session cap, the admin's live view and
forced close, and the local engine's refusal."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeTranslationServerEvent
from pydantic import TypeAdapter
from websockets.asyncio.client import connect

from rtgate.api.live import SessionClosedByOperator
from rtgate.auth.policy import KeyPolicy
from rtgate.config import Settings
from rtgate.errors import GatewayError
from rtgate.relay.endpoint import GATEWAY
from tests.conftest import RunningGateway, events_until
from tests.provider import FakeProvider
from tests.table_rows import table_rows

SERVER_EVENT: TypeAdapter[Any] = TypeAdapter(RealtimeTranslationServerEvent)
SECONDS = 2.5
PCM = bytes(int(SECONDS * 48_000))  # 24 kHz PCM16 mono: 48,000 bytes a second


def client_for(gw: RunningGateway, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, base_url=f"{gw.http}/v1", websocket_base_url=f"{gw.ws}/v1")


def chunks(pcm: bytes, size: int = 9600) -> list[str]:
    return [base64.b64encode(pcm[i : i + size]).decode() for i in range(0, len(pcm), size)]


async def until_no_live_sessions(gw: RunningGateway) -> None:
    async with asyncio.timeout(5):
        while len(gw.app[GATEWAY].live):  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@pytest.fixture
def settings_every_second(make_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    cfg = tmp_path / "rtgate.toml"
    cfg.write_text(
        'translation_record_seconds = 1\n[prices.gpt-realtime-translate]\nmarkup_percent = "20"\n'
    )
    return make_settings(RTGATE_CONFIG=str(cfg))


async def test_the_sdk_translates_through_rtgate_and_the_audio_is_billed_to_the_nano_dollar(
    settings_every_second: Settings,
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await start_gateway(settings_every_second)
    key = await gw.new_key()
    seen: list[Any] = []
    async with client_for(gw, key).realtime.translations.connect(
        model="gpt-realtime-translate"
    ) as conn:
        created = SERVER_EVENT.validate_json(await conn.recv_bytes())
        assert created.type == "session.created"
        assert (created.session.type, created.session.model) == (
            "translation",
            "gpt-realtime-translate",
        )
        await conn.session.update(
            session={"audio": {"output": {"language": "es"}, "input": {"transcription": None}}}
        )
        updated = SERVER_EVENT.validate_json(await conn.recv_bytes())
        assert updated.type == "session.updated"
        assert updated.session.audio.output.language == "es"
        for audio in chunks(PCM):
            await conn.session.input_audio_buffer.append(audio=audio)
        await conn.session.close()
        while True:
            event = SERVER_EVENT.validate_json(await conn.recv_bytes())
            seen.append(event)
            if event.type == "session.closed":
                break
    kinds = [e.type for e in seen]
    assert kinds.count("session.output_audio.delta") == 13  # 12 frames of 200 ms and the rest
    assert "session.output_transcript.delta" in kinds
    translated = b"".join(
        base64.b64decode(e.delta) for e in seen if e.type == "session.output_audio.delta"
    )
    assert len(translated) == len(PCM)

    (up,) = provider.upgrades
    assert (up.path, up.query) == ("/v1/realtime/translations", {"model": "gpt-realtime-translate"})
    assert provider.translations[0].received == len(PCM)

    # Recorded every second of audio and the rest at the end: 1 s, 1 s, 0.5 s. $0.034 a
    # minute: a second is 566,666.67 nanos to the provider, 680,000 charged at 20 %; the parts
    # are costed as their running total, so they sum to the 2.5 s's 1,416,667 (not 1,416,667
    # + 1 of each part rounded alone).
    await until_no_live_sessions(gw)
    rows = await table_rows(gw.store, "SELECT * FROM usage_records ORDER BY id")
    (srow,) = await table_rows(gw.store, "SELECT * FROM sessions")
    model = "gpt-realtime-translate"
    assert [(r.model, r.price_key, r.kind, r.unit, r.metered_by, r.ref) for r in rows] == [
        (model, model, "translation", "minute", "gateway", None)
    ] * 3
    assert [(r.audio_ms, r.provider_nanos, r.charged_nanos) for r in rows] == [
        (1000, 566_667, 680_000),
        (1000, 566_666, 680_000),
        (500, 283_334, 340_000),
    ]
    assert sum(r.provider_nanos for r in rows) == 1_416_667  # 2.5 s at $0.034 a minute
    assert sum(r.audio_ms for r in rows) * 48 == provider.translations[0].received
    assert (srow.model, srow.intent, srow.close_code) == (
        "gpt-realtime-translate",
        "translation",
        1000,
    )


async def test_a_translation_secret_opens_a_translation_session_with_its_language(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await start_gateway(make_settings())
    key = await gw.new_key()
    async with client_for(gw, key) as client:
        minted = await client.realtime.translations.client_secrets.create(
            session={"model": "gpt-realtime-translate", "audio": {"output": {"language": "fr"}}},
            expires_after={"anchor": "created_at", "seconds": 60},
        )
        assert minted.value.startswith("ek_")
        assert (minted.session.type, minted.session.model) == (
            "translation",
            "gpt-realtime-translate",
        )
        assert minted.session.audio.output is not None
        assert minted.session.audio.output.language == "fr"
        assert provider.secret_requests == []  # rtgate mints its own

    async with (
        client_for(gw, minted.value) as browser,
        browser.realtime.translations.connect(model="gpt-realtime-translate") as conn,
    ):
        first = SERVER_EVENT.validate_json(await conn.recv_bytes())
        assert first.type == "session.created"
        # The secret's template went up first, as the setup session.update.
        second = SERVER_EVENT.validate_json(await conn.recv_bytes())
        assert second.type == "session.updated"
        assert second.session.audio.output.language == "fr"

    # A translation secret opens nothing else; another kind opens no translation.
    async with connect(
        f"{gw.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {minted.value}"},
    ) as ws:
        (err,) = await events_until(ws, "error")
        assert err["error"]["code"] == "invalid_intent"
    async with client_for(gw, key) as client:
        realtime = await client.realtime.client_secrets.create(session={"type": "realtime"})
    async with connect(
        f"{gw.ws}/v1/realtime/translations?model=gpt-realtime-translate",
        subprotocols=["realtime", f"openai-insecure-api-key.{realtime.value}"],  # type: ignore[list-item]
    ) as ws:
        (err,) = await events_until(ws, "error")
        assert err["error"]["code"] == "invalid_intent"
    assert len(provider.upgrades) == 1


async def test_the_browser_subprotocol_and_a_missing_model_are_served(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await start_gateway(make_settings())
    key = await gw.new_key()
    async with connect(
        f"{gw.ws}/v1/realtime/translations",
        subprotocols=["realtime", f"openai-insecure-api-key.{key}"],  # type: ignore[list-item]
    ) as ws:
        assert ws.subprotocol == "realtime"
        (created,) = await events_until(ws, "session.created")
        assert created["session"]["model"] == "gpt-realtime-translate"
    assert provider.upgrades[0].query == {"model": "gpt-realtime-translate"}


async def test_the_keys_policy_and_the_session_cap_apply(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await start_gateway(make_settings(), expiry_check_interval=0.05)
    keyring = gw.app[GATEWAY].keyring
    _, narrow = await keyring.create("narrow", KeyPolicy(models=("gpt-realtime",)))
    async with connect(
        f"{gw.ws}/v1/realtime/translations?model=gpt-realtime-translate",
        additional_headers={"Authorization": f"Bearer {narrow}"},
    ) as ws:
        (err,) = await events_until(ws, "error")
        assert err["error"]["code"] == "model_not_allowed"
    assert provider.upgrades == []

    _, one = await keyring.create("one", KeyPolicy(max_sessions=1, max_duration_s=1))
    headers = {"Authorization": f"Bearer {one}"}
    url = f"{gw.ws}/v1/realtime/translations?model=gpt-realtime-translate"
    async with connect(url, additional_headers=headers) as first:
        await events_until(first, "session.created")
        async with connect(url, additional_headers=headers) as second:
            (err,) = await events_until(second, "error")
            assert err["error"]["code"] == "rate_limit_exceeded"
        # The cap: ended by the gateway with session_expired after a second.
        frame = {"type": "session.input_audio_buffer.append", "audio": chunks(PCM)[0]}
        await first.send(orjson.dumps(frame).decode())
        events = await events_until(first, "error")
        assert events[-1]["error"]["code"] == "session_expired"
        with pytest.raises(websockets.ConnectionClosed):
            await first.recv()
        assert first.close_code == 1001
    await until_no_live_sessions(gw)
    # The audio it sent before the cap was recorded at its end.
    (row,) = await table_rows(gw.store, "SELECT * FROM usage_records ORDER BY id")
    assert (row.kind, row.audio_ms, row.metered_by) == ("translation", 200, "gateway")


async def test_an_operator_sees_and_closes_a_translation_and_a_drain_waits_for_it(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await start_gateway(make_settings())
    key = await gw.new_key()
    g = gw.app[GATEWAY]
    url = f"{gw.ws}/v1/realtime/translations?model=gpt-realtime-translate"
    async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        await events_until(ws, "session.created")
        (live,) = g.live.values()
        assert (live.session.intent, live.session.route.model) == (
            "translation",
            "gpt-realtime-translate",
        )
        assert g.stop_accepting()
        # Draining: a new translation is refused, the live one goes on.
        async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as late:
            (err,) = await events_until(late, "error")
            assert err["error"]["code"] == "server_shutting_down"
        await live.terminate(_operator_close())
        (err,) = await events_until(ws, "error")
        assert err["error"]["code"] == "session_closed_by_operator"
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1008


def _operator_close() -> GatewayError:
    return SessionClosedByOperator("Closed by the gateway's operator.")


async def test_the_local_engine_does_not_translate(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await start_gateway(make_settings(OPENAI_API_KEY=""))
    key = await gw.new_key()
    async with connect(
        f"{gw.ws}/v1/realtime/translations?model=gpt-realtime-translate",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        (err,) = await events_until(ws, "error")
        assert err["error"]["code"] == "unsupported_upstream"
        assert "does not translate" in err["error"]["message"]
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1008
    assert provider.upgrades == []
    assert len(gw.app[GATEWAY].live) == 0


async def test_each_chunk_is_durable_while_the_session_still_runs(
    settings_every_second: Settings,
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await start_gateway(settings_every_second)
    key = await gw.new_key()
    url = f"{gw.ws}/v1/realtime/translations?model=gpt-realtime-translate"
    async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        await events_until(ws, "session.created")
        for audio in chunks(PCM[: 48_000 + 9600]):  # 1.2 s: one chunk, 0.2 s pending
            await ws.send(
                orjson.dumps({"type": "session.input_audio_buffer.append", "audio": audio}).decode()
            )
        await events_until(ws, "session.output_audio.delta")
        async with asyncio.timeout(5):
            while True:
                rows = await table_rows(gw.store, "SELECT * FROM usage_records ORDER BY id")
                if rows:
                    break
                await asyncio.sleep(0.02)
        # A crash now would lose the 0.2 s not yet recorded, no more.
        assert [(r.audio_ms, r.metered_by) for r in rows] == [(1000, "gateway")]
        assert len(gw.app[GATEWAY].live) == 1
    await until_no_live_sessions(gw)
    rows = await table_rows(gw.store, "SELECT * FROM usage_records ORDER BY id")
    assert sorted(r.audio_ms for r in rows) == [200, 1000]


async def test_translations_with_permessage_deflate_go_through_aiohttp_alike(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await start_gateway(make_settings(RTGATE_PERMESSAGE_DEFLATE="true"))
    key = await gw.new_key()
    url = f"{gw.ws}/v1/realtime/translations?model=gpt-realtime-translate"
    async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        assert ws.protocol.extensions  # deflate negotiated: aiohttp serves this socket
        await events_until(ws, "session.created")
        frame = {"type": "session.input_audio_buffer.append", "audio": chunks(PCM)[0]}
        await ws.send(orjson.dumps(frame).decode())
        await ws.send('{"type":"session.close"}')
        await events_until(ws, "session.closed")
    await until_no_live_sessions(gw)
    (row,) = await table_rows(gw.store, "SELECT * FROM usage_records ORDER BY id")
    assert (row.kind, row.audio_ms, row.metered_by) == ("translation", 200, "gateway")
    assert provider.upgrades[0].path == "/v1/realtime/translations"
