"""A picows server's CPU per frame on uvloop's transport and on aiofastnet's, in one run.

The front door (``relay/front_door.py``) hands each relayed client connection to picows on the
transport its listening socket gave it; the upstream's dial and picows' own servers use
aiofastnet's. This measures what that choice costs per frame with nothing else in the process:
a picows echo server (pinned to CPU 1) on each transport in turn, N clients in this process
(CPU 0) sending a 1.4 KB text frame (a 20 ms audio append) every ``1/--fps`` s each; the
server's user and system CPU over ``--seconds`` per frame it read or wrote. ``--idle``: the
server's resident memory per open, silent connection instead (RSS with ``--n`` connections
open, less RSS before them).

    python bench/transport_echo_bench.py [--n 300] [--fps 50] [--seconds 12] [--runs 2] [--idle]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
from typing import Any

import psutil
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect, ws_create_server

PAYLOAD = b'{"type":"input_audio_buffer.append","audio":"' + b"A" * 1360 + b'"}'


class _Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            transport.send(WSMsgType.TEXT, frame.get_payload_as_memoryview())


def _server(port: int, fastnet: bool, ready: Any) -> None:
    async def serve() -> None:
        await ws_create_server(lambda _: _Echo(), "127.0.0.1", port, use_aiofastnet=fastnet)
        ready.put(True)
        await asyncio.sleep(3600)

    os.sched_setaffinity(0, {1})
    uvloop.run(serve())


class _Client(WSListener):
    received = 0

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        _Client.received += 1


async def _idle(pid: int, port: int, a: argparse.Namespace) -> float:
    """The server's RSS per open connection, in KB."""
    proc = psutil.Process(pid)
    await asyncio.sleep(1)
    before = proc.memory_info().rss
    clients = [(await ws_connect(_Client, f"ws://127.0.0.1:{port}/"))[0] for _ in range(a.n)]
    await asyncio.sleep(2)
    after = proc.memory_info().rss
    for t in clients:
        t.disconnect()
    return (after - before) / a.n / 1024


async def _measure(pid: int, port: int, a: argparse.Namespace) -> tuple[float, float, float]:
    clients = [(await ws_connect(_Client, f"ws://127.0.0.1:{port}/"))[0] for _ in range(a.n)]

    async def send() -> None:
        while True:
            for t in clients:
                t.send(WSMsgType.TEXT, PAYLOAD)
            await asyncio.sleep(1 / a.fps)

    sender = asyncio.ensure_future(send())
    await asyncio.sleep(3)
    proc = psutil.Process(pid)
    c0, n0 = proc.cpu_times(), _Client.received
    await asyncio.sleep(a.seconds)
    c1, n1 = proc.cpu_times(), _Client.received
    sender.cancel()
    frames = 2 * (n1 - n0)  # each echoed frame was read and written
    return (
        frames / a.seconds,
        (c1.user - c0.user) / frames * 1e6,
        (c1.system - c0.system) / frames * 1e6,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--fps", type=float, default=50)
    ap.add_argument("--seconds", type=float, default=12)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--idle", action="store_true", help="RSS per idle connection instead")
    a = ap.parse_args()
    os.sched_setaffinity(0, {0})
    port = 9180
    for run in range(1, a.runs + 1):
        for name, fastnet in (("uvloop", False), ("aiofastnet", True)):
            port += 1
            ready: Any = mp.Queue()
            server = mp.Process(target=_server, args=(port, fastnet, ready), daemon=True)
            server.start()
            ready.get(timeout=30)
            try:
                if a.idle:
                    kb = uvloop.run(_idle(server.pid or 0, port, a))
                    print(f"run {run} {name:10s} N={a.n} {kb:6.1f} KB per idle connection")
                    continue
                rate, user, system = uvloop.run(_measure(server.pid or 0, port, a))
            finally:
                server.kill()
                server.join()
            print(
                f"run {run} {name:10s} N={a.n} {rate:7.0f} frames/s  user {user:5.2f} + "
                f"sys {system:5.2f} = {user + system:5.2f} µs/frame",
                flush=True,
            )


if __name__ == "__main__":
    main()
