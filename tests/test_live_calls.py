"""GPT-Live over WebRTC and SIP through rtgate: the official SDK's ``client.live.create`` and
``client.live.sessions.*`` pointed at rtgate, against a fake of the provider's routes
(``tests/live_fake.py``); the gateway's own sideband metering the session (the start-up charge,
then what the snapshots exceed it by), a budget crossed on the sideband, the key's policy, and
the controls for the owning key only."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest
from openai import AsyncOpenAI
from openai.types.live import LiveCreateResponse

from rtgate.auth.policy import KeyPolicy
from rtgate.config import Settings
from rtgate.relay import calls
from rtgate.relay.endpoint import GATEWAY
from tests.conftest import RunningGateway
from tests.live_fake import FAKE_LIVE_SDP_ANSWER
from tests.polling import until
from tests.provider import FakeProvider
from tests.table_rows import table_rows

OFFER = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=offer\r\nt=0 0\r\n"
NANOS_PER_MS = 50_000_000 / 60_000


def client_for(gw: RunningGateway, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, base_url=f"{gw.http}/v1", max_retries=0)


async def rows_of(gw: RunningGateway) -> list[Any]:
    return await table_rows(gw.store, "SELECT * FROM usage_records ORDER BY id")


async def create(gw: RunningGateway, key: str) -> LiveCreateResponse:
    async with client_for(gw, key) as client:
        return await client.live.create(
            session={"model": "gpt-live-1", "instructions": "Be brief."},
            transport={"type": "webrtc", "sdp": OFFER},
        )


async def act(gw: RunningGateway, key: str, action: str, sid: str, **body: Any) -> None:
    """``client.live.sessions.<action>(sid, ...)`` with ``key``."""
    async with client_for(gw, key) as client:
        await getattr(client.live.sessions, action)(sid, **body)


async def ended_session(gw: RunningGateway) -> Any:
    """The one session's row once its end is recorded (the ledger writes it just after the
    session leaves the live list)."""
    async with asyncio.timeout(10):
        while True:
            (row,) = await table_rows(gw.store, "SELECT * FROM sessions")
            if row.ended_at is not None:
                return row
            await asyncio.sleep(0.02)


async def test_a_webrtc_session_is_created_metered_on_its_sideband_and_hung_up(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await start_gateway(make_settings())
    key = await gw.new_key()
    created = await create(gw, key)
    sid = created.session.id
    assert (created.transport.type, created.transport.sdp) == ("webrtc", FAKE_LIVE_SDP_ANSWER)
    (body,) = provider.live_calls.created
    assert body == {
        "session": {"model": "gpt-live-1", "instructions": "Be brief."},
        "transport": {"type": "webrtc", "sdp": OFFER},
    }
    # The gateway's own sideband, with the provider's key.
    await until(lambda: sid in provider.live_calls.sidebands)
    (up,) = provider.upgrades
    assert (up.path, up.query) == (f"/v1/live/sessions/{sid}/attach", {})
    (live,) = gw.app[GATEWAY].live.values()
    assert (live.session.intent, live.session.route.model) == ("webrtc", "gpt-live-1")
    # The 15 s start-up charge is on record already; a snapshot bills only what exceeds it.
    fake = provider.live_calls.sessions[sid]
    await provider.live_calls.sidebands[sid].send_str(fake.usage(10.0))
    await provider.live_calls.sidebands[sid].send_str(fake.usage(21.5))
    await until(lambda: live.session.totals.audio_ms == 21_500)
    fake.audio_ms = 30_000
    await act(gw, key, "hangup", sid)
    assert provider.live_calls.actions == [(sid, "hangup", None)]
    await until(lambda: not len(gw.app[GATEWAY].live))
    rows = await rows_of(gw)
    assert [(r.kind, r.audio_ms, r.review) for r in rows] == [
        ("live", 15_000, None),
        ("live", 6_500, None),
        ("live", 8_500, None),
    ]
    assert sum(r.provider_nanos for r in rows) == sum(
        round(ms * NANOS_PER_MS) for ms in (15_000, 6_500, 8_500)
    )
    srow = await ended_session(gw)
    assert (srow.model, srow.intent, srow.closed_by) == ("gpt-live-1", "webrtc", "client")


async def test_a_created_session_whose_sideband_never_opens_is_billed_its_start_up(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An audit's find: the provider created the session, the gateway could not open its
    sideband and hung it up, and the start-up charge the provider bills a session that never
    ran (15 s) was recorded nowhere."""
    gw = await start_gateway(make_settings())
    key = await gw.new_key()
    # Nothing listens on the discard port: the sideband's dial is refused.
    monkeypatch.setattr(calls, "upstream_url", lambda *a, **k: "ws://127.0.0.1:9/attach")
    with pytest.raises(openai.APIStatusError) as refused:
        await create(gw, key)
    assert refused.value.status_code == 502, refused.value.message
    assert len(provider.live_calls.created) == 1
    assert [a[1] for a in provider.live_calls.actions] == ["hangup"]
    rows = await rows_of(gw)
    assert [(r.kind, r.audio_ms, r.review) for r in rows] == [("live", 15_000, None)]
    assert rows[0].provider_nanos == round(15_000 * NANOS_PER_MS)
    srow = await ended_session(gw)
    assert (srow.intent, srow.closed_by, srow.close_code) == ("webrtc", "gateway", 1011)
    # The key's slot is free again.
    monkeypatch.undo()
    assert (await create(gw, key)).session.id


