"""Live sessions across gateway instances (``rtgate.fleet``, ``rtgate.redis_fleet``): two real
gateways on one Redis, each listing and ending the other's sessions through its admin API.

Tests marked ``redis`` need ``RTGATE_TEST_REDIS_URL`` (``make test-redis``) and use a namespace of
their own; the message rules and the outage behaviour need no server and always run.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
import psutil
import pytest
import websockets
from redis.asyncio import Redis

from rtgate.api.live import HeldSessions
from rtgate.auth.client_secrets import secret_id_of
from rtgate.clock import SystemClock
from rtgate.config import Settings
from rtgate.fleet import Answer, Answers, Command, LoneInstance, Tally
from rtgate.redis_fleet import LISTING_TTL_S, RedisFleet
from rtgate.relay.endpoint import GATEWAY
from tests.conftest import RunningGateway
from tests.test_admin_api import TOKEN, call, metered, open_session
from tests.test_client_secret_control import sdk

REDIS_URL = os.environ.get("RTGATE_TEST_REDIS_URL", "")
#: Nothing listens here: connections are refused at once.
DEAD_REDIS = "redis://127.0.0.1:1/0"


# -- messages and the tally (pure) ----------------------------------------------------------------


def test_commands_and_answers_survive_the_wire() -> None:
    command = Command("revoke", "cs_" + "a" * 20, "req1", "inst_aaaaaaaaaaaa")
    assert Command.decode(command.encode()) == command
    view = orjson.dumps({"id": "rs_1", "tokens": {"text_in": 3}})
    answer = Answer("req1", "inst_bbbbbbbbbbbb", (view,))
    decoded = Answer.decode(answer.encode())
    assert decoded is not None and decoded.closed == (view,)
    assert decoded == answer
    assert Answer.decode(Answer("req1", "inst_b").encode()) == Answer("req1", "inst_b", ())


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[1, 2]",
        b'{"op": "delete", "target": "x", "request": "r", "origin": "o"}',
        b'{"op": "close", "target": 7, "request": "r", "origin": "o"}',
        b'{"op": "close", "request": "r", "origin": "o"}',
    ],
)
def test_what_is_not_a_command_is_ignored(data: bytes) -> None:
    assert Command.decode(data) is None


@pytest.mark.parametrize(
    "data",
    [
        b"\xff",
        b'{"request": "r", "instance": "i"}',
        b'{"request": "r", "instance": "i", "closed": ["rs_1"]}',
        b'{"request": 1, "instance": "i", "closed": []}',
    ],
)
def test_what_is_not_an_answer_is_ignored(data: bytes) -> None:
    assert Answer.decode(data) is None


def test_a_close_settles_at_the_first_closed_session() -> None:
    tally = Tally("close")
    tally.add(Answer("r", "inst_a"))
    assert not tally.settled  # how many it reached is not known yet
    tally.add(Answer("r", "inst_b", (b'{"id":"rs_1"}',)))
    assert tally.settled  # a session runs on one instance: no need to hear the third
    assert tally.outcome() == Answers((b'{"id":"rs_1"}',), reached=0, answered=2)


def test_a_revocation_settles_when_every_instance_reached_has_answered() -> None:
    tally = Tally("revoke")
    tally.add(Answer("r", "inst_a", (b'{"id":"rs_1"}',)))
    tally.add(Answer("r", "inst_a", (b'{"id":"rs_1"}',)))  # a duplicate counts once
    tally.reached = 3
    assert not tally.settled
    tally.add(Answer("r", "inst_b"))
    assert not tally.settled
    assert tally.outcome().silent == 1
    tally.add(Answer("r", "inst_c", (b'{"id":"rs_2"}',)))
    assert tally.settled
    outcome = tally.outcome()
    assert outcome.closed == (b'{"id":"rs_1"}', b'{"id":"rs_2"}')
    assert (outcome.reached, outcome.answered, outcome.silent) == (3, 3, 0)


async def test_a_lone_instance_has_nothing_elsewhere() -> None:
    alone = LoneInstance()
    assert alone.instance.startswith("inst_") and len(alone.instance) == 17
    assert alone.instance != LoneInstance().instance
    assert await alone.sessions_elsewhere() == []
    assert await alone.ask("close", "rs_1") == Answers()


# -- Redis unreachable: the local path goes on (no server needed) -------------------------------


async def test_without_redis_the_admin_api_still_lists_and_ends_local_sessions(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw: RunningGateway = await start_gateway(make_settings(RTGATE_ADMIN_TOKEN=TOKEN))
    # The gateway's fleet on a Redis that refuses every connection, as in an outage.
    dead = RedisFleet.from_url(DEAD_REDIS, SystemClock(), answer_within=0.2)
    gw.app[GATEWAY].fleet = dead
    try:
        await dead.start(HeldSessions(gw.app[GATEWAY]))
        async with sdk(gw, await gw.new_key()) as client:
            secret = (await client.realtime.client_secrets.create()).value
        ws = await open_session(gw, secret)

        (listed,) = (await call(gw, "GET", "/sessions/live")).json()
        assert listed["instance"] == dead.instance
        assert "live sessions of other instances not listed" in caplog.text

        # Elsewhere cannot be asked: said so, never answered as if no instance held it.
        unknown = await call(gw, "POST", "/sessions/rs_elsewhere/close")
        assert unknown.status == 500 and unknown.error["code"] == "fleet_unavailable"

        # A revocation still revokes the secret and ends what it opened here.
        revoked = await call(gw, "POST", f"/client_secrets/{secret_id_of(secret)}/revoke")
        assert revoked.status == 200 and revoked.json()["closed_sessions"] == [listed["id"]]
        assert await closed_with(ws) == ("client_secret_revoked", 1008)
        assert "its sessions on other instances not closed" in caplog.text
    finally:
        await dead.close()


async def closed_with(ws: Any) -> tuple[str, int | None]:
    """The error code a session was ended with (after any ``session.updated``), and the close."""
    event = orjson.loads(await ws.recv())
    while event["type"] == "session.updated":
        event = orjson.loads(await ws.recv())
    assert event["type"] == "error", event
    with pytest.raises(websockets.ConnectionClosed):
        await ws.recv()
    return event["error"]["code"], ws.close_code


# -- two gateways, one Redis --------------------------------------------------------------------


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    ns = f"rtgate-test:{uuid.uuid4().hex}:"
    yield ns
    if REDIS_URL:
        redis = Redis.from_url(REDIS_URL)
        keys = [k async for k in redis.scan_iter(match=f"{ns}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


@pytest.fixture
async def pair(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    namespace: str,
    tmp_path: Any,
) -> tuple[RunningGateway, RunningGateway]:
    """Gateways A and B: one store, one Redis namespace, one admin token."""
    shared = {
        "RTGATE_REDIS_URL": REDIS_URL,
        "RTGATE_REDIS_PREFIX": namespace,
        "RTGATE_ADMIN_TOKEN": TOKEN,
    }
    a: RunningGateway = await start_gateway(make_settings(**shared))
    b: RunningGateway = await start_gateway(
        make_settings(RTGATE_HOME=str(tmp_path / "home-b"), **shared)
    )
    return a, b


def instance(gw: RunningGateway) -> str:
    return gw.app[GATEWAY].fleet.instance


async def listed_until(
    gw: RunningGateway, wanted: Callable[[list[dict[str, Any]]], bool], seconds: float = 5.0
) -> list[dict[str, Any]]:
    """``gw``'s live list once ``wanted`` holds for it (other instances publish every second)."""
    deadline = time.monotonic() + seconds
    while True:
        live: list[dict[str, Any]] = (await call(gw, "GET", "/sessions/live")).json()
        if wanted(live):
            return live
        if time.monotonic() > deadline:
            raise AssertionError(f"not listed as wanted within {seconds} s: {live}")
        await asyncio.sleep(0.05)


