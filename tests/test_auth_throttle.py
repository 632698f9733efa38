"""Failed authentications per address: the pure throttle with plain numbers, then floods of bad
keys over real sockets (WebSocket and the HTTP routes that authenticate), from two loopback
addresses."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict
from websockets.asyncio.client import connect

from rtgate.auth.throttle import FailureThrottle, client_address, forwarded_for, source_of
from rtgate.clock import ManualClock
from rtgate.config import Settings, load_settings
from rtgate.errors import ConfigError
from rtgate.relay.endpoint import GATEWAY
from tests.conftest import RunningGateway
from tests.provider import FakeProvider
from tests.test_calls import OFFER
from tests.test_metrics import scrape

BAD = "rtg_nope_" + "x" * 32
# Linux answers on all of 127.0.0.0/8: a second caller with an address of its own.
FLOODER, NEIGHBOUR = "127.0.0.1", "127.0.0.2"


# -- the pure throttle ----------------------------------------------------------------------------
def test_an_address_that_fails_too_often_waits_for_its_allowance_to_refill() -> None:
    t = FailureThrottle(burst=3, per_minute=6)  # one failure back every 10 s
    assert [t.wait("a", 0), t.failed("a", 0), t.failed("a", 0)] == [0, False, False]
    assert t.failed("a", 0) is True  # the third failure throttles it, once
    assert t.wait("a", 0) == pytest.approx(10)
    assert t.wait("a", 9.9) > 0
    assert t.wait("b", 0) == 0  # another address is not affected
    assert t.wait("a", 10) == 0  # one attempt, checked
    assert t.failed("a", 10) is True
    assert t.wait("a", 15) == pytest.approx(5)
    # Failures checked side by side may overdraw: the bucket stops at empty.
    for _ in range(100):
        t.failed("a", 20)
    assert t.wait("a", 20) == pytest.approx(10)
    assert t.wait("a", 50) == 0 and t.wait("a", 100) == 0


def test_memory_stays_bounded_under_a_flood_from_many_addresses() -> None:
    t = FailureThrottle(burst=2, per_minute=1, max_sources=1000)
    for i in range(50_000):
        t.failed(source_of(ipaddress.ip_address(i + 1)), i / 1000)
    assert len(t) == 1000
    t.failed("10.0.0.1", 60)
    t.failed("10.0.0.1", 60)
    for i in range(999):
        t.failed(f"192.168.{i // 256}.{i % 256}", 60)
    # The most recent failures are the ones kept.
    assert t.wait("10.0.0.1", 60) > 0


def test_a_source_is_an_ipv4_address_or_an_ipv6_64() -> None:
    v6 = ipaddress.ip_address
    assert source_of(v6("2001:db8:1:2::1")) == source_of(v6("2001:db8:1:2:ffff::9"))
    assert source_of(v6("2001:db8:1:2::1")) == "2001:db8:1:2::/64"
    assert source_of(v6("2001:db8:1:3::1")) != source_of(v6("2001:db8:1:2::1"))
    assert source_of(v6("::ffff:192.0.2.7")) == "192.0.2.7"
    assert source_of(None) == "unknown"


def test_forwarded_for_is_believed_only_from_a_trusted_proxy() -> None:
    proxy = [ipaddress.ip_network("10.0.0.0/8")]
    ip = ipaddress.ip_address
    assert client_address("10.1.1.1", "203.0.113.7", []) == ip("10.1.1.1")
    assert client_address("198.51.100.1", "203.0.113.7", proxy) == ip("198.51.100.1")
    assert client_address("10.1.1.1", "203.0.113.7", proxy) == ip("203.0.113.7")
    # Right to left, past every trusted hop; what the client itself wrote is not believed.
    chain = "1.2.3.4, 203.0.113.7, 10.2.2.2"
    assert client_address("10.1.1.1", chain, proxy) == ip("203.0.113.7")
    assert client_address("10.1.1.1", "garbage, 10.2.2.2", proxy) == ip("10.2.2.2")
    assert client_address("10.1.1.1", None, proxy) == ip("10.1.1.1")


def test_trusted_proxies_come_from_the_file_or_the_environment() -> None:
    s = load_settings(None, {"RTGATE_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1"})
    assert s.proxy_networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.1/32"),
    )
    with pytest.raises(ConfigError, match="trusted_proxies"):
        load_settings(None, {"RTGATE_TRUSTED_PROXIES": "not-an-address"})
    defaults = load_settings(None, {})
    assert (defaults.auth_failures_burst, defaults.auth_failures_per_minute) == (20, 10)


# -- over real sockets ----------------------------------------------------------------------------
BURST = 5


@pytest.fixture
async def throttled_gateway(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any]
) -> tuple[RunningGateway, list[str]]:
    """A gateway allowing 5 failures per address, with the store's key lookups recorded."""
    gw: RunningGateway = await start_gateway(
        make_settings(RTGATE_AUTH_FAILURES_BURST=str(BURST), RTGATE_AUTH_FAILURES_PER_MINUTE="1"),
        clock=ManualClock(),
    )
    store = gw.app[GATEWAY].store
    looked_up: list[str] = []
    by_hash = store.key_by_hash

    async def recorded(key_hash: str) -> Any:
        looked_up.append(key_hash)
        return await by_hash(key_hash)

    store.key_by_hash = recorded
    return gw, looked_up


