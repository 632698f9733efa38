"""The front door over real sockets: HTTP routes and the relay's upgrades on one port, each
landing where it belongs, with asyncio's loop and uvloop, plain and TLS, whatever way the head
arrives; and the bounds on heads that are late, large or garbage."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web

from rtgate.relay.front_door import (
    MAX_HEAD,
    MAX_HTTP_HEAD,
    FrontDoorSite,
    RelayDoor,
    RelayUpgrade,
)
from rtgate.relay.picows_leg import PicowsLeg
from rtgate.tls import server_context
from tests.raw_ws import BINARY, TEXT, RawClient, frame, upgrade_request
from tests.test_tls import dev_cert, pinned_context

MAX = 8192
#: A file aiohttp sends with the loop's sendfile (over TLS: in chunks).
STATIC_FILE = bytes(range(256)) * 1024
_TIMEOUT = aiohttp.ClientTimeout(total=10)


Run = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    """Each test's scenario runs once on asyncio's loop and once on uvloop (the gateway's)."""
    return uvloop.run if request.param == "uvloop" else asyncio.run


class EchoPump:
    """Says which server took the socket ("picows"), then echoes every message."""

    def __init__(self, leg: PicowsLeg) -> None:
        self.leg = leg

    def on_text(self, data: bytes) -> None:
        self.leg.send_text(data)

    def on_binary(self, data: bytes) -> None:
        self.leg.send_bytes(data)

    def on_heard(self) -> None:
        """The echo has nothing to do for it."""

    def on_close(self, code: int, reason: str) -> None:
        """The echo has nothing to do for it."""

    def on_lost(self) -> None:
        """The echo has nothing to do for it."""

    def on_drain(self) -> None:
        """The echo has nothing to do for it."""


@dataclass
class Door:
    port: int
    tls: ssl.SSLContext | None
    upgrades: list[RelayUpgrade] = field(default_factory=list)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def ws_url(self, path: str = "/v1/realtime") -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}{path}"


def _subprotocol(headers: Mapping[str, str]) -> str | None:
    offered = [p.strip() for p in headers.get("Sec-WebSocket-Protocol", "").split(",")]
    return "realtime" if "realtime" in offered else None


async def _open_door(
    tmp_path: Path, *, tls: bool = False, deflate: bool = False, head_timeout: float = 5.0
) -> tuple[Door, web.AppRunner]:
    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    async def realtime(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=deflate, protocols=("realtime",))
        await ws.prepare(request)
        await ws.send_str("aiohttp")
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    app = web.Application()
    static = tmp_path / "static"
    static.mkdir(exist_ok=True)
    (static / "big.bin").write_bytes(STATIC_FILE)
    app.router.add_static("/static", static)
    app.router.add_get("/healthz", health)
    app.router.add_post("/echo", echo)
    app.router.add_get("/v1/realtime", realtime)
    runner = web.AppRunner(app)
    await runner.setup()
    server_tls = client_tls = None
    if tls:
        cert, key = dev_cert(tmp_path / "tls")
        server_tls, client_tls = server_context(cert, key), pinned_context(cert)
    upgrades: list[RelayUpgrade] = []

    def on_relay(upgrade: RelayUpgrade) -> None:
        upgrades.append(upgrade)
        upgrade.leg.start(EchoPump(upgrade.leg))
        upgrade.leg.send_text(b"picows")

    relay = RelayDoor(on_relay, _subprotocol, MAX, deflate=deflate)
    site = FrontDoorSite(
        runner, relay, head_timeout=head_timeout, host="127.0.0.1", ssl_context=server_tls
    )
    await site.start()
    return Door(site.port, client_tls, upgrades), runner


@contextlib.asynccontextmanager
async def door_at(tmp_path: Path, **options: Any) -> AsyncIterator[Door]:
    opened, runner = await _open_door(tmp_path, **options)
    try:
        yield opened
    finally:
        await _close(opened, runner)


async def _close(door: Door, runner: web.AppRunner) -> None:
    for upgrade in door.upgrades:
        upgrade.leg.sever()
        await asyncio.wait_for(upgrade.leg.wait_closed(), 5)
    await runner.cleanup()


async def _first_message(door: Door, **kwargs: object) -> str:
    async with (
        aiohttp.ClientSession(timeout=_TIMEOUT) as http,
        http.ws_connect(door.ws_url(), ssl=door.tls or True, **kwargs) as ws,  # type: ignore[arg-type]
    ):
        first = await ws.receive_str(timeout=5)
        await ws.send_str("echo me")
        assert await ws.receive_str(timeout=5) == "echo me"
        return first


