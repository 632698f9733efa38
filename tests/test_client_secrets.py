"""Client secrets the gateway mints itself: the three HTTP routes through the official SDK, the
secret opening sessions with its template and billing its minting key, the refusals, and a
browser (headless Chromium) authenticating with the subprotocol."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import openai
import orjson
import pytest
import websockets
from aiohttp import web
from openai import AsyncOpenAI
from websockets.asyncio.client import connect

from rtgate.auth.client_secrets import (
    ClientSecret,
    beta_template,
    connection_model,
    expiry,
    ga_template,
)
from rtgate.auth.policy import KeyPolicy, PolicyUpdate, apply_update, initial_session_update
from rtgate.clock import ManualClock
from rtgate.config import Settings
from rtgate.errors import ModelNotAllowed
from rtgate.logs import Redactor
from rtgate.relay.endpoint import GATEWAY
from tests.conftest import RunningGateway
from tests.provider import FakeProvider
from tests.table_rows import table_rows

EK = re.compile(r"^ek_[0-9a-f]{32}$")
# make test finds (or installs) one with scripts/chromium and passes its path on.
CHROMIUM = os.environ.get("RTGATE_TEST_CHROMIUM") or shutil.which("chromium") or "chromium"


ClientFor = Callable[[RunningGateway, str], AsyncOpenAI]


@pytest.fixture
async def client_for() -> AsyncIterator[ClientFor]:
    """SDK clients for a gateway, closed (with their HTTP connection pools) after the test."""
    made: list[AsyncOpenAI] = []

    def make(gw: RunningGateway, key: str) -> AsyncOpenAI:
        made.append(
            AsyncOpenAI(
                api_key=key,
                base_url=f"{gw.http}/v1",
                websocket_base_url=f"{gw.ws}/v1",
                max_retries=0,
            )
        )
        return made[-1]

    yield make
    for c in made:
        await c.close()


async def key_with(gw: RunningGateway, **update: Any) -> tuple[str, str]:
    policy = apply_update(KeyPolicy(), msgspec.convert(update, PolicyUpdate))
    info, secret = await gw.app[GATEWAY].keyring.create("minter", policy)
    return info.id, secret


async def first_events(
    gw: RunningGateway, secret: str, query: str = "model=gpt-realtime", n: int = 2
) -> tuple[list[dict[str, Any]], int | None]:
    """The first ``n`` events of a session opened with ``secret`` as Bearer, and the close code
    if the gateway closed it first."""
    events: list[dict[str, Any]] = []
    async with (
        asyncio.timeout(20),
        connect(
            f"{gw.ws}/v1/realtime?{query}", additional_headers={"Authorization": f"Bearer {secret}"}
        ) as ws,
    ):
        try:
            while len(events) < n:
                events.append(orjson.loads(await ws.recv()))
        except websockets.ConnectionClosed:
            return events, ws.close_code
    return events, None


async def refused_400(gw: RunningGateway, key: str, route: str, body: Any) -> dict[str, Any]:
    """The ``error`` of a 400 that ``POST /v1/realtime/{route}`` answers ``body`` with."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gw.http}/v1/realtime/{route}", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as resp,
    ):
        assert resp.status == 400
        error: dict[str, Any] = (await resp.json())["error"]
        return error


# -- pure ---------------------------------------------------------------------------------------


def test_a_beta_session_becomes_a_ga_template() -> None:
    ga = beta_template(
        {
            "model": "gpt-realtime",
            "voice": "verse",
            "modalities": ["text", "audio"],
            "input_audio_format": "g711_ulaw",
            "turn_detection": None,
            "max_response_output_tokens": 200,
            "temperature": 0.7,
        },
        "realtime",
    )
    assert ga == {
        "type": "realtime",
        "output_modalities": ["audio"],
        "max_output_tokens": 200,
        "audio": {
            "input": {"format": {"type": "audio/pcmu"}, "turn_detection": None},
            "output": {"voice": "verse"},
        },
    }
    tr = beta_template({"input_audio_transcription": {"model": "whisper-1"}}, "transcription")
    assert tr == {
        "type": "transcription",
        "audio": {"input": {"transcription": {"model": "whisper-1"}}},
    }


