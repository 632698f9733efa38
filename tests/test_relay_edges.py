"""Auth paths, routing, closes, failures, limits and secrets, over real sockets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp
import openai
import orjson
import pytest
import websockets
from openai import AsyncOpenAI
from websockets.asyncio.client import connect

from rtgate.auth.policy import KeyPolicy
from rtgate.clock import ManualClock
from rtgate.config import Settings
from rtgate.relay.endpoint import GATEWAY
from rtgate.relay.picows_leg import PicowsLeg
from rtgate.store.port import StoreError
from tests.conftest import RunningGateway
from tests.polling import until
from tests.provider import PROVIDER_KEY, FakeProvider, emit_response_done
from tests.test_client_secrets import key_with


async def first_events(ws: Any, n: int) -> list[dict[str, Any]]:
    return [orjson.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(n)]


async def refused(
    url: str, headers: dict[str, str] | None = None, subprotocols: list[str] | None = None
) -> tuple[dict[str, Any], int, str]:
    async with connect(url, additional_headers=headers or {}, subprotocols=subprotocols) as ws:  # type: ignore[arg-type]
        event = orjson.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code is not None
        return event, ws.close_code, ws.close_reason or ""


async def test_missing_key_is_refused_in_band_without_dialling(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    event, code, reason = await refused(f"{gateway.ws}/v1/realtime?model=gpt-realtime")
    assert event["type"] == "error" and event["error"]["code"] == "invalid_api_key"
    assert (code, reason) == (3000, "invalid_request_error.invalid_api_key")
    assert provider.upgrades == []


async def test_wrong_and_revoked_keys_are_refused(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    key = await gateway.new_key()
    event, code, _ = await refused(
        f"{gateway.ws}/v1/realtime?model=gpt-realtime",
        {"Authorization": "Bearer rtg_nope_" + "x" * 32},
    )
    assert code == 3000
    assert "rtg_nope_xxxxx" not in event["error"]["message"]
    keys = await gateway.store.list_keys()
    await gateway.store.revoke_key(keys[0].id, 1.0)
    _, code, _ = await refused(
        f"{gateway.ws}/v1/realtime?model=gpt-realtime", {"Authorization": f"Bearer {key}"}
    )
    assert code == 3000
    assert provider.upgrades == []


@pytest.mark.parametrize("how", ["bearer", "api-key", "subprotocol"])
async def test_each_credential_source_opens_a_session(
    gateway: RunningGateway, provider: FakeProvider, how: str
) -> None:
    key = await gateway.new_key()
    headers: dict[str, str] = {}
    protocols: list[str] | None = None
    if how == "bearer":
        headers["Authorization"] = f"Bearer {key}"
    elif how == "api-key":
        headers["api-key"] = key
    else:
        protocols = ["realtime", f"openai-insecure-api-key.{key}"]
    async with connect(
        f"{gateway.ws}/v1/realtime?model=gpt-realtime",
        additional_headers=headers,
        subprotocols=protocols,
    ) as ws:  # type: ignore[arg-type]
        (created,) = await first_events(ws, 1)
        assert created["type"] == "session.created"
        if protocols:
            assert ws.subprotocol == "realtime"
            assert key not in str(ws.response.headers)  # type: ignore[union-attr]
    up = provider.upgrades[-1].headers
    assert up["Authorization"] == f"Bearer {PROVIDER_KEY}"
    assert "api-key" not in up and key not in str(up)
    assert not any(h.lower() == "sec-websocket-protocol" for h in up)


async def test_unknown_model_gets_model_not_found_and_4004(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    key = await gateway.new_key()
    event, code, reason = await refused(
        f"{gateway.ws}/v1/realtime?model=gpt-4o-realtime-nope", {"Authorization": f"Bearer {key}"}
    )
    assert event["error"]["code"] == "model_not_found"
    assert (code, reason) == (4004, "invalid_request_error.model_not_found")
    assert provider.upgrades == []


async def test_dated_snapshot_routes_and_prices_as_its_family(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    key = await gateway.new_key()
    async with connect(
        f"{gateway.ws}/v1/realtime?model=gpt-realtime-2025-08-28",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        await first_events(ws, 1)
        await ws.send(
            orjson.dumps(
                {
                    "type": "test.emit",
                    "event": {
                        "type": "response.done",
                        "event_id": "event_1",
                        "response": {
                            "id": "resp_1",
                            "object": "realtime.response",
                            "status": "completed",
                            "usage": {
                                "input_tokens": 1000,
                                "output_tokens": 0,
                                "input_token_details": {"text_tokens": 1000},
                            },
                        },
                    },
                }
            ).decode()
        )
        assert orjson.loads(await ws.recv())["type"] == "response.done"
    assert provider.upgrades[-1].query["model"] == "gpt-realtime-2025-08-28"
    (row,) = await gateway.store.usage_summary()
    assert row.model == "gpt-realtime-2025-08-28"
    assert row.charged_nanos == 1000 * 4 * 1000  # $4 / 1M text tokens


@pytest.mark.parametrize(
    "query",
    # The second is the example on OpenAI's Realtime API product page.
    [{"intent": "transcription"}, {"model": "gpt-realtime", "intent": "transcription"}],
)
async def test_transcription_intent_is_passed_upstream_and_metered(
    gateway: RunningGateway, provider: FakeProvider, query: dict[str, str]
) -> None:
    key = await gateway.new_key()
    async with connect(
        f"{gateway.ws}/v1/realtime?{urlencode(query)}",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        (created,) = await first_events(ws, 1)
        assert created["session"]["type"] == "transcription"
        await ws.send(
            orjson.dumps(
                {
                    "type": "session.update",
                    "session": {
                        "type": "transcription",
                        "audio": {
                            "input": {
                                "transcription": {"model": "whisper-1"},
                                "turn_detection": None,
                            }
                        },
                    },
                }
            ).decode()
        )
        assert orjson.loads(await ws.recv())["type"] == "session.updated"
        import base64

        await ws.send(
            orjson.dumps(
                {
                    "type": "input_audio_buffer.append",
                    "audio": base64.b64encode(bytes(48 * 1500)).decode(),
                }
            ).decode()
        )
        await ws.send('{"type":"input_audio_buffer.commit"}')
        while True:
            e = orjson.loads(await ws.recv())
            if e["type"] == "conversation.item.input_audio_transcription.completed":
                break
    assert provider.upgrades[-1].query == query
    (row,) = await gateway.store.usage_summary()
    assert row.model == "whisper-1"
    assert row.usage.audio_ms == 1500
    assert row.charged_nanos == 150_000  # 1.5 s at $0.006 / minute
    (sess,) = await gateway.store.recent_sessions()
    assert sess.intent == "transcription"


async def test_a_relayed_transcription_session_with_no_model_gets_the_default_one(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any]
) -> None:
    gw = await start_gateway(make_settings())
    key = await gw.new_key()
    async with connect(
        f"{gw.ws}/v1/realtime?intent=transcription",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        created, updated = await first_events(ws, 2)
    # The provider's session.created, then rtgate's default applied before any client frame.
    assert created["type"] == "session.created"
    assert updated["type"] == "session.updated"
    transcription = updated["session"]["audio"]["input"]["transcription"]
    assert transcription["model"] == "gpt-4o-mini-transcribe"

    # A key whose defaults choose one: that one, and nothing else sent.
    policy = KeyPolicy(
        session_defaults={"audio": {"input": {"transcription": {"model": "whisper-1"}}}}
    )
    _, chosen = await gw.app[GATEWAY].keyring.create("chooser", policy)
    async with connect(
        f"{gw.ws}/v1/realtime?intent=transcription",
        additional_headers={"Authorization": f"Bearer {chosen}"},
    ) as ws:
        created, updated = await first_events(ws, 2)
        await ws.send('{"type":"input_audio_buffer.clear"}')
        (after,) = await first_events(ws, 1)
    assert updated["session"]["audio"]["input"]["transcription"]["model"] == "whisper-1"
    assert after["type"] == "input_audio_buffer.cleared"
    # A realtime session is left as its provider makes it.
    async with connect(
        f"{gw.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        (created,) = await first_events(ws, 1)
        await ws.send('{"type":"input_audio_buffer.clear"}')
        (after,) = await first_events(ws, 1)
    assert after["type"] == "input_audio_buffer.cleared"


async def test_upstream_close_code_and_reason_are_mirrored(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    key = await gateway.new_key()
    async with connect(
        f"{gateway.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        await first_events(ws, 1)
        await ws.send('{"type":"test.close","code":4321,"reason":"provider says bye"}')
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    assert (ws.close_code, ws.close_reason) == (4321, "provider says bye")
    await asyncio.sleep(0.05)
    (sess,) = await gateway.store.recent_sessions()
    assert (sess.close_code, sess.closed_by) == (4321, "upstream")


async def test_client_close_code_is_mirrored_upstream(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    key = await gateway.new_key()
    async with connect(
        f"{gateway.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        await first_events(ws, 1)
        await ws.close(code=4100, reason="client done")
    for _ in range(100):
        if provider.closes:
            break
        await asyncio.sleep(0.01)
    assert provider.closes[-1][0] == 4100


async def test_a_client_close_without_a_status_code_is_recorded_as_1005(
    gateway: RunningGateway, provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    # A browser's ws.close() sends an empty close frame: RFC 6455 7.1.5 calls that 1005.
    caplog.set_level(logging.INFO, logger="rtgate.relay")
    key = await gateway.new_key()
    async with connect(
        f"{gateway.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        await first_events(ws, 1)
        await ws.close(code=None)  # type: ignore[arg-type]
    for _ in range(200):
        (sess,) = await gateway.store.recent_sessions()
        if sess.ended_at is not None:
            break
        await asyncio.sleep(0.01)
    assert (sess.close_code, sess.closed_by) == (1005, "client")
    (closed,) = [r for r in caplog.records if r.getMessage() == "session closed by client: 1005"]
    assert closed.close_code == 1005  # a field of its own, for log queries
    # 1005 must never be sent (RFC 6455 7.4.1): the provider is told 1000.
    for _ in range(100):
        if provider.closes:
            break
        await asyncio.sleep(0.01)
    assert provider.closes[-1][0] == 1000


async def test_upstream_that_vanishes_mid_session_gives_error_and_1011(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    key = await gateway.new_key()
    async with connect(
        f"{gateway.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        await first_events(ws, 1)
        await ws.send('{"type":"test.drop"}')
        event = orjson.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    assert event["error"]["code"] == "upstream_unavailable"
    assert ws.close_code == 1011


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("down", ("upstream_unavailable", 1011)),
        (503, ("upstream_unavailable", 1011)),
        # Azure refuses a wrong key at the handshake, before any event (a newcomer's find:
        # this was upstream_unavailable, 1011, which a client retries).
        (401, ("upstream_auth_failed", 3000)),
        (403, ("upstream_auth_failed", 3000)),
    ],
)
async def test_upstream_that_cannot_be_reached_gives_error_not_hang(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    mode: str | int,
    expected: tuple[str, int],
) -> None:
    if mode == "down":
        settings = make_settings(RTGATE_OPENAI_BASE_URL="ws://127.0.0.1:9/v1")
    else:
        provider.refuse_status = int(mode)
        settings = make_settings()
    gw = await start_gateway(settings)
    key = await gw.new_key()
    event, code, reason = await asyncio.wait_for(
        refused(f"{gw.ws}/v1/realtime?model=gpt-realtime", {"Authorization": f"Bearer {key}"}), 10
    )
    assert (event["error"]["code"], code) == expected
    assert reason == f"{event['error']['type']}.{event['error']['code']}"
    if mode == 503:
        assert "503" in event["error"]["message"]
    elif mode != "down":
        assert "rejected by its upstream provider" in event["error"]["message"]


async def test_provider_rejecting_our_key_is_mirrored_without_leaking_it(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider.key = "sk-some-other-key"
    gw = await start_gateway(make_settings())
    key = await gw.new_key()
    caplog.set_level(logging.DEBUG)
    event, code, reason = await refused(
        f"{gw.ws}/v1/realtime?model=gpt-realtime", {"Authorization": f"Bearer {key}"}
    )
    # Not the client's key at fault: neither the event nor the close reason may say so.
    assert (code, reason) == (3000, "invalid_request_error.upstream_auth_failed")
    assert event["error"]["code"] == "upstream_auth_failed"
    assert PROVIDER_KEY[-4:] not in orjson.dumps(event).decode()
    for _ in range(100):
        gateway_logs = "\n".join(
            r.getMessage() for r in caplog.records if r.name.startswith(("rtgate", "aiohttp"))
        )
        if "session closed" in gateway_logs:
            break
        await asyncio.sleep(0.01)
    assert "session closed" in gateway_logs
    assert PROVIDER_KEY not in gateway_logs and key not in gateway_logs
    # The upstream is failing (a newcomer's find: it showed "ok" to the console and the admin
    # API), and the operator is warned.
    health = gw.app[GATEWAY].upstream_health.of("openai")
    assert (health.state, health.last_error) == ("failing", "invalid_api_key")
    assert (health.dials, health.failures) == (1, 1)  # the one dial, refused after
    assert "upstream openai refused the gateway's key" in gateway_logs


async def test_a_frame_quoting_the_providers_key_reaches_the_client_without_it(
    gateway: RunningGateway,
) -> None:
    """A newcomer's find, with a provider that echoed its Authorization header: only an
    ``invalid_api_key`` error had the key taken out; an event naming it, an error of another
    code, reached the client with the key in it."""
    gw = gateway
    key = await gw.new_key()
    quoting = [
        {"type": "session.updated", "session": {"instructions": f"Bearer {PROVIDER_KEY}"}},
        {"type": "error", "error": {"code": "some_error", "message": f"bad {PROVIDER_KEY}"}},
    ]
    async with connect(
        f"{gw.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        assert orjson.loads(await ws.recv())["type"] == "session.created"
        for event in quoting:
            frame = orjson.dumps(event).decode()
            await ws.send(orjson.dumps({"type": "test.raw", "frame": frame}).decode())
            got = await asyncio.wait_for(ws.recv(), 5)
            assert PROVIDER_KEY not in got and "[redacted]" in got, got
            assert orjson.loads(got)["type"] == event["type"]


async def test_session_expires_at_the_cap_with_1001(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    clock = ManualClock()
    gw = await start_gateway(make_settings(), clock=clock, expiry_check_interval=0.01)
    key = await gw.new_key()
    async with connect(
        f"{gw.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        await first_events(ws, 1)
        clock.advance(3599)
        await asyncio.sleep(0.05)
        await ws.send('{"type":"input_audio_buffer.clear"}')
        assert orjson.loads(await ws.recv())["type"] == "input_audio_buffer.cleared"
        clock.advance(1)
        event = orjson.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    assert event["error"]["code"] == "session_expired"
    msg = "Your session hit the maximum duration of 60 minutes."
    assert event["error"]["message"] == msg
    assert (ws.close_code, ws.close_reason) == (1001, msg)


async def test_malformed_json_is_relayed_and_the_session_continues(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    key = await gateway.new_key()
    async with connect(
        f"{gateway.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        await first_events(ws, 1)
        await ws.send('{"type": "session.update", oops')
        err = orjson.loads(await ws.recv())
        assert err["type"] == "error" and err["error"]["code"] == "invalid_event"
        await ws.send('{"type":"brand.new.event","x":1}')
        err = orjson.loads(await ws.recv())
        assert err["error"]["code"] == "invalid_value" and err["error"]["param"] == "type"
        await ws.send('{"type":"input_audio_buffer.clear"}')
        assert orjson.loads(await ws.recv())["type"] == "input_audio_buffer.cleared"


async def test_the_upstreams_binary_frames_pass_and_a_clients_are_refused(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    """A client's binary frame is no event of the protocol's, and none of the gateway reads it:
    an ``error``, and the session goes on (the fake provider would have echoed it)."""
    key = await gateway.new_key()
    async with connect(
        f"{gateway.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        await first_events(ws, 1)
        await ws.send(b"\x00\x01\xff")
        refused = orjson.loads(await ws.recv())
        assert (refused["type"], refused["error"]["code"]) == ("error", "invalid_event")
        await ws.send('{"type":"test.binary"}')
        assert await ws.recv() == bytes(range(256))


async def test_a_15_mib_append_passes_and_a_17_mib_frame_is_closed_1009(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    key = await gateway.new_key()
    big = "A" * (15 * 1024 * 1024)
    async with any_size(gateway, key) as ws:
        await first_events(ws, 1)
        await ws.send('{"type":"input_audio_buffer.append","audio":"' + big + '"}')
        await ws.send('{"type":"input_audio_buffer.clear"}')
        assert orjson.loads(await ws.recv())["type"] == "input_audio_buffer.cleared"
        await closed_by(ws, "x" * (17 * 1024 * 1024))
    assert ws.close_code == 1009


def any_size(gw: RunningGateway, key: str) -> Any:
    """A client socket whose own cap is off: the gateway's is the one tried."""
    return connect(
        f"{gw.ws}/v1/realtime?model=gpt-realtime",
        max_size=None,
        additional_headers={"Authorization": f"Bearer {key}"},
    )


