"""Session limits shared through Redis: two limiters (or two gateways) stand for two instances.

Tests marked ``redis`` need the server named by ``RTGATE_TEST_REDIS_URL``: ``make test-redis``
sets it and runs them (CI does), ``make test`` leaves them out (``-m "not redis"``), and run
without it they fail saying so (``tests/conftest.py``). Each uses a namespace of its own. An
outage longer than a lease is a ``Cable`` to that server cut while an injected clock moves past
the lease. The start-up tests and the outage test on a dead port need no server and always run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import websockets
from redis.asyncio import Redis
from redis.exceptions import RedisError
from websockets.asyncio.client import connect

from rtgate.auth.limits import LocalSessionLimiter, SessionLimiter
from rtgate.auth.policy import KeyPolicy, PolicyUpdate, apply_update
from rtgate.auth.redis_limits import RedisSessionLimiter
from rtgate.clock import ManualClock
from rtgate.config import Settings, load_settings
from rtgate.errors import ConfigError, LimiterUnavailable, RateLimited
from rtgate.redis_pool import MAX_CONNECTIONS
from rtgate.relay.endpoint import GATEWAY
from tests.conftest import RunningGateway

REDIS_URL = os.environ.get("RTGATE_TEST_REDIS_URL", "")
ONE_LIVE = "This key already has 1 live session, its limit is 1."
TWO_LIVE = "This key already has 2 live sessions, its limit is 2."
#: Nothing listens here: connections are refused at once.
DEAD_REDIS = "redis://127.0.0.1:1/0"

MakeLimiter = Callable[..., Awaitable[RedisSessionLimiter]]


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
async def limiters(namespace: str) -> AsyncIterator[MakeLimiter]:
    made: list[RedisSessionLimiter] = []

    async def make(clock: ManualClock, url: str = REDIS_URL, **options: Any) -> RedisSessionLimiter:
        limiter = await RedisSessionLimiter.connect(url, clock, prefix=namespace, **options)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.close()


async def outcome(
    limiter: SessionLimiter,
    key_id: str,
    max_sessions: int | None,
    per_minute: int | None,
    now: float,
) -> str:
    """``admitted``, or the refusal's message."""
    try:
        await limiter.acquire(key_id, max_sessions, per_minute, now)
    except RateLimited as err:
        return err.message
    return "admitted"


class Cable:
    """A TCP relay to the test Redis that a test cuts, stalls and mends, as a network would.

    Cut, it drops every connection through it and hangs up on new ones at once, so clients see
    an outage without waiting out a timeout; ``refused`` counts the connections it hung up on.
    Stalled, it holds what clients send on the connections open at that moment (``held`` is set
    once something waits) while new connections pass: two commands then reach Redis in the
    order a test chooses.
    """

    def __init__(self) -> None:
        self._target = urlsplit(REDIS_URL)
        self.url = ""
        self.refused = 0
        self.held = asyncio.Event()
        self._cut = False
        self._open: set[asyncio.StreamWriter] = set()
        #: The Redis side of each open connection: what ``stall`` holds is bound there.
        self._to_redis: set[asyncio.StreamWriter] = set()
        self._stalled: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None

    @classmethod
    async def laid(cls) -> Cable:
        cable = cls()
        cable._server = await asyncio.start_server(cable._serve, "127.0.0.1", 0)
        port = cable._server.sockets[0].getsockname()[1]
        userinfo, _, _ = cable._target.netloc.rpartition("@")
        netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
        cable.url = cable._target._replace(netloc=netloc).geturl()
        return cable

    def cut(self) -> None:
        self._cut = True
        for writer in list(self._open):
            writer.transport.abort()

    def mend(self) -> None:
        self._cut = False

    def stall(self) -> None:
        self._stalled = set(self._to_redis)
        self._flowing.clear()

    def unstall(self) -> None:
        self._stalled = set()
        self._flowing.set()

    async def close(self) -> None:
        self.unstall()
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._cut:
            self.refused += 1
            client_w.close()
            return
        redis_r, redis_w = await asyncio.open_connection(
            self._target.hostname, self._target.port or 6379
        )
        self._open |= {client_w, redis_w}
        self._to_redis.add(redis_w)
        await asyncio.gather(self._pump(client_r, redis_w), self._pump(redis_r, client_w))

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                while sink in self._stalled:
                    self.held.set()
                    await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        sink.close()
        self._open.discard(sink)
        self._to_redis.discard(sink)


