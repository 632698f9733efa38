"""``rtgate serve --certfile --keyfile``: TLS on the one listener, for clients that insist on
``wss://`` (the npm ``openai`` package; the Python SDK's beta path without a
``websocket_base_url``), with the development certificate the README documents; and the one
client context of the gateway's ``wss://`` upstream dials."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import websockets
from openai import AsyncOpenAI

from rtgate.config import Settings, load_settings
from rtgate.errors import ConfigError, UpstreamError
from rtgate.relay import endpoint
from rtgate.relay.endpoint import GATEWAY
from rtgate.tls import upstream_context
from tests.process import create_key, free_port, gateway_env, kill_tree, wait_ready

ROOT = Path(__file__).resolve().parent.parent


def dev_cert(where: Path) -> tuple[Path, Path]:
    """The README's one command: ``scripts/dev-cert DIR``."""
    subprocess.run(
        [str(ROOT / "scripts" / "dev-cert"), str(where)], check=True, capture_output=True
    )
    return where / "cert.pem", where / "key.pem"


def pinned_context(certfile: Path) -> ssl.SSLContext:
    """A client context that trusts only ``certfile`` (a dev certificate), whatever name it
    was issued for."""
    ctx = ssl.create_default_context(cafile=str(certfile))
    ctx.check_hostname = False
    # The leaf itself is the trust anchor, even when a CA issued it.
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


def engine_env(tmp_path: Path, port: int) -> dict[str, str]:
    """A gateway process whose embedded engine answers (no provider key), with its light
    stages; the engine is dialled on its own loopback port, in plain ws://."""
    return gateway_env(
        tmp_path / "home",
        port,
        OPENAI_API_KEY="",
        RTGATE_ENGINE_VAD="energy",
        RTGATE_ENGINE_STT="none",
        RTGATE_ENGINE_TTS="tone",
    )


async def test_the_sdks_beta_path_reaches_a_gateway_serving_tls(tmp_path: Path) -> None:
    cert, keyfile = dev_cert(tmp_path / "tls")
    port = free_port()
    env = engine_env(tmp_path, port)
    key = create_key(env, "tls")
    log_file = (tmp_path / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rtgate",
            "serve",
            "--certfile",
            str(cert),
            "--keyfile",
            str(keyfile),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
    )
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        await wait_ready(port, proc)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://localhost:{port}/healthz", ssl=trust) as r:
                assert r.status == 200 and (await r.json())["status"] == "ok"
            # Plain HTTP on the TLS port gets nowhere.
            with pytest.raises(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                    await r.read()
        # No websocket_base_url: the beta path swaps https for wss (docs/protocol.md 0, fact 3).
        client = AsyncOpenAI(api_key=key, base_url=f"https://localhost:{port}/v1", max_retries=0)
        async with client.beta.realtime.connect(
            model="gpt-realtime",
            websocket_connection_options={"ssl": trust},  # type: ignore[typeddict-unknown-key]
        ) as conn:
            created = await asyncio.wait_for(conn.recv(), 10)
            assert created.type == "session.created"
            await conn.session.update(session={"modalities": ["text"], "turn_detection": None})
            await conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "over tls"}],
                }
            )
            await conn.response.create()
            async with asyncio.timeout(20):
                async for event in conn:
                    if event.type == "response.done":
                        break
            assert event.response.status == "completed"
        await client.close()
    finally:
        kill_tree(proc)
        log_file.close()
    logs = (tmp_path / "gateway.log").read_text()
    # The start-up lines name the addresses as clients must use them.
    assert f"is ready at https://127.0.0.1:{port}" in logs
    assert f"wss://127.0.0.1:{port}/v1/realtime?model=gpt-realtime" in logs


