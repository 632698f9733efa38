"""The relay's per-frame path without sockets: rtgate's against the minimal picows relay's.

Both run in one process on the same picows objects: a frame made by picows' own test helper is
handed to the listener's ``on_ws_frame`` as picows' parser hands it, and the other side's
``WSTransport.send`` builds the outgoing frame as on a socket, except that the bytes go to a
sink instead of ``send()`` (the transport is marked secure, so picows writes through the
transport: one bytes object per frame for both relays). What is left is the Python a frame
costs in each relay, with no system call and no event loop: rtgate's ``PicowsLeg`` -> pump ->
``RelayCore`` -> the other ``PicowsLeg``, against ``harness/relay_picows.py``'s listeners.

    python bench/relay_hotpath_bench.py [--frames 200000] [--audio-chars 1280] [--repeat 5]

Frames alternate direction: an upstream audio delta, then a client audio append, each with
base64 audio of ``--audio-chars`` characters (1,280 for 20 ms frames, as relay_bench sends).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import socket
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from picows import WSMsgType, WSTransport
from picows.picows import _make_test_ws_frame  # type: ignore[attr-defined]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))

from harness.anchor import Meter  # noqa: E402
from harness.effects import NoEffects  # noqa: E402
from harness.frames import audio_b64  # noqa: E402
from harness.relay_picows import ClientSide, UpstreamSide  # noqa: E402
from rtgate.catalog import Catalog  # noqa: E402
from rtgate.config import load_settings  # noqa: E402
from rtgate.metrics import Metrics  # noqa: E402
from rtgate.protocol.keepalive import Cadence  # noqa: E402
from rtgate.protocol.relay import RelayCore  # noqa: E402
from rtgate.protocol.relay_session import RelaySession  # noqa: E402
from rtgate.relay.picows_leg import PicowsLeg  # noqa: E402
from rtgate.relay.pump import Pump  # noqa: E402
from rtgate.relay.ticker import Ticker  # noqa: E402


class _Sink:
    """The transport under a ``WSTransport``: writes vanish; "secure", so picows writes
    through ``write`` rather than ``send()`` on the socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.write = deque(maxlen=0).append

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"socket": self._sock, "ssl_object": object()}.get(name, default)

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def transport(loop: asyncio.AbstractEventLoop, sock: socket.socket, client: bool) -> WSTransport:
    return WSTransport(client, _Sink(sock), logging.getLogger("bench"), loop)


def frames(audio_chars: int) -> tuple[Any, Any]:
    audio = audio_b64(audio_chars).decode()
    down = '{"type":"response.output_audio.delta","event_id":"evt_0000000000000001",'
    down += '"response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,'
    down += f'"delta":"{audio}"}}'
    up = '{"type":"input_audio_buffer.append","event_id":"evt_0000000000000001",'
    up += f'"audio":"{audio}"}}'
    return (
        _make_test_ws_frame(WSMsgType.TEXT, down.encode(), True, False),
        _make_test_ws_frame(WSMsgType.TEXT, up.encode(), True, False),
    )


def timed(n: int, sessions: list[tuple[Any, ...]], fd: Any, fu: Any) -> float:
    """ns per frame over ``n`` frames, alternating directions, one session after the other
    (as a loop serving many sessions visits them)."""
    calls = [(u.on_ws_frame, ut, c.on_ws_frame, ct) for u, ut, c, ct in sessions]
    rounds = max(1, n // (2 * len(calls)))
    gc.collect()
    t0 = time.perf_counter_ns()
    for _ in range(rounds):
        for on_down, up_tr, on_up, client_tr in calls:
            on_down(up_tr, fd)
            on_up(client_tr, fu)
    return (time.perf_counter_ns() - t0) / (rounds * 2 * len(calls))


def anchor(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> tuple[Any, ...]:
    client = ClientSide.__new__(ClientSide)
    client.t = transport(loop, sock, False)
    client.up = transport(loop, sock, True)
    client.pending = None
    client.closed = False
    upstream = UpstreamSide(client, Meter())
    return upstream, client.up, client, client.t


def rtgate(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> tuple[Any, ...]:
    settings = load_settings(None, {"OPENAI_API_KEY": "sk-bench"})
    catalog = Catalog(settings)
    session = RelaySession(
        session_id="rs_bench",
        key_id="key_bench",
        route=catalog.resolve("gpt-realtime"),
        catalog=catalog,
        opened_at=time.time(),
        opened_mono=time.monotonic(),
        max_seconds=3600,
        metered=True,
    )
    core = RelayCore(
        session,
        time.time,
        client_beat=Cadence.after(settings.heartbeat_seconds or 20.0),
        upstream_beat=Cadence(20.0, 20.0),
        opened_mono=time.monotonic(),
    )
    client_leg, upstream_leg = PicowsLeg(16 << 20), PicowsLeg(16 << 20)
    client_tr, up_tr = transport(loop, sock, False), transport(loop, sock, True)
    client_leg.on_ws_connected(client_tr)
    upstream_leg.on_ws_connected(up_tr)
    pump = Pump(
        core,
        client_leg,
        upstream_leg,
        NoEffects(),
        monotonic=time.monotonic,
        ticker=Ticker(1.0),
        metrics=Metrics(),
    )
    upstream_leg.start(pump._upstream_events)
    client_leg.start(pump._client_events)
    return upstream_leg, up_tr, client_leg, client_tr


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--frames", type=int, default=200_000)
    ap.add_argument("--audio-chars", type=int, default=1280)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sessions", type=int, default=300, help="visited in turn")
    a = ap.parse_args()
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    fd, fu = frames(a.audio_chars)
    relays = {
        "picows": [anchor(loop, sock) for _ in range(a.sessions)],
        "rtgate": [rtgate(loop, sock) for _ in range(a.sessions)],
    }
    best: dict[str, float] = {}
    for _ in range(a.repeat):
        for name, r in relays.items():
            ns = timed(a.frames, r, fd, fu)
            best[name] = min(best.get(name, ns), ns)
    for name, ns in best.items():
        print(f"{name:8s} {ns / 1000:6.3f} µs/frame (best of {a.repeat} x {a.frames} frames)")
    print(f"rtgate - picows: {(best['rtgate'] - best['picows']) / 1000:.3f} µs/frame")
    sock.close()


if __name__ == "__main__":
    asyncio.run(main())
