"""Slow clients (slowloris): a request's headers and its body must arrive in time, over raw
sockets that send part of a request and wait."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from websockets.asyncio.client import connect

from rtgate.config import Settings, load_settings
from tests.conftest import RunningGateway
from tests.provider import FakeProvider

BOUND = 0.5


async def started(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any]
) -> RunningGateway:
    gw: RunningGateway = await start_gateway(
        make_settings(RTGATE_REQUEST_TIMEOUT_SECONDS=str(BOUND))
    )
    return gw


@contextlib.asynccontextmanager
async def raw_connection(
    gw: RunningGateway,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def closed_after(reader: asyncio.StreamReader, limit: float = 10) -> tuple[bytes, float]:
    """Everything the gateway sends until it closes the connection, and how long that took."""
    t0 = time.monotonic()
    async with asyncio.timeout(limit):
        data = await reader.read()
    return data, time.monotonic() - t0


def test_the_default_bound_is_fifteen_seconds() -> None:
    assert load_settings(None, {}).request_timeout_seconds == 15


async def test_half_a_request_line_is_closed_within_the_bound(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await started(make_settings, start_gateway)
    # The bound runs from the connection's opening: timed from before the dial, not from the
    # write (which came a few ms later, so the close once came "early": 0.497 s).
    dialled = time.monotonic()
    async with raw_connection(gw) as (reader, writer):
        writer.write(b"GET /v1/realti")
        await writer.drain()
        data, _ = await closed_after(reader)
        waited = time.monotonic() - dialled
        assert data == b""
        assert BOUND <= waited < BOUND + 1.5


async def test_headers_that_never_end_are_closed_within_the_bound(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await started(make_settings, start_gateway)
    async with raw_connection(gw) as (reader, writer):
        writer.write(b"POST /v1/realtime/client_secrets HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        for _ in range(2):
            # A header line now and then does not buy more time.
            await asyncio.sleep(BOUND / 3)
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
        data, waited = await closed_after(reader)
        assert data == b""
        assert waited < 1.5


async def test_a_late_request_line_buys_its_headers_no_more_time(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    """A security audit's find: the front door handed an HTTP request to aiohttp at its request
    line, whose timer then began again, so a request line sent just in time and headers
    trickled after it held the connection for about twice the bound."""
    gw = await started(make_settings, start_gateway)
    dialled = time.monotonic()
    async with raw_connection(gw) as (reader, writer):
        await asyncio.sleep(BOUND * 0.8)
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        await writer.drain()
        for _ in range(6):
            await asyncio.sleep(BOUND / 5)
            if writer.is_closing() or reader.at_eof():
                break
            writer.write(b"X-Slow: 1\r\n")
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        data, _ = await closed_after(reader)
        assert data == b""
        assert time.monotonic() - dialled < BOUND * 1.6


async def test_a_body_that_stops_arriving_is_answered_408_and_closed(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await started(make_settings, start_gateway)
    key = await gw.new_key()
    async with raw_connection(gw) as (reader, writer):
        writer.write(
            b"POST /v1/realtime/client_secrets HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {key}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            + b'{"session": '
        )
        await writer.drain()
        data, waited = await closed_after(reader)
        assert BOUND <= waited < BOUND + 1.5
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ")
        error = orjson.loads(body)["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "request_timeout")


async def test_a_slow_body_within_the_bound_and_a_long_session_are_served(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw = await started(make_settings, start_gateway)
    key = await gw.new_key()
    body = b'{"session": {"type": "realtime", "model": "gpt-realtime"}}'
    async with raw_connection(gw) as (reader, writer):
        writer.write(
            b"POST /v1/realtime/client_secrets HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {key}\r\n".encode()
            + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        await writer.drain()
        await asyncio.sleep(BOUND / 3)
        writer.write(body[10:])
        await writer.drain()
        status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 200 "), status

    # A WebSocket session is not a request waiting for its headers: it outlives the bound.
    async with connect(
        f"{gw.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
        ping_interval=None,
    ) as ws:
        assert orjson.loads(await ws.recv())["type"] == "session.created"
        await asyncio.sleep(BOUND * 3)
        await ws.send('{"type":"input_audio_buffer.clear"}')
        assert orjson.loads(await ws.recv())["type"] == "input_audio_buffer.cleared"
