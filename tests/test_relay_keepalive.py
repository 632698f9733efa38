"""The bridge's own heartbeat: quiet legs are pinged, dead ones dropped, pings answered."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType, web
from websockets.asyncio.client import connect

from rtgate.config import Settings
from rtgate.relay.bridge import quiet_seconds
from rtgate.relay.keepalive import Beat, Keepalive
from tests.conftest import RunningGateway
from tests.provider import FakeProvider

HEARTBEAT = 0.2
TICK = 0.02


# -- the pure rule ---------------------------------------------------------------------------
def test_a_leg_heard_on_every_tick_is_never_pinged() -> None:
    k = Keepalive(30, now=0)
    assert [k.tick(True, t) for t in range(0, 120, 1)] == [Beat.NOTHING] * 120


def test_a_quiet_leg_is_pinged_after_the_interval_then_dead_after_half_of_it() -> None:
    k = Keepalive(30, now=0)
    assert k.tick(False, 29) is Beat.NOTHING
    assert k.tick(False, 30) is Beat.PING
    assert k.awaiting_pong
    assert k.tick(False, 44) is Beat.NOTHING
    assert k.tick(False, 45) is Beat.DEAD


def test_anything_heard_after_a_ping_counts_as_the_pong() -> None:
    k = Keepalive(30, now=0)
    assert k.tick(False, 31) is Beat.PING
    assert k.tick(True, 40) is Beat.NOTHING
    assert not k.awaiting_pong
    assert k.tick(False, 69) is Beat.NOTHING
    assert k.tick(False, 70) is Beat.PING


# -- over real sockets -----------------------------------------------------------------------
@pytest.fixture
def fast_heartbeat(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    def make(**env: str) -> Settings:
        return make_settings(**env).model_copy(update={"heartbeat_seconds": HEARTBEAT})

    return make


async def started(start_gateway: Callable[..., Any], settings: Settings) -> RunningGateway:
    gw: RunningGateway = await start_gateway(settings, expiry_check_interval=TICK)
    return gw


async def session_row(gw: RunningGateway) -> Any:
    for _ in range(100):
        (row,) = await gw.store.recent_sessions()
        if row.ended_at is not None:
            return row
        await asyncio.sleep(0.02)
    raise AssertionError("the session was never closed")


async def test_a_quiet_session_whose_peers_answer_pings_stays_open(
    fast_heartbeat: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await started(start_gateway, fast_heartbeat())
    key = await gw.new_key()
    async with connect(
        f"{gw.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
        ping_interval=None,
    ) as ws:
        assert orjson.loads(await ws.recv())["type"] == "session.created"
        await asyncio.sleep(HEARTBEAT * 6)
        await ws.send(orjson.dumps({"type": "test.raw", "frame": '{"type":"still.here"}'}).decode())
        assert orjson.loads(await ws.recv())["type"] == "still.here"
        # The client's own pings are answered by the gateway, not relayed.
        pong = await ws.ping()
        await asyncio.wait_for(pong, 2)


async def test_an_upstream_that_stops_answering_pings_is_dropped(
    fast_heartbeat: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await started(start_gateway, fast_heartbeat())
    key = await gw.new_key()
    async with connect(
        f"{gw.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
        ping_interval=None,
    ) as ws:
        assert orjson.loads(await ws.recv())["type"] == "session.created"
        # The fake provider stops reading, so it no longer answers pings.
        await ws.send(orjson.dumps({"type": "test.sleep", "seconds": 1.5}).decode())
        event = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert event["type"] == "error"
        assert event["error"]["code"] == "upstream_unavailable"
        await ws.wait_closed()
        assert ws.close_code == 1011
    row = await session_row(gw)
    assert (row.close_code, row.closed_by) == (1011, "upstream")


async def test_a_client_that_stops_answering_pings_is_dropped_and_the_upstream_closed(
    fast_heartbeat: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await started(start_gateway, fast_heartbeat())
    key = await gw.new_key()
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            f"{gw.ws}/v1/realtime?model=gpt-realtime",
            headers={"Authorization": f"Bearer {key}"},
            autoping=False,
        ) as ws,
    ):
        msg = await ws.receive()
        assert orjson.loads(msg.data)["type"] == "session.created"
        # Never reading again: our pings go unanswered.
        row = await session_row(gw)
        assert (row.close_code, row.closed_by) == (1006, "client")
        for _ in range(100):
            if provider.closes:
                break
            await asyncio.sleep(0.02)
        assert provider.closes == [(1001, "")]


@pytest.fixture
async def pinging_upstream() -> AsyncIterator[tuple[str, list[str]]]:
    """An upstream that pings the gateway and tells the client whether the pong came back."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await ws.send_str('{"type":"session.created","session":{}}')
        await ws.ping(b"are you there")
        async for msg in ws:
            if msg.type is WSMsgType.PONG:
                seen.append(msg.data.decode())
                await ws.send_str('{"type":"pong.seen"}')
        return ws

    app = web.Application()
    app.router.add_get("/v1/realtime", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    yield f"http://127.0.0.1:{port}/v1", seen
    await runner.cleanup()


async def test_the_upstreams_pings_are_answered_by_the_gateway(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    pinging_upstream: tuple[str, list[str]],
) -> None:
    base_url, seen = pinging_upstream
    gw = await started(start_gateway, make_settings(RTGATE_OPENAI_BASE_URL=base_url))
    key = await gw.new_key()
    async with connect(
        f"{gw.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        assert orjson.loads(await ws.recv())["type"] == "session.created"
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "pong.seen"
    assert seen == ["are you there"]


async def test_the_kernel_says_how_long_a_leg_has_been_quiet(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    key = await gateway.new_key()
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            f"{gateway.ws}/v1/realtime?model=gpt-realtime",
            headers={"Authorization": f"Bearer {key}"},
        ) as ws,
    ):
        await ws.receive()
        await asyncio.sleep(0.3)
        quiet = quiet_seconds(ws)
        if sys.platform == "linux":
            assert quiet is not None and 0.25 <= quiet < 5