async def test_talk_dials_a_tls_gateway_with_its_certificate_or_says_what_to_fix(
    tmp_path: Path,
) -> None:
    """``rtgate talk`` against the README's TLS gateway (its certificate on ``serve``'s command
    line): one line and a hint, no traceback, until the settings name the certificate; then
    ``wss://``, the dev certificate trusted as this machine's own gateway's."""
    cert, keyfile = dev_cert(tmp_path / "tls")
    port = free_port()
    env = engine_env(tmp_path, port)
    env.pop("SSL_CERT_FILE", None)
    key = create_key(env, "talk")
    serve = [sys.executable, "-m", "rtgate", "serve", "--certfile", str(cert)]
    proc = subprocess.Popen([*serve, "--keyfile", str(keyfile)], env=env, stdout=subprocess.DEVNULL)

    turn = ["--key", key, "--text", "over tls", "--out", str(tmp_path / "reply.wav"), "--quiet"]

    def talk(*args: str, **more: str) -> tuple[int, str]:
        done = subprocess.run(
            [sys.executable, "-m", "rtgate", "talk", *turn, *args],
            env={**env, "COLUMNS": "500", **more},
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.returncode, done.stdout + done.stderr

    try:
        await wait_ready(port, proc)
        code, said = await asyncio.to_thread(talk)  # the settings know no certificate: ws://
        assert code == 1 and "Traceback" not in said, said
        assert f"ws://127.0.0.1:{port}/v1 ended the connection unanswered" in said
        assert "wss://" in said and "RTGATE_TLS_CERTFILE" in said
        code, said = await asyncio.to_thread(talk, "--url", f"wss://localhost:{port}/v1")
        assert code == 1 and "Traceback" not in said, said
        assert "does not trust" in said and "SSL_CERT_FILE" in said
        named = {"RTGATE_TLS_CERTFILE": str(cert), "RTGATE_TLS_KEYFILE": str(keyfile)}
        code, said = await asyncio.to_thread(talk, **named)
        assert code == 0, said
        assert "usage: " in said and (tmp_path / "reply.wav").stat().st_size > 44
    finally:
        kill_tree(proc)


def test_tls_needs_both_files_and_names_the_setting(tmp_path: Path) -> None:
    cert, keyfile = dev_cert(tmp_path / "tls")
    env = {"RTGATE_HOME": str(tmp_path), "RTGATE_TLS_CERTFILE": str(cert)}
    with pytest.raises(ConfigError, match="tls_keyfile"):
        load_settings(None, env)
    settings = load_settings(None, {**env, "RTGATE_TLS_KEYFILE": str(keyfile)})
    assert (settings.tls_certfile, settings.tls_keyfile) == (cert, keyfile)
    with pytest.raises(ConfigError, match="tls_certfile"):
        load_settings(
            None, {**env, "RTGATE_TLS_CERTFILE": str(keyfile), "RTGATE_TLS_KEYFILE": str(keyfile)}
        )


def test_the_upstream_trust_store_is_built_only_for_a_tls_upstream() -> None:
    assert upstream_context(["ws://127.0.0.1:9/v1", "http://127.0.0.1:9/v1"]) is None
    ctx = upstream_context(["ws://127.0.0.1:9/v1", "https://api.openai.com/v1"])
    assert ctx is not None and ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname


async def test_every_session_dials_its_tls_upstream_with_the_gateways_one_context(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dials: list[ssl.SSLContext | None] = []

    async def refuse(*_: object, ssl_context: ssl.SSLContext | None = None, **__: object) -> None:
        dials.append(ssl_context)
        raise UpstreamError("not dialled in this test")

    monkeypatch.setattr(endpoint, "connect", refuse)
    gw = await start_gateway(make_settings(RTGATE_OPENAI_BASE_URL="wss://127.0.0.1:9/v1"))
    key = await gw.new_key()
    for _ in range(2):
        async with websockets.connect(
            f"{gw.ws}/v1/realtime?model=gpt-realtime",
            additional_headers={"Authorization": f"Bearer {key}"},
        ) as ws:
            event = orjson.loads(await ws.recv())
            assert event["error"]["code"] == "upstream_unavailable"
    shared = gw.app[GATEWAY].upstream_tls
    assert shared is not None and dials == [shared, shared]