def test_a_secret_pins_its_model_and_never_outlives_its_key() -> None:
    model, template = ga_template({"type": "realtime", "model": "gpt-realtime", "id": "x"})
    assert (model, template) == ("gpt-realtime", {"type": "realtime"})
    grant = ClientSecret("key_1", model, template, 100.0, 700.0)
    assert connection_model(grant, None) == "gpt-realtime"
    assert connection_model(grant, "gpt-realtime") == "gpt-realtime"
    with pytest.raises(ModelNotAllowed):
        connection_model(grant, "gpt-realtime-mini")
    assert initial_session_update(KeyPolicy(), False, grant.session) is None  # nothing to apply
    assert expiry(100.5, 600, None) == 700.0
    assert expiry(100.0, 600, 300.0) == 300.0


def test_log_redaction_cuts_a_client_secret() -> None:
    secret = "ek_" + "0123456789abcdef" * 2
    line = Redactor().redact(f"opened with {secret} and Bearer {secret}")
    assert secret not in line and secret[8:] not in line


# -- the SDK against the gateway ----------------------------------------------------------------


async def test_a_ga_secret_opens_sessions_with_its_template_billed_to_its_key(
    gateway: RunningGateway,
    provider: FakeProvider,
    caplog: pytest.LogCaptureFixture,
    client_for: ClientFor,
) -> None:
    caplog.set_level(logging.DEBUG, logger="rtgate")
    key_id, key = await key_with(gateway, instructions="Key default.", voice="alloy")
    minted = await client_for(gateway, key).realtime.client_secrets.create(
        expires_after={"anchor": "created_at", "seconds": 120},
        session={
            "type": "realtime",
            "model": "gpt-realtime",
            "instructions": "Speak like a pirate.",
            "audio": {"output": {"voice": "marin"}},
        },
    )
    secret = minted.value
    assert EK.match(secret)
    assert 0 < minted.expires_at - gateway.app[GATEWAY].clock.now() <= 120
    assert minted.session.type == "realtime"
    assert minted.session.model == "gpt-realtime"
    assert minted.session.instructions == "Speak like a pirate."

    # Only the hash is stored, with the minting key.
    (row,) = await table_rows(gateway.store, "SELECT * FROM client_secrets")
    assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert row.key_id == key_id and row.model == "gpt-realtime"
    assert secret not in str(vars(row))

    async with client_for(gateway, secret).realtime.connect(model="gpt-realtime") as conn:
        events = []
        async for event in conn:
            events.append(event.model_dump(exclude_unset=True))
            if event.type == "session.updated":
                break
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "ahoy there"}],
            }
        )
        await conn.response.create()
        async for event in conn:
            if event.type == "response.done":
                break
    # A provider's session.created shows its defaults; the key's defaults and the secret's
    # template over them follow as one session.update, so as one session.updated.
    assert [e["type"] for e in events] == ["session.created", "session.updated"]
    updated = events[1]["session"]
    assert updated["instructions"] == "Speak like a pirate."
    assert updated["audio"]["output"]["voice"] == "marin"
    up = provider.upgrades[-1]
    assert up.query["model"] == "gpt-realtime"
    assert secret not in str(up.headers)

    # The same secret opens a second session; naming no model means the secret's.
    again, code = await first_events(gateway, secret, query="", n=2)
    assert code is None and again[1]["session"]["instructions"] == "Speak like a pirate."
    assert provider.upgrades[-1].query["model"] == "gpt-realtime"

    (usage,) = await gateway.store.usage_summary()
    assert usage.key_id == key_id and usage.model == "gpt-realtime" and usage.charged_nanos > 0
    sessions = await gateway.store.recent_sessions()
    assert len(sessions) == 2 and {s.key_id for s in sessions} == {key_id}
    assert secret not in caplog.text
    assert secret[8:] not in caplog.text


def local_engine(make_settings: Callable[..., Settings]) -> Settings:
    """No provider key: the embedded engine answers (no recognizer or voice needed here)."""
    return make_settings(
        OPENAI_API_KEY="",
        RTGATE_ENGINE_VAD="energy",
        RTGATE_ENGINE_STT="none",
        RTGATE_ENGINE_TTS="tone",
    )


