"""WebRTC calls through the gateway (docs/protocol.md 3.1, 3.2), with the official SDK: the SDP
offer relayed upstream with the provider's key, the answer and a rewritten ``Location`` back, the
call's sideband metered and billed to the key that placed it, budgets ending calls upstream, and
the SIP actions relayed. A call's sideband is a live session: the key's live-session, rate,
budget and blocked-field policy applies before the upstream sees an offer, the duration cap hangs
the call up, and the admin API and shutdown end it by hanging it up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import aiohttp
import msgspec
import openai
import orjson
import pytest
from openai import AsyncOpenAI
from websockets.asyncio.client import connect

from rtgate.auth.client_secrets import secret_id_of
from rtgate.auth.policy import KeyPolicy, PolicyUpdate, apply_update
from rtgate.clock import ManualClock
from rtgate.config import Settings
from rtgate.relay.endpoint import GATEWAY
from tests.conftest import RunningGateway
from tests.polling import until
from tests.provider import FAKE_SDP_ANSWER, PROVIDER_KEY, FakeProvider, emit_response_done

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
    policy = apply_update(KeyPolicy(), msgspec.convert(update, PolicyUpdate))
    info, secret = await gw.app[GATEWAY].keyring.create("caller", policy)
    return info.id, secret


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

    await until(billed)
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

    await until(ended)
    assert not gateway.app[GATEWAY].live


async def test_a_sideband_meters_what_it_can_read_and_flags_the_rest_for_review(
    gateway: RunningGateway, provider: FakeProvider, client_for: ClientFor
) -> None:
    _, key = await key_with(gateway)
    call_id = await place(client_for(gateway, key), REALTIME)
    # A lone surrogate escape (legal JSON, refused by orjson), then a response.done cut short.
    await provider.emit_on_call(
        call_id,
        '{"type":"response.done","response":{"id":"resp_1","output":[{"transcript":"\\ud83d"}],'
        '"usage":{"input_tokens":1500,"input_token_details":{"text_tokens":1500}}}}',
    )
    await provider.emit_on_call(call_id, '{"type":"response.done","response":{"usage":{"inp')

    async def both_recorded() -> bool:
        rows = await gateway.store.usage_summary()
        return bool(rows) and rows[0].records == 2

    await until(both_recorded)
    (usage,) = await gateway.store.usage_summary()
    assert (usage.needs_review, usage.usage.text_in) == (1, 1500)
    assert usage.charged_nanos == 6_000_000  # 1500 text tokens at $4 / 1M
    assert await metric(gateway, 'rtgate_usage_review_total{reason="unparseable_frame"}') == 1


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


async def test_a_raw_offer_is_placed_on_the_model_its_query_names(
    gateway: RunningGateway, provider: FakeProvider, client_for: ClientFor
) -> None:
    """A newcomer's find: ``POST /v1/realtime/calls?model=gpt-realtime-mini`` with a raw SDP
    offer and a gateway key was placed, and billed, as the default model."""
    _, key = await key_with(gateway)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/sdp"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{gateway.http}/v1/realtime/calls?model=gpt-realtime-mini", headers=headers, data=OFFER
        ) as r:
            assert r.status == 201, await r.text()
            call_id = r.headers["Location"].removeprefix("/v1/realtime/calls/")
        assert provider.calls[call_id].session["model"] == "gpt-realtime-mini"
        live = [s.session for s in gateway.app[GATEWAY].live.values()]
        assert [(s.intent, s.route.model) for s in live] == [("webrtc", "gpt-realtime-mini")]
        # A secret keeps its own model: another in the query is refused, as on the socket.
        secret = (
            await client_for(gateway, key).realtime.client_secrets.create(
                session={"type": "realtime", "model": "gpt-realtime"}
            )
        ).value
        headers["Authorization"] = f"Bearer {secret}"
        async with http.post(
            f"{gateway.http}/v1/realtime/calls?model=gpt-realtime-mini", headers=headers, data=OFFER
        ) as r:
            assert r.status == 403
            assert (await r.json())["error"]["code"] == "model_not_allowed"


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

    await until(hung_up)

    async def ended() -> bool:
        (s,) = await gateway.store.recent_sessions()
        return s.ended_at is not None

    await until(ended)
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


async def test_a_control_takes_only_the_members_it_defines(
    gateway: RunningGateway, provider: FakeProvider, client_for: ClientFor
) -> None:
    """``reject {status_code?}``, ``refer {target_uri}``, ``hangup``: any other member, or a
    value of the wrong kind, is refused before the provider hears of it."""
    _, key = await key_with(gateway)
    client = client_for(gateway, key)
    for action, kwargs, code, param in (
        (
            "reject",
            {"status_code": 486, "extra_body": {"reason": "x"}},
            "unknown_parameter",
            "reason",
        ),
        ("reject", {"extra_body": {"status_code": True}}, "invalid_type", "status_code"),
        (
            "refer",
            {"target_uri": "tel:+1", "extra_body": {"headers": {}}},
            "unknown_parameter",
            "headers",
        ),
        ("refer", {"target_uri": 5}, "invalid_type", "target_uri"),
        # Required by the SDK: a refer with no target is not sent (a newcomer's find).
        ("refer", {"target_uri": None}, "missing_required_parameter", "target_uri"),
        ("hangup", {"extra_body": {"reason": "done"}}, "unknown_parameter", "reason"),
        # An accept's body is the session itself: named from its top (a newcomer's find).
        ("accept", {"type": "realtime", "extra_body": {"foo": 1}}, "unknown_parameter", "foo"),
        (
            "accept",
            {"type": "realtime", "audio": {"output": {"voice": "nobody"}}},
            "invalid_value",
            "audio.output.voice",
        ),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            await getattr(client.realtime.calls, action)("rtc_sip2", **kwargs)
        error = openai_error(refused.value)
        assert (error["code"], error["param"]) == (code, param), action
        assert "'session." not in error["message"]
    assert provider.call_actions == []
    await client.realtime.calls.reject("rtc_sip2", status_code=486)
    assert provider.call_actions == [("rtc_sip2", "reject", {"status_code": 486})]


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
    assert provider.hangups(call_id) == 1
    (session,) = await gateway.store.recent_sessions()
    assert session.ended_at is not None and session.close_code == 1001


# -- a call's sideband is a live session under the key's policy --------------------------------

REALTIME = {"type": "realtime", "model": "gpt-realtime"}
ADMIN_TOKEN = "adm_" + "C4llToken" * 4


async def offer(client: AsyncOpenAI, session: dict[str, Any] | None = None) -> Any:
    """Offer a call: multipart with ``session``, raw SDP (``application/sdp``) without."""
    calls = client.realtime.calls.with_raw_response
    if session is None:
        return await calls.create(sdp=OFFER)
    return await calls.create(sdp=OFFER, session=session)


async def place(client: AsyncOpenAI, session: dict[str, Any] | None = None) -> str:
    """Place a call; its call id."""
    raw = await offer(client, session)
    assert raw.status_code == 201
    return str(raw.headers["location"]).removeprefix("/v1/realtime/calls/")


def openai_error(exc: openai.APIStatusError) -> dict[str, Any]:
    """The refusal's body, checked to be OpenAI's error shape."""
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code", "param"}
    return dict(body["error"])


async def sideband_open(provider: FakeProvider, call_id: str) -> None:
    async def opened() -> bool:
        return call_id in provider.sidebands

    await until(opened)


async def ended_row(gw: RunningGateway, session_id: str | None = None) -> Any:
    """The call's session row once its end is recorded (the only one unless named)."""
    found: list[Any] = []

    async def ended() -> bool:
        rows = [r for r in await gw.store.recent_sessions() if session_id in (None, r.id)]
        found[:] = rows
        return len(rows) == 1 and rows[0].ended_at is not None

    await until(ended)
    return found[0]


