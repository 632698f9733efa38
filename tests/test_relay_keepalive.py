"""The relay's own heartbeat: quiet legs are pinged, dead ones dropped, pings answered."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import orjson
import pytest
from aiohttp import WSMsgType, web
from websockets.asyncio.client import connect

from rtgate.config import Settings, load_settings
from rtgate.protocol.keepalive import Beat, Cadence, Keepalive
from rtgate.relay.aiohttp_leg import quiet_seconds
from rtgate.relay.live import upstream_cadence
from tests.conftest import RunningGateway
from tests.provider import FakeProvider

HEARTBEAT = 0.2
TICK = 0.02


# -- the pure rule ---------------------------------------------------------------------------
def test_a_leg_heard_on_every_tick_is_never_pinged() -> None:
    k = Keepalive(Cadence(5, 3), now=0)
    assert [k.tick(True, t) for t in range(0, 120, 1)] == [Beat.NOTHING] * 120


def test_a_quiet_leg_is_pinged_after_the_interval_then_dead_after_the_pong_deadline() -> None:
    k = Keepalive(Cadence.after(30), now=0)
    assert k.tick(False, 29) is Beat.NOTHING
    assert k.tick(False, 30) is Beat.PING
    assert k.awaiting_pong
    assert k.tick(False, 44) is Beat.NOTHING
    assert k.tick(False, 45) is Beat.DEAD
    k = Keepalive(Cadence(5, 3), now=0)
    assert [k.tick(False, t) for t in range(1, 9)] == [Beat.NOTHING] * 4 + [
        Beat.PING,
        Beat.NOTHING,
        Beat.NOTHING,
        Beat.DEAD,
    ]


def test_by_default_a_silent_upstream_is_dead_within_ten_seconds_of_its_last_frame() -> None:
    settings = load_settings(None, {})
    cadence = upstream_cadence(settings)
    assert cadence is not None
    # The watchdog ticks once a second; the last frame arrived just after a tick, so the
    # next tick still hears it: the worst case.
    last_frame = 0.001
    k = Keepalive(cadence, now=0)
    beats = {t: k.tick(t == 1, t) for t in range(1, 20)}
    dead_at = min(t for t, beat in beats.items() if beat is Beat.DEAD)
    assert dead_at - last_frame < 10
    # A quiet upstream that answers is pinged once per silence, never more often.
    k = Keepalive(cadence, now=0)
    pings = [t for t in range(1, 61) if k.tick(t % 6 == 0, t) is Beat.PING]
    assert pings == list(range(4, 60, 6))


def test_anything_heard_after_a_ping_counts_as_the_pong() -> None:
    k = Keepalive(Cadence.after(30), now=0)
    assert k.tick(False, 31) is Beat.PING
    assert k.tick(True, 40) is Beat.NOTHING
    assert not k.awaiting_pong
    assert k.tick(False, 69) is Beat.NOTHING
    assert k.tick(False, 70) is Beat.PING


# -- over real sockets -----------------------------------------------------------------------
@pytest.fixture
def fast_heartbeat(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    def make(**env: str) -> Settings:
        settings = make_settings(
            RTGATE_UPSTREAM_PING_AFTER_SECONDS=str(HEARTBEAT),
            RTGATE_UPSTREAM_PONG_TIMEOUT_SECONDS=str(HEARTBEAT / 2),
            **env,
        )
        return msgspec.structs.replace(settings, heartbeat_seconds=HEARTBEAT)

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


# A provider in a process of its own, to stop it as a hung host would be: SIGSTOP keeps its
# TCP connections up (the kernel still acknowledges) while nothing answers.
STOPPABLE_PROVIDER = """
import asyncio
from tests.provider import FakeProvider

async def main():
    provider = FakeProvider()
    await provider.start()
    print(provider.port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.fixture
async def stoppable_provider() -> AsyncIterator[tuple[str, int]]:
    """The provider's base URL and its process id."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        STOPPABLE_PROVIDER,
        cwd=Path(__file__).parent.parent,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        port = int(await asyncio.wait_for(proc.stdout.readline(), 60))
        yield f"ws://127.0.0.1:{port}/v1", proc.pid
    finally:
        proc.kill()
        await proc.wait()


async def test_a_stopped_upstream_is_dropped_within_ten_seconds_by_default(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    stoppable_provider: tuple[str, int],
) -> None:
    base_url, pid = stoppable_provider
    gw: RunningGateway = await start_gateway(make_settings(RTGATE_OPENAI_BASE_URL=base_url))
    key = await gw.new_key()
    async with connect(
        f"{gw.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
        ping_interval=None,
    ) as ws:
        assert orjson.loads(await ws.recv())["type"] == "session.created"
        os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        event = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
        heard_after = time.monotonic() - stopped
        assert event["type"] == "error"
        assert event["error"]["code"] == "upstream_unavailable"
        await ws.wait_closed()
        assert (ws.close_code, ws.close_reason) == (1011, "server_error.upstream_unavailable")
    assert heard_after < 10
    row = await session_row(gw)
    assert (row.close_code, row.closed_by) == (1011, "upstream")


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
