"""A protocol-faithful fake provider for tests: the local engine behind OpenAI's front door.

It checks the provider key as OpenAI does (101, then ``invalid_api_key`` and close 3000),
records each upgrade's headers and path, and understands a few ``test.*`` client events that let
a test make the provider misbehave: close with a code, vanish, send a binary frame, or emit a
verbatim server event (e.g. a ``response.done`` with exact usage).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import BodyPartReader, WSMsgType, web

from rtgate.engine.options import EngineOptions
from rtgate.engine.ports import Transcript
from rtgate.engine.server import EngineConnection
from rtgate.engine.session import EngineSession
from rtgate.engine.session_config import default_session
from rtgate.protocol.session_fields import merge
from tests.live_fake import FakeLive, FakeLiveCalls
from tests.process import gateway_env
from tests.translator import TranslationSession, serve_translation

PROVIDER_KEY = "sk-test-Pr0viderSecretKey0123456789abcdef"


class FakeTranscriber:
    """Says what a test told it to, for as long as the audio lasts."""

    def __init__(self, text: str = "hello from the test") -> None:
        self.text = text

    async def transcribe(self, pcm24k: bytes, model: str, language: str | None) -> Transcript:
        return Transcript(self.text, len(pcm24k) / 48000)


@dataclass
class Upgrade:
    path: str
    query: dict[str, str]
    headers: dict[str, str]


FAKE_SDP_ANSWER = "v=0\r\no=- 4242 2 IN IP4 127.0.0.1\r\ns=fake-answer\r\nt=0 0\r\n"


@dataclass
class PlacedCall:
    """A ``POST /v1/realtime/calls`` the provider answered: its offer, session and headers."""

    call_id: str
    sdp: str
    session: dict[str, Any]
    headers: dict[str, str]


@dataclass
class FakeProvider:
    key: str = PROVIDER_KEY
    refuse_status: int | None = None
    upgrades: list[Upgrade] = field(default_factory=list)
    closes: list[tuple[int | None, str]] = field(default_factory=list)
    transcriber: FakeTranscriber = field(default_factory=FakeTranscriber)
    port: int = 0
    flooded: int = 0
    #: Calls placed, by id; the actions on them (``(call_id, action, JSON body or None)``).
    calls: dict[str, PlacedCall] = field(default_factory=dict)
    call_actions: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)
    #: Open sideband sockets, by call id: the gateway's own, then any a client attached. A call
    #: is one session, so every one of them sees its events (``emit_on_call``, ``test.emit``).
    sidebands: dict[str, list[web.WebSocketResponse]] = field(default_factory=dict)
    refuse_calls: int | None = None
    #: False: a hangup is answered 200 but the call's sideband stays open (the gateway must
    #: close its own socket).
    hangup_closes_sideband: bool = True
    #: False: pings on its sockets go unanswered (a provider that has stopped).
    answer_pings: bool = True
    #: Seconds a session's socket waits, open, before its ``session.created`` (a provider
    #: that takes its time: the client's first frames arrive before it).
    created_after: float = 0.0
    #: Awaited after a call is placed and before the provider answers it.
    while_placing: Callable[[], Awaitable[None]] | None = None
    #: ``POST /v1/realtime/client_secrets`` bodies received (rtgate mints its own: none expected).
    secret_requests: list[dict[str, Any]] = field(default_factory=list)
    #: Sessions on ``/v1/realtime/translations`` (``tests/translator.py``).
    translations: list[TranslationSession] = field(default_factory=list)
    #: GPT-Live's WebSocket route (``tests/live_fake.py``).
    live: FakeLive = field(default_factory=FakeLive)
    #: GPT-Live's WebRTC/SIP routes and sidebands.
    live_calls: FakeLiveCalls = field(default_factory=FakeLiveCalls)
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1"

    def gateway_env(self, home: Path, port: int, **env: str) -> dict[str, str]:
        """The environment of a gateway process of its own (``tests/process.py``) whose OpenAI
        upstream is this provider, with its key; ``env`` adds settings or overrides those."""
        return gateway_env(
            home,
            port,
            **{"RTGATE_OPENAI_BASE_URL": self.base_url, "OPENAI_API_KEY": self.key, **env},
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/realtime", self.handle)
        app.router.add_get("/v1/realtime/translations", self.translate)
        app.router.add_get("/v1/live/sessions", self.serve_live)
        app.router.add_post("/v1/live/sessions", self.create_live)
        app.router.add_get("/v1/live/sessions/{session_id}/attach", self.attach_live)
        app.router.add_post(
            "/v1/live/sessions/{session_id}/{action:accept|reject|refer|hangup}", self.live_action
        )
        app.router.add_post("/v1/realtime/calls", self.place_call)
        app.router.add_post("/v1/realtime/client_secrets", self.mint_secret)
        app.router.add_post("/v1/realtime/calls/{call_id}/{action}", self.call_action)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.key}" or (
            request.headers.get("api-key") == self.key
        )

    async def translate(self, request: web.Request) -> web.StreamResponse:
        self.upgrades.append(Upgrade(request.path, dict(request.query), dict(request.headers)))
        return await serve_translation(request, self.key, self.translations)

    async def serve_live(self, request: web.Request) -> web.StreamResponse:
        self.upgrades.append(Upgrade(request.path, dict(request.query), dict(request.headers)))
        return await self.live.serve(request, self.key)

    async def create_live(self, request: web.Request) -> web.StreamResponse:
        return await self.live_calls.create(request, self.key)

    async def attach_live(self, request: web.Request) -> web.StreamResponse:
        self.upgrades.append(Upgrade(request.path, dict(request.query), dict(request.headers)))
        return await self.live_calls.attach(request, self.key)

    async def live_action(self, request: web.Request) -> web.StreamResponse:
        return await self.live_calls.action(request, self.key)

    async def place_call(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.json_response({"error": {"code": "invalid_api_key"}}, status=401)
        if self.refuse_calls:
            return web.json_response({"error": {"message": "no"}}, status=self.refuse_calls)
        sdp, session = "", {}
        async for part in await request.multipart():
            assert isinstance(part, BodyPartReader)
            if part.name == "sdp":
                assert part.headers.get("Content-Type") == "application/sdp"
                sdp = await part.text()
            elif part.name == "session":
                session = orjson.loads(await part.read())
        if not sdp:
            return web.json_response({"error": {"message": "sdp missing"}}, status=400)
        call_id = "rtc_" + secrets.token_hex(16)
        self.calls[call_id] = PlacedCall(call_id, sdp, session, dict(request.headers))
        if self.while_placing is not None:
            await self.while_placing()
        return web.Response(
            status=201,
            body=FAKE_SDP_ANSWER.encode(),
            headers={
                "Content-Type": "application/sdp",
                "Location": f"/v1/realtime/calls/{call_id}",
            },
        )

    async def call_action(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.json_response({"error": {"code": "invalid_api_key"}}, status=401)
        call_id, action = request.match_info["call_id"], request.match_info["action"]
        raw = await request.read()
        self.call_actions.append((call_id, action, orjson.loads(raw) if raw else None))
        if action not in ("accept", "reject", "refer", "hangup"):
            return web.json_response({"error": {"message": "no such action"}}, status=404)
        if action in ("hangup", "reject") and self.hangup_closes_sideband:
            for ws in list(self.sidebands.get(call_id, ())):
                await ws.close(code=1000, message=b"call ended")
        return web.Response(status=200)

    async def mint_secret(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's GA minting route (docs/protocol.md 3): the session with its defaults filled in,
        and an ``ek_`` secret of its own."""
        if not self._authorized(request):
            return web.json_response({"error": {"code": "invalid_api_key"}}, status=401)
        body = orjson.loads(await request.read() or b"{}")
        self.secret_requests.append(body)
        asked = dict(body.get("session") or {"type": "realtime"})
        seconds = int((body.get("expires_after") or {}).get("seconds", 600))
        expires_at = int(time.time()) + seconds
        transcription = asked.get("type") == "transcription"
        session = default_session(
            str(asked.pop("model", "gpt-realtime")), transcription, expires_at
        )
        merge(session, asked)
        return web.json_response(
            {"value": "ek_" + secrets.token_hex(16), "expires_at": expires_at, "session": session}
        )

    def hangups(self, call_id: str) -> int:
        """How many times the call was hung up."""
        return sum(1 for c, a, _ in self.call_actions if (c, a) == (call_id, "hangup"))

    async def emit_on_call(
        self, call_id: str, event: dict[str, Any] | str, wait: float = 5.0
    ) -> None:
        """Send ``event`` on the call's sidebands, as the provider would (waits for one to
        open); a string is sent verbatim."""
        async with asyncio.timeout(wait):
            while call_id not in self.sidebands:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        await self.broadcast(
            call_id, event if isinstance(event, str) else orjson.dumps(event).decode()
        )

    async def broadcast(self, call_id: str, frame: str) -> None:
        """Send ``frame`` on every open sideband socket of the call."""
        for ws in list(self.sidebands.get(call_id, ())):
            await ws.send_str(frame)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.upgrades.append(Upgrade(request.path, dict(request.query), dict(request.headers)))
        if self.refuse_status:
            return web.json_response({"error": {"message": "refused"}}, status=self.refuse_status)
        ws = web.WebSocketResponse(max_msg_size=0, autoping=self.answer_pings)
        await ws.prepare(request)
        # OpenAI takes a Bearer token; Azure OpenAI an ``api-key`` header.
        authorized = request.headers.get("Authorization") == f"Bearer {self.key}" or (
            request.headers.get("api-key") == self.key
        )
        if not authorized:
            await ws.send_str(
                orjson.dumps(
                    {
                        "type": "error",
                        "event_id": "event_x",
                        "error": {
                            "type": "invalid_request_error",
                            "code": "invalid_api_key",
                            "message": "Incorrect API key provided: sk-te...cdef.",
                            "param": None,
                            "event_id": None,
                        },
                    }
                ).decode()
            )
            await ws.close(code=3000, message=b"invalid_request_error.invalid_api_key")
            return ws
        # A sideband (call_id) session reports the call's model, as OpenAI's does.
        call_id = request.query.get("call_id")
        placed = self.calls.get(call_id) if call_id else None
        model = placed.session.get("model") if placed else None
        session = EngineSession(
            model=request.query.get("model", model or "gpt-realtime"),
            transcription=request.query.get("intent") == "transcription",
        )
        conn = _TestConnection(
            ws,
            EngineOptions(token="", transcriber=self.transcriber, audio_chunk_ms=40),
            session,
            self,
            call_id,
        )
        if call_id:
            self.sidebands.setdefault(call_id, []).append(ws)
        await asyncio.sleep(self.created_after)
        try:
            await conn.run()
        finally:
            if call_id:
                self.sidebands[call_id].remove(ws)
                if not self.sidebands[call_id]:
                    del self.sidebands[call_id]
        self.closes.append((ws.close_code, ""))
        return ws


