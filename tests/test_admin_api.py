"""The admin HTTP API over real loopback sockets: its token, every route, and its OpenAPI document
checked by schemathesis against the running gateway."""

from __future__ import annotations

import asyncio
import csv
import io
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import orjson
import pytest
import websockets
from typer.testing import CliRunner
from websockets.asyncio.client import connect

from rtgate.api import live as live_api
from rtgate.api.admin import OPERATIONS, PREFIX
from rtgate.api.views import USAGE_CSV_COLUMNS
from rtgate.auth.client_secrets import id_hash_prefix, secret_id_of
from rtgate.cli import app as cli_app
from rtgate.config import Settings, load_settings
from rtgate.errors import ConfigError
from rtgate.protocol.usage import TOKEN_FIELDS
from rtgate.store.port import StoreError
from tests.conftest import TOKEN, RunningGateway, events_until


@dataclass
class Reply:
    status: int
    headers: Any
    text: str

    def json(self) -> Any:
        return orjson.loads(self.text)

    @property
    def error(self) -> dict[str, Any]:
        body = self.json()
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "code", "param"}
        return dict(body["error"])


async def call(
    gw: RunningGateway,
    method: str,
    path: str,
    *,
    token: str | None = TOKEN,
    auth: str | None = None,
    body: Any = None,
    raw: bytes | None = None,
    params: dict[str, str] | None = None,
) -> Reply:
    headers = {}
    if auth is not None:
        headers["Authorization"] = auth
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else (None if body is None else orjson.dumps(body))
    if data is not None:
        headers["Content-Type"] = "application/json"
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, f"{gw.http}{PREFIX}{path}", headers=headers, data=data, params=params
        ) as r,
    ):
        return Reply(r.status, r.headers, await r.text())


def response_done(rid: str, text_in: int, audio_out: int = 0) -> str:
    """A ``test.emit`` that has the fake provider send a ``response.done`` with this usage."""
    event = {
        "type": "response.done",
        "event_id": f"event_{rid}",
        "response": {
            "id": rid,
            "object": "realtime.response",
            "status": "completed",
            "usage": {
                "input_tokens": text_in,
                "output_tokens": audio_out,
                "input_token_details": {"text_tokens": text_in},
                "output_token_details": {"audio_tokens": audio_out},
            },
        },
    }
    return orjson.dumps({"type": "test.emit", "event": event}).decode()


async def open_session(gw: RunningGateway, secret: str) -> Any:
    ws = await connect(
        f"{gw.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {secret}"},
    )
    assert orjson.loads(await ws.recv())["type"] == "session.created"
    return ws


async def mint(gw: RunningGateway, key: str) -> str:
    """A realtime client secret minted with ``key``: its value."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gw.http}/v1/realtime/client_secrets",
            headers={"Authorization": f"Bearer {key}"},
            json={"session": {"type": "realtime"}},
        ) as r,
    ):
        value: str = (await r.json())["value"]
    return value


def cli_env(gw: RunningGateway) -> dict[str, str]:
    """What the CLI needs to reach ``gw``'s database, as an operator on its host would set."""
    return {
        "RTGATE_HOME": str(gw.settings.home),
        "RTGATE_DATABASE_URL": gw.settings.resolved_database_url,
        "RTGATE_CONFIG": "",
    }


async def metered(ws: Any, rid: str, text_in: int, audio_out: int = 0) -> None:
    """Send usage through the gateway; once the client sees it, it is in the store."""
    await ws.send(response_done(rid, text_in, audio_out))
    assert orjson.loads(await ws.recv())["type"] == "response.done"


async def until_no_live_sessions(gw: RunningGateway) -> None:
    for _ in range(200):
        if not (await call(gw, "GET", "/sessions/live")).json():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the session is still live")


def concrete(path: str) -> str:
    return re.sub(r"\{\w+\}", "key_nope", path)


# -- the token ------------------------------------------------------------------------------------


def test_the_admin_token_comes_from_the_environment_only(tmp_path: Path) -> None:
    settings = load_settings(None, {"RTGATE_HOME": str(tmp_path), "RTGATE_ADMIN_TOKEN": TOKEN})
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == TOKEN
    assert TOKEN not in msgspec.json.encode(settings, enc_hook=str).decode() and TOKEN not in repr(
        settings
    )
    assert load_settings(None, {"RTGATE_HOME": str(tmp_path)}).admin_token is None
    config = tmp_path / "rtgate.toml"
    config.write_text(f'admin_token = "{TOKEN}"\n')
    with pytest.raises(ConfigError, match="RTGATE_ADMIN_TOKEN"):
        load_settings(config, {"RTGATE_HOME": str(tmp_path)})