def padded(head: str, size: int) -> str:
    """A frame of exactly ``size`` bytes: ``head`` opens a string member, padded to close it."""
    frame = head + "A" * (size - len(head) - 2) + '"}'
    assert len(frame) == size
    return frame


async def closed_by(ws: Any, frame: str) -> None:
    """``frame`` sent; the gateway closes the socket for it (either the send or the next read
    sees it)."""
    with pytest.raises(websockets.ConnectionClosed):  # noqa: PT012 -- either may see it
        await ws.send(frame)
        await ws.recv()


@pytest.mark.parametrize("deflate", ["false", "true"])
async def test_a_message_of_exactly_the_limit_passes_and_one_byte_more_is_closed_1009(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    deflate: str,
) -> None:
    gw: RunningGateway = await start_gateway(make_settings(RTGATE_PERMESSAGE_DEFLATE=deflate))
    limit = gw.settings.max_message_bytes
    assert limit == 16 * 1024 * 1024
    async with any_size(gw, await gw.new_key()) as ws:
        await first_events(ws, 1)
        # Compressed or not (permessage-deflate, RFC 7692), the limit is the message's size.
        assert ("permessage-deflate" in str(ws.response.headers)) is (deflate == "true")
        head = '{"type":"test.raw","frame":"{\\"type\\":\\"heard\\"}","pad":"'
        # The provider hears it (and answers with the frame it names).
        await ws.send(padded(head, limit))
        assert orjson.loads(await ws.recv()) == {"type": "heard"}
        await closed_by(ws, padded(head, limit + 1))
    assert ws.close_code == 1009