async def created_then_next(gw: RunningGateway, secret: str, query: str) -> list[dict[str, Any]]:
    """``session.created``, and what follows it once the client sends its first event (an
    ``input_audio_buffer.clear``): nothing may come between."""
    async with (
        asyncio.timeout(20),
        connect(
            f"{gw.ws}/v1/realtime?{query}", additional_headers={"Authorization": f"Bearer {secret}"}
        ) as ws,
    ):
        created = orjson.loads(await ws.recv())
        await ws.send('{"type":"input_audio_buffer.clear"}')
        return [created, orjson.loads(await ws.recv())]


async def test_on_the_local_engine_a_secrets_template_is_the_session_it_creates(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    client_for: ClientFor,
) -> None:
    gw: RunningGateway = await start_gateway(local_engine(make_settings))
    _, key = await key_with(gw, instructions="Key default.", voice="alloy")
    minted = await client_for(gw, key).realtime.client_secrets.create(
        session={
            "type": "realtime",
            "model": "gpt-realtime",
            "instructions": "Speak like a pirate.",
            "audio": {"output": {"voice": "marin"}},
        }
    )
    created, after = await created_then_next(gw, minted.value, "model=gpt-realtime")
    assert created["type"] == "session.created"
    assert created["session"]["instructions"] == "Speak like a pirate."
    assert created["session"]["audio"]["output"]["voice"] == "marin"
    assert after["type"] == "input_audio_buffer.cleared"  # no unrequested session.updated

    # The key's own defaults too, with a key and no secret.
    created, after = await created_then_next(gw, key, "model=gpt-realtime")
    assert created["session"]["instructions"] == "Key default."
    assert after["type"] == "input_audio_buffer.cleared"

    # And a transcription secret's transcription model.
    tr = await client_for(gw, key).realtime.client_secrets.create(
        session={
            "type": "transcription",
            "audio": {"input": {"transcription": {"model": "whisper-1", "language": "en"}}},
        }
    )
    created, after = await created_then_next(gw, tr.value, "intent=transcription")
    transcription = created["session"]["audio"]["input"]["transcription"]
    assert (transcription["model"], transcription["language"]) == ("whisper-1", "en")
    assert after["type"] == "input_audio_buffer.cleared"


async def test_a_client_cannot_ask_the_engine_to_treat_its_frames_as_the_gateways_setup(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any]
) -> None:
    # The engine applies the gateway's setup before session.created; a client's own header
    # of that name is dropped, so its first frame is answered like any other.
    gw: RunningGateway = await start_gateway(local_engine(make_settings))
    key = await gw.new_key()
    async with connect(
        f"{gw.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}", "Rtgate-Setup-Frames": "1"},
    ) as ws:
        update = {"type": "session.update", "session": {"type": "realtime", "instructions": "x"}}
        await ws.send(orjson.dumps(update).decode())
        created = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        updated = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
    assert created["type"] == "session.created" and created["session"]["instructions"] != "x"
    assert updated["type"] == "session.updated" and updated["session"]["instructions"] == "x"


async def test_beta_sessions_and_transcription_sessions_mint_one_minute_secrets(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    client_for: ClientFor,
) -> None:
    clock = ManualClock()
    gw: RunningGateway = await start_gateway(make_settings(), clock=clock)
    _, key = await key_with(gw)
    client = client_for(gw, key)

    sess = await client.beta.realtime.sessions.create(
        model="gpt-realtime", voice="verse", instructions="Be brief."
    )
    assert EK.match(sess.client_secret.value)
    assert sess.client_secret.expires_at == int(clock.now()) + 60
    assert sess.model == "gpt-realtime" and sess.voice == "verse"
    events, code = await first_events(gw, sess.client_secret.value)
    assert code is None
    assert events[1]["type"] == "session.updated"
    assert events[1]["session"]["audio"]["output"]["voice"] == "verse"
    assert events[1]["session"]["instructions"] == "Be brief."

    longer = await client.beta.realtime.sessions.create(
        model="gpt-realtime",
        client_secret={"expires_after": {"anchor": "created_at", "seconds": 300}},
    )
    assert longer.client_secret.expires_at == int(clock.now()) + 300

    tr = await client.beta.realtime.transcription_sessions.create(
        input_audio_transcription={"model": "gpt-4o-mini-transcribe"}
    )
    assert EK.match(tr.client_secret.value)
    assert tr.client_secret.expires_at == int(clock.now()) + 60
    events, code = await first_events(gw, tr.client_secret.value, query="intent=transcription")
    assert code is None, events
    assert events[1]["type"] == "session.updated"
    assert events[1]["session"]["type"] == "transcription"
    assert events[1]["session"]["audio"]["input"]["transcription"]["model"] == (
        "gpt-4o-mini-transcribe"
    )

    # A minute later the beta secret is refused; the five-minute one still opens sessions.
    clock.advance(61)
    events, code = await first_events(gw, sess.client_secret.value)
    assert (events[0]["error"]["code"], code) == ("invalid_api_key", 3000)
    events, code = await first_events(gw, longer.client_secret.value, n=1)
    assert code is None and events[0]["type"] == "session.created"


