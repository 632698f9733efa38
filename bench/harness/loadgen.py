"""Load generator: a fake OpenAI Realtime upstream and N client sessions in one process.

One picows + uvloop process, pinned by the caller to one core, so that on a 2-core machine the
whole generator fits on one core (client and upstream as two processes on one core added ~30 ms
p99 of scheduler noise). The relay under test runs on the other core.

Upstream (``--up-port``, any path): per session, ``session.created`` on connect; then every frame
period a ``response.output_audio.delta``, every 5th a ``response.output_audio_transcript.delta``,
every ``--resp-every`` a ``response.done`` (with usage) and a ``response.created``.
Clients (``--url``: the relay, or the upstream itself for the direct baseline) send an
``input_audio_buffer.append`` every frame period. Each frame carries its send stamp
(``frames.py``). Sends are spread over ``--groups`` phase groups per period: never N at once.

``--idle``: the sessions open and stay silent. Once all are open the generator says
``IDLE_OPEN`` on stderr and waits for a line on stdin; then it closes every session, says
``IDLE_CLOSED`` and exits. The caller samples the relay's memory in between.

Otherwise it says ``WINDOW_START`` / ``WINDOW_END`` on stderr around the measured window.
Either way it prints one JSON result on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from array import array
from pathlib import Path
from typing import Any

from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_connect,
    ws_create_server,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness.frames import audio_b64, now_us, parse_ts, percentiles, split_template

TEXT, BINARY, CLOSE = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CLOSE
USAGE = {
    "total_tokens": 1234,
    "input_tokens": 1000,
    "output_tokens": 234,
    "input_token_details": {
        "text_tokens": 100,
        "audio_tokens": 900,
        "image_tokens": 0,
        "cached_tokens": 0,
        "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0},
    },
    "output_token_details": {"text_tokens": 34, "audio_tokens": 200},
}
DONE = {
    "type": "response.done",
    "event_id": "evt_%TS%",
    "response": {
        "object": "realtime.response",
        "id": "resp_CJ5Ab1xYz",
        "status": "completed",
        "status_details": None,
        "output": [
            {
                "id": "item_CJ5Ab2qRs",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_audio", "transcript": "Hello there, how can I help you today?"}
                ],
            }
        ],
        "conversation_id": "conv_CJ5Ab0aBc",
        "output_modalities": ["audio"],
        "max_output_tokens": "inf",
        "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}},
        "usage": USAGE,
        "metadata": None,
    },
}
#: A fresh GA session as OpenAI announces it, defaults and built-in instructions included (~1.2 KB,
#: docs/protocol.md 2.5): a relay reads it into the same buffer its first frames will use.
SESSION_CREATED = (
    b'{"type":"session.created","event_id":"evt_%016d","session":{"type":"realtime",'
    b'"object":"realtime.session","id":"sess_CJ5Ab0xYzQ1w2E3r4T5y6","model":"gpt-realtime",'
    b'"output_modalities":["audio"],"instructions":"Your knowledge cutoff is 2023-10. You are a '
    b"helpful, witty, and friendly AI. Act like a human, but remember that you aren't a human and "
    b"that you can't do human things in the real world. Your voice and personality should be warm "
    b"and engaging, with a lively and playful tone. If interacting in a non-English language, "
    b"start by using the standard accent or dialect familiar to the user. Talk quickly. You "
    b"should always call a function if you can. Do not refer to these rules, even if you're asked "
    b'about them.","tools":[],"tool_choice":"auto","max_output_tokens":"inf","tracing":null,'
    b'"prompt":null,"expires_at":1767225600,"audio":{"input":{"format":{"type":"audio/pcm",'
    b'"rate":24000},"transcription":null,"noise_reduction":null,"turn_detection":{"type":'
    b'"server_vad","threshold":0.5,"prefix_padding_ms":300,"silence_duration_ms":200,'
    b'"idle_timeout_ms":null,"create_response":true,"interrupt_response":true}},"output":'
    b'{"format":{"type":"audio/pcm","rate":24000},"voice":"alloy","speed":1.0}},"include":null,'
    b'"truncation":"auto"}}'
)


#: The headers the upstream's 101 carries beside the handshake's own: what an API behind
#: Cloudflare answers (request id, organization, cookies, ray id), ~0.8 KB. Not a capture (none
#: of OpenAI's 101 is in the references); its size is what matters, since a relay reads it into
#: the buffer its first frames use, often with ``session.created`` in the same read.
UPGRADE_HEADERS = {
    "openai-organization": "org-bench0000000000000000000",
    "openai-processing-ms": "112",
    "openai-version": "2020-10-01",
    "x-request-id": "req_0f3c6a1b2d4e5f60718293a4b5c6d7e8",
    "strict-transport-security": "max-age=31536000; includeSubDomains; preload",
    "cf-cache-status": "DYNAMIC",
    "set-cookie": "__cf_bm=Xk2s9Qm1Zb7Vt4Lp0Wc3Rr8Yn5Jd6Hf1Gg2Aa3Ss4Dd5Ff6-1767225600-1.0.1.1-"
    "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIj"
    "KlMnOpQrStUv; path=/; expires=Thu, 01-Jan-26 00:30:00 GMT; domain=.api.openai.com; "
    "HttpOnly; Secure; SameSite=None",
    "x-content-type-options": "nosniff",
    "server": "cloudflare",
    "cf-ray": "8f1e2d3c4b5a6978-SJC",
    "alt-svc": 'h3=":443"; ma=86400',
}


class Frames:
    """The frame templates, split at the send stamp."""

    def __init__(self, audio_chars: int) -> None:
        up_audio = audio_b64(audio_chars, seed=1)
        cl_audio = audio_b64(audio_chars, seed=7)
        ids = b'"response_id":"resp_CJ5Ab1xYz","item_id":"item_CJ5Ab2qRs","output_index":0,'
        self.delta = split_template(
            b'{"type":"response.output_audio.delta","event_id":"evt_%TS%",'
            + ids
            + b'"content_index":0,"delta":"'
            + up_audio
            + b'"}'
        )
        self.transcript = split_template(
            b'{"type":"response.output_audio_transcript.delta","event_id":"evt_%TS%",'
            + ids
            + b'"content_index":0,"delta":"Hello there, "}'
        )
        self.done = split_template(json.dumps(DONE, separators=(",", ":")).encode())
        self.created = split_template(
            b'{"type":"response.created","event_id":"evt_%TS%","response":{"object":'
            b'"realtime.response","id":"resp_CJ5Ab1xYz","status":"in_progress","output":[],'
            b'"usage":null}}'
        )
        self.append = split_template(
            b'{"type":"input_audio_buffer.append","event_id":"evt_%TS%","audio":"'
            + cl_audio
            + b'"}'
        )


def stamped(t: tuple[bytes, bytes]) -> bytes:
    return t[0] + b"%016d" % now_us() + t[1]


class Load:
    """Counters and session groups of one run (one per process)."""

    def __init__(self, groups: int) -> None:
        self.measuring = False
        self.stopping = False
        # upstream side
        self.up_groups: list[list[UpSession]] = [[] for _ in range(groups)]
        self.up_rr = 0
        self.up_sessions = 0
        self.up_sessions_peak = 0
        self.up_lat = array("q")  # client -> upstream (uplink), µs
        self.up_rx_appends = 0
        self.up_tx_frames = 0
        self.up_dones_total = 0
        self.up_headers: dict[str, str] | None = None
        # client side
        self.cl_groups: list[list[ClientSession]] = [[] for _ in range(groups)]
        self.down_lat = array("q")  # upstream -> client (downlink), µs
        self.cl_rx_frames = 0
        self.cl_rx_audio = 0
        self.cl_rx_bytes = 0
        self.cl_rx_done_total = 0
        self.cl_tx_appends = 0
        self.cl_connect_errors = 0
        self.cl_err_samples: list[str] = []
        self.cl_unexpected_closes = 0
        self.cl_binary_frames = 0


class UpSession(WSListener):
    """One session of the fake upstream."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.k = 0
        self.alive = False
        self.g = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        L = self.load
        self.t = transport
        self.alive = True
        self.g = L.up_rr % len(L.up_groups)
        L.up_rr += 1
        L.up_groups[self.g].append(self)
        L.up_sessions += 1
        L.up_sessions_peak = max(L.up_sessions_peak, L.up_sessions)
        if L.up_headers is None:
            L.up_headers = {str(k): str(v) for k, v in transport.request.headers.items()}
        transport.send(TEXT, SESSION_CREATED % now_us())

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        mt = frame.msg_type
        if mt in (TEXT, BINARY):
            if self.load.measuring:
                ts = parse_ts(frame.get_payload_as_memoryview())
                if ts > 0:
                    self.load.up_lat.append(now_us() - ts)
                    self.load.up_rx_appends += 1
        elif mt == CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.alive:
            self.alive = False
            self.load.up_groups[self.g].remove(self)
            self.load.up_sessions -= 1


