"""A graceful drain inside one gateway (``rtgate.drain``), over real loopback sockets: ``/readyz``
turns 503, new sessions of every kind are refused with a reconnect error, live sessions and calls
run on, to their own end or to the drain's deadline. ``test_serve.py`` drains a real process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import aiohttp
import orjson
import pytest
import websockets
from openai import AsyncOpenAI
from websockets.asyncio.client import connect

from rtgate.config import Settings
from rtgate.drain import DRAIN
from rtgate.relay.endpoint import GATEWAY
from tests.conftest import RunningGateway, events_until
from tests.provider import FakeProvider, emit_response_done

TOKEN = "adm_" + "Dr4in" * 8
OFFER = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=offer\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


async def get(gw: RunningGateway, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(gw.http + path) as r:
        return r.status, await r.json()


async def post(
    gw: RunningGateway, path: str, token: str, data: Any = None, ctype: str = "application/json"
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": ctype}
    async with (
        aiohttp.ClientSession() as http,
        http.post(gw.http + path, data=data, headers=headers) as r,
    ):
        return r.status, await r.json()


async def open_session(gw: RunningGateway, key: str) -> Any:
    ws = await connect(
        f"{gw.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
    )
    assert orjson.loads(await ws.recv())["type"] == "session.created"
    return ws


async def metered(ws: Any, rid: str) -> None:
    """Usage through the gateway: once the client sees it, it is in the ledger."""
    await ws.send(emit_response_done(rid, 1000))
    (done,) = [e for e in await events_until(ws, "response.done") if e["type"] == "response.done"]
    assert done["response"]["id"] == rid


async def refused_session(gw: RunningGateway, key: str) -> tuple[dict[str, Any], int | None]:
    async with connect(
        f"{gw.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        event = orjson.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    return event, ws.close_code


async def test_a_drain_refuses_new_sessions_while_live_ones_run_to_their_end(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw: RunningGateway = await start_gateway(make_settings(RTGATE_ADMIN_TOKEN=TOKEN))
    key = await gw.new_key()
    assert await get(gw, "/readyz") == (200, {"status": "ready", "live_sessions": 0})
    ws = await open_session(gw, key)
    upgrades = len(provider.upgrades)

    before = time.time()
    status, drain = await post(gw, "/admin/v1/drain", TOKEN)
    assert status == 202, drain
    assert drain["draining"] is True and drain["live_sessions"] == 1
    assert drain["drain_seconds"] == 300
    # Load balancers stop sending sessions here; the process itself is alive and well.
    assert await get(gw, "/readyz") == (503, {"status": "draining", "live_sessions": 1})
    assert (await get(gw, "/healthz"))[0] == 200

    # New sessions of every kind are refused with a reconnect error, before any upstream sees them.
    event, code = await refused_session(gw, key)
    assert event["type"] == "error" and event["error"]["code"] == "server_shutting_down"
    assert "reconnect" in event["error"]["message"]
    assert code == 1001
    secret = {"session": {"type": "realtime", "model": "gpt-realtime"}}
    status, body = await post(gw, "/v1/realtime/client_secrets", key, orjson.dumps(secret))
    assert status == 503 and body["error"]["code"] == "server_shutting_down", body
    status, body = await post(gw, "/v1/realtime/calls", key, OFFER, "application/sdp")
    assert status == 503 and body["error"]["code"] == "server_shutting_down", body
    assert len(provider.upgrades) == upgrades and not provider.calls

    # The live session runs on, metered; asking again changes nothing.
    await metered(ws, "resp_during_drain")
    status, again = await post(gw, "/admin/v1/drain", TOKEN)
    assert status == 202 and again["started_at"] == drain["started_at"]
    started_at, deadline_at = (
        datetime.fromisoformat(drain[f]).timestamp() for f in ("started_at", "deadline_at")
    )
    assert before - 1 <= started_at <= time.time() and deadline_at - started_at == 300
    finished = gw.app[DRAIN].finished
    assert not finished.is_set()

    # Its end is the drain's end.
    await ws.close(1000, "bye")
    await asyncio.wait_for(finished.wait(), 5)
    (row,) = await gw.store.recent_sessions()
    assert (row.close_code, row.closed_by) == (1000, "client")
    (usage,) = await gw.store.usage_summary()
    assert usage.records == 1


async def test_at_the_drain_deadline_sessions_and_calls_left_end_with_1001(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw: RunningGateway = await start_gateway(make_settings(RTGATE_DRAIN_SECONDS="1"))
    key = await gw.new_key()
    ws = await open_session(gw, key)
    async with AsyncOpenAI(api_key=key, base_url=f"{gw.http}/v1", max_retries=0) as client:
        raw = await client.realtime.calls.with_raw_response.create(sdp=OFFER)
    call_id = raw.headers["location"].rsplit("/", 1)[-1]
    assert len(gw.app[GATEWAY].live) == 2

    started = time.monotonic()
    gw.app[DRAIN].begin()
    await metered(ws, "resp_before_the_deadline")
    assert provider.hangups(call_id) == 0
    # At the deadline: the error event first, then 1001; the call is hung up upstream.
    event = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
    assert event["type"] == "error" and event["error"]["code"] == "server_shutting_down"
    with pytest.raises(websockets.ConnectionClosed):
        await ws.recv()
    assert (ws.close_code, ws.close_reason) == (1001, "server_error.server_shutting_down")
    assert time.monotonic() - started >= 1.0
    await asyncio.wait_for(gw.app[DRAIN].finished.wait(), 10)
    assert provider.hangups(call_id) == 1
    assert not gw.app[GATEWAY].live
    # A session leaves the live list before its end is written (the row's close follows).
    async with asyncio.timeout(10):
        while True:
            rows = await gw.store.recent_sessions()
            ends = sorted((r.intent or "", r.close_code, r.closed_by) for r in rows)
            if all(code is not None for _, code, _ in ends):
                break
            await asyncio.sleep(0.02)
    assert ends == [("", 1001, "gateway"), ("webrtc", 1001, "gateway")]