async def test_expired_revoked_forged_and_wrong_model_secrets_are_refused(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    client_for: ClientFor,
) -> None:
    clock = ManualClock()
    gw: RunningGateway = await start_gateway(make_settings(), clock=clock)
    key_id, key = await key_with(gw)
    client = client_for(gw, key)
    short = (await client.realtime.client_secrets.create(expires_after={"seconds": 10})).value
    held = (await client.realtime.client_secrets.create()).value

    events, code = await first_events(gw, short, n=1)
    assert code is None and events[0]["type"] == "session.created"
    clock.advance(10)
    events, code = await first_events(gw, short)
    assert (events[0]["error"]["code"], code) == ("invalid_api_key", 3000)
    assert short not in events[0]["error"]["message"]

    events, code = await first_events(gw, held, query="model=gpt-realtime-mini")
    assert (events[0]["error"]["code"], code) == ("model_not_allowed", 3000)

    forged = "ek_" + "0" * 32
    for bad in (forged, "ek_nothex", held + "0"):
        events, code = await first_events(gw, bad)
        assert (events[0]["error"]["code"], code) == ("invalid_api_key", 3000), bad

    # The SDK sees the same refusal of a forged secret.
    async with client_for(gw, forged).realtime.connect(model="gpt-realtime") as conn:
        event = await conn.recv()
        assert event.type == "error" and event.error.code == "invalid_api_key"

    # A secret cannot mint another one.
    with pytest.raises(openai.AuthenticationError) as exc:
        await client_for(gw, held).realtime.client_secrets.create()
    assert exc.value.status_code == 401 and exc.value.code == "invalid_api_key"

    await gw.app[GATEWAY].keyring.revoke(key_id)
    events, code = await first_events(gw, held)
    assert (events[0]["error"]["code"], code) == ("invalid_api_key", 3000)
    with pytest.raises(openai.AuthenticationError):
        await client.realtime.client_secrets.create()
    assert provider.upgrades and len(provider.upgrades) == 1


async def test_minting_applies_the_key_policy_with_openai_errors(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    client_for: ClientFor,
) -> None:
    clock = ManualClock()
    gw: RunningGateway = await start_gateway(make_settings(), clock=clock)
    _, key = await key_with(
        gw,
        models=["gpt-realtime-mini"],
        expires="2027-01-15T08:00:30Z",
        blocked_events=["session.update:instructions"],
    )
    client = client_for(gw, key)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await client.realtime.client_secrets.create(
            session={"type": "realtime", "model": "gpt-realtime"}
        )
    assert denied.value.code == "model_not_allowed"
    with pytest.raises(openai.NotFoundError) as missing:
        await client.beta.realtime.sessions.create(model="gpt-nonexistent")
    assert missing.value.code == "model_not_found"
    # A GPT-Live model has no Realtime session to mint a secret for.
    with pytest.raises(openai.NotFoundError) as live:
        await client.realtime.client_secrets.create(
            session={"type": "realtime", "model": "gpt-live-1"}
        )
    assert live.value.code == "model_not_found"
    with pytest.raises(openai.PermissionDeniedError) as blocked:
        await client.realtime.client_secrets.create(
            session={"type": "realtime", "model": "gpt-realtime-mini", "instructions": "x"}
        )
    assert blocked.value.code == "event_not_allowed"
    with pytest.raises(openai.BadRequestError):
        await client.realtime.client_secrets.create(expires_after={"seconds": 7201})
    with pytest.raises(openai.BadRequestError):
        await client.realtime.client_secrets.create(session={"type": "translation"})
    with pytest.raises(openai.AuthenticationError):
        await client_for(gw, "rtg_wrong").realtime.client_secrets.create()

    # The secret never outlives its key, which expires 30 s after the clock's start.
    assert clock.now() == 1_800_000_000.0
    ok = await client.realtime.client_secrets.create(
        session={"type": "realtime", "model": "gpt-realtime-mini"}
    )
    assert ok.expires_at == 1_800_000_030
    clock.advance(30)
    events, code = await first_events(gw, ok.value, query="model=gpt-realtime-mini")
    assert (events[0]["error"]["code"], code) == ("invalid_api_key", 3000)


