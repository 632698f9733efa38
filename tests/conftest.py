from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from rtgate.api.app import create_app, set_local_base_url
from rtgate.api.request_timeouts import app_runner
from rtgate.clock import Clock
from rtgate.config import Settings, load_settings
from rtgate.relay.endpoint import GATEWAY, relay_door
from rtgate.relay.front_door import FrontDoorSite
from rtgate.store.connections import connect
from rtgate.store.migrate import drop_all
from rtgate.store.port import Store
from tests.provider import PROVIDER_KEY, FakeProvider


@dataclass
class RunningGateway:
    app: web.Application
    runner: web.AppRunner
    port: int
    settings: Settings

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def new_key(self, name: str = "alice") -> str:
        _, secret = await self.app[GATEWAY].keyring.create(name)
        return secret

    @property
    def store(self) -> Any:
        return self.app[GATEWAY].store


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test that needs Redis, PostgreSQL or the voice frameworks fails, never skips, without
    them: ``make test`` leaves the ``redis``, ``postgres`` and ``frameworks`` tests out on
    purpose; ``make test-redis``, ``make test-postgres`` and ``make test-frameworks`` run
    them."""
    if item.get_closest_marker("redis") and not os.environ.get("RTGATE_TEST_REDIS_URL"):
        pytest.fail(
            "needs Redis: set RTGATE_TEST_REDIS_URL, e.g. redis://127.0.0.1:6379/0"
            " (make test-redis does)",
            pytrace=False,
        )
    if item.get_closest_marker("frameworks") and not os.environ.get(
        "RTGATE_TEST_FRAMEWORKS_PYTHON"
    ):
        pytest.fail(
            "needs pipecat and LiveKit Agents: set RTGATE_TEST_FRAMEWORKS_PYTHON to the Python of"
            " an environment installed from requirements/frameworks.txt (make test-frameworks"
            " builds .venv-frameworks)",
            pytrace=False,
        )
    database = os.environ.get("RTGATE_TEST_DATABASE_URL", "")
    if item.get_closest_marker("postgres") and not database.startswith("postgresql"):
        pytest.fail(
            "needs PostgreSQL: set RTGATE_TEST_DATABASE_URL, e.g. "
            "postgresql+asyncpg://postgres@127.0.0.1:5432/test (make test-postgres does)",
            pytrace=False,
        )


async def events_until(ws: Any, etype: str) -> list[dict[str, Any]]:
    """Read ``ws`` (a websockets client) up to and including the first ``etype`` event."""
    events: list[dict[str, Any]] = []
    while not events or events[-1]["type"] != etype:
        events.append(orjson.loads(await ws.recv()))
    return events


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    p = FakeProvider()
    await p.start()
    yield p
    await p.stop()


async def database_url(tmp_path: Path) -> str:
    """SQLite in the test's directory, or the server named by ``RTGATE_TEST_DATABASE_URL``
    (the PostgreSQL suite), emptied before each test."""
    url = os.environ.get("RTGATE_TEST_DATABASE_URL")
    if not url:
        return f"sqlite:///{tmp_path / 'rtgate.db'}"
    await _reset(url)
    return url


async def _reset(url: str) -> None:
    db = connect(url, timeout=10.0, command_timeout=10.0)
    await db.run(drop_all(), write=True)
    await db.close()


@pytest.fixture
async def db_url(tmp_path: Path) -> str:
    return await database_url(tmp_path)


@pytest.fixture
def make_settings(tmp_path: Path, provider: FakeProvider, db_url: str) -> Callable[..., Settings]:
    def make(**env: str) -> Settings:
        base = {
            "RTGATE_HOME": str(tmp_path / "home"),
            "RTGATE_DATABASE_URL": db_url,
            "RTGATE_OPENAI_BASE_URL": provider.base_url,
            "OPENAI_API_KEY": PROVIDER_KEY,
        }
        base.update(env)
        return load_settings(None, base)

    return make


@pytest.fixture
async def start_gateway() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def start(
        settings: Settings,
        clock: Clock | None = None,
        expiry_check_interval: float = 1.0,
        store: Store | None = None,
    ) -> RunningGateway:
        app = create_app(
            settings, clock=clock, expiry_check_interval=expiry_check_interval, store=store
        )
        runner = app_runner(app, settings)
        await runner.setup()
        # As ``rtgate serve`` listens: the relay on picows, the rest on aiohttp, one port.
        site = FrontDoorSite(
            runner,
            relay_door(app),
            head_timeout=settings.request_timeout_seconds,
            host="127.0.0.1",
        )
        await site.start()
        port = site.port
        set_local_base_url(app, "127.0.0.1", port)
        runners.append(runner)
        return RunningGateway(app, runner, port, settings)

    yield start
    for r in runners:
        await r.cleanup()
    await asyncio.sleep(0)


@pytest.fixture
async def gateway(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any]
) -> RunningGateway:
    gw: RunningGateway = await start_gateway(make_settings())
    return gw


#: The admin token of the ``admin`` gateway.
TOKEN = "adm_" + "T0ken" * 8


@pytest.fixture
async def admin(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any]
) -> RunningGateway:
    """A gateway with the admin API (and the console) on: ``RTGATE_ADMIN_TOKEN=TOKEN``."""
    gw: RunningGateway = await start_gateway(make_settings(RTGATE_ADMIN_TOKEN=TOKEN))
    return gw