async def refusal(gw: RunningGateway, key: str, source: str = FLOODER) -> tuple[str, int]:
    """The error code and close code a WebSocket connect from ``source`` meets."""
    async with connect(
        f"{gw.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
        local_addr=(source, 0),
    ) as ws:
        event = orjson.loads(await ws.recv())
        if event["type"] != "error":
            return event["type"], 0
        await ws.wait_closed()
        assert ws.close_code is not None
        return event["error"]["code"], ws.close_code


async def test_a_flood_of_bad_keys_is_refused_before_any_store_lookup(
    throttled_gateway: tuple[RunningGateway, list[str]], provider: FakeProvider
) -> None:
    gw, looked_up = throttled_gateway
    good = await gw.new_key()
    outcomes = [await refusal(gw, BAD) for _ in range(BURST + 20)]
    assert outcomes == [("invalid_api_key", 3000)] * BURST + [("rate_limit_exceeded", 3000)] * 20
    assert len(looked_up) == BURST
    # A valid key from the throttled address is refused too, unchecked (documented).
    assert await refusal(gw, good) == ("rate_limit_exceeded", 3000)
    assert len(looked_up) == BURST
    # From an address that is not failing, a valid key is served as ever.
    assert await refusal(gw, good, NEIGHBOUR) == ("session.created", 0)
    metrics = await scrape(gw)
    assert metrics[("rtgate_auth_throttled_total", ())] == 21
    refused = ("rtgate_policy_refusals_total", (("reason", "rate_limit_exceeded"),))
    assert refused not in metrics  # not a key's rate limit
    assert len(provider.upgrades) == 1  # the neighbour's session


async def test_the_http_routes_that_authenticate_share_the_throttle(
    throttled_gateway: tuple[RunningGateway, list[str]], provider: FakeProvider
) -> None:
    gw, looked_up = throttled_gateway
    good = await gw.new_key()
    for _ in range(BURST):
        await refusal(gw, BAD)
    sdp = {"Content-Type": "application/sdp"}
    requests: list[tuple[str, dict[str, Any], dict[str, str]]] = [
        ("/v1/realtime/client_secrets", {"json": {}}, {}),
        ("/v1/realtime/sessions", {"json": {"model": "gpt-realtime"}}, {}),
        ("/v1/realtime/transcription_sessions", {"json": {}}, {}),
        ("/v1/realtime/calls", {"data": OFFER}, sdp),
        ("/v1/realtime/calls/rtc_123/hangup", {}, {}),
    ]
    for source, throttled in ((FLOODER, True), (NEIGHBOUR, False)):
        connector = aiohttp.TCPConnector(local_addr=(source, 0))
        async with aiohttp.ClientSession(connector=connector) as http:
            for path, body, extra in requests:
                headers = {"Authorization": f"Bearer {good}", **extra}
                async with http.post(gw.http + path, headers=headers, **body) as resp:
                    if throttled:
                        assert resp.status == 429, path
                        error = (await resp.json())["error"]
                        assert error["code"] == "rate_limit_exceeded"
                        assert int(resp.headers["Retry-After"]) >= 1
                    else:
                        assert resp.status in (200, 201), (path, await resp.text())
    assert len(looked_up) == BURST + len(requests)  # the neighbour's, all checked