@pytest.mark.redis
async def test_a_session_on_b_is_listed_and_closed_through_a(
    pair: tuple[RunningGateway, RunningGateway],
) -> None:
    a, b = pair
    assert isinstance(a.app[GATEWAY].fleet, RedisFleet) and instance(a) != instance(b)
    on_a = await open_session(a, await a.new_key("here"))
    on_b = await open_session(b, await b.new_key("there"))
    await metered(on_b, "resp_b1", text_in=250)

    # A lists its own session at once, and B's with its usage so far, at most a second late.
    live = await listed_until(
        a, lambda live: any(s["instance"] == instance(b) and s["tokens"]["text_in"] for s in live)
    )
    assert [s["instance"] for s in live] == [instance(a), instance(b)]  # by start
    remote = live[1]
    assert remote["tokens"]["text_in"] == 250 and remote["cost_usd"] == "0.001000000"
    mine = (await call(b, "GET", "/sessions/live")).json()
    assert {s["id"] for s in mine} == {s["id"] for s in live}

    closed = await call(a, "POST", f"/sessions/{remote['id']}/close")
    assert closed.status == 200, closed.text
    assert closed.json() == {
        **remote,
        "close_code": 1008,
        "close_reason": "invalid_request_error.session_closed_by_operator",
        "closed_by": "operator",
    }
    assert await closed_with(on_b) == ("session_closed_by_operator", 1008)
    assert on_b.close_reason == "invalid_request_error.session_closed_by_operator"

    # The session's row ends, and the next listing no longer shows it.
    await listed_until(a, lambda live: [s["instance"] for s in live] == [instance(a)])
    for _ in range(100):
        rows = {r["id"]: r for r in (await call(a, "GET", "/sessions")).json()}
        if rows[remote["id"]]["ended_at"]:
            break
        await asyncio.sleep(0.05)
    row = rows[remote["id"]]
    assert row["close_code"] == 1008 and row["closed_by"] == "operator"
    assert row["tokens"]["text_in"] == 250

    again = await call(a, "POST", f"/sessions/{remote['id']}/close")
    assert again.status == 404 and again.error["param"] == "session_id"
    await on_a.close()


