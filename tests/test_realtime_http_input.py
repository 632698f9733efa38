"""Malformed input on the ``/v1/realtime`` HTTP routes: every refusal is a 4xx in OpenAI's error
shape, and a refused request leaves nothing behind (no client secret, no call upstream)."""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, seed, settings
from websockets.asyncio.client import connect

from rtgate.config import Settings
from rtgate.relay.endpoint import GATEWAY
from tests.conftest import RunningGateway, events_until
from tests.http_fuzz import Fuzzed, requests
from tests.provider import FakeProvider
from tests.table_rows import table_rows

OFFER = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=offer\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
BOUNDARY = "rtgate-test-boundary"
TOO_BIG = 2**64


def form(*parts: tuple[str, str, bytes]) -> bytes:
    """A ``multipart/form-data`` body of ``(name, content type, payload)`` parts."""
    out = b""
    for name, ctype, payload in parts:
        out += (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n'
                f"Content-Type: {ctype}\r\n\r\n"
            ).encode()
            + payload
            + b"\r\n"
        )
    return out + f"--{BOUNDARY}--\r\n".encode()


MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
SESSION = b'{"type": "realtime", "model": "gpt-realtime"}'
DEEP = b'{"type": "realtime", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}"
NOT_UTF8 = OFFER.encode() + b"a=tool:\xff\xfe\r\n"
SDP_PART = ("sdp", "application/sdp", OFFER.encode())

#: (route, content type, body, the error's param): each one crashed a route with a 500 once.
MALFORMED: dict[str, tuple[str, str, bytes, str | None]] = {
    "sessions_expires_after_past_64_bits": (
        "/sessions",
        "application/json",
        b'{"model": "gpt-realtime", "expires_after": {"seconds": %d}}' % TOO_BIG,
        "expires_after.seconds",
    ),
    "transcription_sessions_expires_after_past_64_bits": (
        "/transcription_sessions",
        "application/json",
        b'{"expires_after": {"anchor": "created_at", "seconds": %d}}' % TOO_BIG,
        "expires_after.seconds",
    ),
    "client_secrets_expires_after_past_64_bits": (
        "/client_secrets",
        "application/json",
        b'{"expires_after": {"anchor": "created_at", "seconds": %d}}' % TOO_BIG,
        "expires_after.seconds",
    ),
    "client_secrets_session_number_past_64_bits": (
        "/client_secrets",
        "application/json",
        b'{"session": {"type": "realtime", "max_output_tokens": %d}}' % TOO_BIG,
        "session.max_output_tokens",
    ),
    "calls_multipart_without_boundary": (
        "/calls",
        "multipart/form-data",
        form(("sdp", "application/sdp", OFFER.encode())),
        None,
    ),
    "calls_multipart_truncated": (
        "/calls",
        MULTIPART,
        form(SDP_PART, ("session", "application/json", SESSION))[:-60],
        None,
    ),
    "calls_sdp_body_not_utf8": ("/calls", "application/sdp", NOT_UTF8, "sdp"),
    "calls_sdp_body_unknown_charset": (
        "/calls",
        "application/sdp; charset=klingon",
        OFFER.encode(),
        "sdp",
    ),
    "calls_sdp_part_not_utf8": (
        "/calls",
        MULTIPART,
        form(("sdp", "application/sdp", NOT_UTF8)),
        "sdp",
    ),
    "calls_sdp_part_unknown_charset": (
        "/calls",
        MULTIPART,
        form(("sdp", "application/sdp; charset=klingon", OFFER.encode())),
        "sdp",
    ),
    "calls_session_part_nested_1000_deep": (
        "/calls",
        MULTIPART,
        form(SDP_PART, ("session", "application/json", DEEP)),
        "session.x",
    ),
    "calls_session_part_not_utf8": (
        "/calls",
        MULTIPART,
        form(SDP_PART, ("session", "application/json", b'{"x": "\xff"}')),
        "session",
    ),
}


async def stored_secrets(gw: RunningGateway) -> int:
    (row,) = await table_rows(gw.store, "SELECT COUNT(*) AS n FROM client_secrets")
    return int(row.n)


async def post(
    gw: RunningGateway, key: str, path: str, ctype: str, body: bytes
) -> tuple[int, dict[str, str], str]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": ctype}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gw.http}/v1/realtime{path}", data=body, headers=headers) as r,
    ):
        return r.status, dict(r.headers), await r.text()


def assert_shape(status: int, headers: dict[str, str], text: str) -> dict[str, Any]:
    """The refusal's error, checked to be a 4xx in OpenAI's shape."""
    assert 400 <= status < 500, (status, text)
    assert headers["Content-Type"].startswith("application/json"), text
    body = orjson.loads(text)
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and isinstance(error["code"], str)
    return dict(error)