async def test_a_key_over_its_budget_mints_no_secret(
    gateway: RunningGateway, provider: FakeProvider, client_for: ClientFor
) -> None:
    # A newcomer's find: the secret was minted, and only the session it opened was refused.
    _, key = await key_with(gateway, budget_usd_day="0")
    with pytest.raises(openai.RateLimitError) as over:
        await client_for(gateway, key).realtime.client_secrets.create()
    assert over.value.code == "insufficient_quota"
    assert "budget is $0" in over.value.message
    # Not worth the SDK's retries: a spent budget stays spent.
    assert over.value.response.headers["x-should-retry"] == "false"
    assert await table_rows(gateway.store, "SELECT * FROM client_secrets") == []
    _, fine = await key_with(gateway, budget_usd_day="1")
    assert (await client_for(gateway, fine).realtime.client_secrets.create()).value


async def test_a_transcription_secret_is_minted_only_for_a_model_the_key_may_use(
    gateway: RunningGateway, provider: FakeProvider, client_for: ClientFor
) -> None:
    """A transcription secret's model is its transcription model, checked at minting (the
    GA route and the beta one) and again when its session opens."""
    _, realtime_only = await key_with(gateway, models=["gpt-realtime"])
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await client_for(gateway, realtime_only).realtime.client_secrets.create(
            session={"type": "transcription"}
        )
    assert denied.value.code == "model_not_allowed"

    _, key = await key_with(gateway, models=["gpt-realtime", "gpt-4o-mini-transcribe"])
    client = client_for(gateway, key)
    whisper = {"input": {"transcription": {"model": "whisper-1"}}}
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await client.realtime.client_secrets.create(
            session={"type": "transcription", "audio": whisper}
        )
    assert denied.value.code == "model_not_allowed"
    assert denied.value.param == "session.audio.input.transcription.model"
    with pytest.raises(openai.PermissionDeniedError):
        await client.beta.realtime.transcription_sessions.create(
            input_audio_transcription={"model": "whisper-1"}
        )
    ok = await client.realtime.client_secrets.create(session={"type": "transcription"})
    events, code = await first_events(gateway, ok.value, n=2, query="intent=transcription")
    assert code is None and events[1]["type"] == "session.updated"
    assert events[1]["session"]["audio"]["input"]["transcription"]["model"] == (
        "gpt-4o-mini-transcribe"
    )


