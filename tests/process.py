"""Running the gateway as a user does: a separate ``python -m rtgate`` process."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path


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
