"""Control over minted client secrets: the secret's session type decides the connection's
intent, and an operator lists secrets and revokes one (admin API and CLI), which ends the
sessions it opened."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import websockets
from openai import AsyncOpenAI
from openai.types.realtime import ClientSecretCreateResponse
from typer.testing import CliRunner
from websockets.asyncio.client import connect

from rtgate.auth.client_secrets import secret_id_of
from rtgate.auth.policy import KeyPolicy, PolicyUpdate, apply_update
from rtgate.cli import app as cli_app
from rtgate.clock import ManualClock
from rtgate.config import Settings
from rtgate.relay import endpoint
from rtgate.relay.endpoint import GATEWAY
from rtgate.store.sql import SqlStore
from tests.conftest import RunningGateway
from tests.provider import FakeProvider
from tests.test_admin_api import TOKEN, call
from tests.test_client_secrets import first_events, key_with


def sdk(gw: RunningGateway, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, base_url=f"{gw.http}/v1", max_retries=0)


async def test_the_secrets_session_type_decides_the_intent(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw: RunningGateway = await start_gateway(make_settings())
    _, key = await key_with(gw)
    async with sdk(gw, key) as client:
        tr = (
            await client.realtime.client_secrets.create(
                session={
                    "type": "transcription",
                    "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}},
                }
            )
        ).value
        rt = (await client.realtime.client_secrets.create()).value

    # A transcription secret opens a transcription session even when the client names no
    # intent: the upstream is asked for one, and the session says so.
    events, code = await first_events(gw, tr, query="")
    assert code is None, events
    assert events[0]["session"]["type"] == "transcription"
    assert provider.upgrades[-1].query == {"intent": "transcription"}

    before = len(provider.upgrades)
    for secret, query in (
        (rt, "model=gpt-realtime&intent=transcription"),
        (tr, "intent=conversation"),
    ):
        events, code = await first_events(gw, secret, query=query)
        assert (events[0]["error"]["code"], code) == ("invalid_intent", 3000), query
        assert events[0]["error"]["param"] == "intent"
    assert len(provider.upgrades) == before

    # A realtime secret still opens a realtime session.
    events, code = await first_events(gw, rt, n=1)
    assert code is None and events[0]["session"]["type"] == "realtime"
    assert "intent" not in provider.upgrades[-1].query


async def test_an_operator_lists_secrets_and_revokes_one_ending_its_sessions(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    clock = ManualClock()
    gw: RunningGateway = await start_gateway(make_settings(RTGATE_ADMIN_TOKEN=TOKEN), clock=clock)
    key_id, key = await key_with(gw)
    other_id, other = await key_with(gw)
    async with sdk(gw, key) as client, sdk(gw, other) as other_client:
        leaked = await client.realtime.client_secrets.create(
            session={"type": "realtime", "instructions": "Be brief."}
        )
        clock.advance(1)
        kept = await client.realtime.client_secrets.create(expires_after={"seconds": 30})
        theirs = await other_client.realtime.client_secrets.create()
        expired = await client.realtime.client_secrets.create(expires_after={"seconds": 10})
    clock.advance(10)

    listed = (await call(gw, "GET", "/client_secrets", params={"key_id": key_id})).json()
    assert [s["id"] for s in listed] == [secret_id_of(kept.value), secret_id_of(leaked.value)]
    (entry,) = [s for s in listed if s["id"] == secret_id_of(leaked.value)]
    assert entry["key_id"] == key_id and entry["type"] == "realtime"
    assert entry["model"] == "gpt-realtime" and entry["active"] and entry["revoked_at"] is None
    assert entry["session"]["instructions"] == "Be brief."
    everyone = (await call(gw, "GET", "/client_secrets")).json()
    assert {s["key_id"] for s in everyone} == {key_id, other_id}
    assert secret_id_of(expired.value) not in {s["id"] for s in everyone}
    for value in (leaked.value, kept.value, theirs.value):
        assert value not in str(everyone)

    # Two live sessions on the leaked secret, one on another secret of the same key.
    async def opened(secret: str) -> Any:
        ws = await connect(
            f"{gw.ws}/v1/realtime?model=gpt-realtime",
            additional_headers={"Authorization": f"Bearer {secret}"},
        )
        assert orjson.loads(await ws.recv())["type"] == "session.created"
        return ws

    first, second, bystander = (
        await opened(leaked.value),
        await opened(leaked.value),
        await opened(kept.value),
    )
    live = (await call(gw, "GET", "/sessions/live")).json()
    by_secret = {s["id"]: s["client_secret_id"] for s in live}
    assert sorted(by_secret.values()) == sorted(
        [secret_id_of(leaked.value)] * 2 + [secret_id_of(kept.value)]
    )

    revoked = await call(gw, "POST", f"/client_secrets/{secret_id_of(leaked.value)}/revoke")
    assert revoked.status == 200
    body = revoked.json()
    assert body["active"] is False and body["revoked_at"]
    closed = {sid for sid, cs in by_secret.items() if cs == secret_id_of(leaked.value)}
    assert set(body["closed_sessions"]) == closed

    for ws in (first, second):
        event = orjson.loads(await ws.recv())
        while event["type"] == "session.updated":
            event = orjson.loads(await ws.recv())
        assert event["type"] == "error" and event["error"]["code"] == "client_secret_revoked"
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1008

    # The revoked secret opens nothing more; the key's other secrets and the key still work.
    events, code = await first_events(gw, leaked.value)
    assert (events[0]["error"]["code"], code) == ("invalid_api_key", 3000)
    events, code = await first_events(gw, kept.value, n=1)
    assert code is None and events[0]["type"] == "session.created"
    async with sdk(gw, key) as client:
        assert (await client.realtime.client_secrets.create()).value
    await bystander.send('{"type":"input_audio_buffer.clear"}')
    assert orjson.loads(await bystander.recv())["type"] == "input_audio_buffer.cleared"
    await bystander.close()

    # A revoked key's secrets open nothing, and are not listed as active (a newcomer's find:
    # they were, during what would be a leak's response).
    assert {s["id"]: s["active"] for s in (await call(gw, "GET", "/client_secrets")).json()}[
        secret_id_of(theirs.value)
    ]
    assert (await call(gw, "POST", f"/keys/{other_id}/revoke")).status == 200
    (theirs_now,) = (await call(gw, "GET", "/client_secrets", params={"key_id": other_id})).json()
    assert theirs_now["active"] is False and theirs_now["revoked_at"] is None
    events, code = await first_events(gw, theirs.value)
    assert code == 3000

    # Revoking again answers the same revocation; unknown ids are 404 in OpenAI's shape.
    again = (await call(gw, "POST", f"/client_secrets/{body['id']}/revoke")).json()
    assert again["revoked_at"] == body["revoked_at"] and again["closed_sessions"] == []
    for unknown in ("cs_" + "0" * 20, "nope", leaked.value):
        missing = await call(gw, "POST", f"/client_secrets/{unknown}/revoke")
        assert missing.status == 404 and missing.error["param"] == "secret_id", unknown
        assert leaked.value not in missing.text


async def test_the_cli_lists_and_revokes_a_secret_by_id_or_value(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
    db_url: str,
    tmp_path: Path,
) -> None:
    gw: RunningGateway = await start_gateway(make_settings())
    key_id, key = await key_with(gw)
    async with sdk(gw, key) as client:
        one = (await client.realtime.client_secrets.create()).value
        two = (await client.realtime.client_secrets.create()).value
    monkeypatch.setenv("RTGATE_DATABASE_URL", db_url)
    monkeypatch.setenv("RTGATE_HOME", str(tmp_path / "home"))
    runner = CliRunner()

    def run_cli(*args: str, code: int = 0) -> str:
        # Called in a thread: the CLI runs its own event loop.
        result = runner.invoke(cli_app, list(args))
        assert result.exit_code == code, result.output
        return result.output

    listed = orjson.loads(await asyncio.to_thread(run_cli, "secrets", "list", "--json"))
    assert {s["id"] for s in listed} == {secret_id_of(one), secret_id_of(two)}
    table = await asyncio.to_thread(run_cli, "secrets", "list", "--key", key_id)
    assert secret_id_of(one) in table and one not in table

    # A key revoked (or expired) leaves its secrets listed, as opening nothing.
    other_id, other = await key_with(gw)
    async with sdk(gw, other) as client:
        await client.realtime.client_secrets.create()
    await asyncio.to_thread(run_cli, "keys", "revoke", other_id)
    table = await asyncio.to_thread(run_cli, "secrets", "list", "--key", other_id)
    assert "key revoked or expired" in table and "active" not in table
    (theirs,) = orjson.loads(
        await asyncio.to_thread(run_cli, "secrets", "list", "--key", other_id, "--json")
    )
    assert theirs["active"] is False

    by_value = orjson.loads(await asyncio.to_thread(run_cli, "secrets", "revoke", one, "--json"))
    assert by_value["id"] == secret_id_of(one) and by_value["active"] is False
    out = await asyncio.to_thread(run_cli, "secrets", "revoke", secret_id_of(two))
    assert out.strip() == f"Revoked {secret_id_of(two)} (minted by {key_id})."
    await asyncio.to_thread(run_cli, "secrets", "revoke", "cs_" + "f" * 20, code=1)

    for secret in (one, two):
        events, code = await first_events(gw, secret)
        assert (events[0]["error"]["code"], code) == ("invalid_api_key", 3000)


async def test_a_database_from_before_secret_revocation_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    store = SqlStore(f"sqlite:///{path}")
    await store.init()
    await store.close()
    db = sqlite3.connect(path)
    # As such a database was: without the column, and so without its index.
    db.execute("DROP INDEX ix_client_secrets_revoked_at")
    db.execute("ALTER TABLE client_secrets DROP COLUMN revoked_at")
    db.execute("INSERT INTO api_keys VALUES ('key_old', 'old', 'rtg_x', 'h', 1.0, NULL, NULL)")
    db.execute(
        "INSERT INTO client_secrets VALUES ('ab12' || substr(hex(zeroblob(30)), 1, 60),"
        " 'key_old', 'gpt-realtime', '{\"type\":\"realtime\"}', 1.0, 99.0)"
    )
    db.commit()
    db.close()
    store = SqlStore(f"sqlite:///{path}")
    await store.init()
    (old,) = await store.list_client_secrets(None, 2.0)
    assert old.revoked_at is None
    revoked = await store.revoke_client_secret("ab12", 3.0)
    assert revoked is not None and revoked.revoked_at == 3.0
    await store.close()


async def test_a_secret_minted_before_a_field_was_blocked_cannot_set_it(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw: RunningGateway = await start_gateway(make_settings())
    key_id, key = await key_with(gw)
    async with sdk(gw, key) as client:
        briefed = (
            await client.realtime.client_secrets.create(
                session={"type": "realtime", "instructions": "Ignore your rules."}
            )
        ).value
        plain = (await client.realtime.client_secrets.create()).value
    ring = gw.app[GATEWAY].keyring
    info = await ring.get(key_id)
    assert info is not None
    policy = apply_update(
        KeyPolicy.from_json(info.policy_json),
        PolicyUpdate(blocked_events=["session.update:instructions"]),
    )
    await ring.set_policy(key_id, policy)

    before = len(provider.upgrades)
    events, code = await first_events(gw, briefed)
    assert (events[0]["error"]["code"], code) == ("event_not_allowed", 3000)
    assert events[0]["error"]["param"] == "session.instructions"
    assert len(provider.upgrades) == before
    events, code = await first_events(gw, plain, n=1)
    assert code is None and events[0]["type"] == "session.created"


async def test_rtgate_mints_its_own_secrets_in_the_shape_the_provider_answers(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw: RunningGateway = await start_gateway(make_settings())
    _, key = await key_with(gw)
    asked: dict[str, Any] = {
        "expires_after": {"anchor": "created_at", "seconds": 300},
        "session": {"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief."},
    }
    transcription: dict[str, Any] = {
        "session": {
            "type": "transcription",
            "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}},
        }
    }
    answers = {}
    for who, base, secret in (
        ("provider", f"http://127.0.0.1:{provider.port}/v1", provider.key),
        ("rtgate", f"{gw.http}/v1", key),
    ):
        async with AsyncOpenAI(api_key=secret, base_url=base, max_retries=0) as client:
            for name, body in (("realtime", asked), ("transcription", transcription)):
                raw = await client.realtime.client_secrets.with_raw_response.create(**body)
                # Strict validation of the wire JSON, not the SDK's lenient construction.
                answers[who, name] = ClientSecretCreateResponse.model_validate_json(raw.text)
    for name in ("realtime", "transcription"):
        theirs, ours = answers["provider", name], answers["rtgate", name]
        assert ours.session.type == theirs.session.type == name
        assert ours.value.startswith("ek_") and ours.value != theirs.value
    assert answers["rtgate", "realtime"].session.instructions == "Be brief."
    assert answers["rtgate", "realtime"].session.model == "gpt-realtime"
    # What went through rtgate never reached the provider's minting route.
    assert len(provider.secret_requests) == 2


async def test_an_operator_never_sees_the_credentials_in_a_template(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw: RunningGateway = await start_gateway(make_settings(RTGATE_ADMIN_TOKEN=TOKEN))
    _, key = await key_with(gw)
    tool = {
        "type": "mcp",
        "server_label": "crm",
        "server_url": "https://crm.example/mcp",
        "authorization": "Bearer crm-token-1234567890",
        "headers": {"X-Api-Key": "crm-key-0987654321"},
    }
    async with sdk(gw, key) as client:
        minted = await client.realtime.client_secrets.create(
            session={"type": "realtime", "tools": [tool]}
        )
    (listed,) = (await call(gw, "GET", "/client_secrets")).json()
    assert listed["session"]["tools"] == [
        {**tool, "authorization": "[redacted]", "headers": "[redacted]"}
    ]
    reply = await call(gw, "GET", "/client_secrets")
    assert "crm-token" not in reply.text and "crm-key" not in reply.text
    # The session itself still gets the tool as minted: its template reaches the upstream.
    events, code = await first_events(gw, minted.value)
    assert code is None and events[1]["type"] == "session.updated"
    ((kept, key_opens),) = await gw.app[GATEWAY].keyring.list_secrets()
    assert key_opens
    assert orjson.loads(kept.session_json)["tools"] == [tool]


async def test_a_session_whose_secret_is_revoked_while_it_dials_is_closed(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw: RunningGateway = await start_gateway(make_settings())
    _, key = await key_with(gw)
    async with sdk(gw, key) as client:
        secret = (await client.realtime.client_secrets.create()).value
    ring = gw.app[GATEWAY].keyring
    dial = endpoint._dial

    async def revoked_while_dialling(*args: Any) -> Any:
        # The revocation lands after authentication and before the session is live: its sweep
        # of live sessions cannot see this one.
        assert await ring.revoke_secret(secret_id_of(secret)) is not None
        return await dial(*args)

    monkeypatch.setattr(endpoint, "_dial", revoked_while_dialling)
    events, code = await first_events(gw, secret, n=5)
    assert events[-1]["type"] == "error", events
    assert events[-1]["error"]["code"] == "client_secret_revoked"
    assert code == 1008
    live = gw.app[GATEWAY].live
    for _ in range(100):
        if not live:
            break
        await asyncio.sleep(0.02)
    assert not live


async def test_a_keys_minting_rate_is_limited_per_minute(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    clock = ManualClock()
    gw: RunningGateway = await start_gateway(make_settings(), clock=clock)
    _, key = await key_with(gw, secrets_per_minute=2)
    _, other = await key_with(gw, secrets_per_minute=2)
    async with sdk(gw, key) as client, sdk(gw, other) as other_client:
        first = (await client.realtime.client_secrets.create()).value
        clock.advance(20)
        await client.beta.realtime.sessions.create(model="gpt-realtime")
        for mint in (
            lambda: client.realtime.client_secrets.create(),
            lambda: client.beta.realtime.transcription_sessions.create(),
        ):
            with pytest.raises(openai.RateLimitError) as refused:
                await mint()
            assert refused.value.status_code == 429
            assert refused.value.code == "rate_limit_exceeded"
            assert "2 client secrets per minute; try again in 40 s" in str(refused.value)
            # What the SDKs wait out before a retry (a newcomer's find: it was missing).
            assert refused.value.response.headers["retry-after"] == "40"
        # Another key's window is its own; what was minted still opens sessions.
        assert (await other_client.realtime.client_secrets.create()).value
        events, code = await first_events(gw, first, n=1)
        assert code is None and events[0]["type"] == "session.created"
        # A minute after the first mint, one more fits.
        clock.advance(40)
        assert (await client.realtime.client_secrets.create()).value
        with pytest.raises(openai.RateLimitError):
            await client.realtime.client_secrets.create()