async def test_a_transcription_model_the_gateway_cannot_price_is_refused_in_openais_words(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    client_for: ClientFor,
    tmp_path: Path,
) -> None:
    # A newcomer's find: a typo was minted (200), then transcribed by the engine and booked
    # under the typo. An operator's own price row makes a name usable.
    config = tmp_path / "rtgate.toml"
    config.write_text('[prices.my-transcriber]\nunit = "minute"\nrate = "0.01"\n')
    gw: RunningGateway = await start_gateway(make_settings(RTGATE_CONFIG=str(config)))
    _, key = await key_with(gw)
    client = client_for(gw, key)
    typo = {"input": {"transcription": {"model": "gpt-4o-mini-transcrib"}}}
    for session in ({"type": "transcription", "audio": typo}, {"type": "realtime", "audio": typo}):
        with pytest.raises(openai.BadRequestError) as refused:
            await client.realtime.client_secrets.create(session=session)  # type: ignore[arg-type]
        assert refused.value.code == "invalid_value"
        assert refused.value.param == "session.audio.input.transcription.model"
        assert (
            "Invalid value: 'gpt-4o-mini-transcrib'. Supported values are: 'whisper-1', "
            in refused.value.message
        )
        assert refused.value.message.endswith(", 'gpt-realtime-whisper', and 'my-transcriber'.")
    with pytest.raises(openai.BadRequestError):
        await client.beta.realtime.transcription_sessions.create(
            input_audio_transcription={"model": "gpt-4o-mini-transcrib"}  # type: ignore[typeddict-item]
        )
    assert await table_rows(gw.store, "SELECT * FROM client_secrets") == []
    minted = {}
    for name in ("my-transcriber", "gpt-4o-mini-transcribe-2025-12-15", "whisper-1"):
        mine = {"input": {"transcription": {"model": name}}}
        minted[name] = (
            await client.realtime.client_secrets.create(
                session={"type": "transcription", "audio": mine}  # type: ignore[typeddict-item]
            )
        ).value
    # Checked again at connect: a gateway that no longer prices a model refuses the sessions
    # of secrets minted for it.
    unpriced: RunningGateway = await start_gateway(make_settings())
    events, code = await first_events(unpriced, minted["my-transcriber"], "intent=transcription")
    assert (events[0]["error"]["code"], code) == ("invalid_value", 1008)
    assert events[0]["error"]["param"] == "session.audio.input.transcription.model"
    events, code = await first_events(unpriced, minted["whisper-1"], "intent=transcription")
    assert code is None and events[0]["type"] == "session.created"


async def test_a_template_no_session_could_take_is_refused_when_minted(
    gateway: RunningGateway, client_for: ClientFor
) -> None:
    """A newcomer's find: the voice ``nobody`` was minted (200), and every session the secret
    opened started with an ``error`` its client never sent, then went on with the default."""
    _, key = await key_with(gateway)
    client = client_for(gateway, key)
    bad: list[tuple[dict[str, Any], str, str]] = [
        (
            {"type": "realtime", "audio": {"output": {"voice": "nobody"}}},
            "invalid_value",
            "session.audio.output.voice",
        ),
        (
            {"type": "realtime", "max_output_tokens": 99999},
            "integer_above_max_value",
            "session.max_output_tokens",
        ),
        (
            {"type": "realtime", "audio": {"input": {"format": {"type": "audio/mp3"}}}},
            "invalid_value",
            "session.audio.input.format.type",
        ),
    ]
    for session, code, param in bad:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.realtime.client_secrets.create(session=session)  # type: ignore[arg-type]
        assert (refused.value.code, refused.value.param) == (code, param), refused.value.message
    with pytest.raises(openai.BadRequestError) as refused:
        await client.beta.realtime.sessions.create(model="gpt-realtime", voice="nobody")
    assert (refused.value.code, refused.value.param) == ("invalid_value", "voice")
    assert "Invalid value: 'nobody'. Supported values are: 'alloy'" in refused.value.message
    # The beta body is flat: the member it names is the one sent, not the GA template's.
    with pytest.raises(openai.BadRequestError) as refused:
        await client.beta.realtime.sessions.create(
            model="gpt-realtime",
            max_response_output_tokens=99999,
            input_audio_transcription={"model": "whisper-1"},
        )
    assert refused.value.param == "max_response_output_tokens", refused.value.message
    assert await table_rows(gateway.store, "SELECT * FROM client_secrets") == []
    # What a session takes is minted as ever.
    fine = {"type": "realtime", "audio": {"output": {"voice": "marin"}}, "max_output_tokens": 9}
    assert (await client.realtime.client_secrets.create(session=fine)).value  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/realtime/client_secrets", {"expires_after": {"seconds": 5}, "foo": 1}),
        ("/v1/realtime/sessions", {"model": 7}),
        ("/v1/realtime/transcription_sessions", {"client_secret": []}),
        ("/ui/playground/cost", {}),
    ],
)
async def test_a_wrong_key_is_refused_before_its_body_is_read(
    gateway: RunningGateway, route: str, body: dict[str, Any]
) -> None:
    """As OpenAI answers: 401, whatever the body (a newcomer's find: the body's 400 came
    first, telling a caller with no valid key what the route takes)."""
    async with aiohttp.ClientSession() as http:
        for headers in ({"Authorization": "Bearer rtg_wrong"}, {}):
            async with http.post(gateway.http + route, json=body, headers=headers) as resp:
                assert resp.status == 401, (route, headers, await resp.text())
                assert (await resp.json())["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (
            {"expires_after": {"seconds": 5}},
            "integer_below_min_value",
            "Invalid 'expires_after.seconds': integer below minimum value. Expected a value "
            ">= 10, but got 5 instead.",
        ),
        (
            {"expires_after": {"seconds": 7201}},
            "integer_above_max_value",
            "Invalid 'expires_after.seconds': integer above maximum value. Expected a value "
            "<= 7200, but got 7201 instead.",
        ),
        (
            {"expires_after": {"seconds": "60"}},
            "invalid_type",
            "Invalid type for 'expires_after.seconds': expected an integer, but got a string "
            "instead.",
        ),
    ],
)
async def test_a_body_member_out_of_range_is_refused_in_openais_words(
    gateway: RunningGateway, body: dict[str, Any], code: str, message: str
) -> None:
    # A newcomer's find: msgspec's "Expected `int` >= 10" with code invalid_request.
    _, key = await key_with(gateway)
    error = await refused_400(gateway, key, "client_secrets", body)
    assert error == {
        "type": "invalid_request_error",
        "code": code,
        "message": message,
        "param": "expires_after.seconds",
    }