def assert_openai_error(status: int, headers: dict[str, str], text: str) -> dict[str, Any]:
    error = assert_shape(status, headers, text)
    assert error["type"] == "invalid_request_error"
    return error


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_input_is_refused_in_openai_shape_and_stores_nothing(
    gateway: RunningGateway, provider: FakeProvider, case: str
) -> None:
    path, ctype, body, param = MALFORMED[case]
    key = await gateway.new_key()
    status, headers, answer = await post(gateway, key, path, ctype, body)
    assert status == 400
    assert assert_openai_error(status, headers, answer)["param"] == param
    assert await stored_secrets(gateway) == 0
    assert not provider.calls
    assert not gateway.app[GATEWAY].live


# -- the body cap ---------------------------------------------------------------------------------

TEN_MB = 10 * 1000 * 1000
ROUTES = (
    "/client_secrets",
    "/sessions",
    "/transcription_sessions",
    "/calls",
    "/calls/rtc_0123456789abcdef/accept",
)


async def chunks(total: int) -> AsyncIterator[bytes]:
    """A body sent chunked, without a Content-Length to refuse it by."""
    piece = b" " * 65536
    for _ in range(total // len(piece)):
        yield piece


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("chunked", [False, True], ids=["content_length", "chunked"])
async def test_a_10_mb_body_is_refused_with_413_in_openai_shape(
    gateway: RunningGateway, provider: FakeProvider, path: str, chunked: bool
) -> None:
    key = await gateway.new_key()
    ctype = "application/sdp" if path == "/calls" else "application/json"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": ctype}
    body: Any = chunks(TEN_MB) if chunked else io.BytesIO(b" " * TEN_MB)
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gateway.http}/v1/realtime{path}", data=body, headers=headers) as r,
    ):
        status, answer = r.status, (dict(r.headers), await r.text())
    assert status == 413
    error = assert_openai_error(status, *answer)
    assert error["code"] == "request_too_large"
    assert str(1024 * 1024) in error["message"]
    assert await stored_secrets(gateway) == 0
    assert not provider.calls and not provider.call_actions


async def test_the_body_cap_is_a_setting_and_spares_the_websocket(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any]
) -> None:
    gw: RunningGateway = await start_gateway(make_settings(RTGATE_MAX_HTTP_BODY_BYTES="2048"))
    assert gw.settings.max_http_body_bytes == 2048
    key = await gw.new_key()
    instructions = {"session": {"type": "realtime", "instructions": "x" * 1900}}
    status, _, _ = await post(
        gw, key, "/client_secrets", "application/json", orjson.dumps(instructions)
    )
    assert status == 200
    instructions["session"]["instructions"] = "x" * 2100
    status, headers, text = await post(
        gw, key, "/client_secrets", "application/json", orjson.dumps(instructions)
    )
    assert status == 413 and assert_openai_error(status, headers, text)["param"] is None
    assert await stored_secrets(gw) == 1
    # A WebSocket message is bounded by max_message_bytes, not by the HTTP cap.
    async with connect(
        f"{gw.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
        max_size=None,
    ) as ws:
        await events_until(ws, "session.created")
        await ws.send(
            orjson.dumps(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "y" * 100_000}],
                    },
                }
            ).decode()
        )
        await events_until(ws, "conversation.item.added")


# -- fuzzing --------------------------------------------------------------------------------------

FUZZ_SEED = 20260101
ADMIN_TOKEN = "adm_" + "Fuzz" * 8


async def test_fuzzed_bodies_get_no_5xx_and_refusals_store_nothing(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    """Seeded Hypothesis over every route that reads a body: JSON near and far from the real
    shapes, SDP in any charset, multipart forms broken in every way. No answer is a 5xx, every
    refusal is in OpenAI's shape, and only a 200 from a minting route stores a client secret."""
    gw: RunningGateway = await start_gateway(make_settings(RTGATE_ADMIN_TOKEN=ADMIN_TOKEN))
    key = await gw.new_key("fuzzer")
    patched, _ = await gw.app[GATEWAY].keyring.create("patched")
    loop = asyncio.get_running_loop()
    seen: Counter[int] = Counter()

    async with aiohttp.ClientSession() as http:

        async def send(req: Fuzzed) -> tuple[int, dict[str, str], str, int]:
            token = ADMIN_TOKEN if req.admin else key
            headers = {"Authorization": f"Bearer {token}"}
            if req.content_type is not None:
                headers["Content-Type"] = req.content_type
            async with http.request(
                req.method, gw.http + req.path, data=req.body, headers=headers
            ) as r:
                return r.status, dict(r.headers), await r.text(), await stored_secrets(gw)

        @seed(FUZZ_SEED)
        @settings(
            max_examples=500,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(requests(call_id="rtc_" + "0" * 32, key_id=patched.id))
        def check(req: Fuzzed) -> None:
            before = asyncio.run_coroutine_threadsafe(stored_secrets(gw), loop).result(30)
            status, headers, text, after = asyncio.run_coroutine_threadsafe(send(req), loop).result(
                30
            )
            seen[status] += 1
            assert status < 500, (status, text)
            if status >= 400:
                assert_shape(status, headers, text)
            assert after == before + (status == 200 and req.mints), (status, text)

        await asyncio.to_thread(check)
    # The fuzz reached past the parsers, not only their refusals.
    assert seen[200] and seen[201] and seen[400] and seen[422], seen