async def test_without_a_token_configured_every_admin_route_is_404(
    gateway: RunningGateway,
) -> None:
    assert gateway.settings.admin_token is None
    routes = [(op.method, concrete(op.path)) for op in OPERATIONS] + [("GET", "/nowhere")]
    for method, path in routes:
        for token in (None, TOKEN):
            reply = await call(gateway, method, path, token=token, body={"name": "x"})
            assert reply.status == 404, (method, path)
            assert reply.error["code"] == "admin_api_disabled"
            assert "disabled" in reply.error["message"]
    assert await gateway.store.list_keys() == []


@pytest.mark.parametrize(
    "auth",
    [
        None,
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Basic {TOKEN}",
        TOKEN,
        "Bearer ",
        "Bearer wrong-token",
    ],
)
async def test_a_missing_or_wrong_token_is_refused_with_401(
    admin: RunningGateway, auth: str | None
) -> None:
    for op in OPERATIONS:
        reply = await call(
            admin, op.method, concrete(op.path), token=None, auth=auth, body={"name": "x"}
        )
        assert reply.status == 401, (op.method, op.path)
        assert reply.error["code"] == "invalid_api_key"
        assert reply.error["type"] == "invalid_request_error"
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN[:8] not in reply.text
    assert await admin.store.list_keys() == []


async def test_the_bearer_scheme_is_case_insensitive(admin: RunningGateway) -> None:
    assert (await call(admin, "GET", "/keys", auth=f"bearer {TOKEN}")).status == 200


async def test_unknown_routes_and_methods_answer_in_openai_shape(admin: RunningGateway) -> None:
    missing = await call(admin, "GET", "/nowhere")
    assert missing.status == 404 and missing.error["code"] == "not_found"
    wrong = await call(admin, "DELETE", "/keys/key_nope")
    assert wrong.status == 405 and wrong.error["code"] == "method_not_allowed"
    assert set(wrong.headers["Allow"].split(",")) == {"GET", "PATCH"}


# -- keys -----------------------------------------------------------------------------------------


async def test_key_lifecycle_create_list_get_update_revoke(admin: RunningGateway) -> None:
    created = await call(
        admin,
        "POST",
        "/keys",
        body={"name": "alice", "models": ["gpt-realtime"], "budget_usd_day": "2.5"},
    )
    assert created.status == 201
    key = created.json()
    secret = key.pop("secret")
    assert secret.startswith(key["prefix"] + "_")
    assert created.headers["Cache-Control"] == "no-store"
    assert key["name"] == "alice" and key["active"] and key["revoked_at"] is None
    assert key["policy"]["models"] == ["gpt-realtime"]
    assert key["policy"]["budget_usd_day"] == "2.500000000"

    listed = await call(admin, "GET", "/keys")
    assert listed.status == 200 and listed.json() == [key]
    assert secret not in listed.text
    one = await call(admin, "GET", f"/keys/{key['id']}")
    assert one.status == 200 and one.json() == key

    # The secret it handed out opens a realtime session.
    ws = await open_session(admin, secret)
    await ws.close()

    patched = await call(
        admin,
        "PATCH",
        f"/keys/{key['id']}",
        body={"max_duration": "30m", "clear": ["budget_usd_day"], "voice": "marin"},
    )
    assert patched.status == 200
    policy = patched.json()["policy"]
    assert policy["max_duration_s"] == 1800.0 and policy["budget_usd_day"] is None
    assert policy["models"] == ["gpt-realtime"]
    assert policy["session_defaults"] == {"audio": {"output": {"voice": "marin"}}}
    assert (await call(admin, "GET", f"/keys/{key['id']}")).json()["policy"] == policy

    revoked = await call(admin, "POST", f"/keys/{key['id']}/revoke")
    assert revoked.status == 200
    assert revoked.json()["active"] is False and revoked.json()["revoked_at"]
    again = await call(admin, "POST", f"/keys/{key['id']}/revoke")
    assert again.status == 200 and again.json() == revoked.json()
    async with connect(
        f"{admin.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {secret}"},
    ) as refused:
        assert orjson.loads(await refused.recv())["error"]["code"] == "invalid_api_key"