async def test_a_session_whose_start_up_charge_cannot_be_kept_leaves_no_row_open(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A review's find: the session's row was written, its start-up charge could be kept
    nowhere, and the row was left open for good (the call hung up)."""
    gw = await start_gateway(make_settings())
    key = await gw.new_key()

    async def nowhere(*_: Any) -> bool:
        return False

    monkeypatch.setattr(calls, "commit_usage", nowhere)
    for sideband in ("opens", "never opens"):
        if sideband == "never opens":
            monkeypatch.setattr(calls, "upstream_url", lambda *a, **k: "ws://127.0.0.1:9/x")
        with pytest.raises(openai.APIStatusError):
            await create(gw, key)
    assert [a[1] for a in provider.live_calls.actions] == ["hangup", "hangup"]
    rows = await table_rows(gw.store, "SELECT * FROM sessions")
    assert len(rows) == 2 and all(r.ended_at is not None for r in rows), rows
    assert {r.closed_by for r in rows} == {"gateway"}


async def test_a_budget_crossed_on_the_sideband_ends_the_session_with_its_final_total(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await start_gateway(make_settings(RTGATE_LIVE_STARTUP_SECONDS="0"))
    _, key = await gw.app[GATEWAY].keyring.create(
        "capped", KeyPolicy(budget_total_nanos=10_000_000)
    )
    created = await create(gw, key)
    sid = created.session.id
    await until(lambda: sid in provider.live_calls.sidebands)
    fake = provider.live_calls.sessions[sid]
    await provider.live_calls.sidebands[sid].send_str(fake.usage(60))  # $0.05 > $0.01
    await until(lambda: not len(gw.app[GATEWAY].live))
    # Asked for the final total on the sideband, then hung up.
    assert orjson.loads(fake.received[-1]) == {"type": "session.close"}
    assert (sid, "hangup", None) in provider.live_calls.actions
    rows = await rows_of(gw)
    assert [(r.audio_ms, r.review) for r in rows] == [(60_000, None)]
    srow = await ended_session(gw)
    assert srow.close_reason == "insufficient_quota.insufficient_quota"


async def test_the_keys_policy_and_ownership_apply(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await start_gateway(make_settings())
    keyring = gw.app[GATEWAY].keyring
    _, narrow = await keyring.create("narrow", KeyPolicy(models=("gpt-realtime",)))
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await create(gw, narrow)
    assert denied.value.code == "model_not_allowed"
    assert provider.live_calls.created == []

    owner = await gw.new_key("owner")
    other = await gw.new_key("other")
    sid = (await create(gw, owner)).session.id
    with pytest.raises(openai.NotFoundError):
        await act(gw, other, "hangup", sid)
    assert provider.live_calls.actions == []
    await act(gw, owner, "refer", sid, target_uri="tel:+14155550123")
    assert provider.live_calls.actions == [(sid, "refer", {"target_uri": "tel:+14155550123"})]
    await act(gw, owner, "hangup", sid)
    await until(lambda: not len(gw.app[GATEWAY].live))


async def test_a_sip_call_is_accepted_by_one_key_and_metered(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await start_gateway(make_settings())  # a start-up charge for created sessions only
    key = await gw.new_key("sip")
    late = await gw.new_key("late")
    sid = "rtc_incoming0123"
    await act(gw, key, "accept", sid, session={"type": "live", "model": "gpt-live-1.1"})
    assert provider.live_calls.actions[0][:2] == (sid, "accept")
    await until(lambda: sid in provider.live_calls.sidebands)
    (live,) = gw.app[GATEWAY].live.values()
    assert live.session.route.model == "gpt-live-1.1"
    # Another key's accept of the same call is answered as for an unknown one.
    with pytest.raises(openai.NotFoundError):
        await act(gw, late, "accept", sid, session={"type": "live", "model": "gpt-live-1.1"})
    fake = provider.live_calls.sessions[sid]
    await provider.live_calls.sidebands[sid].send_str(fake.usage(4))
    await until(lambda: live.session.totals.audio_ms == 4000)
    await act(gw, key, "hangup", sid)
    await until(lambda: not len(gw.app[GATEWAY].live))
    rows = await rows_of(gw)
    assert [(r.model, r.audio_ms, r.review, r.ref) for r in rows] == [
        ("gpt-live-1.1", 4000, None, sid)
    ]


async def test_a_sip_call_no_key_owns_yet_may_be_rejected_or_referred(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    """An audit's find: only ``accept`` reached the provider for a SIP call no key had
    accepted; its ``reject`` (the webhook's other answer) was answered 404, unlike on
    ``/v1/realtime/calls``."""
    gw = await start_gateway(make_settings())
    key = await gw.new_key("sip")
    provider.live_calls.ringing |= {"rtc_incoming0001", "rtc_incoming0002"}
    await act(gw, key, "reject", "rtc_incoming0001", status_code=486)
    await act(gw, key, "refer", "rtc_incoming0002", target_uri="tel:+14155550123")
    assert provider.live_calls.actions == [
        ("rtc_incoming0001", "reject", {"status_code": 486}),
        ("rtc_incoming0002", "refer", {"target_uri": "tel:+14155550123"}),
    ]
    # Neither is any key's for it; a call the provider does not know is its 404.
    assert await table_rows(gw.store, "SELECT * FROM calls") == []
    with pytest.raises(openai.NotFoundError):
        await act(gw, key, "hangup", "rtc_incoming0001")


async def test_only_what_live_defines_goes_upstream(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    """A member Live's strict objects do not have is refused as the provider refuses it, before
    the provider hears of it: in a session's body, its transport, its session, an accept and the
    controls."""
    gw = await start_gateway(make_settings())
    key = await gw.new_key()
    start = {"model": "gpt-live-1"}
    async with client_for(gw, key) as client:
        # What the SDK's types hold goes through as sent: a WebRTC session's wake policy and
        # idle timeout (MediaSessionConfigParam), an accept's type (session_accept_params).
        media = {**start, "wake_policy": {"type": "speech"}, "idle_timeout_s": 30}
        typed = await client.live.create(
            session=media,  # type: ignore[arg-type]
            transport={"type": "webrtc", "sdp": OFFER},
        )
        assert provider.live_calls.created[-1]["session"] == media
        await act(gw, key, "hangup", typed.session.id)
        provider.live_calls.created.clear()
        provider.live_calls.actions.clear()
        for kwargs, param in (
            ({"session": {**start, "temperature": 1}}, "session.temperature"),
            ({"session": start, "extra_body": {"metadata": {}}}, "metadata"),
            (
                {"session": start, "transport": {"type": "webrtc", "sdp": OFFER, "ice": []}},
                "transport.ice",
            ),
        ):
            call = {"transport": {"type": "webrtc", "sdp": OFFER}, **kwargs}
            with pytest.raises(openai.BadRequestError) as refused:
                await client.live.create(**call)  # type: ignore[arg-type]
            assert (refused.value.code, refused.value.param) == ("unknown_parameter", param)
        assert provider.live_calls.created == []

        sid = (await create(gw, key)).session.id
        for action, kwargs, code, param in (
            (
                "refer",
                {"target_uri": "tel:+1", "extra_body": {"headers": {}}},
                "unknown_parameter",
                "headers",
            ),
            (
                "reject",
                {"status_code": 486, "extra_body": {"status_code": "486"}},
                "invalid_type",
                "status_code",
            ),
            ("hangup", {"extra_body": {"reason": "done"}}, "unknown_parameter", "reason"),
            # The SDK's required members, not sent without (a newcomer's find).
            ("refer", {"target_uri": None}, "missing_required_parameter", "target_uri"),
            ("reject", {"status_code": None}, "missing_required_parameter", "status_code"),
        ):
            with pytest.raises(openai.BadRequestError) as bad:
                await getattr(client.live.sessions, action)(sid, **kwargs)
            assert (bad.value.code, bad.value.param) == (code, param)
        sip = {"type": "live", **start}
        for kwargs, code, param in (
            ({"session": sip, "extra_body": {"transport": {}}}, "unknown_parameter", "transport"),
            ({"session": {**sip, "client": {}}}, "unknown_parameter", "session.client"),
            ({"session": {**sip, "type": "realtime"}}, "invalid_value", "session.type"),
        ):
            with pytest.raises(openai.BadRequestError) as accept:
                await client.live.sessions.accept("rtc_incoming0123", **kwargs)
            assert (accept.value.code, accept.value.param) == (code, param)
        assert provider.live_calls.actions == []
        await act(gw, key, "hangup", sid)
    assert provider.live_calls.actions == [(sid, "hangup", None)]


async def test_a_sessions_settings_are_judged_by_the_keys_blocked_fields(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    """Live fixes its instructions when the session is created or accepted, so a key that may not
    change them with a ``session.update`` may not set them there either."""
    gw = await start_gateway(make_settings())
    _, key = await gw.app[GATEWAY].keyring.create(
        "locked", KeyPolicy(blocked_events=("session.update:instructions",))
    )
    with pytest.raises(openai.PermissionDeniedError) as created:
        await create(gw, key)  # with instructions
    with pytest.raises(openai.PermissionDeniedError) as accepted:
        await act(
            gw,
            key,
            "accept",
            "rtc_incoming0123",
            session={"type": "live", "model": "gpt-live-1", "instructions": "x"},
        )
    for refused in (created.value, accepted.value):
        assert (refused.code, refused.param) == ("event_not_allowed", "session.instructions")
    assert provider.live_calls.created == [] and provider.live_calls.actions == []
    await act(
        gw, key, "accept", "rtc_incoming0123", session={"type": "live", "model": "gpt-live-1"}
    )
    assert provider.live_calls.actions[0][:2] == ("rtc_incoming0123", "accept")
    await act(gw, key, "hangup", "rtc_incoming0123")
    await until(lambda: not len(gw.app[GATEWAY].live))


async def test_a_live_session_is_no_call_a_realtime_sideband_attaches_to(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    """A review's find: ``/v1/realtime?call_id=`` naming a GPT-Live session was refused as if
    the client had asked for a model on the wrong route; it says what the id is."""
    from websockets.asyncio.client import connect

    key = await gateway.new_key()
    session_id = (await create(gateway, key)).session.id
    async with connect(
        f"{gateway.ws}/v1/realtime?call_id={session_id}",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        error = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        await ws.wait_closed()
    assert (error["error"]["code"], error["error"]["param"]) == ("model_not_found", "call_id")
    assert "is a session of another protocol" in error["error"]["message"]
    assert ws.close_code == 4004
