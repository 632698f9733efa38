"""``rtgate serve`` as a process: workers sharing the port, and a clean shutdown."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import psutil
import pytest
from websockets.asyncio.client import connect

from rtgate.config import Settings, load_settings
from rtgate.server import unshared_workers_warning
from tests.process import create_key, free_port, gateway_env, wait_ready
from tests.provider import PROVIDER_KEY, FakeProvider


@pytest.mark.parametrize("upstream", ["provider", "local-engine"])
async def test_workers_share_the_port_and_shut_down_cleanly(
    tmp_path: Path, provider: FakeProvider, upstream: str
) -> None:
    port = free_port()
    env = gateway_env(
        tmp_path / "home",
        port,
        RTGATE_OPENAI_BASE_URL=provider.base_url,
        OPENAI_API_KEY=PROVIDER_KEY if upstream == "provider" else "",
    )
    key = create_key(env, "w")
    log_file = (tmp_path / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtgate", "serve", "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
    )
    try:
        await wait_ready(port, proc)
        await asyncio.sleep(0.5)
        workers = psutil.Process(proc.pid).children()
        assert len(workers) >= 2
        url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
        conns = [
            await connect(url, additional_headers={"Authorization": f"Bearer {key}"})
            for _ in range(16)
        ]
        for ws in conns:
            assert orjson.loads(await ws.recv())["type"] == "session.created"
        proc.send_signal(signal.SIGTERM)
        for ws in conns:
            async with asyncio.timeout(10):
                heard = [orjson.loads(msg) async for msg in ws]
            # Told why first (as every session the gateway ends), then going away.
            assert [e["error"]["code"] for e in heard] == ["server_shutting_down"]
            assert (ws.close_code, ws.close_reason) == (1001, "server_error.server_shutting_down")
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log_file.close()
    logs = (tmp_path / "gateway.log").read_text()
    assert "is ready at http://127.0.0.1" in logs
    assert PROVIDER_KEY not in logs and key not in logs
    # Workers without Redis count a key's limits each on their own: the operator is told.
    assert "2 workers without redis_url" in logs


def test_workers_sharing_redis_or_a_single_process_need_no_warning(tmp_path: Path) -> None:
    def settings(**env: str) -> Settings:
        return load_settings(None, {"RTGATE_HOME": str(tmp_path), **env})

    assert unshared_workers_warning(settings()) is None
    assert unshared_workers_warning(settings(RTGATE_WORKERS="3")) is not None
    shared = settings(RTGATE_WORKERS="3", RTGATE_REDIS_URL="redis://127.0.0.1:6379/0")
    assert unshared_workers_warning(shared) is None