@pytest.mark.parametrize("tls", [False, True])
def test_http_routes_and_the_relay_share_one_port(run: Run, tmp_path: Path, tls: bool) -> None:
    async def scenario() -> None:
        async with (
            door_at(tmp_path, tls=tls) as door,
            aiohttp.ClientSession(timeout=_TIMEOUT) as http,
        ):
            verify = door.tls or True
            for _ in range(2):  # the same kept-alive connection, twice
                async with http.get(door.url("/healthz"), ssl=verify) as r:
                    assert (r.status, await r.text()) == (200, "ok")
            async with http.post(door.url("/echo"), data=b"x" * 100_000, ssl=verify) as r:
                assert await r.read() == b"x" * 100_000
            async with http.get(door.url("/nowhere"), ssl=verify) as r:
                assert r.status == 404
            async with http.get(door.url("/static/big.bin"), ssl=verify) as r:
                assert (r.status, await r.read()) == (200, STATIC_FILE)
            assert await _first_message(door) == "picows"
            assert len(door.upgrades) == 1

    run(scenario())


def test_a_relay_upgrade_carries_its_query_headers_remote_and_subprotocol(
    run: Run, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with (
            door_at(tmp_path) as door,
            aiohttp.ClientSession(timeout=_TIMEOUT) as http,
            http.ws_connect(
                door.ws_url("/v1/realtime?model=gpt-x&intent=transcription"),
                protocols=("realtime", "openai-insecure-api-key.sk-test"),
                headers={"Authorization": "Bearer sk-abc"},
            ) as ws,
        ):
            assert await ws.receive_str(timeout=5) == "picows"
            assert ws.protocol == "realtime"
            (upgrade,) = door.upgrades
            assert upgrade.query["model"] == "gpt-x"
            assert upgrade.query["intent"] == "transcription"
            assert upgrade.headers["authorization"] == "Bearer sk-abc"
            assert upgrade.remote == "127.0.0.1"

    run(scenario())


def test_no_subprotocol_offered_none_answered(run: Run, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with door_at(tmp_path) as door:
            client = await RawClient.open(door.port)
            assert client.status == 101
            assert client.header("Sec-WebSocket-Protocol") is None
            assert await client.recv() == (TEXT, b"picows")
            await client.shut()

    run(scenario())


@pytest.mark.parametrize(
    ("deflate", "offered", "lands_on"),
    [(True, True, "aiohttp"), (True, False, "picows"), (False, True, "picows")],
)
def test_permessage_deflate_offered_and_on_goes_to_aiohttp(
    run: Run, tmp_path: Path, deflate: bool, offered: bool, lands_on: str
) -> None:
    async def scenario() -> None:
        async with (
            door_at(tmp_path, deflate=deflate) as door,
            aiohttp.ClientSession(timeout=_TIMEOUT) as http,
            http.ws_connect(door.ws_url(), compress=15 if offered else 0) as ws,
        ):
            assert await ws.receive_str(timeout=5) == lands_on
            await ws.send_str("x" * 1000)
            assert await ws.receive_str(timeout=5) == "x" * 1000
            # deflate is answered only where it is on and offered (RFC 7692 5)
            assert (ws.compress != 0) == (lands_on == "aiohttp")

    run(scenario())


def test_a_head_in_pieces_and_frames_pipelined_behind_it(run: Run, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with door_at(tmp_path) as door:
            reader, writer = await asyncio.open_connection("127.0.0.1", door.port)
            head = upgrade_request()
            for i in range(0, len(head), 7):  # the request line itself arrives split
                writer.write(head[i : i + 7])
                await writer.drain()
                await asyncio.sleep(0.001)
            response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert response.startswith(b"HTTP/1.1 101")
            writer.close()
            await writer.wait_closed()

            client = RawClient(*(await asyncio.open_connection("127.0.0.1", door.port)))
            pipelined = frame(TEXT, b"right behind") + frame(BINARY, b"\x01")
            client.writer.write(upgrade_request() + pipelined)
            client.response_head = await client.reader.readuntil(b"\r\n\r\n")
            assert client.status == 101
            assert await client.recv() == (TEXT, b"picows")
            assert await client.recv() == (TEXT, b"right behind")
            assert await client.recv() == (BINARY, b"\x01")
            await client.shut()

    run(scenario())


def test_http_requests_pipelined_on_one_connection(run: Run, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with door_at(tmp_path) as door:
            reader, writer = await asyncio.open_connection("127.0.0.1", door.port)
            one = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            last = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            writer.write(one + one + last)
            answers = await asyncio.wait_for(reader.read(), 5)
            assert answers.count(b"HTTP/1.1 200 OK") == 3
            writer.close()
            await writer.wait_closed()

    run(scenario())


async def _answer_to(door: Door, sent: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", door.port)
    writer.write(sent)
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00garbage\r\n\r\n",
        b"GET /v1/realtime HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /v1/realtime\r\n\r\n",
    ],
)
def test_garbage_is_answered_400_by_aiohttp(run: Run, tmp_path: Path, garbage: bytes) -> None:
    async def scenario() -> None:
        async with door_at(tmp_path) as door:
            status_line = (await _answer_to(door, garbage)).split(b"\r\n", 1)[0]
            assert status_line.startswith(b"HTTP/")
            assert status_line.split(b" ")[1] == b"400"
            assert door.upgrades == []

    run(scenario())


def test_an_upgrade_without_a_key_is_refused_by_picows(run: Run, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with door_at(tmp_path) as door:
            sent = upgrade_request().replace(b"Sec-WebSocket-Key", b"X-Not-The-Key")
            assert (await _answer_to(door, sent)).startswith(b"HTTP/1.1 400")
            assert door.upgrades == []

    run(scenario())


@pytest.mark.parametrize(
    "partial", [b"GET /v1/realtime HTTP/1.1\r\nHost: x\r\n", b"GET /heal", b""]
)
def test_a_head_that_never_ends_is_dropped_after_the_head_timeout(
    run: Run, tmp_path: Path, partial: bytes
) -> None:
    async def scenario() -> None:
        async with door_at(tmp_path, head_timeout=0.3) as door:
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await _answer_to(door, partial) == b""
            assert 0.25 < loop.time() - started < 3

    run(scenario())


@pytest.mark.parametrize(
    "head",
    [
        upgrade_request(headers={"X-Padding": "p" * MAX_HEAD}),
        b"GET /v1/realtime?" + b"q" * (MAX_HEAD + 10),  # no end of line in sight
        b"G" * (MAX_HEAD + 10),
    ],
)
def test_a_head_past_the_bound_is_431(run: Run, tmp_path: Path, head: bytes) -> None:
    async def scenario() -> None:
        async with door_at(tmp_path) as door:
            assert (await _answer_to(door, head)).startswith(b"HTTP/1.1 431")

    run(scenario())


def test_another_routes_head_may_run_past_the_relays_bound(run: Run, tmp_path: Path) -> None:
    """A review's find: once every first head was read whole, a console page's request with
    large cookies (over 16 KiB, under aiohttp's own limits) was answered 431."""

    async def scenario() -> None:
        async with door_at(tmp_path) as door:
            fields = b"".join(b"Cookie: c%d=%s\r\n" % (i, b"v" * 4000) for i in range(6))
            head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"Connection: close\r\n\r\n"
            assert len(head) > MAX_HEAD
            assert (await _answer_to(door, head)).startswith(b"HTTP/1.1 200")
            huge = b"GET /healthz HTTP/1.1\r\n" + fields * 3 + b"\r\n"
            assert len(huge) > MAX_HTTP_HEAD
            assert (await _answer_to(door, huge)).startswith(b"HTTP/1.1 431")

    run(scenario())


def test_a_relay_get_without_upgrade_reaches_aiohttp(run: Run, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            door_at(tmp_path) as door,
            aiohttp.ClientSession(timeout=_TIMEOUT) as http,
            http.get(door.url("/v1/realtime")) as r,
        ):
            assert r.status == 400  # aiohttp's answer to a WebSocket route asked for plain HTTP

    run(scenario())


def test_sites_share_a_port_only_with_reuse_port(run: Run) -> None:
    relay = RelayDoor(lambda _upgrade: None, _subprotocol, MAX)

    async def site_on(port: int, reuse_port: bool) -> tuple[FrontDoorSite, web.AppRunner]:
        runner = web.AppRunner(web.Application())
        await runner.setup()
        site = FrontDoorSite(
            runner, relay, head_timeout=1, host="127.0.0.1", port=port, reuse_port=reuse_port
        )
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        return site, runner

    async def scenario() -> None:
        first, runner = await site_on(0, reuse_port=False)
        with pytest.raises(OSError, match="in use"):
            await site_on(first.port, reuse_port=True)
        await runner.cleanup()
        one, runner1 = await site_on(0, reuse_port=True)
        two, runner2 = await site_on(one.port, reuse_port=True)
        assert one.port == two.port
        await runner1.cleanup()
        await runner2.cleanup()

    run(scenario())