@pytest.fixture
async def cable() -> AsyncIterator[Cable]:
    laid = await Cable.laid()
    yield laid
    await laid.close()


# -- two instances, one Redis ------------------------------------------------------------------


@pytest.mark.redis
async def test_a_burst_across_two_instances_admits_exactly_the_limit(
    limiters: MakeLimiter,
) -> None:
    clock = ManualClock()
    a, b = await limiters(clock), await limiters(clock)

    async def attempt(limiter: RedisSessionLimiter) -> tuple[RedisSessionLimiter, str]:
        return limiter, await outcome(limiter, "key_burst", 5, None, clock.now())

    results = await asyncio.gather(*(attempt(a if i % 2 else b) for i in range(40)))
    admitted = [lim for lim, said in results if said == "admitted"]
    assert len(admitted) == 5
    assert {said for _, said in results if said != "admitted"} == {
        "This key already has 5 live sessions, its limit is 5."
    }
    assert await a.live("key_burst") == await b.live("key_burst") == 5

    # Releases free slots, whichever instance admitted the session.
    await admitted[0].release("key_burst")
    await admitted[1].release("key_burst")
    assert await b.live("key_burst") == 3
    again = await asyncio.gather(*(attempt(a if i % 2 else b) for i in range(10)))
    assert sum(said == "admitted" for _, said in again) == 2
    assert await a.live("key_burst") == 5


async def scripted_rate_outcomes(limiters: list[SessionLimiter], clock: ManualClock) -> list[str]:
    """A per-minute limit of 3 met by sessions arriving at ``limiters`` in turn."""
    seen = []
    for i in range(4):
        seen.append(await outcome(limiters[i % len(limiters)], "key_k", None, 3, clock.now()))
    for lim in limiters:
        for _ in range(2):
            await lim.release("key_k")  # ending sessions does not give back starts
    clock.advance(30)
    seen.append(await outcome(limiters[0], "key_k", None, 3, clock.now()))
    clock.advance(30)
    for i in range(4):
        seen.append(await outcome(limiters[-1 - i % len(limiters)], "key_k", None, 3, clock.now()))
    return seen


@pytest.mark.redis
async def test_sessions_per_minute_is_one_sliding_window_across_instances(
    limiters: MakeLimiter,
) -> None:
    clock = ManualClock()
    a, b = await limiters(clock), await limiters(clock)
    shared = await scripted_rate_outcomes([a, b], clock)
    refused = "This key may open 3 sessions per minute; try again in {} s."
    assert shared == [
        *["admitted"] * 3,
        refused.format(60),
        refused.format(30),
        *["admitted"] * 3,
        refused.format(60),
    ]
    # The same words, and the same decisions, as one process's own limiter.
    local = await scripted_rate_outcomes([LocalSessionLimiter()], ManualClock())
    assert shared == local


@pytest.mark.redis
async def test_a_crashed_instance_leases_lapse_after_the_ttl(
    limiters: MakeLimiter, namespace: str
) -> None:
    clock = ManualClock()
    a = await limiters(clock, lease_ttl=30.0, refresh_every=0.01)
    b = await limiters(clock, lease_ttl=30.0)
    a.start()
    await a.acquire("key_k", 1, None, clock.now())
    assert await outcome(b, "key_k", 1, None, clock.now()) == ONE_LIVE

    # While its refresher runs, a's lease outlives the TTL.
    leases = f"{namespace}{{key_k}}:leases"
    redis = Redis.from_url(REDIS_URL)
    try:
        for _ in range(3):
            clock.advance(20)
            for _ in range(200):  # until the refresher has written the new expiry
                (lease,) = await redis.zrange(leases, 0, -1, withscores=True)
                if lease[1] >= clock.now() + 29:
                    break
                await asyncio.sleep(0.01)
            assert await outcome(b, "key_k", 1, None, clock.now()) == ONE_LIVE
    finally:
        await redis.aclose()

    await a.stop()  # a crash: no release, no more refreshes
    clock.advance(29)
    assert await outcome(b, "key_k", 1, None, clock.now()) == ONE_LIVE
    clock.advance(2)
    assert await outcome(b, "key_k", 1, None, clock.now()) == "admitted"
    assert await a.live("key_k") == 1  # b's session only


