"""GPT-Live over real sockets: the official SDK's ``client.live.connect()`` pointed at rtgate by
base URL only, through to a fake of the provider's route (``tests/live_fake.py``) whose events
validate against the SDK's ``openai.types.live`` types; voice seconds billed as deltas to the
nano-dollar, a budget crossed mid-session, an upstream killed mid-session, a client close that
waits for the final total, the model checked before any dial, and the operator's view."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import websockets
from openai import AsyncOpenAI
from openai.types.live import ServerEvent
from pydantic import TypeAdapter
from typer.testing import CliRunner
from websockets.asyncio.client import connect

from rtgate.api.live import SessionClosedByOperator
from rtgate.auth.policy import KeyPolicy
from rtgate.cli import app as cli_app
from rtgate.config import Settings
from rtgate.relay.endpoint import GATEWAY
from tests.conftest import RunningGateway
from tests.provider import FakeProvider
from tests.table_rows import table_rows

SERVER_EVENT: TypeAdapter[Any] = TypeAdapter(ServerEvent)
#: $0.05 a minute, in nano-dollars a millisecond.
NANOS_PER_MS = 50_000_000 / 60_000
START = {
    "model": "gpt-live-1",
    "instructions": "Be concise.",
    "audio": {"format": {"type": "audio/pcm", "rate": 24000}, "output": {"voice": "marin"}},
    "delegation": {"type": "client"},
}


def client_for(gw: RunningGateway, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, base_url=f"{gw.http}/v1", websocket_base_url=f"{gw.ws}/v1")


def audio(seconds: float) -> list[str]:
    """``seconds`` of 24 kHz PCM16 mono in 200 ms appends, base64."""
    pcm = bytes(round(seconds * 48_000))
    return [base64.b64encode(pcm[i : i + 9600]).decode() for i in range(0, len(pcm), 9600)]


async def until_no_live_sessions(gw: RunningGateway) -> None:
    async with asyncio.timeout(10):
        while len(gw.app[GATEWAY].live):  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def usage_rows(gw: RunningGateway) -> list[Any]:
    return await table_rows(gw.store, "SELECT * FROM usage_records ORDER BY id")


async def ws_events_until(ws: Any, etype: str) -> list[dict[str, Any]]:
    """Events up to ``etype``, each validated against the SDK's Live server events."""
    events: list[dict[str, Any]] = []
    while not events or events[-1]["type"] != etype:
        raw = await ws.recv()
        SERVER_EVENT.validate_json(raw)
        events.append(orjson.loads(raw))
    return events


def live_url(gw: RunningGateway) -> str:
    return f"{gw.ws}/v1/live/sessions"


async def ended_session(gw: RunningGateway) -> Any:
    """The one session's row once its end is recorded (the ledger writes it just after the
    session leaves the live list)."""
    async with asyncio.timeout(10):
        while True:
            (row,) = await table_rows(gw.store, "SELECT * FROM sessions")
            if row.ended_at is not None:
                return row
            await asyncio.sleep(0.02)