async def via_proxy(gw: RunningGateway, key: str, client: str) -> str:
    """What a connect relayed by a proxy on this host for ``client`` meets first."""
    async with connect(
        f"{gw.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": client},
    ) as ws:
        event = orjson.loads(await ws.recv())
        return str(event["error"]["code"] if event["type"] == "error" else event["type"])


async def test_forwarded_for_names_the_caller_behind_a_trusted_proxy(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    for trusted, neighbour_served in (("127.0.0.1", True), ("", False)):
        gw: RunningGateway = await start_gateway(
            make_settings(
                RTGATE_AUTH_FAILURES_BURST="2",
                RTGATE_AUTH_FAILURES_PER_MINUTE="1",
                RTGATE_TRUSTED_PROXIES=trusted,
            ),
            clock=ManualClock(),
        )
        good = await gw.new_key()
        assert [await via_proxy(gw, BAD, "203.0.113.7") for _ in range(3)] == [
            "invalid_api_key",
            "invalid_api_key",
            "rate_limit_exceeded",
        ]
        served = await via_proxy(gw, good, "203.0.113.8") == "session.created"
        assert served is neighbour_served


async def test_a_second_forwarded_for_line_is_read_as_the_rest_of_the_list(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any]
) -> None:
    """A security audit's find: a proxy that adds its own ``X-Forwarded-For`` line after the
    client's (HAProxy's ``option forwardfor``) was read at its first line only, which the
    client wrote: each bad key named another address and none was throttled."""
    gw: RunningGateway = await start_gateway(
        make_settings(
            RTGATE_AUTH_FAILURES_BURST="2",
            RTGATE_AUTH_FAILURES_PER_MINUTE="1",
            RTGATE_TRUSTED_PROXIES="127.0.0.1",
        ),
        clock=ManualClock(),
    )
    seen = []
    for i in range(3):
        headers = [
            ("Authorization", f"Bearer {BAD}"),
            ("X-Forwarded-For", f"198.51.100.{i}"),  # the client's own words
            ("X-Forwarded-For", "203.0.113.9"),  # the proxy's: whom it saw
        ]
        async with connect(
            f"{gw.ws}/v1/realtime?model=gpt-realtime", additional_headers=headers
        ) as ws:
            seen.append(orjson.loads(await ws.recv())["error"]["code"])
    assert seen == ["invalid_api_key", "invalid_api_key", "rate_limit_exceeded"]
    lines = CIMultiDict([("X-Forwarded-For", "1.2.3.4"), ("x-forwarded-for", "5.6.7.8, 9.9.9.9")])
    assert forwarded_for(lines) == "1.2.3.4, 5.6.7.8, 9.9.9.9"
    assert forwarded_for(CIMultiDict()) is None
    assert forwarded_for({"X-Forwarded-For": "1.2.3.4"}) == "1.2.3.4"