@pytest.mark.redis
@pytest.mark.parametrize("writer", ["refresh", "admission"])
async def test_a_lease_released_while_a_command_writes_it_back_stays_released(
    cable: Cable, limiters: MakeLimiter, writer: str
) -> None:
    """A refresh, and after an outage an admission of a key with ``max_sessions``, write this
    instance's leases; a release whose ``ZREM`` reaches Redis first must not be undone by them."""
    clock = ManualClock()
    a = await limiters(clock, url=cable.url)
    for _ in range(2):
        await a.acquire("key_k", 5, None, clock.now())
    cable.cut()
    with pytest.raises(LimiterUnavailable):  # until a refresh gets through, leases are in doubt
        await a.acquire("key_k", 5, None, clock.now())
    cable.mend()
    assert await a.live("key_k") == 2  # one pooled connection, idle again
    cable.stall()
    writing = asyncio.create_task(
        a.refresh() if writer == "refresh" else a.acquire("key_k", 5, None, clock.now())
    )
    await cable.held.wait()  # the write names both leases and waits on the stalled connection
    await a.release("key_k")  # its ZREM dials a new connection and reaches Redis first
    cable.unstall()
    await writing
    assert await a.live("key_k") == (1 if writer == "refresh" else 2)


# -- outages longer than a lease -----------------------------------------------------------------


@pytest.mark.redis
async def test_live_sessions_still_count_when_redis_answers_after_their_leases_lapsed(
    cable: Cable, limiters: MakeLimiter
) -> None:
    clock = ManualClock()
    a = await limiters(clock, url=cable.url)
    for _ in range(2):
        await a.acquire("key_k", 2, None, clock.now())

    cable.cut()
    clock.advance(31)  # past the 30 s lease: nothing could refresh it
    with pytest.raises(LimiterUnavailable):
        await a.acquire("key_k", 2, None, clock.now())
    with pytest.raises(RedisError):
        await a.refresh()
    cable.mend()

    # The first command to reach Redis again is an admission: it counts the two live sessions.
    assert await outcome(a, "key_k", 2, None, clock.now()) == TWO_LIVE
    assert await a.live("key_k") == 2
    await a.release("key_k")  # sessions that outlived the outage end as usual
    assert await outcome(a, "key_k", 2, None, clock.now()) == "admitted"
    assert await outcome(a, "key_k", 2, None, clock.now()) == TWO_LIVE


@pytest.mark.redis
async def test_an_instance_counts_its_sessions_when_another_reaches_redis_first(
    cable: Cable, limiters: MakeLimiter
) -> None:
    clock = ManualClock()
    a, b = await limiters(clock, url=cable.url), await limiters(clock, url=cable.url)
    for _ in range(2):
        await a.acquire("key_k", 2, None, clock.now())

    cable.cut()
    clock.advance(31)
    for limiter in (a, b):
        with pytest.raises(LimiterUnavailable):
            await limiter.acquire("key_k", 2, None, clock.now())
    cable.mend()

    # b reaches Redis before a has written its leases back: to b they lapsed, as on a crash
    # (the window README.md bounds).
    assert await outcome(b, "key_k", 2, None, clock.now()) == "admitted"
    # a writes its two back before counting: over the limit now, and nothing more is admitted.
    over = "This key already has 3 live sessions, its limit is 2."
    assert await outcome(a, "key_k", 2, None, clock.now()) == over
    assert await outcome(b, "key_k", 2, None, clock.now()) == over
    assert await b.live("key_k") == 3