async def test_a_body_that_is_no_object_is_told_so(gateway: RunningGateway) -> None:
    """A newcomer's find: a JSON array was "Invalid type for '': ...", with an empty param."""
    _, key = await key_with(gateway)
    for route in ("client_secrets", "sessions", "transcription_sessions"):
        error = await refused_400(gateway, key, route, [{"session": {}}])
        assert error == {
            "type": "invalid_request_error",
            "code": "invalid_type",
            "message": "The request body must be a JSON object, but got an array.",
            "param": None,
        }, route


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("sessions", {"model": "gpt-realtime", "voice": "verse", "foo": 1}, "foo"),
        # A realtime-only field is unknown to a transcription session.
        ("transcription_sessions", {"voice": "verse"}, "voice"),
        ("client_secrets", {"session": {"type": "realtime", "foo": 1}}, "session.foo"),
        ("client_secrets", {"session": {"type": "transcription", "voice": "x"}}, "session.voice"),
        ("client_secrets", {"foo": 1}, "foo"),
    ],
)
async def test_unknown_fields_are_refused_as_openai_does_and_never_stored(
    gateway: RunningGateway, route: str, body: dict[str, Any], param: str
) -> None:
    _, key = await key_with(gateway)
    error = await refused_400(gateway, key, route, body)
    assert error == {
        "message": f"Unknown parameter: '{param}'.",
        "type": "invalid_request_error",
        "param": param,
        "code": "unknown_parameter",
    }
    assert await gateway.app[GATEWAY].keyring.list_secrets() == []


# -- a browser ----------------------------------------------------------------------------------

PAGE = """<!doctype html>
<html><body><div id="out">waiting</div>
<script>
const out = document.getElementById("out");
const ws = new WebSocket(%(url)s, ["realtime", "openai-insecure-api-key." + %(secret)s]);
const seen = (text) => {
  out.textContent = text;
  fetch("/seen", {method: "POST"});
};
ws.onmessage = (m) => {
  seen("first:" + JSON.parse(m.data).type + " protocol:" + ws.protocol);
  ws.close();
};
ws.onerror = () => seen("socket-error");
</script>
<img src="/hold" alt=""></body></html>
"""