async def test_requests_with_no_key_are_refused_but_do_not_throttle_the_address(
    throttled_gateway: tuple[RunningGateway, list[str]], provider: FakeProvider
) -> None:
    """A review's find: a probe polling /v1/models with no key (it needs one now, as OpenAI's)
    throttled its address, and then a real key's connect from there was refused."""
    gw, looked_up = throttled_gateway
    good = await gw.new_key()
    connector = aiohttp.TCPConnector(local_addr=(FLOODER, 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(BURST * 3):
            async with http.get(gw.http + "/v1/models") as resp:
                assert resp.status == 401
        assert looked_up == []  # none of them cost a lookup
        async with http.get(
            gw.http + "/v1/models", headers={"Authorization": f"Bearer {good}"}
        ) as resp:
            assert resp.status == 200
            assert resp.headers["Cache-Control"] == "no-store"
    assert (await refusal(gw, good))[0] == "session.created"


async def test_a_throttled_address_asking_with_no_key_is_told_it_sent_none(
    throttled_gateway: tuple[RunningGateway, list[str]], provider: FakeProvider
) -> None:
    """A newcomer's find: once an address was throttled, a request of it with no key at all was
    answered 429 (wait) where the README says 401 (send a key): it costs no lookup either way."""
    gw, looked_up = throttled_gateway
    for _ in range(BURST + 1):
        await refusal(gw, BAD)
    assert (await refusal(gw, BAD))[0] == "rate_limit_exceeded"
    connector = aiohttp.TCPConnector(local_addr=(FLOODER, 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.get(gw.http + "/v1/models") as resp:
            assert resp.status == 401
            assert "didn't provide an API key" in (await resp.json())["error"]["message"]
        async with http.post(gw.http + "/v1/realtime/client_secrets", json={}) as resp:
            assert resp.status == 401
    assert len(looked_up) == BURST
    async with connect(f"{gw.ws}/v1/realtime?model=gpt-realtime", local_addr=(FLOODER, 0)) as ws:
        event = orjson.loads(await ws.recv())
        assert event["type"] == "error" and "didn't provide an API key" in event["error"]["message"]
    # And the throttle still holds for a key: nothing was reset.
    assert (await refusal(gw, BAD))[0] == "rate_limit_exceeded"


@pytest.mark.parametrize(
    ("route", "token_var"),
    [("/admin/v1/keys", "RTGATE_ADMIN_TOKEN"), ("/metrics", "RTGATE_METRICS_TOKEN")],
)
async def test_the_operator_tokens_share_the_throttle(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    route: str,
    token_var: str,
) -> None:
    """A security audit's find: the admin API (and /metrics) took any number of guesses at the
    token the console's sign-in throttles, from the same address."""
    token = "the-operators-token-0123456789"
    gw: RunningGateway = await start_gateway(
        make_settings(
            RTGATE_AUTH_FAILURES_BURST=str(BURST),
            RTGATE_AUTH_FAILURES_PER_MINUTE="1",
            **{token_var: token},
        ),
        clock=ManualClock(),
    )
    for source, throttled in ((FLOODER, True), (NEIGHBOUR, False)):
        connector = aiohttp.TCPConnector(local_addr=(source, 0))
        async with aiohttp.ClientSession(connector=connector) as http:
            if throttled:
                # Failures anywhere count: bad gateway keys first, then guesses at the token.
                for i in range(BURST):
                    if i % 2:
                        guess = {"Authorization": f"Bearer guess-{i}"}
                        async with http.get(gw.http + route, headers=guess) as resp:
                            assert resp.status == 401, (i, await resp.text())
                    else:
                        bad = {"Authorization": f"Bearer {BAD}"}
                        async with http.get(gw.http + "/v1/models", headers=bad) as resp:
                            assert resp.status == 401, (i, await resp.text())
            # The right token too waits, from the address that guessed.
            right = {"Authorization": f"Bearer {token}"}
            async with http.get(gw.http + route, headers=right) as resp:
                if throttled:
                    assert resp.status == 429, await resp.text()
                    assert (await resp.json())["error"]["code"] == "rate_limit_exceeded"
                    assert int(resp.headers["Retry-After"]) >= 1
                else:
                    assert resp.status == 200, await resp.text()