class _TestConnection(EngineConnection):
    def __init__(
        self,
        ws: web.WebSocketResponse,
        opts: EngineOptions,
        session: EngineSession,
        provider: FakeProvider,
        call_id: str | None = None,
    ) -> None:
        super().__init__(ws, opts, session)
        self.provider = provider
        #: The call this socket is a sideband of, if it is one.
        self.call_id = call_id

    async def run(self) -> None:
        await self.send(self.s.created())
        async for msg in self.ws:
            if msg.type is WSMsgType.TEXT:
                if msg.data.startswith('{"type":"test.'):
                    if await self.on_test(orjson.loads(msg.data)):
                        return
                    continue
                await self.on_text(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await self.ws.send_bytes(b"echo:" + msg.data)
        for t in list(self.tasks):
            t.cancel()

    async def flood(self, count: int, size: int) -> None:
        """Send ``count`` large frames as fast as the socket takes them."""
        frame = '{"type":"response.output_audio.delta","delta":"' + "A" * size + '"}'
        for _ in range(count):
            await self.ws.send_str(frame)
            self.provider.flooded += 1

    async def on_test(self, e: dict[str, Any]) -> bool:
        kind = e["type"]
        if kind == "test.close":
            await self.ws.close(code=e["code"], message=e.get("reason", "").encode())
            return True
        if kind == "test.drop":
            transport = self.ws._req.transport if self.ws._req else None  # type: ignore[union-attr]
            assert transport is not None
            transport.abort()
            return True
        if kind == "test.binary":
            await self.ws.send_bytes(bytes(range(256)))
        elif kind == "test.flood":
            self.spawn(self.flood(int(e["count"]), int(e["size"])))
        elif kind == "test.raw":
            await self.ws.send_str(e["frame"])
        elif kind == "test.emit":
            frame = orjson.dumps(e["event"]).decode()
            if self.call_id:
                await self.provider.broadcast(self.call_id, frame)
            else:
                await self.ws.send_str(frame)
        elif kind == "test.sleep":
            await asyncio.sleep(e["seconds"])
        return False


def emit_response_done(rid: str, text_in: int, audio_out: int = 0) -> str:
    """A ``test.emit`` frame: the provider sends a ``response.done`` with this usage."""
    usage = {
        "input_tokens": text_in,
        "output_tokens": audio_out,
        "input_token_details": {"text_tokens": text_in},
        "output_token_details": {"audio_tokens": audio_out},
    }
    event = {
        "type": "response.done",
        "event_id": f"event_{rid}",
        "response": {
            "id": rid,
            "object": "realtime.response",
            "status": "completed",
            "usage": usage,
        },
    }
    return orjson.dumps({"type": "test.emit", "event": event}).decode()