@pytest.mark.parametrize("limit", [64 * 1024, 16 * 1024 * 1024])
async def test_the_local_engine_takes_a_message_of_exactly_the_limit(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any], limit: int
) -> None:
    """An operator's find: on the local engine, the default upstream, a message of exactly
    16 MiB was closed 1009 by the engine's own limit, which did not follow the setting."""
    gw: RunningGateway = await start_gateway(
        make_settings(OPENAI_API_KEY="", RTGATE_MAX_MESSAGE_BYTES=str(limit))
    )
    async with any_size(gw, await gw.new_key()) as ws:
        await first_events(ws, 1)
        head = '{"type":"input_audio_buffer.append","audio":"'
        await ws.send(padded(head, limit))
        await ws.send('{"type":"input_audio_buffer.clear"}')
        events = [orjson.loads(await ws.recv())]
        while events[-1]["type"] != "input_audio_buffer.cleared":
            events.append(orjson.loads(await asyncio.wait_for(ws.recv(), 10)))
        await closed_by(ws, padded(head, limit + 1))
    assert ws.close_code == 1009


async def test_abrupt_client_disconnect_closes_upstream_and_the_session(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    key = await gateway.new_key()
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(
            f"{gateway.ws}/v1/realtime?model=gpt-realtime",
            headers={"Authorization": f"Bearer {key}"},
        )
        await ws.receive()
        assert ws._conn is not None
        ws._conn.transport.abort()  # type: ignore[union-attr]
    for _ in range(200):
        sessions = await gateway.store.recent_sessions()
        if sessions and sessions[0].ended_at and provider.closes:
            break
        await asyncio.sleep(0.01)
    assert sessions[0].closed_by == "client"
    assert provider.closes


async def test_deflate_is_declined_by_default(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    key = await gateway.new_key()
    async with connect(
        f"{gateway.ws}/v1/realtime?model=gpt-realtime",
        compression="deflate",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        await first_events(ws, 1)
        assert "Sec-WebSocket-Extensions" not in ws.response.headers  # type: ignore[union-attr]


async def test_deflate_is_negotiated_when_enabled(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await start_gateway(make_settings(RTGATE_PERMESSAGE_DEFLATE="true"))
    key = await gw.new_key()
    async with connect(
        f"{gw.ws}/v1/realtime?model=gpt-realtime",
        compression="deflate",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        (created,) = await first_events(ws, 1)
        assert created["type"] == "session.created"
        assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]  # type: ignore[union-attr]


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_a_bad_key_is_refused_after_the_upgrade_on_either_server(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    compression: str | None,
) -> None:
    """With deflate on, an upgrade that offers it is aiohttp's, one that does not is picows':
    both refuse the same way (docs/protocol.md 5.3)."""
    gw = await start_gateway(make_settings(RTGATE_PERMESSAGE_DEFLATE="true"))
    async with connect(
        f"{gw.ws}/v1/realtime?model=gpt-realtime",
        compression=compression,
        additional_headers={"Authorization": "Bearer rtg_not_a_key"},
    ) as ws:
        event = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    assert event["error"]["code"] == "invalid_api_key"
    assert ws.close_code == 3000
    assert provider.upgrades == []


async def test_a_slow_client_slows_only_its_own_upstream(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    key = await gateway.new_key()
    url = f"{gateway.ws}/v1/realtime?model=gpt-realtime"
    auth = {"Authorization": f"Bearer {key}"}
    count, size = 400, 256 * 1024  # 100 MiB the client will not read for a while
    async with connect(url, additional_headers=auth, max_size=None, max_queue=4) as slow:
        await first_events(slow, 1)
        await slow.send(orjson.dumps({"type": "test.flood", "count": count, "size": size}).decode())
        await asyncio.sleep(0.5)
        stalled = provider.flooded
        # Bounded buffers: the provider is held back long before the flood is through.
        assert stalled < count // 2
        # And the gateway holds no more than a frame or two above its write buffer's mark.
        (pump,) = gateway.app[GATEWAY].live.values()
        client = pump.client  # type: ignore[attr-defined]
        assert isinstance(client, PicowsLeg)  # picows writes straight to the transport
        assert client.transport is not None
        transport = client.transport.underlying_transport
        assert transport.get_write_buffer_size() < 4 * size
        # Meanwhile another session is served normally.
        async with connect(url, additional_headers=auth) as other:
            await first_events(other, 1)
            await other.send('{"type":"input_audio_buffer.clear"}')
            cleared = orjson.loads(await asyncio.wait_for(other.recv(), 5))
            assert cleared["type"] == "input_audio_buffer.cleared"
        assert provider.flooded < count // 2
        received = 0
        while received < count:
            msg = await asyncio.wait_for(slow.recv(), 10)
            assert len(msg) == size + 49
            received += 1
    assert provider.flooded == count


async def test_only_the_query_the_protocol_defines_reaches_the_provider(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    key = await gateway.new_key()
    async with (
        AsyncOpenAI(
            api_key=key, base_url=f"{gateway.http}/v1", websocket_base_url=f"{gateway.ws}/v1"
        ) as client,
        client.realtime.connect(
            model="gpt-realtime", extra_query={"foo": "1", "api-version": "2025-04-01-preview"}
        ) as conn,
    ):
        assert (await conn.recv()).type == "session.created"
    assert provider.upgrades[-1].query == {"model": "gpt-realtime"}
    for query, forwarded in (
        ("intent=transcription&foo=1", {"intent": "transcription"}),
        ("foo=1&model=gpt-realtime&model=gpt-realtime-mini", {"model": "gpt-realtime"}),
    ):
        async with connect(
            f"{gateway.ws}/v1/realtime?{query}",
            additional_headers={"Authorization": f"Bearer {key}"},
        ) as ws:
            (created,) = await first_events(ws, 1)
            assert created["type"] == "session.created"
        assert provider.upgrades[-1].query == forwarded
    assert len(provider.upgrades) == 3
    # An intent the protocol does not define is refused before the dial: it would reach the
    # provider under the gateway's key, and be stored with the session (an audit found one
    # 41 characters long refused by PostgreSQL's column, the session's usage set aside
    # unbilled).
    for intent in ("x" * 41, "translation", "live", "quicksilver"):
        async with connect(
            f"{gateway.ws}/v1/realtime?model=gpt-realtime&intent={intent}",
            additional_headers={"Authorization": f"Bearer {key}"},
        ) as ws:
            (refused,) = await first_events(ws, 1)
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
        assert refused["error"]["code"] == "invalid_intent", intent
        assert refused["error"]["param"] == "intent"
    assert len(provider.upgrades) == 3


async def test_an_azure_upstream_gets_its_own_key_in_the_api_key_header(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    tmp_path: Any,
) -> None:
    cfg = tmp_path / "azure.toml"
    cfg.write_text(
        f'[upstreams.azure]\nkind = "azure"\nbase_url = "{provider.base_url}"\n'
        'api_key_env = "AZURE_OPENAI_API_KEY"\nproject = "proj_1"\n'
        '[models.voice-eu]\nupstream = "azure"\nupstream_model = "my-deployment"\n'
        'prices = "gpt-realtime"\n'
    )
    gw = await start_gateway(
        make_settings(
            RTGATE_CONFIG=str(cfg), OPENAI_API_KEY="sk-openai", AZURE_OPENAI_API_KEY=PROVIDER_KEY
        )
    )
    key = await gw.new_key()
    # Azure's GA endpoint (/openai/v1) takes no api-version: a client's is dropped like any other.
    async with connect(
        f"{gw.ws}/v1/realtime?model=voice-eu&api-version=2024-10-01-preview&foo=1",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        (created,) = await first_events(ws, 1)
        assert created["type"] == "session.created"
    up = provider.upgrades[-1]
    assert up.path == "/v1/realtime" and up.query == {"model": "my-deployment"}
    assert up.headers["api-key"] == PROVIDER_KEY
    assert "Authorization" not in up.headers and "sk-openai" not in str(up.headers)
    assert up.headers["OpenAI-Project"] == "proj_1"


async def test_a_store_hiccup_while_a_secrets_session_starts_does_not_crash_it(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The revoked-while-dialling re-check reads the store; a failure there must not take the
    # handler down (no error event, an abrupt 1006, a session row with no close code). The
    # secret was valid when the session was admitted, so the session goes on, as a call's does.
    gw: RunningGateway = await start_gateway(make_settings())
    _, key = await key_with(gw)
    async with AsyncOpenAI(api_key=key, base_url=f"{gw.http}/v1", max_retries=0) as client:
        secret = (await client.realtime.client_secrets.create()).value
    ring = gw.app[GATEWAY].keyring

    async def unavailable(sid: str) -> bool:
        raise StoreError("database is locked")

    monkeypatch.setattr(ring, "secret_revoked", unavailable)
    async with connect(
        f"{gw.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {secret}"},
    ) as ws:
        assert orjson.loads(await ws.recv())["type"] == "session.created"
        await ws.send(orjson.dumps({"type": "test.raw", "frame": '{"type":"still.here"}'}).decode())
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "still.here"
        await ws.close(1000, "done")
    for _ in range(100):
        (row,) = await gw.store.recent_sessions()
        if row.ended_at is not None:
            break
        await asyncio.sleep(0.02)
    assert (row.close_code, row.closed_by) == (1000, "client")


async def test_a_client_that_leaves_mid_response_is_billed_for_it(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    """The provider bills the response it ran whether or not the client stays to read its
    ``response.done``: the gateway cancels it, waits for that usage, records it, and the key's
    budget counts it (an audit's proof of concept: a $0.001 budget never moved)."""
    _, key = await gateway.app[GATEWAY].keyring.create(
        "leaver", KeyPolicy(budget_total_nanos=1_000_000)
    )
    url = f"{gateway.ws}/v1/realtime?model=gpt-realtime"
    async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        await first_events(ws, 1)
        created = {"type": "response.created", "response": {"id": "resp_x"}}
        await ws.send(orjson.dumps({"type": "test.emit", "event": created}).decode())
        await ws.send('{"type":"test.sleep","seconds":0.3}')
        await ws.send(emit_response_done("resp_x", 100_000))
        assert orjson.loads(await ws.recv())["type"] == "response.created"

    # Gone before the response.done: it is recorded all the same, then the upstream closed.
    async def recorded() -> bool:
        rows = await gateway.store.usage_summary()
        return bool(rows) and rows[0].records == 1

    await until(recorded)
    await until(lambda: not len(gateway.app[GATEWAY].live))
    # $0.40 of input against a $0.001 budget: the key's next session is refused.
    async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        refused = orjson.loads(await ws.recv())
        assert refused["error"]["code"] == "insufficient_quota"


@pytest.mark.parametrize(
    ("method", "path", "status", "says"),
    [
        ("GET", "/v1/realtime?model=gpt-realtime", 400, "takes a WebSocket"),
        ("GET", "/v1/live/sessions", 400, "live.connect()"),
        ("GET", "/v1/realtime/translations", 400, "realtime.translations.connect()"),
        ("GET", "/v1/nope", 404, "Invalid URL (GET /v1/nope)"),
        ("GET", "/v1", 404, "Invalid URL (GET /v1)"),
        ("DELETE", "/v1/realtime/client_secrets", 405, "Invalid URL (DELETE "),
    ],
)
async def test_a_v1_request_no_route_serves_is_answered_in_openais_shape(
    gateway: RunningGateway, method: str, path: str, status: int, says: str
) -> None:
    """A newcomer's find: these were aiohttp's plain text ("No WebSocket UPGRADE hdr"), which
    the SDKs cannot read as an error."""
    key = await gateway.new_key()
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, f"{gateway.http}{path}", headers={"Authorization": f"Bearer {key}"}
        ) as r,
    ):
        body = await r.json()
        assert r.status == status and r.content_type == "application/json"
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["code"] is None
    assert says in body["error"]["message"]


async def test_the_sdk_reads_an_unknown_v1_route_as_not_found(gateway: RunningGateway) -> None:
    async with AsyncOpenAI(
        api_key=await gateway.new_key(), base_url=f"{gateway.http}/v1", max_retries=0
    ) as client:
        with pytest.raises(openai.NotFoundError) as missing:
            await client.get("/nope", cast_to=object)
    assert missing.value.message.endswith("Invalid URL (GET /v1/nope)")
    assert missing.value.code is None and missing.value.type == "invalid_request_error"
