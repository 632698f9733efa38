"""What the gateway does when its own parts fail: the store, the ledger, odd input, shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import websockets
from websockets.asyncio.client import connect

from rtgate.api import live as live_api
from rtgate.auth.policy import KeyPolicy, PolicyUpdate, Spend, apply_update
from rtgate.config import Settings
from rtgate.metering.ledger import Ledger, LedgerError
from rtgate.metering.record import UsageRecord
from rtgate.metering.spill import segments
from rtgate.protocol.usage import Usage
from rtgate.relay.endpoint import GATEWAY
from rtgate.store.connections import fetch
from rtgate.store.faults import WRITES, FaultyStore
from rtgate.store.port import SessionOpen, StoreError
from rtgate.store.sql import SqlStore
from tests.conftest import RunningGateway, events_until
from tests.polling import until
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


# Usage the gateway cannot read as the protocol defines it (docs/protocol.md 4.1): each frame is
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
        (row,) = await gateway.store.db.run(
            fetch("SELECT review, text_in, session_id, key_id FROM usage_records")
        )
    assert (row["review"], row["text_in"]) == (review, text_in)
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
    assert (line.session_id, line.key_id) == (row["session_id"], row["key_id"])  # type: ignore[attr-defined]
    assert _PRIVATE not in message
    assert await review_metric(gateway, review) == 1


async def review_metric(gw: RunningGateway, reason: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{gw.http}/metrics") as r:
        text = await r.text()
    prefix = f'rtgate_usage_review_total{{reason="{reason}"}} '
    (line,) = [x for x in text.splitlines() if x.startswith(prefix)]
    return float(line.removeprefix(prefix))


@pytest.fixture
async def faulty(db_url: str) -> FaultyStore:
    return FaultyStore(SqlStore(db_url, timeout=0.5))


#: Short deadlines: an outage of a fraction of a second shows everything.
FAST = {
    "RTGATE_COMMIT_TIMEOUT_SECONDS": "0.2",
    "RTGATE_STORE_TIMEOUT_SECONDS": "0.5",
    "RTGATE_SPILL_RETRY_SECONDS": "0.05",
}


async def test_a_store_that_cannot_commit_spills_delivers_and_catches_up_while_running(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    faulty: FaultyStore,
) -> None:
    gw = await start_gateway(make_settings(**FAST), store=faulty)
    key = await gw.new_key()
    faulty.fail(only=WRITES)
    async with await open_ws(gw, key) as ws:
        await ws.send(emit_response_done("resp_spilled", 100))
        assert orjson.loads(await ws.recv())["type"] == "response.done"
        spill = gw.settings.home / "usage-spill"
        # The session's start and its usage, in order (the drainer seals a segment on each try).
        lines = [ln for seg in segments(spill) for ln in seg.read_bytes().splitlines()]
        assert [orjson.loads(ln)["entry"] for ln in lines] == ["open", "usage"]
        assert orjson.loads(lines[1])["ref"] == "resp_spilled"

    # The session ended while the store was away: its end waits in the spill too.
    async def end_spilled() -> bool:
        spilled = [ln for seg in segments(spill) for ln in seg.read_bytes().splitlines()]
        return any(orjson.loads(ln)["entry"] == "close" for ln in spilled)

    await until(end_spilled)
    faulty.heal()

    async def caught_up() -> bool:
        return not segments(spill) and not gw.app[GATEWAY].ledger.spilling

    await until(caught_up)  # no restart: the running gateway drains its spill
    (row,) = await faulty.usage_summary()
    assert row.usage.text_in == 100 and row.records == 1
    (session,) = await faulty.recent_sessions()
    assert session.ended_at is not None
    assert (session.close_code, session.closed_by) == (1000, "client")


async def test_usage_that_can_be_neither_stored_nor_spilled_ends_every_session_clearly(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    faulty: FaultyStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A disk that is full: the database refuses writes, and the spill cannot be written.
    home = tmp_path / "home"
    home.mkdir()
    (home / "usage-spill").write_text("a file where the spill directory would go")
    gw = await start_gateway(make_settings(**FAST), store=faulty)
    keys = [await gw.new_key("a"), await gw.new_key("b")]
    sockets = [await open_ws(gw, keys[i % 2]) for i in range(4)]
    caplog.set_level(logging.INFO, logger="rtgate")
    faulty.fail(StoreError("cannot write: OperationalError"), only=WRITES)
    for i, ws in enumerate(sockets):
        await ws.send(emit_response_done(f"resp_lost_{i}", 100))
    for ws in sockets:
        event = orjson.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        # Not delivered: the client hears why, and the close says it too.
        assert event["type"] == "error" and event["error"]["code"] == "usage_unavailable"
        assert (ws.close_code, ws.close_reason) == (1011, "server_error.usage_unavailable")
    # The operator is told once, not once per record or session.
    told = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(told) == 1, [r.getMessage() for r in told]
    assert "neither stored" in told[0].getMessage()
    # A new session is refused as clearly: it cannot be recorded either.
    async with connect(
        f"{gw.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {keys[0]}"},
    ) as ws:
        event = orjson.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    assert event["error"]["code"] == "store_unavailable"
    assert (ws.close_code, ws.close_reason) == (1011, "server_error.store_unavailable")
    for _ in range(100):
        if len(provider.closes) == 5:
            break
        await asyncio.sleep(0.01)
    assert len(provider.closes) == 5, "a dialled upstream was left open"


async def test_frames_never_wait_on_a_stalled_store_in_either_direction(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    faulty: FaultyStore,
) -> None:
    # A deadline far longer than the test: any frame that waited on the ledger would show.
    gw = await start_gateway(
        make_settings(**{**FAST, "RTGATE_COMMIT_TIMEOUT_SECONDS": "30"}), store=faulty
    )
    _, key = await gw.app[GATEWAY].keyring.create(
        "scribe", apply_update(KeyPolicy(), PolicyUpdate(keep_transcripts=True))
    )
    async with await open_ws(gw, key) as ws:
        faulty.stall(only=WRITES)
        async with asyncio.timeout(2):
            # Up: a message the transcript keeps; down: the items it makes, kept too.
            await ws.send(
                '{"type":"conversation.item.create","item":{"type":"message",'
                '"role":"user","content":[{"type":"input_text","text":"hi there"}]}}'
            )
            await events_until(ws, "conversation.item.done")
            # Audio both ways: an append up, a binary frame down.
            await ws.send('{"type":"input_audio_buffer.append","audio":"AAAA"}')
            await ws.send('{"type":"test.binary"}')
            assert await ws.recv() == bytes(range(256))
            transcript = {"type": "response.output_audio_transcript.done", "transcript": "hi"}
            await ws.send(orjson.dumps({"type": "test.emit", "event": transcript}).decode())
            assert orjson.loads(await ws.recv())["type"] == transcript["type"]
        faulty.heal()
    sessions = await faulty.recent_sessions()

    async def kept() -> bool:
        return len(await faulty.session_transcript(sessions[0].id)) == 2

    await until(kept)


async def test_a_budget_is_enforced_from_memory_while_the_store_is_away(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    faulty: FaultyStore,
) -> None:
    gw = await start_gateway(make_settings(**FAST), store=faulty)
    _, key = await gw.app[GATEWAY].keyring.create(
        "budgeted", apply_update(KeyPolicy(), PolicyUpdate(budget_usd_total=Decimal("0.010")))
    )
    async with await open_ws(gw, key) as ws:
        await ws.send(emit_response_done("resp_1", 1500))  # $0.006 at $4 / 1M
        assert orjson.loads(await ws.recv())["type"] == "response.done"
        faulty.fail()  # every call: reads and writes
        for i in range(2, 4):
            await ws.send(emit_response_done(f"resp_{i}", 100))  # +$0.0004: not cut
            assert orjson.loads(await ws.recv())["type"] == "response.done"
        await ws.send(emit_response_done("resp_4", 1000))  # +$0.004: the budget is reached
        assert orjson.loads(await ws.recv())["type"] == "response.done"
        err = orjson.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    assert err["error"]["code"] == "insufficient_quota"
    assert ws.close_code == 3000
    faulty.heal()

    async def billed() -> bool:
        rows = await faulty.usage_summary()
        return bool(rows) and rows[0].records == 4

    await until(billed)


async def test_a_relay_that_fails_still_ends_the_session_with_an_error_and_a_reason(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await start_gateway(make_settings())
    _, key = await gw.app[GATEWAY].keyring.create(
        "budgeted", apply_update(KeyPolicy(), PolicyUpdate(budget_usd_total=Decimal(1)))
    )
    async with await open_ws(gw, key) as ws:

        async def a_bug(key_id: str) -> Spend:
            raise ValueError("a bug in the budget check")

        gw.app[GATEWAY].spend.spend = a_bug
        await ws.send(emit_response_done("resp_1", 100))
        assert orjson.loads(await ws.recv())["type"] == "response.done"
        err = orjson.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    assert err["type"] == "error" and err["error"]["code"] == "server_error"
    assert (ws.close_code, ws.close_reason) == (1011, "server_error.server_error")

    async def recorded() -> bool:
        (session,) = await gw.store.recent_sessions()
        return (session.close_code, session.close_reason) == (1011, "server_error.server_error")

    await until(recorded)


async def test_one_bad_record_does_not_sink_its_batch(db_url: str) -> None:
    store = SqlStore(db_url)
    await store.init()
    await store.create_key("key_a", "a", "p", "a" * 64, 1.0)
    await store.write([SessionOpen("rs_1", "key_a", "m", "openai", None, 1.0)])
    good = UsageRecord("rs_1", "key_a", "m", "m", Usage(text_in=1), 1, 1, 1.0, "good")
    bad = UsageRecord("rs_1", "key_a", "m", "m", Usage(text_in=1), 2**70, 1, 1.0, "bad")
    ledger = Ledger(store)
    with pytest.raises(StoreError) as refused:
        await store.write([good, bad])
    assert refused.value.bad_data

    writer = asyncio.create_task(ledger.run())
    results = await asyncio.gather(ledger.record(good), ledger.record(bad), return_exceptions=True)
    writer.cancel()
    assert results[0] is None and isinstance(results[1], LedgerError)
    (row,) = await store.usage_summary()
    assert row.records == 1
    await store.close()


async def test_a_non_utf8_credential_is_just_a_wrong_key(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
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


async def test_the_revoked_key_check_says_once_that_the_store_is_away_and_goes_on(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    faulty: FaultyStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Sessions admitted with a valid key are not ended for a store that cannot say whether
    it was revoked since; the outage is logged once, and the check resumes when it is over."""
    monkeypatch.setattr(live_api, "REVOKED_KEY_CHECK_SECONDS", 0.05)
    gw = await start_gateway(make_settings(**FAST), store=faulty)
    key = await gw.new_key()
    async with await open_ws(gw, key) as ws:
        faulty.fail(only=frozenset({"revoked_keys"}))
        with caplog.at_level(logging.WARNING, logger="rtgate.admin"):
            await until(lambda: faulty.calls.get("revoked_keys", 0) >= 5)
        said = [r for r in caplog.records if "revoked keys not checked" in r.getMessage()]
        assert len(said) == 1
        await ws.send(emit_response_done("resp_during", 10))
        assert orjson.loads(await ws.recv())["type"] == "response.done"  # still open
        faulty.heal()
        (info,) = await gw.store.list_keys()
        await gw.store.revoke_key(info.id, 1.0)
        event = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        assert event["error"]["code"] == "api_key_revoked"
