"""What the gateway does when its own parts fail: the store, the ledger, odd input, shutdown."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import websockets
from sqlalchemy import select
from websockets.asyncio.client import connect

from rtgate.config import Settings
from rtgate.errors import GatewayError
from rtgate.metering.ledger import Ledger, LedgerError
from rtgate.metering.record import UsageRecord
from rtgate.protocol.usage import Usage
from rtgate.relay.endpoint import GATEWAY
from rtgate.store.port import SessionOpen
from rtgate.store.schema import usage_records
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


# Usage the gateway cannot read as the protocol defines it (protocol.md 4.1): each frame is
# relayed byte for byte, and only once its ledger row is committed, metered or flagged for review.
_PRIVATE = "private words of the user"
_UNREADABLE = {
    # A lone surrogate escape: legal JSON (RFC 8259 8.2) that orjson refuses.
    "lone surrogate": (
        '{"type":"response.done","event_id":"event_1","response":{"id":"resp_1",'
        '"output":[{"type":"message","content":[{"type":"output_audio","transcript":"'
        + _PRIVATE
        + ' \\ud83d"}]}],"usage":{"input_tokens":100,"output_tokens":0,'
        '"input_token_details":{"text_tokens":100}}}}',
        None,
        100,
    ),
    # Counts as strings and floats read as such; a negative one and an object do not.
    "wrong types": (
        '{"type":"response.done","event_id":"event_1","response":{"id":"resp_1",'
        '"metadata":{"note":"' + _PRIVATE + '"},"usage":{"input_tokens":"100",'
        '"output_tokens":-3,"input_token_details":{"text_tokens":100.0},'
        '"output_token_details":{"audio_tokens":{"n":3}}}}}',
        "unreadable_usage",
        100,
    ),
    "unparseable": (
        '{"type":"response.done","event_id":"event_1","response":{"id":"resp_1",'
        '"output":[{"transcript":"' + _PRIVATE + '"}],"usage":{"input_tokens":100',
        "unparseable_frame",
        0,
    ),
}


@pytest.mark.parametrize(("frame", "review", "text_in"), _UNREADABLE.values(), ids=_UNREADABLE)
async def test_usage_the_gateway_cannot_read_is_in_the_ledger_before_the_client_sees_it(
    gateway: RunningGateway,
    provider: FakeProvider,
    caplog: pytest.LogCaptureFixture,
    frame: str,
    review: str | None,
    text_in: int,
) -> None:
    key = await gateway.new_key()
    async with await open_ws(gateway, key) as ws:
        await ws.send(orjson.dumps({"type": "test.raw", "frame": frame}).decode())
        assert await ws.recv() == frame
        # The session is still open: the row was committed before the frame was forwarded.
        u = usage_records.c
        async with gateway.store.engine.connect() as conn:
            q = select(u.review, u.text_in, u.session_id, u.key_id)
            (row,) = (await conn.execute(q)).all()
    assert (row.review, row.text_in) == (review, text_in)
    (summary,) = await gateway.store.usage_summary()
    assert (summary.records, summary.needs_review) == (1, 0 if review is None else 1)
    flagged = [r for r in caplog.records if "recorded for review" in r.getMessage()]
    if review is None:
        assert flagged == []
        return
    # An error line an operator can act on: which session and key, why, and what the usage
    # looked like, with no string value of the frame in it.
    (line,) = flagged
    message = line.getMessage()
    assert line.levelname == "ERROR" and review in message and '"input_tokens"' in message
    assert (line.session_id, line.key_id) == (row.session_id, row.key_id)  # type: ignore[attr-defined]
    assert _PRIVATE not in message
    assert await review_metric(gateway, review) == 1


async def review_metric(gw: RunningGateway, reason: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{gw.http}/metrics") as r:
        text = await r.text()
    prefix = f'rtgate_usage_review_total{{reason="{reason}"}} '
    (line,) = [x for x in text.splitlines() if x.startswith(prefix)]
    return float(line.removeprefix(prefix))


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
    gateway.app[GATEWAY].stop_accepting()
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