@pytest.mark.redis
async def test_an_id_no_instance_holds_is_404_once_all_have_answered(
    pair: tuple[RunningGateway, RunningGateway],
) -> None:
    a, _ = pair
    started = time.monotonic()
    reply = await call(a, "POST", "/sessions/rs_nowhere/close")
    assert reply.status == 404 and reply.error["code"] == "not_found"
    assert reply.error["message"] == "No live session with id 'rs_nowhere'."
    assert time.monotonic() - started < 2  # every instance said no: the 5 s bound is not waited


@pytest.mark.redis
async def test_revoking_a_secret_through_a_ends_its_sessions_on_both(
    pair: tuple[RunningGateway, RunningGateway],
) -> None:
    a, b = pair
    async with sdk(a, await a.new_key()) as client:
        leaked = (await client.realtime.client_secrets.create()).value
        kept = (await client.realtime.client_secrets.create()).value
    on_a, on_b, bystander = (
        await open_session(a, leaked),
        await open_session(b, leaked),
        await open_session(b, kept),
    )
    live = await listed_until(a, lambda live: len(live) == 3)
    opened = {s["id"] for s in live if s["client_secret_id"] == secret_id_of(leaked)}
    assert {s["instance"] for s in live if s["id"] in opened} == {instance(a), instance(b)}

    revoked = await call(a, "POST", f"/client_secrets/{secret_id_of(leaked)}/revoke")
    assert revoked.status == 200, revoked.text
    assert set(revoked.json()["closed_sessions"]) == opened
    assert len(revoked.json()["closed_sessions"]) == 2
    for ws in (on_a, on_b):
        assert await closed_with(ws) == ("client_secret_revoked", 1008)

    # The other secret's session goes on, on B, and is still listed by A.
    (left,) = await listed_until(a, lambda live: len(live) == 1)
    assert left["client_secret_id"] == secret_id_of(kept) and left["instance"] == instance(b)
    await metered(bystander, "resp_k1", text_in=1)
    await bystander.close()


@pytest.mark.redis
async def test_a_dead_instances_sessions_vanish_after_the_ttl(
    pair: tuple[RunningGateway, RunningGateway], namespace: str
) -> None:
    a, b = pair
    ws = await open_session(b, await b.new_key())
    (remote,) = await listed_until(a, lambda live: len(live) == 1)
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        listing = f"{namespace}fleet:live:{instance(b)}"
        assert 0 < await redis.pttl(listing) <= LISTING_TTL_S * 1000
        assert set(await redis.hkeys(listing)) == {remote["id"]}
    finally:
        await redis.aclose()

    fleet = b.app[GATEWAY].fleet
    assert isinstance(fleet, RedisFleet)
    await fleet.stop()  # as if B died: no more writes, its session still runs
    stopped = time.monotonic()
    assert [s["id"] for s in (await call(a, "GET", "/sessions/live")).json()] == [remote["id"]]
    await listed_until(a, lambda live: live == [], seconds=LISTING_TTL_S + 2)
    assert time.monotonic() - stopped <= LISTING_TTL_S + 0.5
    assert remote["id"] in b.app[GATEWAY].live
    await ws.close()


@pytest.mark.redis
async def test_after_a_redis_hiccup_listing_and_closing_resume(
    pair: tuple[RunningGateway, RunningGateway], namespace: str
) -> None:
    a, b = pair
    ws = await open_session(b, await b.new_key())
    await listed_until(a, lambda live: len(live) == 1)
    redis = Redis.from_url(REDIS_URL)
    try:
        # Every connection this process holds to Redis is dropped under it (the gateways'
        # subscriptions included); the clients re-dial and subscribe again.
        port = urlsplit(REDIS_URL).port or 6379
        ours = {
            f"{c.laddr.ip}:{c.laddr.port}"
            for c in psutil.Process().net_connections("tcp")
            if c.raddr and c.raddr.port == port
        }
        dropped = 0
        for client in await redis.client_list():
            if client["addr"] in ours:
                dropped += await redis.client_kill_filter(_id=client["id"], skipme=True)
        assert dropped >= 4  # each gateway's subscription and its other connections
        commands = f"{namespace}fleet:commands"
        for _ in range(100):
            if dict(await redis.pubsub_numsub(commands))[commands.encode()] == 2:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the gateways did not subscribe again")
    finally:
        await redis.aclose()

    (again,) = await listed_until(a, lambda live: len(live) == 1)
    closed = await call(a, "POST", f"/sessions/{again['id']}/close")
    assert closed.status == 200, closed.text
    assert await closed_with(ws) == ("session_closed_by_operator", 1008)