async def metric(gw: RunningGateway, line_prefix: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{gw.http}/metrics") as r:
        text = await r.text()
    (line,) = [x for x in text.splitlines() if x.startswith(line_prefix + " ")]
    return float(line.rsplit(" ", 1)[1])


@pytest.mark.parametrize("cap", ["key", "gateway"])
async def test_the_duration_cap_hangs_the_call_up_upstream(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    client_for: ClientFor,
    cap: str,
) -> None:
    clock = ManualClock()
    if cap == "key":
        gw = await start_gateway(make_settings(), clock=clock, expiry_check_interval=0.02)
        _, key = await key_with(gw, max_duration="30s")
    else:
        settings = make_settings(RTGATE_MAX_SESSION_SECONDS="30")
        gw = await start_gateway(settings, clock=clock, expiry_check_interval=0.02)
        _, key = await key_with(gw)
    call_id = await place(client_for(gw, key), REALTIME)
    await sideband_open(provider, call_id)
    started = clock.now()

    clock.advance(29.5)
    await asyncio.sleep(0.2)
    assert provider.hangups(call_id) == 0 and len(gw.app[GATEWAY].live) == 1

    clock.advance(1)

    async def hung_up() -> bool:
        return provider.hangups(call_id) == 1

    await until(hung_up)
    row = await ended_row(gw)
    assert row.intent == "webrtc"
    assert row.close_code == 1001
    assert row.close_reason == "Your session hit the maximum duration of 30 seconds."
    assert row.closed_by == "gateway"
    assert row.ended_at - started == pytest.approx(30.5)
    assert not gw.app[GATEWAY].live
    assert await gw.app[GATEWAY].limiter.live(row.key_id) == 0
    await asyncio.sleep(0.1)
    assert provider.hangups(call_id) == 1


async def test_a_live_call_holds_one_of_the_keys_live_sessions(
    gateway: RunningGateway, provider: FakeProvider, client_for: ClientFor
) -> None:
    key_id, key = await key_with(gateway, max_sessions=1)
    client = client_for(gateway, key)
    first = await place(client, REALTIME)

    with pytest.raises(openai.RateLimitError) as refused:
        await client.realtime.calls.create(sdp=OFFER, session=REALTIME)
    assert refused.value.status_code == 429
    error = openai_error(refused.value)
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert list(provider.calls) == [first]
    # The call holds the slot against the WebSocket path too.
    async with connect(
        f"{gateway.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        event = orjson.loads(await ws.recv())
        assert event["error"]["code"] == "rate_limit_exceeded"
    assert len(provider.upgrades) == 1  # the first call's sideband only

    # Hung up through the gateway: the slot is free once the hangup is answered, even while
    # the provider has yet to close the call's sideband.
    provider.hangup_closes_sideband = False
    await client.realtime.calls.hangup(first)
    second = await place(client, REALTIME)
    assert list(provider.calls) == [first, second]
    assert provider.hangups(first) == 1  # the client's; the gateway sent none of its own
    rows = await gateway.store.recent_sessions()
    (ended,) = [r for r in rows if r.ended_at is not None]
    assert (ended.close_code, ended.closed_by) == (1000, "client")
    assert first not in provider.sidebands
    assert await gateway.app[GATEWAY].limiter.live(key_id) == 1


async def test_sessions_per_minute_counts_calls(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    client_for: ClientFor,
) -> None:
    clock = ManualClock()
    gw = await start_gateway(make_settings(), clock=clock)
    _, key = await key_with(gw, sessions_per_minute=1)
    client = client_for(gw, key)
    first = await place(client, REALTIME)
    await client.realtime.calls.hangup(first)

    with pytest.raises(openai.RateLimitError) as refused:
        await client.realtime.calls.create(sdp=OFFER, session=REALTIME)
    assert openai_error(refused.value)["code"] == "rate_limit_exceeded"
    assert "per minute" in openai_error(refused.value)["message"]
    assert list(provider.calls) == [first]

    clock.advance(60)
    second = await place(client, REALTIME)
    assert list(provider.calls) == [first, second]


async def test_blocked_session_fields_refuse_the_call_before_the_upstream(
    gateway: RunningGateway, provider: FakeProvider, client_for: ClientFor
) -> None:
    key_id, key = await key_with(
        gateway, instructions="Key default.", blocked_events=["session.update:instructions"]
    )
    client = client_for(gateway, key)

    def refused_for_instructions(exc: openai.PermissionDeniedError) -> None:
        assert exc.status_code == 403
        error = openai_error(exc)
        assert error["code"] == "event_not_allowed"
        assert error["param"] == "session.instructions"

    # Multipart with the gateway key.
    with pytest.raises(openai.PermissionDeniedError) as multipart:
        await client.realtime.calls.create(sdp=OFFER, session={**REALTIME, "instructions": "x"})
    refused_for_instructions(multipart.value)
    # A client secret cannot be minted with the field...
    with pytest.raises(openai.PermissionDeniedError) as minting:
        await client.realtime.client_secrets.create(session={**REALTIME, "instructions": "x"})
    refused_for_instructions(minting.value)
    # ...nor can a secret minted without it set it on the call.
    minted = await client.realtime.client_secrets.create(session=REALTIME)
    with pytest.raises(openai.PermissionDeniedError) as over_secret:
        await client_for(gateway, minted.value).realtime.calls.create(
            sdp=OFFER, session={**REALTIME, "instructions": "x"}
        )
    refused_for_instructions(over_secret.value)

    # A secret minted with the field before the key blocked it: its raw SDP call is refused.
    info = await gateway.app[GATEWAY].keyring.get(key_id)
    assert info is not None
    policy = KeyPolicy.from_json(info.policy_json)
    await gateway.app[GATEWAY].keyring.set_policy(key_id, policy.replace(blocked_events=()))
    early = await client.realtime.client_secrets.create(session={**REALTIME, "instructions": "x"})
    await gateway.app[GATEWAY].keyring.set_policy(key_id, policy)
    with pytest.raises(openai.PermissionDeniedError) as raw_sdp:
        await client_for(gateway, early.value).realtime.calls.create(sdp=OFFER)
    refused_for_instructions(raw_sdp.value)

    assert provider.calls == {} and provider.upgrades == []
    assert await gateway.store.recent_sessions() == []
    # The key's own default is not the caller's change: a call without the field goes on.
    call_id = await place(client_for(gateway, minted.value))
    assert provider.calls[call_id].session["instructions"] == "Key default."


async def test_a_key_over_its_budget_cannot_place_a_call(
    gateway: RunningGateway, provider: FakeProvider, client_for: ClientFor
) -> None:
    _, key = await key_with(gateway, budget_usd_day=Decimal("0.004"))
    minted = await client_for(gateway, key).realtime.client_secrets.create(session=REALTIME)
    # Spend the day's budget on the WebSocket path: $0.004 for 1000 text tokens.
    async with connect(
        f"{gateway.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        assert orjson.loads(await ws.recv())["type"] == "session.created"
        await ws.send(emit_response_done("resp_1", 1000))
        assert orjson.loads(await ws.recv())["type"] == "response.done"
        assert orjson.loads(await ws.recv())["error"]["code"] == "insufficient_quota"
    upgrades = len(provider.upgrades)

    for secret, session in ((key, REALTIME), (minted.value, None)):
        with pytest.raises(openai.RateLimitError) as refused:
            await offer(client_for(gateway, secret), session)
        assert refused.value.status_code == 429
        error = openai_error(refused.value)
        assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
        assert "daily budget" in error["message"]
    assert provider.calls == {} and len(provider.upgrades) == upgrades
    assert len(await gateway.store.recent_sessions()) == 1  # the WebSocket session only


async def admin_call(gw: RunningGateway, method: str, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method,
            f"{gw.http}/admin/v1{path}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as r,
    ):
        return r.status, orjson.loads(await r.read())


@pytest.mark.parametrize("provider_closes", [True, False], ids=["provider", "gateway"])
async def test_the_admin_api_lists_a_live_call_and_closes_it_by_hanging_up(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    client_for: ClientFor,
    provider_closes: bool,
) -> None:
    # provider_closes=False: the provider leaves the sideband open after the hangup, so the
    # gateway must close its own socket.
    provider.hangup_closes_sideband = provider_closes
    gw = await start_gateway(make_settings(RTGATE_ADMIN_TOKEN=ADMIN_TOKEN))
    key_id, key = await key_with(gw)
    call_id = await place(client_for(gw, key), REALTIME)
    await provider.emit_on_call(call_id, response_done("resp_1", 250))

    async def billed() -> bool:
        return bool(await gw.store.usage_summary())

    await until(billed)
    status, live = await admin_call(gw, "GET", "/sessions/live")
    assert status == 200
    (session,) = live
    assert session["intent"] == "webrtc"
    assert session["key_id"] == key_id and session["model"] == "gpt-realtime"
    assert session["client_secret_id"] is None
    assert session["tokens"]["text_in"] == 250
    assert Decimal(session["cost_usd"]) == Decimal(250) * 4 / 10**6
    assert await metric(gw, "rtgate_live_sessions") == 1

    status, closed = await admin_call(gw, "POST", f"/sessions/{session['id']}/close")
    assert status == 200
    assert closed == {
        **session,
        "close_code": 1008,
        "close_reason": "invalid_request_error.session_closed_by_operator",
        "closed_by": "operator",
    }
    assert provider.hangups(call_id) == 1
    # The close answers once the call's end is recorded.
    assert (await admin_call(gw, "GET", "/sessions/live"))[1] == []
    (row,) = await gw.store.recent_sessions()
    assert row.id == session["id"] and row.ended_at is not None
    assert (row.close_code, row.closed_by) == (1008, "operator")
    assert row.close_reason == "invalid_request_error.session_closed_by_operator"
    assert call_id not in provider.sidebands  # the sideband socket is closed
    assert await metric(gw, "rtgate_live_sessions") == 0
    assert await metric(gw, 'rtgate_sessions_ended_total{by="operator",code="1008"}') == 1
    assert await gw.app[GATEWAY].limiter.live(key_id) == 0

    status, again = await admin_call(gw, "POST", f"/sessions/{session['id']}/close")
    assert status == 404 and again["error"]["param"] == "session_id"
    assert provider.hangups(call_id) == 1


async def test_app_shutdown_hangs_each_live_call_up_once(
    gateway: RunningGateway, provider: FakeProvider, client_for: ClientFor
) -> None:
    _, key = await key_with(gateway)
    client = client_for(gateway, key)
    first = await place(client, REALTIME)
    provider.hangup_closes_sideband = False  # the second one's socket the gateway must close
    second = await place(client, REALTIME)
    await sideband_open(provider, second)

    # Both shutdown hooks run: the live-session sweep (1001), then the call registry's.
    await asyncio.wait_for(gateway.app.shutdown(), 20)
    assert (provider.hangups(first), provider.hangups(second)) == (1, 1)
    rows = await gateway.store.recent_sessions()
    assert len(rows) == 2
    for row in rows:
        assert row.ended_at is not None
        assert (row.close_code, row.close_reason, row.closed_by) == (
            1001,
            "server_error.server_shutting_down",
            "gateway",
        )
    assert not gateway.app[GATEWAY].live
    assert second not in provider.sidebands

    # A call placed now is refused before the provider sees it.
    with pytest.raises(openai.InternalServerError) as refused:
        await client.realtime.calls.create(sdp=OFFER, session=REALTIME)
    assert refused.value.status_code == 503
    assert openai_error(refused.value)["code"] == "server_shutting_down"
    assert list(provider.calls) == [first, second]


async def test_a_call_answered_while_shutdown_runs_is_hung_up(
    gateway: RunningGateway, provider: FakeProvider, client_for: ClientFor
) -> None:
    key_id, key = await key_with(gateway)

    async def shut_down() -> None:
        provider.while_placing = None
        await gateway.app.shutdown()

    # The provider answers the offer only after the gateway's shutdown sweep has run.
    provider.while_placing = shut_down
    with pytest.raises(openai.InternalServerError) as refused:
        await client_for(gateway, key).realtime.calls.create(sdp=OFFER, session=REALTIME)
    assert openai_error(refused.value)["code"] == "server_shutting_down"
    (call_id,) = provider.calls
    assert provider.hangups(call_id) == 1
    assert not any(u.query.get("call_id") == call_id for u in provider.upgrades)
    assert not gateway.app[GATEWAY].live
    assert await gateway.app[GATEWAY].limiter.live(key_id) == 0


async def test_revoking_the_client_secret_that_placed_a_call_hangs_it_up(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    client_for: ClientFor,
) -> None:
    gw = await start_gateway(make_settings(RTGATE_ADMIN_TOKEN=ADMIN_TOKEN))
    _, key = await key_with(gw)
    minted = await client_for(gw, key).realtime.client_secrets.create(session=REALTIME)
    call_id = await place(client_for(gw, minted.value))
    secret_id = secret_id_of(minted.value)
    (session,) = (await admin_call(gw, "GET", "/sessions/live"))[1]
    assert session["client_secret_id"] == secret_id and session["intent"] == "webrtc"

    status, revoked = await admin_call(gw, "POST", f"/client_secrets/{secret_id}/revoke")
    assert status == 200 and revoked["closed_sessions"] == [session["id"]]
    assert provider.hangups(call_id) == 1
    (row,) = await gw.store.recent_sessions()
    assert (row.close_code, row.closed_by) == (1008, "operator")
    assert row.close_reason == "invalid_request_error.client_secret_revoked"
    assert not gw.app[GATEWAY].live


async def test_a_call_whose_sideband_cannot_open_is_hung_up(
    gateway: RunningGateway, provider: FakeProvider, client_for: ClientFor
) -> None:
    key_id, key = await key_with(gateway, max_sessions=1)
    client = client_for(gateway, key)
    provider.refuse_status = 503  # the provider answers calls but refuses their sidebands
    with pytest.raises(openai.InternalServerError) as placed:
        await client.realtime.calls.create(sdp=OFFER, session=REALTIME)
    assert placed.value.status_code == 502
    assert openai_error(placed.value)["code"] == "upstream_unavailable"
    (call_id,) = provider.calls
    assert provider.hangups(call_id) == 1
    # A SIP call accepted upstream is hung up likewise.
    with pytest.raises(openai.InternalServerError) as accepted:
        await client.realtime.calls.accept("rtc_sip1", type="realtime", model="gpt-realtime")
    assert accepted.value.status_code == 502
    assert [a for c, a, _ in provider.call_actions if c == "rtc_sip1"] == ["accept", "hangup"]
    assert await gateway.store.call_owner("rtc_sip1") is None  # as the failed accept found it
    assert await gateway.app[GATEWAY].limiter.live(key_id) == 0
    assert await gateway.store.recent_sessions() == []


async def test_a_call_whose_secret_is_revoked_while_it_is_placed_is_hung_up(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await start_gateway(make_settings(RTGATE_ADMIN_TOKEN=ADMIN_TOKEN))
    key_id, key = await key_with(gw)
    async with AsyncOpenAI(api_key=key, base_url=f"{gw.http}/v1", max_retries=0) as client:
        minted = await client.realtime.client_secrets.create(session=REALTIME)
    secret_id = secret_id_of(minted.value)
    revocations: list[Any] = []

    async def revoke() -> None:
        # The secret was checked, the offer is upstream, the sideband is not open yet.
        provider.while_placing = None
        revocations.append(await admin_call(gw, "POST", f"/client_secrets/{secret_id}/revoke"))

    provider.while_placing = revoke
    async with AsyncOpenAI(
        api_key=minted.value, base_url=f"{gw.http}/v1", max_retries=0
    ) as browser:
        call_id = await place(browser)
    ((status, body),) = revocations
    assert status == 200 and body["closed_sessions"] == []

    # The revocation found nothing to close yet; the call it would have closed ends anyway.
    async def hung_up() -> bool:
        return provider.hangups(call_id) == 1 and not gw.app[GATEWAY].live

    await until(hung_up)
    (row,) = await gw.store.recent_sessions()
    assert (row.close_code, row.closed_by) == (1008, "operator")
    assert row.close_reason == "invalid_request_error.client_secret_revoked"
    assert await gw.app[GATEWAY].limiter.live(key_id) == 0


async def test_the_removed_beta_webrtc_route_says_where_to_go(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await start_gateway(make_settings())
    _, key = await key_with(gw)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gw.http}/v1/realtime?model=gpt-realtime",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/sdp"},
            data="v=0\r\n",
        ) as r,
    ):
        assert r.status == 400
        body = await r.json()
    assert body["error"]["code"] == "beta_api_shape_disabled"
    assert body["error"]["type"] == "invalid_request_error"
    assert "/v1/realtime/calls" in body["error"]["message"]
    assert not provider.calls


async def test_a_sideband_whose_upstream_stops_answering_pings_ends_the_call(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    client_for: ClientFor,
) -> None:
    settings = make_settings(
        RTGATE_UPSTREAM_PING_AFTER_SECONDS="0.2", RTGATE_UPSTREAM_PONG_TIMEOUT_SECONDS="0.1"
    )
    gw = await start_gateway(settings, expiry_check_interval=0.02)
    _, key = await key_with(gw)
    provider.answer_pings = False
    call_id = await place(client_for(gw, key), REALTIME)
    await sideband_open(provider, call_id)
    row = await ended_row(gw)
    assert (row.close_code, row.close_reason) == (1011, "server_error.upstream_unavailable")
    assert row.closed_by == "upstream"
    assert provider.hangups(call_id) == 1
    assert not gw.app[GATEWAY].live


async def test_usage_that_cannot_be_recorded_ends_the_call_with_usage_unavailable(
    gateway: RunningGateway,
    provider: FakeProvider,
    client_for: ClientFor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The same end as a relayed socket's (test_relay_faults): the call is hung up, once.
    _, key = await key_with(gateway)
    call_id = await place(client_for(gateway, key), REALTIME)
    await sideband_open(provider, call_id)

    def unrecordable(rec: Any) -> asyncio.Future[bool]:
        refused: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        refused.set_result(False)  # neither stored nor spilled (a full disk)
        return refused

    monkeypatch.setattr(gateway.app[GATEWAY].ledger, "submit", unrecordable)
    await provider.emit_on_call(call_id, response_done("resp_lost", 100))

    async def hung_up() -> bool:
        return provider.hangups(call_id) == 1

    await until(hung_up)
    row = await ended_row(gateway)
    assert (row.close_code, row.close_reason, row.closed_by) == (
        1011,
        "server_error.usage_unavailable",
        "gateway",
    )
    assert provider.hangups(call_id) == 1


async def test_a_call_stopped_by_an_error_of_any_kind_is_hung_up(
    gateway: RunningGateway,
    provider: FakeProvider,
    client_for: ClientFor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An audit's find: a database cut off mid-write raised its driver's own error, not the
    store's, at the call's claim, and only the store's error hung the call up: placed upstream,
    answered 500, and never metered."""
    key = await gateway.new_key()
    store = gateway.app[GATEWAY].store

    async def cut_off(*_: Any) -> Any:
        raise ConnectionResetError("the database went away mid-write")

    monkeypatch.setattr(store, "claim_call", cut_off)
    with pytest.raises(openai.InternalServerError):
        await offer(client_for(gateway, key), {"type": "realtime", "model": "gpt-realtime"})
    (placed,) = provider.calls
    assert provider.hangups(placed) == 1
    assert not len(gateway.app[GATEWAY].live)
