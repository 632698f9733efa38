"""What a newcomer meets: the lines ``rtgate serve`` starts with, and the page at ``/``."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI
from openai.types import Model

from rtgate.auth.policy import KeyPolicy
from rtgate.config import Settings, load_settings
from rtgate.logs import Redactor
from rtgate.relay.endpoint import GATEWAY
from rtgate.welcome import summary_lines
from tests.conftest import TOKEN, RunningGateway
from tests.process import free_port, gateway_env

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_summary_names_the_local_engine_and_what_to_type_next(tmp_path: Path) -> None:
    settings = load_settings(None, {"RTGATE_HOME": str(tmp_path)})
    lines = summary_lines(settings, "http://127.0.0.1:8080", ".venv/bin/rtgate")
    text = "\n".join(lines)
    assert lines[0].startswith("rtgate ") and "http://127.0.0.1:8080" in lines[0]
    assert "ws://127.0.0.1:8080/v1/realtime?model=gpt-realtime" in text
    assert "ws://127.0.0.1:8080/v1/live/sessions" in text
    assert re.search(r"gpt-realtime, .*local -> the embedded local engine", text)
    assert "no OPENAI_API_KEY" in text
    assert ".venv/bin/rtgate keys create --name me" in text
    # A gateway started with --config says so in the key's command (a newcomer's find: the
    # key went to another home's database, and was refused).
    configured = "\n".join(summary_lines(settings, "http://h:1", "rtgate", "/etc/rt.toml"))
    assert "rtgate --config /etc/rt.toml keys create --name me" in configured
    # As a shell takes it, from any directory.
    spaced = "\n".join(summary_lines(settings, "http://h:1", "rtgate", "my conf/rt.toml"))
    assert f"rtgate --config '{Path('my conf/rt.toml').resolve()}' keys create" in spaced
    # And its environment's home and database (a second newcomer's find), the database's URL
    # named, never shown: it may hold a password.
    env = {"RTGATE_HOME": "/srv/rt home", "RTGATE_DATABASE_URL": "postgresql://u:pw@db/rt"}
    homed = "\n".join(summary_lines(settings, "http://h:1", "rtgate", None, env))
    assert f"RTGATE_HOME={shlex.quote(str(settings.home.resolve()))} rtgate keys create" in homed
    assert "(with this RTGATE_DATABASE_URL; the secret is shown once)" in homed
    assert "pw@db" not in homed
    assert "admin API  off: set RTGATE_ADMIN_TOKEN" in text
    # The translation model is the provider's: the engine refuses it, so it is not listed as
    # the engine's, and the summary says what it needs.
    (models,) = [line for line in lines if "-> the embedded local engine" in line]
    assert "gpt-realtime-translate" not in models and "gpt-live-1" in models
    assert "(gpt-realtime-translate needs a provider: the local engine does not" in text
    assert "console" not in text.replace("(and the console)", "")
    assert "playground http://127.0.0.1:8080/ui/playground" in text


def test_summary_with_a_provider_key_names_the_upstream_never_the_key(tmp_path: Path) -> None:
    env = {"RTGATE_HOME": str(tmp_path), "OPENAI_API_KEY": "sk-the-provider-key-123456"}
    env["RTGATE_ADMIN_TOKEN"] = "admin-token-value"
    text = "\n".join(summary_lines(load_settings(None, env), "http://127.0.0.1:8080"))
    (models,) = [line for line in text.splitlines() if "-> OpenAI" in line]
    assert "gpt-realtime-mini" in models and "gpt-realtime-translate" in models
    assert models.endswith(" -> OpenAI wss://api.openai.com/v1")
    assert "local -> the embedded local engine" in text
    assert "no OPENAI_API_KEY" not in text and "needs a provider" not in text
    assert "admin API  http://127.0.0.1:8080/admin/v1/ (authorised by RTGATE_ADMIN_TOKEN)" in text
    assert "console    http://127.0.0.1:8080/ui/ (sign in with RTGATE_ADMIN_TOKEN)" in text
    assert "sk-the-provider" not in text and "admin-token-value" not in text
    # As the log shows them: the redactor, which cuts what looks like a secret, leaves the
    # lines whole (it once cut the admin API's hint after "Bearer").
    assert Redactor().redact(text) == text


async def test_home_page_says_how_to_connect_from_the_address_used(
    gateway: RunningGateway,
) -> None:
    async with aiohttp.ClientSession() as http, http.get(gateway.http + "/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        page = await resp.text()
        # A security audit's find: this page alone was sent without the pages' headers.
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        assert "script-src" not in resp.headers["Content-Security-Policy"]  # default 'none'
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["X-Frame-Options"] == "DENY"
    assert f'base_url="{gateway.http}/v1"' in page
    assert f"{gateway.ws}/v1/realtime?model=gpt-realtime" in page
    assert "GET /v1/live/sessions" in page and "GET /v1/realtime/translations" in page
    # The test gateway relays to a (fake) OpenAI: models are listed by upstream kind only.
    assert "gpt-realtime-mini" in page and "OpenAI" in page
    assert "127.0.0.1:" + str(gateway.port) in page
    assert gateway.settings.upstreams["openai"].base_url not in page  # no upstream URL
    assert "off until <code>RTGATE_ADMIN_TOKEN</code>" in page
    assert 'href="/ui/playground"' in page


async def test_home_leads_to_the_console_when_an_admin_token_is_set(
    admin: RunningGateway,
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(admin.http + "/", allow_redirects=False) as resp,
    ):
        assert resp.status == 303 and resp.headers["Location"] == "/ui/"


async def test_rtgate_serve_on_a_terminal_ends_start_up_with_readable_lines(
    tmp_path: Path,
) -> None:
    """As a person sees ``make run``: a pseudo-terminal, no provider key, the engine's stages."""
    port = free_port()
    env = gateway_env(tmp_path / "home", port, RTGATE_ENGINE_TTS="tone", RTGATE_ENGINE_STT="none")
    env.pop("OPENAI_API_KEY", None)
    env.pop("NO_COLOR", None)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtgate", "serve"], stderr=follower, stdout=follower, env=env
    )
    os.close(follower)
    seen = b""
    try:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(60):
            while b"Ctrl-C" not in seen:
                seen += await loop.run_in_executor(None, os.read, leader, 65536)
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/") as r:
            assert r.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        os.close(leader)
    text = seen.decode()
    assert "\x1b[" in text  # colour on a terminal
    plain = ANSI.sub("", text)
    assert "{" not in plain  # no JSON lines
    assert re.search(r"\d\d:\d\d:\d\d \[info\s*\] rtgate \S+ is ready at http://127.0.0.1", plain)
    assert "local -> the embedded local engine" in plain
    assert "keys create --name me" in plain