async def test_a_policy_as_get_shows_it_can_be_put_back_edited(admin: RunningGateway) -> None:
    # A newcomer's find: GET shows max_duration_s, expires_at and session_defaults, which
    # PATCH refused as unknown, and a null there means "as it is", not "no limit".
    created = await call(
        admin,
        "POST",
        "/keys",
        body={
            "name": "round",
            "models": ["gpt-realtime", "whisper-1"],
            "max_sessions": 3,
            "budget_usd_month": "0",
            "max_duration": "30m",
            "expires": "2099-12-31T18:00:00Z",
            "instructions": "Be brief.",
            "voice": "marin",
            "turn_detection": {"type": "semantic_vad"},
            "blocked_events": ["session.update:instructions"],
            "keep_transcripts": True,
        },
    )
    key = created.json()
    path = f"/keys/{key['id']}/policy"
    same = await call(admin, "PUT", path, body=key["policy"])
    assert same.status == 200 and same.json()["policy"] == key["policy"]

    edited = {**key["policy"], "max_sessions": None, "max_duration_s": 60.0}
    edited["session_defaults"] = {"instructions": "Be kind."}
    put = await call(admin, "PUT", path, body=edited)
    assert put.status == 200
    policy = put.json()["policy"]
    assert policy["max_sessions"] is None and policy["max_duration_s"] == 60.0
    assert policy["session_defaults"] == {"instructions": "Be kind."}
    assert policy["budget_usd_month"] == "0.000000000"  # a $0 budget is kept as one
    assert policy["expires_at"] == "2099-12-31T18:00:00Z"
    # Durations as GET shows them, whatever their digits (a review's find: 1.1h read back as
    # 3960.0000000000005 s, which PUT refused; 0.55h is 1980.0000000000002 s in binary).
    patched = await call(admin, "PATCH", f"/keys/{key['id']}", body={"max_duration": "0.55h"})
    assert patched.status == 200, patched.text
    shown = (await call(admin, "GET", f"/keys/{key['id']}")).json()["policy"]
    assert shown["max_duration_s"] == 1980.0
    for seconds in (shown["max_duration_s"], 1234.567891234567):
        again = await call(admin, "PUT", path, body={**shown, "max_duration_s": seconds})
        assert again.status == 200, again.text
        assert again.json()["policy"]["max_duration_s"] == round(seconds, 6)
    # Null where GET shows a list or a flag: none, as for every other field.
    nulls = {"models": None, "blocked_events": None, "keep_transcripts": None}
    cleared = (await call(admin, "PUT", path, body=nulls)).json()["policy"]
    assert (cleared["models"], cleared["blocked_events"], cleared["keep_transcripts"]) == (
        [],
        [],
        False,
    )
    # Left out: no limit at all.
    assert (await call(admin, "PUT", path, body={})).json()["policy"] == {
        **{k: None for k in policy},
        "models": [],
        "blocked_events": [],
        "keep_transcripts": False,
    }
    for body, param in (
        ({"session_defaults": {"tools": []}}, "session_defaults"),
        ({"max_duration_s": 0}, "max_duration_s"),
        ({"models": ["gpt-realtim"]}, "models"),
        ({"max_duration": "30m"}, "max_duration"),  # PATCH's name, not the view's
    ):
        refused = await call(admin, "PUT", path, body=body)
        assert refused.status == 422 and refused.error["param"] == param, refused.text
    assert (await call(admin, "PUT", "/keys/key_nope/policy", body={})).status == 404


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/keys/key_nope", None),
        ("PATCH", "/keys/key_nope", {"max_sessions": 2}),
        ("POST", "/keys/key_nope/revoke", None),
    ],
)
async def test_unknown_key_ids_are_404(
    admin: RunningGateway, method: str, path: str, body: Any
) -> None:
    reply = await call(admin, method, path, body=body)
    assert reply.status == 404
    assert reply.error["code"] == "not_found" and reply.error["param"] == "key_id"


@pytest.mark.parametrize(
    ("raw", "status", "param"),
    [
        (b'{"budget_usd_day": 1}', 422, "name"),
        (b'{"name": ""}', 422, "name"),
        (b'{"name": "bell\\u0007"}', 422, "name"),
        (b'{"name": "x", "colour": "red"}', 422, "colour"),
        (b'{"name": "x", "max_duration": "forever"}', 422, "max_duration"),
        (b'{"name": "x", "expires": "someday"}', 422, "expires"),
        (b'{"name": "x", "budget_usd_day": -1}', 422, "budget_usd_day"),
        (b'{"name": "x", "budget_usd_day": "lots"}', 422, "budget_usd_day"),
        (b'{"name": "x", "keep_transcripts": 0}', 422, "keep_transcripts"),
        (b'{"name": "x", "max_sessions": "5"}', 422, "max_sessions"),
        (b'{"name": "x", "clear": ["everything"]}', 422, "clear.0"),
        # Values no stored policy can hold: refused, not stored wrong and not a 500.
        (b'{"name": "x", "max_sessions": 100000000000000000000}', 422, "max_sessions"),
        (b'{"name": "x", "budget_usd_total": "1e30"}', 422, "budget_usd_total"),
        (b'{"name": "x", "expires": "9999-12-31"}', 422, "expires"),
        # Neither an RFC 3339 date nor an RFC 3339 timestamp (which names its offset).
        (b'{"name": "x", "expires": "2030-06-30T10:00:00"}', 422, "expires"),
        (b'{"name": "x", "expires": "2030-W26-1"}', 422, "expires"),
        (b'{"name": "x", "expires": "20300630"}', 422, "expires"),
        (b'{"name": "x", "max_duration": "' + b"9" * 400 + b'"}', 422, "max_duration"),
        (b'["name"]', 422, None),
        (b"{nope", 400, None),
        (b"", 400, None),
    ],
)
async def test_invalid_new_keys_are_refused(
    admin: RunningGateway, raw: bytes, status: int, param: str | None
) -> None:
    reply = await call(admin, "POST", "/keys", raw=raw)
    assert reply.status == status, reply.text
    assert reply.error["type"] == "invalid_request_error"
    assert reply.error["code"] == ("invalid_json" if status == 400 else "invalid_request")
    assert reply.error["param"] == param
    assert await admin.store.list_keys() == []


