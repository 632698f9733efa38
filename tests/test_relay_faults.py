"""What the gateway does when its own parts fail: the store, the ledger, odd input, shutdown."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from websockets.asyncio.client import connect

from rtgate.config import Settings
from rtgate.errors import GatewayError
from rtgate.metering.ledger import Ledger, LedgerError
from rtgate.metering.record import UsageRecord
from rtgate.protocol.usage import Usage
from rtgate.relay.endpoint import GATEWAY
from rtgate.store.port import SessionOpen
from rtgate.store.sql import SqlStore, StoreError
from tests.conftest import RunningGateway
from tests.provider import FakeProvider, emit_response_done


async def open_ws(gw: RunningGateway, key: str, query: str = "model=gpt-realtime") -> Any:
    ws = await connect(
        f"{gw.ws}/v1/realtime?{query}", additional_headers={"Authorization": f"Bearer {key}"}
    )
    assert orjson.loads(await ws.recv())["type"] == "session.created"
    return ws


async def test_non_text_frames_and_odd_json_pass_byte_for_byte(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    key = await gateway.new_key()
    odd = '{ "type" : "conversation.item.added" ,\n "x":"\\u00e9\\"q\\"", "n": 1.50 }'
    async with await open_ws(gateway, key) as ws:
        await ws.send(orjson.dumps({"type": "test.raw", "frame": odd}).decode())
        assert await ws.recv() == odd


async def test_a_store_that_cannot_commit_spills_and_still_delivers(
    gateway: RunningGateway, provider: FakeProvider, tmp_path: Path
) -> None:
    key = await gateway.new_key()
    store = gateway.store
    real = store.add_usage

    async def broken(records: list[UsageRecord]) -> None:
        raise StoreError("cannot write usage: OperationalError")

    store.add_usage = broken
    async with await open_ws(gateway, key) as ws:
        await ws.send(emit_response_done("resp_spilled", 100))
        assert orjson.loads(await ws.recv())["type"] == "response.done"
    spill = gateway.settings.home / "usage-spill.jsonl"
    (line,) = spill.read_bytes().splitlines()
    assert orjson.loads(line)["ref"] == "resp_spilled"
    store.add_usage = real
    ledger = Ledger(store, spill_path=spill)
    assert await ledger.recover() == 1
    assert not spill.exists()
    (row,) = await store.usage_summary()
    assert row.usage.text_in == 100


async def test_usage_that_can_be_neither_stored_nor_spilled_is_not_delivered(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data directory's spill file would go")
    gw = await start_gateway(make_settings())
    gw.app[GATEWAY].ledger._spill_path = blocker / "usage-spill.jsonl"
    key = await gw.new_key()

    async def broken(records: list[UsageRecord]) -> None:
        raise StoreError("cannot write usage: OperationalError")

    gw.store.add_usage = broken
    async with await open_ws(gw, key) as ws:
        await ws.send(emit_response_done("resp_lost", 100))
        event = orjson.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    assert event["type"] == "error" and event["error"]["code"] == "usage_unavailable"
    assert ws.close_code == 1011


async def test_one_bad_record_does_not_sink_its_batch(db_url: str) -> None:
    store = SqlStore(db_url)
    await store.init()
    await store.create_key("key_a", "a", "p", "a" * 64, 1.0)
    await store.open_session(SessionOpen("rs_1", "key_a", "m", "openai", None, 1.0))
    good = UsageRecord("rs_1", "key_a", "m", "m", Usage(text_in=1), 1, 1, 1.0, "good")
    bad = UsageRecord("rs_1", "key_a", "m", "m", Usage(text_in=1), 2**70, 1, 1.0, "bad")
    ledger = Ledger(store)
    with pytest.raises(GatewayError):
        await store.add_usage([good, bad])
    import asyncio

    writer = asyncio.create_task(ledger.run())
    results = await asyncio.gather(ledger.record(good), ledger.record(bad), return_exceptions=True)
    writer.cancel()
    assert results[0] is None and isinstance(results[1], LedgerError)
    (row,) = await store.usage_summary()
    assert row.records == 1
    await store.close()


async def test_a_store_failure_at_session_open_refuses_cleanly(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    key = await gateway.new_key()

    async def broken(s: SessionOpen) -> None:
        raise StoreError("cannot write: OperationalError")

    gateway.store.open_session = broken
    async with connect(
        f"{gateway.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        event = orjson.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    assert event["error"]["code"] == "store_unavailable"
    assert ws.close_code == 1011
    import asyncio

    for _ in range(100):
        if provider.closes:
            break
        await asyncio.sleep(0.01)
    assert provider.closes, "the dialled upstream was left open"


async def test_a_non_utf8_credential_is_just_a_wrong_key(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: x\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Authorization: Bearer rtg_\xff\xfe\xfd\r\n\r\n"
    )
    await writer.drain()
    data = b""
    while b"invalid_request_error.invalid_api_key" not in data:
        chunk = await asyncio.wait_for(reader.read(4096), 5)
        if not chunk:
            break
        data += chunk
    writer.close()
    assert b"101" in data.split(b"\r\n")[0]
    assert b"invalid_api_key" in data


async def test_sessions_opening_during_shutdown_are_refused_with_1001(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    key = await gateway.new_key()
    gateway.app[GATEWAY].closing = True
    async with connect(
        f"{gateway.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        event = orjson.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    assert event["error"]["code"] == "server_shutting_down"
    assert ws.close_code == 1001
    assert provider.upgrades == []