async def browser_dom(page_html: str, tmp_path: Path) -> str:
    """What headless Chromium's DOM shows once the page at a loopback URL has run."""
    assert shutil.which(CHROMIUM), (
        f"no Chromium at {CHROMIUM!r}: run the suite with make test (scripts/chromium finds or "
        "installs one), or set RTGATE_TEST_CHROMIUM"
    )

    seen = asyncio.Event()

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=page_html, content_type="text/html")

    async def mark_seen(_: web.Request) -> web.Response:
        seen.set()
        return web.Response(status=204)

    async def hold(_: web.Request) -> web.Response:
        # The page's load event (after which --dump-dom counts its virtual time) waits for this
        # image, which waits until the page has reported the socket's first event.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await seen.wait()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_post("/seen", mark_seen)
    app.router.add_get("/hold", hold)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            # No connections of its own (updates, sync): only the loopback page's.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--virtual-time-budget=2000",
            "--dump-dom",
            f"http://127.0.0.1:{port}/",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(90):
                out, _ = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        return out.decode()
    finally:
        await runner.cleanup()


def page_for(gw: RunningGateway, secret: str) -> str:
    url = f"{gw.ws}/v1/realtime?model=gpt-realtime"
    return PAGE % {"url": orjson.dumps(url).decode(), "secret": orjson.dumps(secret).decode()}


async def test_headless_chromium_opens_a_session_with_a_minted_secret(
    gateway: RunningGateway,
    provider: FakeProvider,
    tmp_path: Path,
    client_for: ClientFor,
) -> None:
    key_id, key = await key_with(gateway)
    secret = (await client_for(gateway, key).realtime.client_secrets.create()).value
    dom = await browser_dom(page_for(gateway, secret), tmp_path)
    assert "first:session.created protocol:realtime" in dom, dom
    (sess,) = await gateway.store.recent_sessions()
    assert sess.key_id == key_id

    forged = await browser_dom(page_for(gateway, "ek_" + "f" * 32), tmp_path)
    assert "first:error" in forged, forged


async def test_the_product_pages_minting_examples_work_as_written(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    """The two curl bodies of OpenAI's Realtime API product page, byte for byte."""
    gw: RunningGateway = await start_gateway(make_settings())
    _, key = await key_with(gw)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{gw.http}/v1/realtime/sessions",
            headers=headers,
            data='{\n"model": "gpt-realtime",\n"voice": "alloy"\n}',
        ) as r:
            assert r.status == 200
            realtime = await r.json()
        async with http.post(
            f"{gw.http}/v1/realtime/transcription_sessions",
            headers=headers,
            data='{\n"model": "gpt-4o-mini-transcribe"\n}',
        ) as r:
            assert r.status == 200
            transcription = await r.json()
    assert realtime["voice"] == "alloy" and EK.match(realtime["client_secret"]["value"])
    # The page's transcription body names the transcription model at the top level: it becomes
    # the session's transcription model.
    assert transcription["input_audio_transcription"] == {"model": "gpt-4o-mini-transcribe"}
    events, code = await first_events(gw, transcription["client_secret"]["value"], query="")
    assert code is None, events
    assert events[1]["session"]["type"] == "transcription"
    assert events[1]["session"]["audio"]["input"]["transcription"]["model"] == (
        "gpt-4o-mini-transcribe"
    )


async def test_the_playground_prices_only_models_the_key_may_use(gateway: RunningGateway) -> None:
    """A newcomer's find: a key limited to one model was told the operator's price row and
    charged cost for any other (``/v1/models`` lists it only its own)."""
    _, key = await key_with(gateway, models=["gpt-realtime-mini"])
    usage = {"total_tokens": 3, "input_tokens": 2, "output_tokens": 1}
    event = {"type": "response.done", "response": {"id": "resp_1", "usage": usage}}
    async with aiohttp.ClientSession() as http:
        for model, status in (
            ("gpt-realtime", 403),
            ("gpt-live-1", 403),
            ("gpt-realtime-mini", 200),
        ):
            async with http.post(
                gateway.http + "/ui/playground/cost",
                json={"model": model, "event": event},
                headers={"Authorization": f"Bearer {key}"},
            ) as resp:
                body = await resp.json()
                assert resp.status == status, (model, body)
                if status == 403:
                    assert body["error"]["code"] == "model_not_allowed"
                    assert "price_row" not in body
                else:
                    assert body["price_row"] == "gpt-realtime-mini"
