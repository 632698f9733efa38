"""Running the gateway as a user does: a separate ``python -m rtgate`` process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        assert proc.poll() is None, "gateway exited during start-up"
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError("gateway did not start")


def gateway_env(home: Path, port: int, **env: str) -> dict[str, str]:
    """The environment of a gateway process of its own: data directory, port, no stray config."""
    out = {**os.environ, "RTGATE_HOME": str(home), "RTGATE_PORT": str(port), **env}
    out.pop("RTGATE_DATABASE_URL", None)
    out.pop("RTGATE_CONFIG", None)
    return out


def create_key(env: dict[str, str], name: str) -> str:
    """``rtgate keys create`` as a user runs it; the secret is the last line."""
    out = subprocess.run(
        [sys.executable, "-m", "rtgate", "keys", "create", "--name", name],
        env=env,
        capture_output=True,
        check=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


def cli_json(env: dict[str, str], *args: str) -> Any:
    """``rtgate ARGS --json`` as a user runs it, its output parsed."""
    out = subprocess.run(
        [sys.executable, "-m", "rtgate", *args, "--json"],
        env=env,
        capture_output=True,
        check=True,
        text=True,
    )
    return orjson.loads(out.stdout)


async def readiness_settles(port: int, status: int, in_a_row: int = 12) -> None:
    """Wait until ``in_a_row`` fresh connections in a row answer ``/readyz`` with ``status``:
    with ``--workers`` the kernel spreads them over every worker (``SO_REUSEPORT``). A reset
    fails the wait: while any worker serves, every worker keeps its listener (workers.py)."""
    streak = 0
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(500):
            async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                streak = streak + 1 if r.status == status else 0
            if streak == in_a_row:
                return
            if not streak:
                await asyncio.sleep(0.02)
    raise AssertionError(f"/readyz did not settle on {status}")


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """Kill a gateway that is still running, its workers first (they would outlive a killed
    parent, holding the port)."""
    if proc.poll() is not None:
        return
    try:
        workers = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    for w in workers:
        with contextlib.suppress(psutil.NoSuchProcess):  # it exited meanwhile
            w.kill()
    proc.kill()
    proc.wait()