@pytest.fixture
def settings(make_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    cfg = tmp_path / "rtgate.toml"
    cfg.write_text(
        '[prices.gpt-live-1]\nmarkup_percent = "20"\n'
        '[prices.gpt-backend]\ntext_in = "2"\ntext_cached = "0.5"\ntext_out = "8"\n'
    )
    return make_settings(RTGATE_CONFIG=str(cfg), RTGATE_LIVE_CLOSE_SECONDS="1")


async def test_the_sdk_holds_a_live_session_through_rtgate_billed_to_the_nano_dollar(
    settings: Settings, start_gateway: Callable[..., Any], provider: FakeProvider
) -> None:
    gw = await start_gateway(settings)
    key = await gw.new_key()
    seen: list[Any] = []
    async with client_for(gw, key).live.connect() as conn:
        await conn.session.start(session=START, event_id="evt_start_1")  # type: ignore[arg-type]
        started = SERVER_EVENT.validate_json(await conn.recv_bytes())
        assert started.type == "session.started"
        assert (started.session.model, started.session.status) == ("gpt-live-1", "active")
        assert started.client_event_id == "evt_start_1"
        for chunk in audio(2.5):
            await conn.session.input_audio.append(audio=chunk)
        await conn.send_raw(
            '{"type":"test.response","model":"gpt-backend",'
            '"usage":{"input_tokens":1000,"input_tokens_details":'
            '{"cached_tokens":200},"output_tokens":100,"total_tokens":1100}}'
        )
        await conn.session.input_audio.mute()
        while True:
            event = SERVER_EVENT.validate_json(await conn.recv_bytes())
            seen.append(event)
            if event.type == "session.input_audio.muted":
                break
        await conn.session.close()
        closed = SERVER_EVENT.validate_json(await conn.recv_bytes())
        assert closed.type == "session.closed"
        assert (closed.reason, closed.usage.seconds) == ("close_requested", 2.4)
    kinds = [e.type for e in seen]
    # 2.5 s spoken back in 200 ms pieces (the last 100 ms wait), a snapshot every second.
    assert kinds.count("session.output_audio.delta") == 12
    assert [e.usage.seconds for e in seen if e.type == "session.usage.updated"] == [1.0, 2.0]
    assert [e.event["type"] for e in seen if e.type == "response.event"] == [
        "response.created",
        "response.output_text.delta",
        "response.completed",
    ]

    (up,) = provider.upgrades
    assert (up.path, up.query) == ("/v1/live/sessions", {})
    assert up.headers["Authorization"] == f"Bearer {provider.key}"
    (fake,) = provider.live.sessions
    # The client's session.start went up first, byte for byte.
    assert orjson.loads(fake.received[0]) == {
        "type": "session.start",
        "session": START,
        "event_id": "evt_start_1",
    }

    await until_no_live_sessions(gw)
    rows = await usage_rows(gw)
    live_rows = [r for r in rows if r.kind == "live"]
    # Deltas of the cumulative totals 1.0, 2.0 and the final 2.4, each billed once.
    assert [r.audio_ms for r in live_rows] == [1000, 1000, 400]
    # Costed as their running total: they sum to 2.4 s's cost, $0.002 exactly (a newcomer's
    # find: each rounded alone, four one-second parts came to a nano-dollar less than 4 s).
    assert [(r.provider_nanos, r.charged_nanos) for r in live_rows] == [
        (833_333, 1_000_000),
        (833_334, 1_000_000),
        (333_333, 400_000),
    ]
    assert sum(r.provider_nanos for r in live_rows) == 2_000_000
    assert {(r.model, r.price_key, r.unit, r.ref, r.review) for r in live_rows} == {
        ("gpt-live-1", "gpt-live-1", "minute", fake.session["id"], None)
    }
    (backend,) = [r for r in rows if r.kind == "backend"]
    # 800 x $2 + 200 x $0.5 + 100 x $8, per 1M tokens: $0.0025.
    assert (backend.model, backend.price_key, backend.unit) == (
        "gpt-backend",
        "gpt-backend",
        "token",
    )
    assert (backend.text_in, backend.text_in_cached, backend.text_out) == (1000, 200, 100)
    assert backend.provider_nanos == 2_500_000
    srow = await ended_session(gw)
    # The client's session.close was answered and the upstream closed, 1000, mirrored.
    assert (srow.model, srow.intent, srow.close_code, srow.closed_by) == (
        "gpt-live-1",
        "live",
        1000,
        "upstream",
    )


async def test_a_client_close_waits_for_the_final_total(
    settings: Settings, start_gateway: Callable[..., Any], provider: FakeProvider
) -> None:
    gw = await start_gateway(settings)
    key = await gw.new_key()
    async with connect(live_url(gw), additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        await ws.send(orjson.dumps({"type": "session.start", "session": START}).decode())
        await ws_events_until(ws, "session.started")
        await ws.send('{"type":"test.usage","seconds":3.25}')
        await ws_events_until(ws, "session.usage.updated")
        await ws.send('{"type":"test.usage","seconds":7}')
        await ws_events_until(ws, "session.usage.updated")
    # The client closed at 7 s; rtgate asked the upstream, which answered with its final total.
    await until_no_live_sessions(gw)
    (fake,) = provider.live.sessions
    assert orjson.loads(fake.received[-1]) == {"type": "session.close"}
    assert fake.closed_with == {"reason": "close_requested", "seconds": 7.0}
    rows = await usage_rows(gw)
    assert [(r.audio_ms, r.review) for r in rows] == [(3250, None), (3750, None)]
    assert sum(r.provider_nanos for r in rows) == round(3250 * NANOS_PER_MS) + round(
        3750 * NANOS_PER_MS
    )


async def test_a_killed_upstream_still_bills_its_last_snapshot_flagged_unconfirmed(
    settings: Settings, start_gateway: Callable[..., Any], provider: FakeProvider
) -> None:
    gw = await start_gateway(settings)
    key = await gw.new_key()
    async with connect(live_url(gw), additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        await ws.send(orjson.dumps({"type": "session.start", "session": START}).decode())
        await ws_events_until(ws, "session.started")
        await ws.send('{"type":"test.usage","seconds":42.5}')
        await ws_events_until(ws, "session.usage.updated")
        await ws.send('{"type":"test.vanish"}')
        (err,) = await ws_events_until(ws, "error")
        assert err["error"]["code"] == "upstream_unavailable"
        assert "client_event_id" in err["error"]  # Live's envelope
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1011
    await until_no_live_sessions(gw)
    rows = await usage_rows(gw)
    assert [(r.kind, r.audio_ms, r.provider_nanos, r.review) for r in rows] == [
        ("live", 42_500, round(42_500 * NANOS_PER_MS), None),
        ("live", 0, 0, "unconfirmed_usage"),
    ]
    assert rows[1].ref == provider.live.sessions[0].session["id"]


async def test_an_upstream_that_never_answers_session_close_is_closed_after_the_grace(
    settings: Settings, start_gateway: Callable[..., Any], provider: FakeProvider
) -> None:
    provider.live.answer_close = False
    gw = await start_gateway(settings, expiry_check_interval=0.05)
    key = await gw.new_key()
    async with connect(live_url(gw), additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        await ws.send(orjson.dumps({"type": "session.start", "session": START}).decode())
        await ws_events_until(ws, "session.started")
        await ws.send('{"type":"test.usage","seconds":2}')
        await ws_events_until(ws, "session.usage.updated")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await until_no_live_sessions(gw)
    assert 0.8 < loop.time() - t0 < 6  # live_close_seconds = 1 (plus a tick, a loaded machine)
    rows = await usage_rows(gw)
    assert [(r.audio_ms, r.review) for r in rows] == [(2000, None), (0, "unconfirmed_usage")]


async def test_a_budget_crossed_mid_session_ends_it_with_insufficient_quota(
    settings: Settings, start_gateway: Callable[..., Any], provider: FakeProvider
) -> None:
    gw = await start_gateway(settings)
    # $0.001: crossed by the first minute ($0.05, $0.06 charged with the 20 % markup).
    _, key = await gw.app[GATEWAY].keyring.create("capped", KeyPolicy(budget_total_nanos=1_000_000))
    async with client_for(gw, key).live.connect() as conn:
        await conn.session.start(session=START)  # type: ignore[arg-type]
        assert SERVER_EVENT.validate_json(await conn.recv_bytes()).type == "session.started"
        await conn.send_raw('{"type":"test.usage","seconds":60}')
        snapshot = SERVER_EVENT.validate_json(await conn.recv_bytes())
        assert snapshot.type == "session.usage.updated"  # billed, then forwarded
        err = SERVER_EVENT.validate_json(await conn.recv_bytes())
        assert (err.type, err.error.code) == ("error", "insufficient_quota")
        with pytest.raises(websockets.ConnectionClosed):
            await conn.recv_bytes()
    await until_no_live_sessions(gw)
    (fake,) = provider.live.sessions
    # The gateway ended it gracefully upstream too: the final total reconciled.
    assert orjson.loads(fake.received[-1]) == {"type": "session.close"}
    rows = await usage_rows(gw)
    assert [(r.audio_ms, r.review) for r in rows] == [(60_000, None)]
    assert rows[0].charged_nanos == 60_000_000
    srow = await ended_session(gw)
    assert (srow.close_code, srow.close_reason) == (3000, "insufficient_quota.insufficient_quota")
    # And the key is refused before any dial from now on.
    async with connect(live_url(gw), additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        await ws.send(orjson.dumps({"type": "session.start", "session": START}).decode())
        (refused,) = await ws_events_until(ws, "error")
        assert refused["error"]["code"] == "insufficient_quota"
    assert len(provider.upgrades) == 1


async def test_a_model_the_key_may_not_use_is_refused_before_any_dial(
    settings: Settings, start_gateway: Callable[..., Any], provider: FakeProvider
) -> None:
    gw = await start_gateway(settings)
    _, key = await gw.app[GATEWAY].keyring.create("narrow", KeyPolicy(models=("gpt-live-1.1",)))
    async with client_for(gw, key).live.connect() as conn:
        await conn.session.start(session=START, event_id="evt_s")  # type: ignore[arg-type]
        err = SERVER_EVENT.validate_json(await conn.recv_bytes())
        assert (err.type, err.error.code, err.error.client_event_id) == (
            "error",
            "model_not_allowed",
            "evt_s",
        )
        with pytest.raises(websockets.ConnectionClosed):
            await conn.recv_bytes()
    assert provider.upgrades == []
    async with connect(live_url(gw), additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        unknown = {"type": "session.start", "session": {**START, "model": "gpt-live-9"}}
        await ws.send(orjson.dumps(unknown).decode())
        (err2,) = await ws_events_until(ws, "error")
        assert err2["error"]["code"] == "model_not_found"
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 4004
    assert provider.upgrades == []


async def refused_start(gw: RunningGateway, key: str, start: dict[str, Any]) -> dict[str, Any]:
    """The error a ``session.start`` is refused with, and the close code after it
    (``close_code``)."""
    async with (
        asyncio.timeout(5),
        connect(live_url(gw), additional_headers={"Authorization": f"Bearer {key}"}) as ws,
    ):
        await ws.send(orjson.dumps(start).decode())
        (err,) = await ws_events_until(ws, "error")
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        return {**err["error"], "close_code": ws.close_code}


async def test_a_start_is_judged_by_the_keys_blocked_fields_before_any_dial(
    settings: Settings, start_gateway: Callable[..., Any], provider: FakeProvider
) -> None:
    """Live fixes its instructions at start, so a key that may not change them with a
    ``session.update`` may not set them in ``session.start`` either; the rest of the start
    is the client's."""
    gw = await start_gateway(settings)
    _, key = await gw.app[GATEWAY].keyring.create(
        "locked", KeyPolicy(blocked_events=("session.update:instructions",))
    )
    err = await refused_start(
        gw, key, {"type": "session.start", "event_id": "e1", "session": START}
    )
    assert (err["code"], err["param"], err["client_event_id"], err["close_code"]) == (
        "event_not_allowed",
        "session.instructions",
        "e1",
        3000,
    )
    assert provider.upgrades == []
    allowed = {k: v for k, v in START.items() if k != "instructions"}
    async with client_for(gw, key).live.connect() as conn:
        await conn.session.start(session=allowed)  # type: ignore[arg-type]
        started = SERVER_EVENT.validate_json(await conn.recv_bytes())
        assert started.type == "session.started"
    (up,) = provider.upgrades
    assert up.path == "/v1/live/sessions"


@pytest.mark.parametrize(
    ("start", "param"),
    [
        (
            {"type": "session.start", "session": {**START, "temperature": 0.2}},
            "session.temperature",
        ),
        ({"type": "session.start", "session": START, "metadata": {"a": 1}}, "metadata"),
    ],
)
async def test_a_member_live_does_not_define_is_refused_and_never_sent_upstream(
    settings: Settings,
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    start: dict[str, Any],
    param: str,
) -> None:
    gw = await start_gateway(settings)
    err = await refused_start(gw, await gw.new_key(), start)
    assert (err["type"], err["code"], err["param"], err["close_code"]) == (
        "invalid_request_error",
        "unknown_parameter",
        param,
        1008,
    )
    assert err["message"] == f"Unknown parameter: '{param}'."
    assert provider.upgrades == []


@pytest.mark.parametrize(
    "first",
    [
        '{"type":"session.input_audio.append","audio":"AAAA"}',
        '{"type":"session.start","session":{"instructions":"no model"}}',
        None,
    ],
)
async def test_a_missing_or_foreign_first_event_gets_an_error_and_a_close(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    first: str | None,
) -> None:
    gw = await start_gateway(make_settings(RTGATE_LIVE_START_SECONDS="0.3"))
    key = await gw.new_key()
    async with connect(live_url(gw), additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        if first is not None:
            await ws.send(first)
        (err,) = await ws_events_until(ws, "error")
        assert (err["error"]["type"], err["error"]["code"]) == (
            "invalid_request_error",
            "invalid_session_start",
        )
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1008
    assert provider.upgrades == []


async def test_a_bad_key_and_a_client_secret_open_no_live_session(
    settings: Settings, start_gateway: Callable[..., Any], provider: FakeProvider
) -> None:
    gw = await start_gateway(settings)
    async with connect(live_url(gw), additional_headers={"Authorization": "Bearer rtg_nope"}) as ws:
        (err,) = await ws_events_until(ws, "error")
        assert err["error"]["code"] == "invalid_api_key"
    key = await gw.new_key()
    async with client_for(gw, key) as client:
        secret = await client.realtime.client_secrets.create(session={"type": "realtime"})
    async with connect(
        live_url(gw),
        subprotocols=["realtime", f"openai-insecure-api-key.{secret.value}"],  # type: ignore[list-item]
    ) as ws:
        (err,) = await ws_events_until(ws, "error")
        assert (err["error"]["code"], err["error"]["param"]) == ("invalid_intent", None)
    assert provider.upgrades == []


async def test_the_browser_subprotocol_opens_a_live_session(
    settings: Settings, start_gateway: Callable[..., Any], provider: FakeProvider
) -> None:
    gw = await start_gateway(settings)
    key = await gw.new_key()
    async with connect(
        live_url(gw),
        subprotocols=["realtime", f"openai-insecure-api-key.{key}"],  # type: ignore[list-item]
    ) as ws:
        assert ws.subprotocol == "realtime"
        await ws.send(orjson.dumps({"type": "session.start", "session": START}).decode())
        await ws_events_until(ws, "session.started")


async def test_an_operator_sees_and_closes_a_live_session_which_reconciles_upstream(
    settings: Settings, start_gateway: Callable[..., Any], provider: FakeProvider
) -> None:
    gw = await start_gateway(settings)
    key = await gw.new_key()
    g = gw.app[GATEWAY]
    async with connect(live_url(gw), additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        await ws.send(orjson.dumps({"type": "session.start", "session": START}).decode())
        await ws_events_until(ws, "session.started")
        await ws.send('{"type":"test.usage","seconds":12}')
        await ws_events_until(ws, "session.usage.updated")
        (live,) = g.live.values()
        assert (live.session.intent, live.session.route.model) == ("live", "gpt-live-1")
        assert live.session.totals.audio_seconds == 12.0
        await live.terminate(SessionClosedByOperator("Closed by the gateway's operator."))
        (err,) = await ws_events_until(ws, "error")
        assert err["error"]["code"] == "session_closed_by_operator"
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1008
    await until_no_live_sessions(gw)
    assert provider.live.sessions[0].closed_with == {"reason": "close_requested", "seconds": 12.0}
    rows = await usage_rows(gw)
    assert [(r.audio_ms, r.review) for r in rows] == [(12_000, None)]


async def test_the_session_cap_ends_a_live_session_gracefully(
    settings: Settings, start_gateway: Callable[..., Any], provider: FakeProvider
) -> None:
    gw = await start_gateway(settings, expiry_check_interval=0.05)
    _, key = await gw.app[GATEWAY].keyring.create("short", KeyPolicy(max_duration_s=1))
    async with connect(live_url(gw), additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        await ws.send(orjson.dumps({"type": "session.start", "session": START}).decode())
        await ws_events_until(ws, "session.started")
        for chunk in audio(0.4):
            await ws.send(
                orjson.dumps({"type": "session.input_audio.append", "audio": chunk}).decode()
            )
        events = await ws_events_until(ws, "error")
        assert events[-1]["error"]["code"] == "session_expired"
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1001
    await until_no_live_sessions(gw)
    # The provider's final total (the 0.4 s spoken) was asked for and billed.
    assert provider.live.sessions[0].closed_with == {"reason": "close_requested", "seconds": 0.4}
    rows = await usage_rows(gw)
    assert [(r.audio_ms, r.review) for r in rows] == [(400, None)]


async def test_live_with_permessage_deflate_goes_through_aiohttp_alike(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await start_gateway(make_settings(RTGATE_PERMESSAGE_DEFLATE="true"))
    key = await gw.new_key()
    async with connect(live_url(gw), additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        assert ws.protocol.extensions  # aiohttp serves this socket
        await ws.send(orjson.dumps({"type": "session.start", "session": START}).decode())
        await ws_events_until(ws, "session.started")
        await ws.send('{"type":"test.usage","seconds":1.5}')
        await ws_events_until(ws, "session.usage.updated")
        await ws.send('{"type":"session.close"}')
        await ws_events_until(ws, "session.closed")
    await until_no_live_sessions(gw)
    rows = await usage_rows(gw)
    assert [(r.audio_ms, r.review) for r in rows] == [(1500, None)]


async def test_live_sessions_in_the_admin_api_the_cli_and_the_metrics(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    token = "adm_" + "L1ve" * 8
    gw = await start_gateway(make_settings(RTGATE_ADMIN_TOKEN=token))
    key = await gw.new_key("lena")
    admin = {"Authorization": f"Bearer {token}"}
    async with connect(live_url(gw), additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        await ws.send(orjson.dumps({"type": "session.start", "session": START}).decode())
        await ws_events_until(ws, "session.started")
        await ws.send('{"type":"test.usage","seconds":30}')
        await ws_events_until(ws, "session.usage.updated")
        async with aiohttp.ClientSession(headers=admin) as http:
            async with http.get(f"{gw.http}/admin/v1/sessions/live") as r:
                (view,) = await r.json()
            assert (view["model"], view["intent"], view["audio_seconds"]) == (
                "gpt-live-1",
                "live",
                30.0,
            )
            assert Decimal(view["cost_usd"]) == Decimal("0.025")  # 30 s at $0.05 a minute
            async with http.post(f"{gw.http}/admin/v1/sessions/{view['id']}/close") as r:
                assert r.status == 200
                assert (await r.json())["closed_by"] == "operator"
        (err,) = await ws_events_until(ws, "error")
        assert err["error"]["code"] == "session_closed_by_operator"
    await until_no_live_sessions(gw)
    env = {
        "RTGATE_HOME": str(gw.settings.home),
        "RTGATE_DATABASE_URL": gw.settings.resolved_database_url,
        "RTGATE_CONFIG": "",
    }
    await ended_session(gw)
    result = await asyncio.to_thread(CliRunner().invoke, cli_app, ["sessions", "--json"], env=env)
    assert result.exit_code == 0, result.output
    (row,) = orjson.loads(result.output)
    assert (row["model"], row["intent"], row["audio_seconds"], row["cost_usd"]) == (
        "gpt-live-1",
        "live",
        30.0,
        "0.025000000",
    )
    assert (row["close_code"], row["closed_by"]) == (1008, "operator")
    async with aiohttp.ClientSession() as http, http.get(f"{gw.http}/metrics") as r:
        text = await r.text()
    assert 'rtgate_audio_seconds_total{model="gpt-live-1",unit="minute"} 30.0' in text
    assert 'rtgate_sessions_started_total{model="gpt-live-1"} 1.0' in text


async def test_the_local_engine_answers_live_through_the_same_relay(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "engine.toml"
    cfg.write_text('[engine]\nvad = "energy"\nstt = "none"\ntts = "tone"\nlive_usage_seconds = 1\n')
    gw = await start_gateway(make_settings(OPENAI_API_KEY="", RTGATE_CONFIG=str(cfg)))
    key = await gw.new_key()
    async with client_for(gw, key).live.connect() as conn:
        await conn.session.start(session={"model": "gpt-live-1"})
        started = SERVER_EVENT.validate_json(await conn.recv_bytes())
        assert (started.type, started.session.model) == ("session.started", "gpt-live-1")
        snapshot = SERVER_EVENT.validate_json(await conn.recv_bytes())
        assert (snapshot.type, snapshot.usage.seconds) == ("session.usage.updated", 1)
        await conn.session.close()
        closed = SERVER_EVENT.validate_json(await conn.recv_bytes())
        assert closed.type == "session.closed"
    await until_no_live_sessions(gw)
    assert provider.upgrades == []  # the engine, not a provider
    rows = await usage_rows(gw)
    # Metered as any Live session, priced by the engine's row (0 unless the operator sets it).
    assert rows and {(r.kind, r.model, r.price_key, r.charged_nanos) for r in rows} == {
        ("live", "gpt-live-1", "local", 0)
    }
    assert sum(r.audio_ms for r in rows) == round(closed.usage.seconds * 1000)
    srow = await ended_session(gw)
    assert (srow.upstream, srow.intent) == ("local", "live")