async def test_a_body_over_the_http_cap_is_refused_with_413(admin: RunningGateway) -> None:
    body = orjson.dumps({"name": "x" * admin.settings.max_http_body_bytes})
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{admin.http}{PREFIX}/keys", data=io.BytesIO(body), headers=headers) as r,
    ):
        reply = Reply(r.status, r.headers, await r.text())
    assert reply.status == 413, reply.text
    assert reply.error["code"] == "request_too_large"
    assert await admin.store.list_keys() == []


@pytest.mark.parametrize("listing", ["/usage", "/sessions", "/client_secrets"])
async def test_a_listing_filtered_by_no_key_is_404(admin: RunningGateway, listing: str) -> None:
    reply = await call(admin, "GET", f"{listing}?key_id=alice")
    assert reply.status == 404 and reply.error["param"] == "key_id"
    key = (await call(admin, "POST", "/keys", body={"name": "alice"})).json()
    assert (await call(admin, "GET", f"{listing}?key_id={key['id']}")).status == 200


async def test_an_invalid_update_leaves_the_key_as_it_was(admin: RunningGateway) -> None:
    key = (await call(admin, "POST", "/keys", body={"name": "bob", "max_sessions": 3})).json()
    for body in (
        {"max_sessions": 0},
        {"name": "renamed"},
        {"max_duration": "1 week"},
        {"max_duration": "2h"},  # longer than the gateway's own cap (an hour)
        {"models": ["gpt-5"]},  # no model of this gateway's
    ):
        reply = await call(admin, "PATCH", f"/keys/{key['id']}", body=body)
        assert reply.status == 422, body
    for body in ({"name": "x", "models": ["gpt-5"]}, {"name": "x", "expires": "2020-01-01"}):
        refused = await call(admin, "POST", "/keys", body=body)
        assert refused.status == 422 and refused.error["param"] in ("models", "expires"), body
    bad_json = await call(admin, "PATCH", f"/keys/{key['id']}", raw=b"max_sessions=4")
    assert bad_json.status == 400
    # A body that is no object is told so as the /v1 routes tell it (a newcomer's find).
    listed = await call(admin, "PATCH", f"/keys/{key['id']}", raw=b'[{"max_sessions": 4}]')
    assert listed.status == 422
    assert listed.error["message"] == "The request body must be a JSON object, but got an array."
    assert listed.error["param"] is None
    now = (await call(admin, "GET", f"/keys/{key['id']}")).json()
    assert now["policy"] == key["policy"] and now["policy"]["max_sessions"] == 3


# -- usage and sessions ---------------------------------------------------------------------------