@pytest.mark.redis
async def test_after_an_outage_the_refresher_writes_the_leases_back_within_a_retry(
    cable: Cable, limiters: MakeLimiter
) -> None:
    clock = ManualClock()
    # Cut off alone (b still reaches Redis); a's regular refresh never comes during the test.
    a = await limiters(clock, url=cable.url, refresh_every=60.0, retry_every=0.01)
    b = await limiters(clock)
    for _ in range(2):
        await a.acquire("key_k", 2, None, clock.now())
    a.start()

    cable.cut()
    clock.advance(31)
    with pytest.raises(LimiterUnavailable):  # a failed command: a retries every 0.01 s now
        await a.acquire("key_k", 2, None, clock.now())
    assert await b.live("key_k") == 0  # to b, a's sessions lapsed as on a crash
    for _ in range(200):
        if cable.refused >= 3:
            break
        await asyncio.sleep(0.01)
    assert cable.refused >= 3
    cable.mend()

    for _ in range(200):  # a's next retry writes them back
        if await b.live("key_k") == 2:
            break
        await asyncio.sleep(0.01)
    assert await outcome(b, "key_k", 2, None, clock.now()) == TWO_LIVE


@pytest.mark.redis
async def test_keys_are_namespaced_and_expire_when_idle(
    limiters: MakeLimiter, namespace: str
) -> None:
    clock = ManualClock()
    a = await limiters(clock)
    await a.acquire("key_k", 2, 10, clock.now())
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        keys = sorted([k async for k in redis.scan_iter(match=f"{namespace}*")])
        assert keys == [f"{namespace}{{key_k}}:leases", f"{namespace}{{key_k}}:starts"]
        assert 0 < await redis.pttl(keys[0]) <= 60_000
        assert 60_000 < await redis.pttl(keys[1]) <= 90_000
    finally:
        await redis.aclose()


# -- start-up and outages (no server needed) -----------------------------------------------------


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RTGATE_REDIS_URL": "http://127.0.0.1:6379"}, "redis_url"),
        ({"RTGATE_REDIS_URL": "redis://h", "RTGATE_REDIS_PREFIX": "rt{x}:"}, "redis_prefix"),
    ],
)
def test_a_malformed_redis_setting_is_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(None, env)


async def test_an_unreachable_redis_stops_start_up_naming_the_setting(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any]
) -> None:
    with pytest.raises(ConfigError, match=r"^redis_url: Redis does not answer at start-up"):
        await start_gateway(make_settings(RTGATE_REDIS_URL=DEAD_REDIS))


async def test_an_outage_refuses_limited_keys_and_admits_unlimited_ones() -> None:
    clock = ManualClock()
    limiter = RedisSessionLimiter(Redis.from_url(DEAD_REDIS), clock)
    try:
        with pytest.raises(LimiterUnavailable) as refused:
            await limiter.acquire("key_limited", 5, None, clock.now())
        assert (refused.value.code, refused.value.close_code) == ("limiter_unavailable", 1011)
        assert refused.value.http_status == 503
        with pytest.raises(LimiterUnavailable):
            await limiter.acquire("key_limited", None, 60, clock.now())
        await limiter.acquire("key_free", None, None, clock.now())  # nothing to enforce
        await limiter.release("key_free")
        await limiter.release("key_limited")  # never raises
        with pytest.raises(LimiterUnavailable):
            await limiter.live("key_free")
    finally:
        await limiter.close()


# -- two gateways, one Redis -------------------------------------------------------------------


async def first_event(gw: RunningGateway, key: str) -> tuple[Any, dict[str, Any]]:
    ws = await connect(
        f"{gw.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
    )
    return ws, orjson.loads(await ws.recv())