async def test_v1_models_lists_what_the_routes_serve(
    admin: RunningGateway,
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
) -> None:
    """With a provider the translation model is listed; on the local engine alone, which
    refuses it, it is not."""
    local = await start_gateway(make_settings(OPENAI_API_KEY="", RTGATE_ADMIN_TOKEN=TOKEN))

    async def listed(gw: RunningGateway, key: str) -> dict[str, str]:
        async with AsyncOpenAI(api_key=key, base_url=f"{gw.http}/v1", max_retries=0) as client:
            # Each is the SDK's Model, every field it requires present (``created`` was not).
            page = await client.models.list()
            for m in page.data:
                Model.model_validate(m.model_dump())
            return {m.id: m.owned_by for m in page.data}

    assert (await listed(admin, await admin.new_key()))["gpt-realtime-translate"] == "openai"
    local_key = await local.new_key()
    offline = await listed(local, local_key)
    assert "gpt-realtime-translate" not in offline
    assert offline["gpt-realtime"] == "local" and offline["gpt-live-1"] == "local"
    # As OpenAI's, the list is a key's: the models it may use, and nothing without one (a
    # newcomer's find: anyone could read the catalog and its upstreams' names).
    policy = KeyPolicy(models=("gpt-realtime-mini",))
    _, narrow = await local.app[GATEWAY].keyring.create("narrow", policy)
    assert list(await listed(local, narrow)) == ["gpt-realtime-mini"]
    async with aiohttp.ClientSession() as http:
        for path in ("/v1/models", "/v1/models/gpt-realtime"):
            async with http.get(local.http + path) as resp:
                assert resp.status == 401, path
                assert (await resp.json())["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.AuthenticationError):
        await listed(local, "rtg_wrong")
    # One of them, as the SDK's models.retrieve asks (a newcomer's find: 404 Invalid URL).
    async with AsyncOpenAI(api_key=local_key, base_url=f"{local.http}/v1") as client:
        one = await client.models.retrieve("gpt-realtime")
        assert (one.id, one.owned_by) == ("gpt-realtime", "local")
        dated = await client.models.retrieve("gpt-realtime-2025-08-28")  # as sessions route it
        assert (dated.id, dated.owned_by) == ("gpt-realtime-2025-08-28", "local")
        with pytest.raises(openai.NotFoundError) as missing:
            await client.models.retrieve("gpt-realtime-translate")  # refused here
        assert missing.value.code == "model_not_found"

    # The operator's catalog lists every model, and says which its upstream refuses.
    async def catalog(gw: RunningGateway) -> dict[str, tuple[str, bool]]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with (
            aiohttp.ClientSession() as http,
            http.get(gw.http + "/admin/v1/models", headers=headers) as resp,
        ):
            assert resp.status == 200
            return {m["model"]: (m["upstream_kind"], m["served"]) for m in await resp.json()}

    assert (await catalog(admin))["gpt-realtime-translate"] == ("openai", True)
    offline_catalog = await catalog(local)
    assert offline_catalog["gpt-realtime-translate"] == ("local", False)
    assert offline_catalog["gpt-realtime"] == ("local", True)