async def keys_with_usage(gw: RunningGateway) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two keys: alice with two metered responses in one session, bob with one."""
    alice = (await call(gw, "POST", "/keys", body={"name": "alice"})).json()
    bob = (await call(gw, "POST", "/keys", body={"name": "bob"})).json()
    async with await open_session(gw, alice["secret"]) as ws:
        await metered(ws, "resp_a1", text_in=100, audio_out=10)
        await metered(ws, "resp_a2", text_in=300)
    async with await open_session(gw, bob["secret"]) as ws:
        await metered(ws, "resp_b1", text_in=1000)
    await until_no_live_sessions(gw)
    return alice, bob


async def test_usage_as_json_and_as_csv(admin: RunningGateway) -> None:
    alice, bob = await keys_with_usage(admin)
    reply = await call(admin, "GET", "/usage")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/json")
    rows = {r["key_name"]: r for r in reply.json()}
    assert set(rows) == {"alice", "bob"}
    a = rows["alice"]
    assert (a["key_id"], a["model"], a["records"]) == (alice["id"], "gpt-realtime", 2)
    assert a["needs_review"] == 0
    assert a["tokens"] == {f: 0 for f in TOKEN_FIELDS} | {"text_in": 400, "audio_out": 10}
    # gpt-realtime: $4 / 1M text in, $64 / 1M audio out; no markup by default.
    cost = Decimal(400) * 4 / 10**6 + Decimal(10) * 64 / 10**6
    assert Decimal(a["cost_usd"]) == cost == Decimal(a["provider_cost_usd"])
    assert len(a["cost_usd"].split(".")[1]) == 9

    as_csv = await call(admin, "GET", "/usage", params={"format": "csv"})
    assert as_csv.status == 200 and as_csv.headers["Content-Type"].startswith("text/csv")
    table = list(csv.reader(io.StringIO(as_csv.text)))
    assert table[0] == [
        "key_id",
        "key_name",
        "model",
        "day",
        "unit",
        "records",
        "needs_review",
        *TOKEN_FIELDS,
        "audio_seconds",
        "cost_usd",
        "provider_cost_usd",
    ]
    assert tuple(table[0]) == USAGE_CSV_COLUMNS
    parsed = {r["key_name"]: r for r in csv.DictReader(io.StringIO(as_csv.text))}
    assert len(table) == 3 and set(parsed) == {"alice", "bob"}
    for name, row in parsed.items():
        js = rows[name]
        assert row == {
            **{k: str(v) for k, v in js.items() if k != "tokens"},
            **{k: str(v) for k, v in js["tokens"].items()},
        }

    only_bob = await call(admin, "GET", "/usage", params={"key_id": bob["id"]})
    assert [r["key_name"] for r in only_bob.json()] == ["bob"]
    day = a["day"]
    assert len((await call(admin, "GET", "/usage", params={"since": day})).json()) == 2
    later = await call(admin, "GET", "/usage", params={"since": "2999-01-01", "format": "csv"})
    assert list(csv.reader(io.StringIO(later.text))) == [list(USAGE_CSV_COLUMNS)]
    assert (await call(admin, "GET", "/usage", params={"key_id": "key_nope"})).status == 404


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"since": "2026-02-30"}, "since"),
        ({"since": "yesterday"}, "since"),
        ({"since": "20260101"}, "since"),
        ({"format": "xml"}, "format"),
    ],
)
async def test_invalid_usage_queries_are_422(
    admin: RunningGateway, params: dict[str, str], param: str
) -> None:
    reply = await call(admin, "GET", "/usage", params=params)
    assert reply.status == 422
    assert reply.error["param"] == param and reply.error["code"] == "invalid_request"
    assert "regex" not in reply.error["message"], reply.error["message"]


async def test_recent_sessions(admin: RunningGateway) -> None:
    alice, bob = await keys_with_usage(admin)
    assert bob["id"] != alice["id"]
    reply = await call(admin, "GET", "/sessions")
    assert reply.status == 200
    rows = reply.json()
    assert [r["key_name"] for r in rows] == ["bob", "alice"]  # newest first
    a = rows[1]
    assert a["key_id"] == alice["id"] and a["model"] == "gpt-realtime"
    assert a["upstream"] == "openai" and a["intent"] is None
    assert a["close_code"] == 1000 and a["closed_by"] == "client"
    assert a["ended_at"] and a["duration_s"] is not None and a["duration_s"] >= 0
    assert a["tokens"]["text_in"] == 400 and a["tokens"]["audio_out"] == 10
    assert Decimal(a["cost_usd"]) > 0
    limited = await call(admin, "GET", "/sessions", params={"limit": "1"})
    assert [r["key_name"] for r in limited.json()] == ["bob"]
    only_alice = await call(admin, "GET", "/sessions", params={"key_id": alice["id"]})
    assert [r["id"] for r in only_alice.json()] == [a["id"]]
    for bad in ("0", "1001", "ten", "-1"):
        refused = await call(admin, "GET", "/sessions", params={"limit": bad})
        assert refused.status == 422 and refused.error["param"] == "limit"


async def test_the_cli_and_the_api_render_the_same(admin: RunningGateway) -> None:
    alice, _ = await keys_with_usage(admin)
    await call(admin, "PATCH", f"/keys/{alice['id']}", body={"budget_usd_month": 10})

    def cli(*args: str) -> Any:
        result = CliRunner().invoke(cli_app, [*args, "--json"], env=cli_env(admin))
        assert result.exit_code == 0, result.output
        return orjson.loads(result.output)

    for args, path in (
        (("keys", "list"), "/keys"),
        (("usage",), "/usage"),
        (("sessions",), "/sessions"),
    ):
        printed = await asyncio.to_thread(cli, *args)
        assert printed == (await call(admin, "GET", path)).json(), args
        assert printed


async def test_failures_behind_the_api_answer_500_in_openai_shape(
    admin: RunningGateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def store_down(*_: Any) -> Any:
        raise StoreError("cannot read: OperationalError")

    async def bug(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(admin.store, "usage_summary", store_down)
    reply = await call(admin, "GET", "/usage")
    assert reply.status == 500 and reply.error["code"] == "store_unavailable"
    monkeypatch.setattr(admin.store, "recent_sessions", bug)
    reply = await call(admin, "GET", "/sessions")
    assert reply.status == 500 and reply.error["code"] == "server_error"
    assert "a bug" not in reply.text
    assert any(r.exc_info and "a bug" in str(r.exc_info[1]) for r in caplog.records)


# -- live sessions --------------------------------------------------------------------------------


async def test_a_forced_close_that_may_have_reached_the_wrong_worker_says_so(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any]
) -> None:
    """A newcomer's find: with --workers 2 and no Redis, a close that reached the other worker
    answered a bare 404, as if the session did not exist."""
    lone = await start_gateway(make_settings(RTGATE_ADMIN_TOKEN=TOKEN))
    reply = await call(lone, "POST", "/sessions/rs_elsewhere/close")
    assert reply.error["message"] == "No live session with id 'rs_elsewhere'."
    two = await start_gateway(make_settings(RTGATE_ADMIN_TOKEN=TOKEN, RTGATE_WORKERS="2"))
    reply = await call(two, "POST", "/sessions/rs_elsewhere/close")
    assert reply.status == 404 and reply.error["code"] == "not_found"
    assert "runs 2 workers without redis_url" in reply.error["message"]


async def test_live_sessions_and_a_forced_close(admin: RunningGateway) -> None:
    key = (await call(admin, "POST", "/keys", body={"name": "carol"})).json()
    assert (await call(admin, "GET", "/sessions/live")).json() == []
    ws = await open_session(admin, key["secret"])
    await metered(ws, "resp_1", text_in=250)

    live = (await call(admin, "GET", "/sessions/live")).json()
    assert len(live) == 1
    session = live[0]
    assert session["key_id"] == key["id"] and session["model"] == "gpt-realtime"
    assert session["upstream"] == "openai" and session["started_at"]
    assert session["tokens"]["text_in"] == 250
    assert Decimal(session["cost_usd"]) == Decimal(250) * 4 / 10**6

    closed = await call(admin, "POST", f"/sessions/{session['id']}/close")
    assert closed.status == 200
    assert closed.json() == {
        **session,
        "close_code": 1008,
        "close_reason": "invalid_request_error.session_closed_by_operator",
        "closed_by": "operator",
    }

    # What the client sees: OpenAI's error event, then close 1008 with "<type>.<code>".
    event = orjson.loads(await ws.recv())
    assert event["type"] == "error"
    assert event["error"]["code"] == "session_closed_by_operator"
    assert event["error"]["type"] == "invalid_request_error"
    with pytest.raises(websockets.ConnectionClosed):
        await ws.recv()
    assert ws.close_code == 1008
    assert ws.close_reason == "invalid_request_error.session_closed_by_operator"

    await until_no_live_sessions(admin)
    (recorded,) = (await call(admin, "GET", "/sessions")).json()
    assert recorded["id"] == session["id"] and recorded["close_code"] == 1008
    assert recorded["close_reason"] == "invalid_request_error.session_closed_by_operator"
    assert recorded["tokens"]["text_in"] == 250

    again = await call(admin, "POST", f"/sessions/{session['id']}/close")
    assert again.status == 404 and again.error["param"] == "session_id"


async def test_closing_an_unknown_session_is_404(admin: RunningGateway) -> None:
    reply = await call(admin, "POST", "/sessions/rs_nope/close")
    assert reply.status == 404 and reply.error["code"] == "not_found"


async def test_a_kept_transcript_is_read_back(admin: RunningGateway) -> None:
    created = (
        await call(admin, "POST", "/keys", body={"name": "scribe", "keep_transcripts": True})
    ).json()
    ws = await open_session(admin, created["secret"])
    async with ws:
        await ws.send(
            '{"type":"conversation.item.create","item":{"type":"message",'
            '"role":"user","content":[{"type":"input_text","text":"note this"}]}}'
        )
        await ws.send('{"type":"response.create","response":{"output_modalities":["text"]}}')
        await events_until(ws, "response.done")
    await until_no_live_sessions(admin)
    (session,) = (await call(admin, "GET", "/sessions")).json()
    reply = await call(admin, "GET", f"/sessions/{session['id']}/transcript")
    assert reply.status == 200
    lines = reply.json()
    assert [(e["role"], e["kind"], e["text"]) for e in lines[:2]] == [
        ("user", "text", "note this"),
        ("assistant", "text", "note this"),
    ]
    assert lines[2]["role"] == "usage" and lines[2]["data"]["output_tokens"] > 0
    missing = await call(admin, "GET", "/sessions/rs_nope/transcript")
    assert missing.status == 404 and missing.error["code"] == "not_found"


# -- the OpenAPI document -------------------------------------------------------------------------


async def test_the_openapi_document_describes_every_route(admin: RunningGateway) -> None:
    reply = await call(admin, "GET", "/openapi.json")
    assert reply.status == 200
    doc = reply.json()
    assert doc["openapi"] == "3.1.0"
    assert doc["components"]["securitySchemes"]["adminToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "The value of RTGATE_ADMIN_TOKEN.",
    }
    assert doc["security"] == [{"adminToken": []}]
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == {
        ("POST", "/admin/v1/keys"),
        ("GET", "/admin/v1/keys"),
        ("GET", "/admin/v1/spend"),
        ("GET", "/admin/v1/keys/{key_id}"),
        ("PATCH", "/admin/v1/keys/{key_id}"),
        ("PUT", "/admin/v1/keys/{key_id}/policy"),
        ("POST", "/admin/v1/keys/{key_id}/revoke"),
        ("GET", "/admin/v1/client_secrets"),
        ("POST", "/admin/v1/client_secrets/{secret_id}/revoke"),
        ("GET", "/admin/v1/usage"),
        ("GET", "/admin/v1/sessions"),
        ("GET", "/admin/v1/sessions/live"),
        ("GET", "/admin/v1/sessions/{session_id}"),
        ("GET", "/admin/v1/overview"),
        ("GET", "/admin/v1/models"),
        ("GET", "/admin/v1/upstreams"),
        ("POST", "/admin/v1/sessions/{session_id}/close"),
        ("GET", "/admin/v1/sessions/{session_id}/transcript"),
        ("POST", "/admin/v1/drain"),
        ("GET", "/admin/v1/openapi.json"),
    }
    schemas = doc["components"]["schemas"]
    for ops in doc["paths"].values():
        for op in ops.values():
            error = {"$ref": "#/components/schemas/ErrorResponse"}
            for status in ("401", "404", "500"):
                assert op["responses"][status]["content"]["application/json"]["schema"] == error
            if "requestBody" in op:
                assert {"400", "413", "422"} <= set(op["responses"])
    for ref in re.findall(r'"\$ref":"#/components/schemas/([^"]+)"', reply.text):
        assert ref in schemas
    create = doc["paths"]["/admin/v1/keys"]["post"]
    assert create["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/NewKeyView"
    }
    assert "name" in schemas["CreateKey"]["required"]
    usage = doc["paths"]["/admin/v1/usage"]["get"]
    assert {p["name"] for p in usage["parameters"]} == {"key_id", "since", "format"}
    assert set(usage["responses"]["200"]["content"]) == {"application/json", "text/csv"}
    # A forced close can fail for want of the other instances, not only of the store.
    close = doc["paths"]["/admin/v1/sessions/{session_id}/close"]["post"]
    assert "fleet_unavailable" in close["responses"]["500"]["description"]
    secrets = doc["paths"]["/admin/v1/client_secrets"]["get"]
    assert [p["name"] for p in secrets["parameters"]] == ["key_id"]
    assert "client secrets" in doc["info"]["description"]


async def test_expiry_is_a_date_or_a_timestamp_in_requests_and_a_timestamp_in_answers(
    admin: RunningGateway,
) -> None:
    schemas = (await call(admin, "GET", "/openapi.json")).json()["components"]["schemas"]
    day, moment = {"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}
    for request in ("CreateKey", "PolicyUpdate"):
        assert schemas[request]["properties"]["expires"]["anyOf"] == [day, moment, {"type": "null"}]
    # The format sits on the string, where tools and validators look, not beside the anyOf.
    for view in ("PolicyView", "ClientSecretView", "RevokedClientSecret"):
        assert schemas[view]["properties"]["expires_at"]["anyOf"] == [moment, {"type": "null"}]
    assert schemas["KeyView"]["properties"]["created_at"]["anyOf"] == [moment, {"type": "null"}]
    assert schemas["UsageRow"]["properties"]["day"] == day
    # What an answer says is what a request takes: the same moment, sent back.
    key = (await call(admin, "POST", "/keys", body={"name": "x", "expires": "2030-06-30"})).json()
    expires_at = key["policy"]["expires_at"]
    assert expires_at == "2030-07-01T00:00:00Z"
    path = f"/keys/{key['id']}"
    again = (await call(admin, "PATCH", path, body={"expires": expires_at})).json()
    assert again["policy"]["expires_at"] == expires_at
    offset = (
        await call(admin, "PATCH", path, body={"expires": "2030-07-01t02:00:00+02:00"})
    ).json()
    assert offset["policy"]["expires_at"] == expires_at
    # An expiry before 1970 is no plausible expiry (and one before year 1 cannot be shown).
    for early in ("1969-12-31", "0001-01-01T00:00:00+01:00"):
        refused = await call(admin, "PATCH", path, body={"expires": early})
        assert (refused.status, refused.error["param"]) == (422, "expires"), refused.text
    kept = (await call(admin, "GET", path)).json()
    assert kept["policy"]["expires_at"] == expires_at


async def test_schemathesis_finds_no_fault_in_the_documented_api(
    admin: RunningGateway, tmp_path: Path
) -> None:
    # A key with usage and a closed session, so the read routes return rows to check.
    await keys_with_usage(admin)
    doc = await call(admin, "GET", "/openapi.json")
    (tmp_path / "openapi.json").write_text(doc.text)
    checks = (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        # Input the document calls invalid is refused (422/400), never accepted.
        "negative_data_rejection",
        # Every operation refuses a request without the token.
        "ignored_auth",
        "unsupported_method",
        "allow_header_conformance",
        # Not ``positive_data_acceptance``: PolicyUpdate's schema admits values the API must
        # refuse with 422 (budget strings that are not numbers, integers past 64 bits).
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        str(tmp_path / "openapi.json"),
        "--url",
        admin.http,
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--checks",
        ",".join(checks),
        "--max-examples",
        "40",
        "--seed",
        "20260101",
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--no-color",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=300)
    report = out.decode()
    assert proc.returncode == 0, report
    n = len(OPERATIONS)
    assert re.search(rf"Operations:\s+{n} selected / {n} total", report), report
    assert re.search(rf"Tested:\s+{n}\b", report), report
    assert TOKEN not in report


async def ended_by_revocation(ws: Any) -> dict[str, Any]:
    """The error a session hears as its key's revocation ends it, once its socket has closed
    with 1008."""
    event = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 10)
    assert (ws.close_code, ws.close_reason) == (1008, "invalid_request_error.api_key_revoked")
    error: dict[str, Any] = event["error"]
    return error


async def test_revoking_a_key_ends_its_live_sessions_and_no_others(admin: RunningGateway) -> None:
    """A leaked key's sessions must not run on, metered, to their cap (a security audit found
    them untouched): the admin API's revocation ends them at once on its instance."""
    leaked = (await call(admin, "POST", "/keys", body={"name": "leaked"})).json()
    other = (await call(admin, "POST", "/keys", body={"name": "other"})).json()
    swept = (await call(admin, "POST", "/keys", body={"name": "swept"})).json()
    gone = await open_session(admin, leaked["secret"])
    kept = await open_session(admin, other["secret"])
    by_cli = await open_session(admin, swept["secret"])
    await metered(gone, "resp_before", text_in=10)
    ids = {s["key_id"]: s["id"] for s in (await call(admin, "GET", "/sessions/live")).json()}
    # Revoked where no instance heard (the CLI), and not swept yet when the API's comes.
    await admin.store.revoke_key(swept["id"], time.time())
    revoked = await call(admin, "POST", f"/keys/{leaked['id']}/revoke")
    assert revoked.status == 200 and revoked.json()["active"] is False
    assert (await ended_by_revocation(gone))["code"] == "api_key_revoked"
    assert (await ended_by_revocation(by_cli))["code"] == "api_key_revoked"
    # The answer names what it closed of this key's (an operator's find: it said nothing of
    # them; a review's: another key's ended in the same sweep were named too).
    assert revoked.json()["closed_sessions"] == [ids[leaked["id"]]]
    await metered(kept, "resp_other", text_in=10)  # another key's session goes on
    live = (await call(admin, "GET", "/sessions/live")).json()
    assert [s["key_id"] for s in live] == [other["id"]]
    await kept.close()


