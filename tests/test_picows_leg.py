"""``PicowsLeg`` over real loopback sockets: the server side (a client's socket) driven by a raw
client that sends exactly the frames RFC 6455 allows and some it does not, and the client side
(the upstream dial) against an aiohttp server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web
from picows import ws_create_server

from rtgate.errors import UpstreamError, UpstreamRefused
from rtgate.relay.picows_leg import PicowsLeg, connect
from rtgate.tls import server_context, upstream_context
from tests.raw_ws import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, RawClient, frame
from tests.test_tls import dev_cert, pinned_context

MAX = 4096


@dataclass
class Pump:
    """What a pump sees of one leg; echoes each message back when ``echo``."""

    leg: PicowsLeg
    echo: bool = True
    messages: list[str | bytes] = field(default_factory=list)
    closes: list[tuple[int, str]] = field(default_factory=list)
    heard: int = 0
    lost: bool = False
    drains: int = 0
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    got: asyncio.Event = field(default_factory=asyncio.Event)

    def on_text(self, data: bytes) -> None:
        assert isinstance(data, bytes)  # the UTF-8 payload, recorded as text here
        self.messages.append(data.decode())
        self.got.set()
        if self.echo:
            self.leg.send_text(data)

    def on_binary(self, data: bytes) -> None:
        self.messages.append(data)
        self.got.set()
        if self.echo:
            self.leg.send_bytes(data)

    def on_heard(self) -> None:
        self.heard += 1

    def on_close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))
        self.ended.set()

    def on_lost(self) -> None:
        self.lost = True
        self.ended.set()

    def on_drain(self) -> None:
        self.drains += 1
        self.drained.set()


@dataclass
class Served:
    port: int
    legs: list[PicowsLeg]
    #: Each new leg's pump (``start`` at once), or the leg itself when the test binds it.
    arrivals: asyncio.Queue[Pump | PicowsLeg] = field(default_factory=asyncio.Queue)
    start_at_once: bool = True
    clients: list[RawClient] = field(default_factory=list)

    async def open(self) -> RawClient:
        client = await RawClient.open(self.port)
        self.clients.append(client)
        return client

    async def pump(self) -> Pump:
        arrival = await asyncio.wait_for(self.arrivals.get(), 5)
        assert isinstance(arrival, Pump)
        return arrival


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    state = Served(0, [])

    def opened(leg: PicowsLeg) -> None:
        state.legs.append(leg)
        if state.start_at_once:
            pump = Pump(leg)
            leg.start(pump)
            state.arrivals.put_nowait(pump)
        else:
            state.arrivals.put_nowait(leg)

    server = await ws_create_server(
        lambda _request: PicowsLeg(MAX, on_open=opened, close_timeout=0.5),
        "127.0.0.1",
        0,
        enable_auto_pong=False,
        max_frame_size=MAX,
    )
    state.port = server.sockets[0].getsockname()[1]
    yield state
    for client in state.clients:
        await client.shut()
    for leg in state.legs:
        leg.sever()
        await asyncio.wait_for(leg.wait_closed(), 5)
    server.close()
    await server.wait_closed()


async def test_text_and_binary_messages_reach_the_pump_and_go_back(served: Served) -> None:
    client = await served.open()
    assert client.status == 101
    client.send(TEXT, "héllo".encode())
    client.send(BINARY, b"\x00\x01\xff")
    assert await client.recv() == (TEXT, "héllo".encode())
    assert await client.recv() == (BINARY, b"\x00\x01\xff")
    assert (await served.pump()).messages == ["héllo", b"\x00\x01\xff"]


async def test_a_message_of_exactly_the_limit_passes_and_one_byte_more_is_1009(
    served: Served,
) -> None:
    client = await served.open()
    client.send(BINARY, b"x" * MAX)
    assert await client.recv() == (BINARY, b"x" * MAX)
    client.send(TEXT, b"y" * (MAX + 1))
    assert (await client.recv_close())[0] == 1009
    pump = await served.pump()
    await asyncio.wait_for(pump.ended.wait(), 5)
    assert [code for code, _ in pump.closes] == [1009]
    assert pump.messages == [b"x" * MAX]
    assert await client.eof()


async def test_a_fragmented_message_is_reported_whole_and_bounded_as_a_whole(
    served: Served,
) -> None:
    client = await served.open()
    client.send(TEXT, "é".encode()[:1], fin=False)  # a character split across frames
    client.send(PING, b"mid")  # control frames may come between fragments (RFC 6455 5.4)
    client.send(CONTINUATION, "é".encode()[1:] + b"!", fin=True)
    assert await client.recv() == (PONG, b"mid")
    assert await client.recv() == (TEXT, "é!".encode())
    half = MAX // 2
    client.send(BINARY, b"a" * half, fin=False)
    client.send(CONTINUATION, b"b" * (MAX - half), fin=True)
    assert await client.recv() == (BINARY, b"a" * half + b"b" * (MAX - half))
    client.send(BINARY, b"a" * half, fin=False)
    client.send(CONTINUATION, b"b" * (MAX - half + 1), fin=True)
    assert (await client.recv_close())[0] == 1009
    pump = await served.pump()
    await asyncio.wait_for(pump.ended.wait(), 5)
    assert pump.closes == [(1009, "message too big")]
    assert len(pump.messages) == 2


@pytest.mark.parametrize("fragmented", [False, True])
async def test_invalid_utf8_text_is_closed_with_1007(served: Served, fragmented: bool) -> None:
    client = await served.open()
    if fragmented:
        client.send(TEXT, b"ok", fin=False)
        client.send(CONTINUATION, b"\xff\xfe", fin=True)
    else:
        client.send(TEXT, b"ok \xff\xfe")
    assert (await client.recv_close())[0] == 1007
    pump = await served.pump()
    await asyncio.wait_for(pump.ended.wait(), 5)
    assert [code for code, _ in pump.closes] == [1007]
    assert pump.messages == []


async def test_reserved_bits_and_stray_continuations_are_protocol_errors(served: Served) -> None:
    client = await served.open()
    client.send(TEXT, b"compressed?", rsv1=True)
    assert (await client.recv_close())[0] == 1002
    other = await served.open()
    other.send(CONTINUATION, b"orphan")
    assert (await other.recv_close())[0] == 1002
    pumps = [await served.pump(), await served.pump()]
    assert [p.closes[0][0] for p in pumps] == [1002, 1002]


async def test_a_ping_is_answered_with_its_payload_and_reported_heard(served: Served) -> None:
    client = await served.open()
    client.send(PING, b"are you there")
    assert await client.recv() == (PONG, b"are you there")
    client.send(PONG, b"")
    client.send(TEXT, b"after")
    assert await client.recv() == (TEXT, b"after")
    assert (await served.pump()).heard == 2


async def test_the_leg_pings_and_the_pong_is_heard(served: Served) -> None:
    client = await served.open()
    pump = await served.pump()
    pump.leg.ping()
    opcode, payload = await client.recv()
    assert opcode == PING
    client.send(PONG, payload)
    client.send(TEXT, b"x")
    await client.recv()
    assert pump.heard == 1


async def test_a_close_frame_is_reported_answered_with_its_code_and_the_connection_dropped(
    served: Served,
) -> None:
    client = await served.open()
    client.close(4321, b"done here")
    assert await client.recv_close() == (4321, "")
    assert await client.eof()
    pump = await served.pump()
    await asyncio.wait_for(pump.ended.wait(), 5)
    assert pump.closes == [(4321, "done here")]
    assert not pump.lost  # one report, never both
    assert pump.leg.closed


async def test_an_empty_close_frame_is_1005_and_answered_empty(served: Served) -> None:
    client = await served.open()
    client.close(None)
    opcode, payload = await client.recv()
    assert (opcode, payload) == (CLOSE, b"")
    pump = await served.pump()
    await asyncio.wait_for(pump.ended.wait(), 5)
    assert pump.closes == [(1005, "")]


async def test_the_pump_closes_with_a_code_and_a_reason_cut_to_123_bytes(served: Served) -> None:
    client = await served.open()
    pump = await served.pump()
    pump.leg.close(4004, "é" * 100)  # 200 bytes of UTF-8
    code, reason = await client.recv_close()
    assert code == 4004
    assert reason == "é" * 61  # 122 bytes: the 123rd would split a character
    pump.leg.send_text(b"after the close")  # a no-op once closed
    client.close(4004)
    assert await client.eof()
    await asyncio.wait_for(pump.leg.wait_closed(), 5)
    assert pump.closes == [] and not pump.lost  # the pump ended it: nothing to report


async def test_a_closing_leg_is_dropped_when_the_peer_never_answers(served: Served) -> None:
    client = await served.open()
    pump = await served.pump()
    pump.leg.close(1000, "bye")
    assert (await client.recv_close())[0] == 1000
    assert await client.eof(within=3)  # close_timeout is 0.5 s in this fixture


async def test_a_vanished_peer_is_lost_and_sever_drops_at_once(served: Served) -> None:
    client = await served.open()
    pump = await served.pump()
    client.abort()
    await asyncio.wait_for(pump.ended.wait(), 5)
    assert pump.lost and pump.closes == []
    other = await served.open()
    second = await served.pump()
    second.leg.sever()
    assert await other.eof()
    await asyncio.wait_for(second.leg.wait_closed(), 5)
    assert not second.lost  # the pump severed it: nothing to report


async def test_frames_before_start_wait_in_order_and_the_close_after_them(
    served: Served,
) -> None:
    served.start_at_once = False
    client = await served.open()
    client.send(TEXT, b"one")
    client.send(BINARY, b"two")
    client.close(1000, b"three")
    leg = await asyncio.wait_for(served.arrivals.get(), 5)
    assert isinstance(leg, PicowsLeg)
    await asyncio.sleep(0.1)  # everything has arrived
    pump = Pump(leg, echo=False)
    leg.start(pump)
    assert pump.messages == ["one", b"two"]
    assert pump.closes == [(1000, "three")]


async def test_reading_pauses_and_resumes(served: Served) -> None:
    client = await served.open()
    pump = await served.pump()
    pump.leg.pause_reading()
    client.send(TEXT, b"held")
    await asyncio.sleep(0.2)
    assert pump.messages == []
    pump.leg.resume_reading()
    await asyncio.wait_for(pump.got.wait(), 5)
    assert pump.messages == ["held"]


class PausingPump(Pump):
    """Pauses reading on the first message, as a pump whose other leg backed up."""

    def on_text(self, data: bytes) -> None:
        self.messages.append(data.decode())
        if len(self.messages) == 1:
            self.leg.pause_reading()


async def test_frames_of_a_read_already_made_wait_while_reading_is_paused(
    served: Served,
) -> None:
    served.start_at_once = False
    client = await served.open()
    leg = await asyncio.wait_for(served.arrivals.get(), 5)
    assert isinstance(leg, PicowsLeg)
    pump = PausingPump(leg, echo=False)
    leg.start(pump)
    client.writer.write(b"".join(frame(TEXT, b"m%d" % i) for i in range(5)))  # one read
    await asyncio.sleep(0.2)
    assert pump.messages == ["m0"]
    leg.resume_reading()
    assert pump.messages == ["m0", "m1", "m2", "m3", "m4"]  # in order, at once
    client.send(TEXT, b"later")
    await asyncio.sleep(0.2)
    assert pump.messages[-1] == "later"  # reading goes on after the resume


async def test_a_peer_that_stops_reading_backs_the_leg_up_until_it_reads_again(
    served: Served,
) -> None:
    client = await served.open()
    pump = await served.pump()
    sent = 0
    chunk = b"z" * MAX
    while not pump.leg.backed_up:
        pump.leg.send_bytes(chunk)
        sent += 1
        assert sent < 10_000, "never backed up"
        if sent % 64 == 0:
            await asyncio.sleep(0)  # the kernel's buffers fill; the transport's then
    assert pump.drains == 0
    for _ in range(sent):
        assert await client.recv() == (BINARY, chunk)
    await asyncio.wait_for(pump.drained.wait(), 5)
    assert not pump.leg.backed_up
    assert pump.drains == 1


# -- the client side: the upstream dial --------------------------------------------------------


Script = Callable[[web.WebSocketResponse], Awaitable[None]]


@dataclass
class Upstream:
    url: str
    seen_headers: dict[str, str] = field(default_factory=dict)
    #: What the server does with each connection.
    script: Script | None = None


StartUpstream = Callable[..., Awaitable[Upstream]]


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[StartUpstream]:
    runners: list[web.AppRunner] = []

    async def start(script: Script, tls: bool = False, status: int = 101) -> Upstream:
        up = Upstream("", script=script)

        async def realtime(request: web.Request) -> web.StreamResponse:
            up.seen_headers = dict(request.headers)
            if status != 101:
                return web.Response(status=status, text="no")
            ws = web.WebSocketResponse(autoping=False, max_msg_size=0)
            await ws.prepare(request)
            await script(ws)
            return ws

        app = web.Application()
        app.router.add_get("/v1/realtime", realtime)
        runner = web.AppRunner(app)
        await runner.setup()
        ctx = None
        if tls:
            cert, key = dev_cert(tmp_path / "tls")
            ctx = server_context(cert, key)
            up.seen_headers["cert"] = str(cert)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        up.url = f"{'wss' if tls else 'ws'}://127.0.0.1:{port}/v1/realtime?model=m"
        return up

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_the_dial_sends_the_headers_and_relays_both_ways(upstream: StartUpstream) -> None:
    async def script(ws: web.WebSocketResponse) -> None:
        await ws.send_str("hello from upstream")
        msg = await ws.receive()
        await ws.send_bytes(msg.data.encode() if msg.type == WSMsgType.TEXT else b"?")
        await ws.close(code=4004, message=b"upstream says bye")

    up = await upstream(script)
    headers = {"Authorization": "Bearer sk-up", "User-Agent": "t"}
    leg = await connect(up.url, headers, max_message=MAX, connect_timeout=5)
    pump = Pump(leg, echo=False)
    leg.start(pump)
    leg.send_text(b"from client")
    await asyncio.wait_for(pump.ended.wait(), 5)
    assert up.seen_headers["Authorization"] == "Bearer sk-up"
    assert pump.messages == ["hello from upstream", b"from client"]
    assert pump.closes == [(4004, "upstream says bye")]


async def test_the_dial_answers_pings_and_bounds_messages(upstream: StartUpstream) -> None:
    async def script(ws: web.WebSocketResponse) -> None:
        await ws.receive()  # the leg's pump is bound: a ping before that is nobody's news
        await ws.ping(b"p")
        msg = await ws.receive()
        assert (msg.type, msg.data) == (WSMsgType.PONG, b"p")
        await ws.send_bytes(b"m" * MAX)
        await ws.send_bytes(b"m" * (MAX + 1))
        await ws.receive()

    up = await upstream(script)
    leg = await connect(up.url, {}, max_message=MAX, connect_timeout=5)
    pump = Pump(leg, echo=False)
    leg.start(pump)
    leg.send_text(b"ready")
    await asyncio.wait_for(pump.ended.wait(), 5)
    assert pump.heard == 1
    # picows goes on parsing past a frame it refused, until it drops the connection: the leg
    # reads nothing of it.
    assert pump.messages == [b"m" * MAX]
    assert [code for code, _ in pump.closes] == [1009]


async def test_the_dial_verifies_tls_and_trusts_a_pinned_certificate(
    upstream: StartUpstream,
) -> None:
    async def script(ws: web.WebSocketResponse) -> None:
        await ws.send_str("secure")
        await ws.close()

    up = await upstream(script, tls=True)
    with pytest.raises(UpstreamError):  # a self-signed certificate, verified by default
        await connect(up.url, {}, max_message=MAX, connect_timeout=5)
    pinned = pinned_context(Path(up.seen_headers["cert"]))
    leg = await connect(up.url, {}, max_message=MAX, connect_timeout=5, ssl_context=pinned)
    pump = Pump(leg, echo=False)
    leg.start(pump)
    await asyncio.wait_for(pump.ended.wait(), 5)
    assert pump.messages == ["secure"]
    assert pump.closes == [(1000, "")]


async def test_tls_dials_use_the_context_they_are_given(
    upstream: StartUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's one ``upstream_context`` (the system's trust: ``SSL_CERT_FILE`` here) is
    what each dial verifies against, not a context of its own (the loop's default parses the
    CA bundle again for every connection and keeps it for the connection's life)."""

    async def script(ws: web.WebSocketResponse) -> None:
        await ws.send_str("secure")
        await ws.close()

    up = await upstream(script, tls=True)
    monkeypatch.setenv("SSL_CERT_FILE", up.seen_headers["cert"])
    shared = upstream_context([up.url])
    assert shared is not None
    legs = [
        await connect(up.url, {}, max_message=MAX, connect_timeout=5, ssl_context=shared)
        for _ in range(2)
    ]
    contexts = [
        leg.transport.underlying_transport.get_extra_info("ssl_object").context for leg in legs
    ]
    assert contexts[0] is contexts[1] is shared
    for leg in legs:
        pump = Pump(leg, echo=False)
        leg.start(pump)
        await asyncio.wait_for(pump.ended.wait(), 5)
        assert pump.messages == ["secure"]


async def test_a_refused_or_unreachable_dial_is_an_upstream_error(
    upstream: StartUpstream, unused_tcp_port: int
) -> None:
    async def script(ws: web.WebSocketResponse) -> None:
        pass

    up = await upstream(script, status=403)
    with pytest.raises(UpstreamRefused) as refused:
        await connect(up.url, {}, max_message=MAX, connect_timeout=5)
    assert refused.value.status == 403
    with pytest.raises(UpstreamError):
        await connect(f"ws://127.0.0.1:{unused_tcp_port}/", {}, max_message=MAX, connect_timeout=5)


async def test_a_dial_that_hangs_times_out() -> None:
    held: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(lambda _r, w: held.append(w), "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamError):
        await connect(f"ws://127.0.0.1:{port}/", {}, max_message=MAX, connect_timeout=0.3)
    assert loop.time() - started < 2
    for writer in held:
        writer.close()
    silent.close()
    await silent.wait_closed()
