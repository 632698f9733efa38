"""Defects found reviewing client secrets, calls, the CLI, the store's migration and the local
engine's session checks; each test failed before its fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine
from typer.testing import CliRunner

from rtgate.auth.client_secrets import secret_id_of
from rtgate.cli import app as cli_app
from rtgate.config import Settings
from rtgate.engine.session import EngineSession
from rtgate.relay.endpoint import GATEWAY
from rtgate.store.sql import SqlStore
from tests.provider import FakeProvider
from tests.sdk_events import validate_server_event
from tests.test_calls import (
    ADMIN_TOKEN,
    REALTIME,
    admin_call,
    eventually,
    key_with,
    place,
)

# -- calls ----------------------------------------------------------------------------------------


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

    await eventually(hung_up)
    (row,) = await gw.store.recent_sessions()
    assert (row.close_code, row.closed_by) == (1008, "operator")
    assert row.close_reason == "invalid_request_error.client_secret_revoked"
    assert await gw.app[GATEWAY].limiter.live(key_id) == 0


# -- the CLI --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    ["rtg_" + "GatewayKeyPastedByMistake0", "[/red]not an id", "cs_" + "0" * 20 + "[/b]"],
)
def test_secrets_revoke_never_echoes_what_is_not_an_id(
    given: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTGATE_HOME", str(tmp_path))
    monkeypatch.delenv("RTGATE_DATABASE_URL", raising=False)
    result = CliRunner().invoke(cli_app, ["secrets", "revoke", given])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert given not in result.output
    assert "no client secret" in result.output


def test_secrets_revoke_names_an_unknown_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTGATE_HOME", str(tmp_path))
    monkeypatch.delenv("RTGATE_DATABASE_URL", raising=False)
    sid = "cs_" + "ab" * 10
    result = CliRunner().invoke(cli_app, ["secrets", "revoke", sid])
    assert result.exit_code == 1
    assert f"no client secret with id {sid}" in result.output


# -- the store ------------------------------------------------------------------------------------


async def test_an_existing_database_gets_the_client_secrets_key_index(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    store = SqlStore(url)
    await store.init()
    async with store.engine.begin() as conn:
        # As a database made before client secrets could be listed by key.
        await conn.exec_driver_sql("DROP INDEX ix_client_secrets_key_id")
    await store.close()

    store = SqlStore(url)
    await store.init()
    async with store.engine.connect() as conn:
        names = await conn.run_sync(
            lambda c: {i["name"] for i in inspect(c).get_indexes("client_secrets")}
        )
    await store.close()
    assert "ix_client_secrets_key_id" in names


async def test_a_database_from_before_revocation_is_migrated(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.exec_driver_sql(
            "CREATE TABLE client_secrets (secret_hash VARCHAR(64) PRIMARY KEY, key_id VARCHAR(32)"
            " NOT NULL, model VARCHAR(100), session TEXT NOT NULL, created_at FLOAT NOT NULL,"
            " expires_at FLOAT NOT NULL)"
        )
        await conn.exec_driver_sql(
            "CREATE INDEX ix_client_secrets_expires_at ON client_secrets (expires_at)"
        )
    await engine.dispose()

    store = SqlStore(url)
    await store.init()
    async with store.engine.connect() as conn:
        columns, indexes = await conn.run_sync(
            lambda c: (
                {col["name"] for col in inspect(c).get_columns("client_secrets")},
                {i["name"] for i in inspect(c).get_indexes("client_secrets")},
            )
        )
    assert "revoked_at" in columns
    assert "ix_client_secrets_key_id" in indexes
    assert await store.list_client_secrets(None, 0.0) == []
    await store.close()


# -- the local engine -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"audio": 5}, "session.audio"),
        ({"audio": {"input": "x"}}, "session.audio.input"),
        ({"audio": {"output": ["x"]}}, "session.audio.output"),
        (
            {"audio": {"input": {"turn_detection": "server_vad"}}},
            "session.audio.input.turn_detection",
        ),
    ],
)
def test_a_session_update_of_the_wrong_shape_is_refused_not_fatal(
    session: dict[str, Any], param: str
) -> None:
    s = EngineSession(model="gpt-realtime")
    s.created()
    events, plan = s.handle(
        {"type": "session.update", "event_id": "evt_1", "session": {"type": "realtime", **session}}
    )
    assert plan is None
    (error,) = events
    validate_server_event(error)
    assert error["type"] == "error"
    assert error["error"]["code"] == "invalid_type"
    assert error["error"]["param"] == param
    assert error["error"]["event_id"] == "evt_1"
    # Nothing of it was applied: the session goes on as before.
    events, _ = s.handle({"type": "input_audio_buffer.append", "audio": "AAAA"})
    assert [e["type"] for e in events if e["type"] == "error"] == []
    events, _ = s.handle({"type": "session.update", "session": {"type": "realtime"}})
    assert [e["type"] for e in events] == ["session.updated"]
    assert events[0]["session"]["audio"]["output"]["voice"] == "alloy"