@pytest.mark.redis
async def test_a_session_on_one_gateway_counts_on_the_other(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    namespace: str,
    tmp_path: Any,
) -> None:
    shared = {"RTGATE_REDIS_URL": REDIS_URL, "RTGATE_REDIS_PREFIX": namespace}
    gw_a: RunningGateway = await start_gateway(make_settings(**shared))
    gw_b: RunningGateway = await start_gateway(
        make_settings(RTGATE_HOME=str(tmp_path / "home-b"), **shared)
    )
    assert isinstance(gw_b.app[GATEWAY].limiter, RedisSessionLimiter)
    policy = apply_update(KeyPolicy(), PolicyUpdate(max_sessions=1))
    info, key = await gw_a.app[GATEWAY].keyring.create("one-at-a-time", policy)

    on_a, event = await first_event(gw_a, key)
    assert event["type"] == "session.created"
    refused, event = await first_event(gw_b, key)
    assert event["error"]["code"] == "rate_limit_exceeded"
    with pytest.raises(websockets.ConnectionClosed):
        await refused.recv()
    assert refused.close_code == 3000

    await on_a.close()
    for _ in range(200):  # the gateway releases the slot once it has seen the close
        if await gw_b.app[GATEWAY].limiter.live(info.id) == 0:
            break
        await asyncio.sleep(0.01)
    on_b, event = await first_event(gw_b, key)
    assert event["type"] == "session.created"
    await on_b.close()


@pytest.mark.redis
async def test_a_start_up_that_fails_after_redis_leaves_no_redis_connection(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    namespace: str,
    tmp_path: Path,
) -> None:
    watcher = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        before = len(await watcher.client_list())
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        settings = make_settings(
            RTGATE_REDIS_URL=REDIS_URL,
            RTGATE_REDIS_PREFIX=namespace,
            # The database cannot open: its directory is a file.
            RTGATE_DATABASE_URL=f"sqlite:///{blocker}/rtgate.db",
        )
        with pytest.raises(Exception, match="database"):
            await start_gateway(settings)
        for _ in range(50):
            if len(await watcher.client_list()) <= before:
                break
            await asyncio.sleep(0.02)
        assert len(await watcher.client_list()) <= before
    finally:
        await watcher.aclose()


@pytest.mark.redis
async def test_a_burst_larger_than_the_connection_pool_queues_instead_of_failing(
    limiters: MakeLimiter,
) -> None:
    """Past the pool's connections, starts wait for one: none may read as a Redis outage."""
    clock = ManualClock()
    limiter = await limiters(clock)
    burst = 3 * MAX_CONNECTIONS
    results = await asyncio.gather(
        *(limiter.acquire(f"key_{i % 2}", 10_000, 10_000, clock.now()) for i in range(burst)),
        *(limiter.acquire(f"free_{i % 2}", None, None, clock.now()) for i in range(burst)),
        return_exceptions=True,
    )
    assert [r for r in results if r is not None] == []
    assert await limiter.live("key_0") + await limiter.live("key_1") == burst
    assert await limiter.live("free_0") + await limiter.live("free_1") == burst
    await asyncio.gather(*(limiter.release(f"key_{i % 2}") for i in range(burst)))
    assert await limiter.live("key_0") + await limiter.live("key_1") == 0


@pytest.mark.redis
async def test_the_minting_rate_is_one_window_across_instances(limiters: MakeLimiter) -> None:
    clock = ManualClock()
    a, b = await limiters(clock), await limiters(clock)
    local = LocalSessionLimiter()
    for limiter in (a, b, a):
        await limiter.mint("key_mint", 3, clock.now())
    for one in (local, local, local):
        await one.mint("key_mint", 3, clock.now())
    refusals = []
    for limiter in (b, local):
        with pytest.raises(RateLimited) as refused:
            await limiter.mint("key_mint", 3, clock.now() + 15)
        refusals.append(refused.value.message)
    # The same words as the in-process limiter, from a window shared by both instances.
    assert refusals == ["This key may mint 3 client secrets per minute; try again in 45 s."] * 2
    await a.mint("other_key", 3, clock.now())
    clock.advance(60)
    await b.mint("key_mint", 3, clock.now())