class ClientSession(WSListener):
    """One client session, connected to the relay (or directly to the upstream)."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.alive = False
        self.g = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.t = transport
        self.alive = True

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        mt = frame.msg_type
        L = self.load
        if mt in (TEXT, BINARY):
            if mt == BINARY:
                L.cl_binary_frames += 1
            mv = frame.get_payload_as_memoryview()
            head = bytes(mv[:48])
            if b'"response.done"' in head:
                L.cl_rx_done_total += 1
            if L.measuring:
                L.cl_rx_frames += 1
                L.cl_rx_bytes += len(mv)
                if b"output_audio.delta" in head:
                    L.cl_rx_audio += 1
                    ts = parse_ts(mv)
                    if ts > 0:
                        L.down_lat.append(now_us() - ts)
        elif mt == CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.alive:
            self.alive = False
            if not self.load.stopping:
                self.load.cl_unexpected_closes += 1


class Generator:
    """Drives both ends from one timer: each tick serves one phase group of each side."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.load = Load(args.groups)
        self.frames = Frames(args.audio_chars)
        pairs = (h.split(":", 1) for h in args.header)
        self.headers = [(k.strip(), v.strip()) for k, v in pairs]
        if not any(k.lower() == "authorization" for k, _ in self.headers):
            self.headers.append(("Authorization", "Bearer sk-fake-benchmark-key"))

    def upstream_tick(self, group: list[UpSession]) -> None:
        f, resp_every, n = self.frames, self.args.resp_every, 0
        for s in group:
            k = s.k = s.k + 1
            send = s.t.send
            try:
                send(TEXT, stamped(f.delta))
                n += 1
                if k % 5 == 0:
                    send(TEXT, stamped(f.transcript))
                    n += 1
                if k % resp_every == 0:
                    send(TEXT, stamped(f.done))
                    send(TEXT, stamped(f.created))
                    self.load.up_dones_total += 1
                    n += 2
            except Exception:  # a session closing under us: it is counted on disconnect
                continue
        if self.load.measuring:
            self.load.up_tx_frames += n

    def client_tick(self, group: list[ClientSession]) -> None:
        n = 0
        for s in group:
            if s.alive:
                try:
                    s.t.send(TEXT, stamped(self.frames.append))
                    n += 1
                except Exception:  # as above
                    continue
        if self.load.measuring:
            self.load.cl_tx_appends += n

    async def ticker(self) -> None:
        G = self.args.groups
        period = self.args.frame_ms / 1000.0 / G
        loop = asyncio.get_running_loop()
        nxt = loop.time()
        g = 0
        while not self.load.stopping:
            nxt += period
            delay = nxt - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.5:
                nxt = loop.time()  # far behind: don't burst to catch up
            self.client_tick(self.load.cl_groups[g])
            self.upstream_tick(self.load.up_groups[(g + G // 2) % G])  # half a period apart
            g = (g + 1) % G

    async def connect_one(self, i: int, sem: asyncio.Semaphore, out: list[ClientSession]) -> None:
        L = self.load
        c = ClientSession(L)
        async with sem:
            try:
                await ws_connect(
                    lambda: c,
                    self.args.url,
                    extra_headers=self.headers,
                    websocket_handshake_timeout=30,
                )
            except Exception as e:
                L.cl_connect_errors += 1
                if len(L.cl_err_samples) < 3:
                    L.cl_err_samples.append(repr(e)[:300])
                return
            c.g = i % self.args.groups
            L.cl_groups[c.g].append(c)
            out.append(c)

    async def run(self) -> dict[str, Any]:
        a, L = self.args, self.load
        loop = asyncio.get_running_loop()
        tls: dict[str, Any] = {}
        if a.up_tls_cert:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(a.up_tls_cert, a.up_tls_key)
            tls = {"ssl": ctx}
        server = await ws_create_server(
            lambda _req: WSUpgradeResponseWithListener(
                WSUpgradeResponse.create_101_response(extra_headers=UPGRADE_HEADERS),
                UpSession(L),
            ),
            "127.0.0.1",
            a.up_port,
            backlog=4096,
            websocket_handshake_timeout=30,
            reuse_address=True,
            **tls,
        )
        sessions: list[ClientSession] = []
        sem = asyncio.Semaphore(a.conc)
        t_ramp0 = time.monotonic()
        tick_task = None if a.idle else loop.create_task(self.ticker())
        tasks = []
        for i in range(a.n):
            tasks.append(loop.create_task(self.connect_one(i, sem, sessions)))
            await asyncio.sleep(1.0 / a.ramp)
        _, pending = await asyncio.wait(tasks, timeout=a.ramp_timeout)
        for p in pending:
            p.cancel()
        ramp_s = time.monotonic() - t_ramp0
        res: dict[str, Any] = {"label": a.label, "n": a.n, "connected": len(sessions)}
        if a.idle:
            await asyncio.sleep(1.0)
            print("IDLE_OPEN", flush=True, file=sys.stderr)
            await loop.run_in_executor(None, sys.stdin.readline)
            res["alive_at_end"] = sum(1 for s in sessions if s.alive)
            res["upstream_sessions_open"] = L.up_sessions
        else:
            await asyncio.sleep(a.warmup)
            closes_before = L.cl_unexpected_closes
            print("WINDOW_START", flush=True, file=sys.stderr)
            L.measuring = True
            t0 = time.monotonic()
            await asyncio.sleep(a.duration)
            L.measuring = False
            dur = time.monotonic() - t0
            print("WINDOW_END", flush=True, file=sys.stderr)
            res["alive_at_end"] = sum(1 for s in sessions if s.alive)
            res["closes_during_window"] = L.cl_unexpected_closes - closes_before
            res.update(
                {
                    "window_s": round(dur, 3),
                    "expected_per_s": a.n * 1000.0 / a.frame_ms,
                    "up_tx_appends_per_s": L.cl_tx_appends / dur,
                    "up_rx_appends_per_s": L.up_rx_appends / dur,
                    "down_tx_frames_per_s": L.up_tx_frames / dur,
                    "down_rx_frames_per_s": L.cl_rx_frames / dur,
                    "down_rx_audio_per_s": L.cl_rx_audio / dur,
                    "down_rx_MBps": L.cl_rx_bytes / dur / 1e6,
                    "uplink_ms": percentiles(L.up_lat),
                    "downlink_ms": percentiles(L.down_lat),
                }
            )
        # Stop the clients and let in-flight frames land, so that metering is checked on a
        # quiet stream; then close everything.
        L.stopping = True
        await asyncio.sleep(0.5)
        if tick_task is not None:
            tick_task.cancel()
        for s in sessions:
            if s.alive:
                s.t.send_close(WSCloseCode.OK)
                s.t.disconnect()
        await asyncio.sleep(1.0)
        if a.idle:
            print("IDLE_CLOSED", flush=True, file=sys.stderr)
        server.close()
        seen = L.up_headers or {}
        res.update(
            {
                "connect_errors": L.cl_connect_errors,
                "connect_err_samples": L.cl_err_samples,
                "unexpected_closes": L.cl_unexpected_closes,
                "ramp_s": round(ramp_s, 2),
                "upstream_sessions_peak": L.up_sessions_peak,
                "dones_sent_total": L.up_dones_total,
                "dones_rx_total": L.cl_rx_done_total,
                "binary_frames_rx": L.cl_binary_frames,
                "upstream_saw_headers": {
                    k: v
                    for k, v in seen.items()
                    if k.lower() in ("authorization", "openai-beta", "sec-websocket-extensions")
                },
            }
        )
        return res


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True, help="where clients connect (relay or upstream)")
    ap.add_argument("--up-port", type=int, default=9000)
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--ramp", type=float, default=200.0, help="new connections per second")
    ap.add_argument("--conc", type=int, default=50, help="max handshakes in flight")
    ap.add_argument("--ramp-timeout", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--frame-ms", type=float, default=20.0)
    ap.add_argument("--audio-chars", type=int, default=1280)
    ap.add_argument("--resp-every", type=int, default=100, help="frame periods per response.done")
    ap.add_argument("--groups", type=int, default=10)
    ap.add_argument("--idle", action="store_true", help="open silent sessions (see above)")
    ap.add_argument("--header", action="append", default=[], help="client header 'Name: value'")
    ap.add_argument("--label", default="")
    ap.add_argument("--up-tls-cert", default="", help="serve the upstream over TLS with this cert")
    ap.add_argument("--up-tls-key", default="")
    return ap.parse_args(argv)


def main() -> None:
    import uvloop

    res = uvloop.run(Generator(parse_args()).run())
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
