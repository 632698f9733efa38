"""A usage record survives the gateway being killed the instant its frame reached the client."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
from websockets.asyncio.client import connect

from rtgate.metering.spill import segments
from tests.process import create_key, free_port, wait_ready
from tests.provider import FakeProvider, emit_response_done


async def test_records_survive_sigkill_right_after_delivery(
    tmp_path: Path, provider: FakeProvider
) -> None:
    port = free_port()
    env = provider.gateway_env(tmp_path / "home", port)
    key = create_key(env, "crash")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtgate", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    received = 0
    try:
        await wait_ready(port, proc)
        async with connect(
            f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime",
            additional_headers={"Authorization": f"Bearer {key}"},
        ) as ws:
            assert orjson.loads(await ws.recv())["type"] == "session.created"
            for i in range(30):
                await ws.send(emit_response_done(f"resp_{i}", 100 + i, 10))
            while received < 5:
                if orjson.loads(await ws.recv())["type"] == "response.done":
                    received += 1
            os.kill(proc.pid, signal.SIGKILL)
    except Exception:
        proc.kill()
        raise
    finally:
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    db = sqlite3.connect(tmp_path / "home" / "rtgate.db")
    refs = [r[0] for r in db.execute("SELECT ref FROM usage_records ORDER BY id")]
    db.close()
    # A commit past its deadline (a loaded machine) went to the spill, fsynced: durable too.
    for segment in segments(tmp_path / "home" / "usage-spill"):
        for line in segment.read_bytes().splitlines():
            entry = orjson.loads(line)
            if entry["entry"] == "usage" and entry["ref"] not in refs:
                refs.append(entry["ref"])
    # Every response.done the client saw is in the ledger (a few more may have committed).
    assert {f"resp_{i}" for i in range(received)} <= set(refs)
    assert len(refs) == len(set(refs))