async def test_a_client_secret_revoked_by_the_cli_ends_its_sessions_within_the_check(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A newcomer's find: ``rtgate secrets revoke`` (straight in the store, no word to any
    instance) left the secret's live session running to its cap, where the admin API's revoke
    ends it at once."""
    monkeypatch.setattr(live_api, "REVOKED_KEY_CHECK_SECONDS", 0.2)
    gw = await start_gateway(make_settings())
    key = await gw.new_key("browser")
    minted = await mint(gw, key)
    leaked = await open_session(gw, minted)
    kept = await open_session(gw, key)
    result = await asyncio.to_thread(
        CliRunner().invoke, cli_app, ["secrets", "revoke", minted], env=cli_env(gw)
    )
    assert result.exit_code == 0 and result.output.startswith("Revoked cs_"), result.output
    asked = time.monotonic()
    event = orjson.loads(await asyncio.wait_for(leaked.recv(), 10))
    assert event["error"]["code"] == "client_secret_revoked"
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(leaked.recv(), 10)
    assert leaked.close_code == 1008
    assert time.monotonic() - asked < 5
    await metered(kept, "resp_kept", text_in=10)  # the key's own session goes on
    # A revocation stamped before the session opened (a CLI host's clock behind, a write that
    # waited on SQLite's lock while the session was admitted) is found too (a review's find).
    late = await mint(gw, key)
    raced = await open_session(gw, late)
    prefix = id_hash_prefix(secret_id_of(late))
    assert prefix is not None
    await gw.store.revoke_client_secret(prefix, time.time() - 60)
    event = orjson.loads(await asyncio.wait_for(raced.recv(), 10))
    assert event["error"]["code"] == "client_secret_revoked"
    await kept.close()


async def test_a_key_revoked_anywhere_ends_its_sessions_within_the_check(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Revoked by ``rtgate keys revoke`` or another instance (straight in the store, no word to
    this process): the instance's check of its sessions' keys ends them."""
    monkeypatch.setattr(live_api, "REVOKED_KEY_CHECK_SECONDS", 0.2)
    gw = await start_gateway(make_settings())
    secret = await gw.new_key("leaked")
    ws = await open_session(gw, secret)
    (key,) = await gw.store.list_keys()
    asked = time.monotonic()
    await gw.store.revoke_key(key.id, time.time())
    assert (await ended_by_revocation(ws))["message"] == "The API key of this session was revoked."
    assert time.monotonic() - asked < 5
