"""WebRTC calls through the gateway (protocol.md 3.1, 3.2), with the official SDK: the SDP offer
relayed upstream with the provider's key, the answer and a rewritten ``Location`` back, the
call's sideband metered and billed to the key that placed it, budgets ending calls upstream, and
the SIP actions relayed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI

from rtgate.auth.policy import KeyPolicy, PolicyUpdate, apply_update
from rtgate.relay.endpoint import GATEWAY
from tests.conftest import RunningGateway
from tests.provider import FAKE_SDP_ANSWER, PROVIDER_KEY, FakeProvider

OFFER = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=offer\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"

ClientFor = Callable[[RunningGateway, str], AsyncOpenAI]


@pytest.fixture
async def client_for() -> AsyncIterator[ClientFor]:
    made: list[AsyncOpenAI] = []

    def make(gw: RunningGateway, key: str) -> AsyncOpenAI:
        made.append(AsyncOpenAI(api_key=key, base_url=f"{gw.http}/v1", max_retries=0))
        return made[-1]

    yield make
    for c in made:
        await c.close()


async def key_with(gw: RunningGateway, **update: Any) -> tuple[str, str]:
    policy = apply_update(KeyPolicy(), PolicyUpdate(**update))
    info, secret = await gw.app[GATEWAY].keyring.create("caller", policy)
    return info.id, secret


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def response_done(rid: str, text_in: int) -> dict[str, Any]:
    return {
        "type": "response.done",
        "event_id": f"event_{rid}",
        "response": {
            "id": rid,
            "object": "realtime.response",
            "status": "completed",
            "usage": {
                "input_tokens": text_in,
                "output_tokens": 0,
                "input_token_details": {"text_tokens": text_in},
                "output_token_details": {"audio_tokens": 0},
            },
        },
    }


async def test_a_minted_secret_places_a_call_metered_on_its_sideband(
    gateway: RunningGateway, provider: FakeProvider, client_for: ClientFor
) -> None:
    key_id, key = await key_with(gateway, instructions="Key default.")
    minted = await client_for(gateway, key).realtime.client_secrets.create(
        session={"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief."}
    )
    raw = await client_for(gateway, minted.value).realtime.calls.with_raw_response.create(sdp=OFFER)
    assert raw.status_code == 201
    assert raw.headers["content-type"] == "application/sdp"
    answer = raw.parse().content.decode()
    assert answer == FAKE_SDP_ANSWER
    location = raw.headers["location"]
    assert location.startswith("/v1/realtime/calls/rtc_")
    call_id = location.rsplit("/", 1)[-1]

    # Upstream: the offer, the template merged over the key's defaults, the provider's key.
    placed = provider.calls[call_id]
    assert placed.sdp == OFFER
    assert placed.session["model"] == "gpt-realtime"
    assert placed.session["instructions"] == "Be brief."
    assert placed.headers["Authorization"] == f"Bearer {PROVIDER_KEY}"
    assert minted.value not in str(placed.headers) and key not in str(placed.headers)

    # The gateway watches the call on its sideband, with the provider's key.
    sideband = [u for u in provider.upgrades if u.query.get("call_id") == call_id]
    assert len(sideband) == 1
    assert sideband[0].headers["Authorization"] == f"Bearer {PROVIDER_KEY}"
    assert "model" not in sideband[0].query

    await provider.emit_on_call(call_id, response_done("resp_1", 1500))

    async def billed() -> bool:
        return bool(await gateway.store.usage_summary())

    await eventually(billed)
    (usage,) = await gateway.store.usage_summary()
    assert usage.key_id == key_id and usage.model == "gpt-realtime"
    assert usage.charged_nanos == 6_000_000  # 1500 text tokens at $4 / 1M
    (session,) = await gateway.store.recent_sessions()
    assert session.key_id == key_id and session.intent == "webrtc"

    # Hanging up is relayed upstream, and the sideband session ends.
    hung = await client_for(gateway, key).realtime.calls.with_raw_response.hangup(call_id)
    assert hung.status_code == 200
    assert (call_id, "hangup", None) in provider.call_actions

    async def ended() -> bool:
        (s,) = await gateway.store.recent_sessions()
        return s.ended_at is not None

    await eventually(ended)
    assert not gateway.app[GATEWAY].live


async def test_a_gateway_key_places_a_call_with_a_multipart_session(
    gateway: RunningGateway, provider: FakeProvider, client_for: ClientFor
) -> None:
    _, key = await key_with(gateway)
    raw = await client_for(gateway, key).realtime.calls.with_raw_response.create(
        sdp=OFFER,
        session={"type": "realtime", "model": "gpt-realtime", "instructions": "Hi."},
    )
    assert raw.status_code == 201
    call_id = raw.headers["location"].removeprefix("/v1/realtime/calls/")
    assert raw.parse().content.decode() == FAKE_SDP_ANSWER
    placed = provider.calls[call_id]
    assert placed.sdp == OFFER and placed.session["instructions"] == "Hi."


async def test_refusals_follow_the_key_policy_and_upstream_failures_are_502(
    gateway: RunningGateway, provider: FakeProvider, client_for: ClientFor
) -> None:
    _, narrow = await key_with(gateway, models=["gpt-realtime-mini"])
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await client_for(gateway, narrow).realtime.calls.create(
            sdp=OFFER, session={"type": "realtime", "model": "gpt-realtime"}
        )
    assert denied.value.code == "model_not_allowed"
    with pytest.raises(openai.AuthenticationError):
        await client_for(gateway, "sk-nope").realtime.calls.create(sdp=OFFER)
    _, key = await key_with(gateway)
    provider.refuse_calls = 500
    with pytest.raises(openai.InternalServerError) as failed:
        await client_for(gateway, key).realtime.calls.create(
            sdp=OFFER, session={"type": "realtime", "model": "gpt-realtime"}
        )
    assert failed.value.status_code == 502 and failed.value.code == "upstream_unavailable"
    assert not provider.calls
    assert await gateway.store.recent_sessions() == []


async def test_a_crossed_budget_hangs_the_call_up_upstream(
    gateway: RunningGateway, provider: FakeProvider, client_for: ClientFor
) -> None:
    key_id, key = await key_with(gateway, budget_usd_total=Decimal("0.010"))
    raw = await client_for(gateway, key).realtime.calls.with_raw_response.create(
        sdp=OFFER, session={"type": "realtime", "model": "gpt-realtime"}
    )
    call_id = raw.headers["location"].rsplit("/", 1)[-1]
    await provider.emit_on_call(call_id, response_done("resp_1", 1500))  # $0.006
    await asyncio.sleep(0.2)
    assert provider.call_actions == []
    await provider.emit_on_call(call_id, response_done("resp_2", 1000))  # $0.010: reached

    async def hung_up() -> bool:
        return (call_id, "hangup", None) in provider.call_actions

    await eventually(hung_up)

    async def ended() -> bool:
        (s,) = await gateway.store.recent_sessions()
        return s.ended_at is not None

    await eventually(ended)
    (session,) = await gateway.store.recent_sessions()
    assert session.key_id == key_id
    (usage,) = await gateway.store.usage_summary()
    assert usage.records == 2 and usage.charged_nanos == 10_000_000
    # The key is out of budget: its next call is refused before reaching the provider.
    with pytest.raises(openai.RateLimitError) as refused:
        await client_for(gateway, key).realtime.calls.create(
            sdp=OFFER, session={"type": "realtime", "model": "gpt-realtime"}
        )
    assert refused.value.code == "insufficient_quota"
    assert list(provider.calls) == [call_id]


async def test_sip_actions_are_relayed_with_the_provider_key(
    gateway: RunningGateway, provider: FakeProvider, client_for: ClientFor
) -> None:
    _, key = await key_with(gateway)
    client = client_for(gateway, key)
    accepted = await client.realtime.calls.with_raw_response.accept(
        "rtc_sip1", type="realtime", model="gpt-realtime", instructions="Answer the phone."
    )
    assert accepted.status_code == 200
    rejected = await client.realtime.calls.with_raw_response.reject("rtc_sip2", status_code=486)
    assert rejected.status_code == 200
    await client.realtime.calls.refer("rtc_sip1", target_uri="tel:+14155550123")
    # Another key cannot act on this key's call; no key at all is refused.
    _, other = await key_with(gateway)
    with pytest.raises(openai.NotFoundError):
        await client_for(gateway, other).realtime.calls.hangup("rtc_sip1")
    with pytest.raises(openai.AuthenticationError):
        await client_for(gateway, "sk-nope").realtime.calls.hangup("rtc_sip1")
    await client.realtime.calls.hangup("rtc_sip1")
    actions = [(c, a) for c, a, _ in provider.call_actions]
    assert actions == [
        ("rtc_sip1", "accept"),
        ("rtc_sip2", "reject"),
        ("rtc_sip1", "refer"),
        ("rtc_sip1", "hangup"),
    ]
    bodies = {a: b for _, a, b in provider.call_actions}
    assert bodies["accept"] is not None
    assert bodies["accept"]["instructions"] == "Answer the phone."
    assert bodies["accept"]["model"] == "gpt-realtime"
    assert bodies["reject"] == {"status_code": 486}
    assert bodies["refer"] == {"target_uri": "tel:+14155550123"}
    # An accepted call is metered on its sideband like a placed one.
    assert any(u.query.get("call_id") == "rtc_sip1" for u in provider.upgrades)


async def test_shutdown_hangs_up_live_calls_and_ends(
    gateway: RunningGateway, provider: FakeProvider, client_for: ClientFor
) -> None:
    import asyncio

    from rtgate.api.calls_http import CALLS

    _, key = await key_with(gateway)
    raw = await client_for(gateway, key).realtime.calls.with_raw_response.create(
        sdp=OFFER, session={"type": "realtime", "model": "gpt-realtime"}
    )
    call_id = raw.headers["location"].removeprefix("/v1/realtime/calls/")
    await asyncio.wait_for(gateway.app[CALLS].shutdown(), 10)
    assert (call_id, "hangup", None) in provider.call_actions
    (session,) = await gateway.store.recent_sessions()
    assert session.ended_at is not None and session.close_code == 1001
