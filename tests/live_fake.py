"""A fake of OpenAI's GPT-Live WebSocket, ``GET /v1/live/sessions`` (docs/protocol-live.md), for
``FakeProvider``: built from the reference and the SDK's ``openai.types.live`` types, which every
event it sends validates against (``tests/test_live.py`` checks them on the client's side).

* No query parameters; the first message must be ``session.start`` with a known Live model
  (``gpt-live-1``, ``gpt-live-1.1``) and only the fields of ``SessionConfig`` (the object is
  strict, 1.4): answered with ``session.started`` (``session{id: live_…, expires_at, model,
  status: "active", …}``), ``client_event_id`` echoed when the client sent an ``event_id`` (1.6,
  the superset the reference recommends).
* ``session.input_audio.append`` has no acknowledgement. Every 200 ms of audio at the session's
  format (24 kHz PCM16 unless ``audio.format`` says otherwise) is "spoken back": a
  ``session.input_transcript.delta`` with ``start_ms``/``end_ms`` and a
  ``session.output_audio.delta`` of the same length (no ``event_id``, as the type has none).
* Voice seconds are the seconds of audio appended (a deterministic stand-in for active wall time):
  ``session.usage.updated`` every ``usage_every_ms`` of audio, with the *cumulative* total.
* ``session.update`` (only ``delegation``), ``session.input_audio.mute``/``.unmute``,
  ``session.instructions|thinking|commentary.append`` (``delegation_id`` required) are
  acknowledged as the reference's table says.
* ``session.close``: ``session.closed`` with ``reason: "close_requested"`` and the final total,
  then close 1000 (the reference's recommended fake). ``answer_close=False``: it never answers.
* Errors: Live's envelope (``error.client_event_id``). A bad key: ``invalid_api_key`` and close
  3000; a first message that is no ``session.start``, or an unknown model: an error and 1008
  (Live's own admission codes are unverified, 1.9).

Test hooks, sent as raw client events through the gateway (which relays unknown events):
``test.usage{seconds}`` emits a snapshot of that cumulative total now; ``test.response{model,
usage}`` emits a delegated backend response (``response.event`` wrapping ``response.created``,
a text delta and ``response.completed``); ``test.vanish`` drops the connection without a close.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web
from openai.types.live import SessionConfig

LIVE_MODELS = frozenset({"gpt-live-1", "gpt-live-1.1"})
CHUNK_MS = 200


def _event_id() -> str:
    return "event_" + secrets.token_hex(8)


def _dumps(event: dict[str, Any]) -> str:
    return orjson.dumps(event).decode()


def live_error(
    code: str, message: str, param: str | None = None, client_event_id: str | None = None
) -> str:
    return _dumps(
        {
            "type": "error",
            "event_id": _event_id(),
            "error": {
                "type": "invalid_request_error",
                "code": code,
                "message": message,
                "param": param,
                "client_event_id": client_event_id,
            },
        }
    )


def _bytes_per_ms(session: dict[str, Any]) -> int:
    fmt = ((session.get("audio") or {}).get("format")) or {}
    rate = int(fmt.get("rate", 24000))
    width = 2 if fmt.get("type", "audio/pcm") == "audio/pcm" else 1
    return rate // 1000 * width


@dataclass
class LiveSession:
    """One fake Live session: the state behind the socket."""

    session: dict[str, Any]
    usage_every_ms: int
    #: Every client frame as received, in order (the first is the ``session.start``).
    received: list[str] = field(default_factory=list)
    audio_ms: int = 0
    reported_ms: int = 0
    pending: bytes = b""
    closed_with: dict[str, Any] | None = None

    @property
    def seconds(self) -> float:
        return self.audio_ms / 1000

    def _ack(self, etype: str, event: dict[str, Any], **fields: Any) -> str:
        out = {"type": etype, "event_id": _event_id(), **fields}
        if isinstance(event.get("event_id"), str):
            out["client_event_id"] = event["event_id"]
        return _dumps(out)

    def started(self, event: dict[str, Any]) -> str:
        return self._ack("session.started", event, session=self.session)

    def usage(self, seconds: float | None = None) -> str:
        if seconds is not None:
            self.audio_ms = round(seconds * 1000)
        self.reported_ms = self.audio_ms
        return _dumps(
            {
                "type": "session.usage.updated",
                "event_id": _event_id(),
                "usage": {"seconds": self.seconds},
                "context_window": {"usage_ratio": 0.01},
            }
        )

    def closed(self, event: dict[str, Any], reason: str = "close_requested") -> str:
        self.closed_with = {"reason": reason, "seconds": self.seconds}
        return self._ack(
            "session.closed",
            event,
            reason=reason,
            session=self.session,
            usage={"seconds": self.seconds},
        )

    def append(self, audio: str) -> list[str]:
        self.pending += base64.b64decode(audio)
        per_ms = _bytes_per_ms(self.session)
        out: list[str] = []
        chunk = CHUNK_MS * per_ms
        while len(self.pending) >= chunk:
            pcm, self.pending = self.pending[:chunk], self.pending[chunk:]
            start = self.audio_ms
            self.audio_ms += CHUNK_MS
            out.append(
                _dumps(
                    {
                        "type": "session.input_transcript.delta",
                        "event_id": _event_id(),
                        "delta": "hello ",
                        "start_ms": start,
                        "end_ms": self.audio_ms,
                    }
                )
            )
            out.append(
                _dumps(
                    {"type": "session.output_audio.delta", "delta": base64.b64encode(pcm).decode()}
                )
            )
            if self.audio_ms - self.reported_ms >= self.usage_every_ms:
                out.append(self.usage())
        return out

    def update(self, event: dict[str, Any]) -> str:
        change = event.get("session")
        if not isinstance(change, dict) or set(change) - {"delegation"}:
            return live_error(
                "unknown_parameter",
                "Only session.delegation can be updated.",
                "session",
                event.get("event_id"),
            )
        self.session["delegation"] = change["delegation"]
        return self._ack("session.updated", event, session=self.session)

    def backend_response(self, event: dict[str, Any]) -> list[str]:
        """A delegated Responses model's answer, nested in ``response.event`` (1.6)."""
        rid = "resp_" + secrets.token_hex(6)
        model = event.get("model")
        snapshot: dict[str, Any] = {"id": rid, "object": "response", "status": "in_progress"}
        if isinstance(model, str):
            snapshot["model"] = model
        delegation = "item_delegation_" + secrets.token_hex(4)
        nested = [
            {"type": "response.created", "sequence_number": 0, "response": snapshot},
            {
                "type": "response.output_text.delta",
                "sequence_number": 1,
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": "Order 42 ships today.",
            },
            {
                "type": "response.completed",
                "sequence_number": 2,
                "response": {**snapshot, "status": "completed", "usage": event.get("usage")},
            },
        ]
        return [
            _dumps(
                {
                    "type": "response.event",
                    "event_id": _event_id(),
                    "delegation_id": delegation,
                    "event": inner,
                }
            )
            for inner in nested
        ]


@dataclass
class FakeLive:
    """The provider's Live route: its sessions, and how it behaves."""

    sessions: list[LiveSession] = field(default_factory=list)
    #: Upgrades refused before a session started (the error codes sent).
    refused: list[str] = field(default_factory=list)
    usage_every_ms: int = 1000
    #: False: ``session.close`` is never answered (the gateway's grace must end it).
    answer_close: bool = True

    async def serve(self, request: web.Request, key: str) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        if request.headers.get("Authorization") != f"Bearer {key}" and (
            request.headers.get("api-key") != key
        ):
            await self._refuse(ws, "invalid_api_key", "Incorrect API key provided.", 3000)
            return ws
        if request.query:
            await self._refuse(ws, "unknown_parameter", "No query parameters.", 1008)
            return ws
        first = await ws.receive()
        event = orjson.loads(first.data) if first.type is WSMsgType.TEXT else None
        if not isinstance(event, dict) or event.get("type") != "session.start":
            await self._refuse(ws, "invalid_request_error", "Send session.start first.", 1008)
            return ws
        config = event.get("session")
        if not isinstance(config, dict) or set(config) - set(SessionConfig.model_fields):
            await self._refuse(ws, "unknown_parameter", "Unknown session field.", 1008)
            return ws
        if config.get("model") not in LIVE_MODELS:
            await self._refuse(ws, "invalid_model", "Not a Live model.", 1008)
            return ws
        state = LiveSession(
            {
                **config,
                "id": "live_" + secrets.token_hex(8),
                "expires_at": int(time.time()) + 3600,
                "status": "active",
            },
            self.usage_every_ms,
            received=[first.data],
        )
        self.sessions.append(state)
        await ws.send_str(state.started(event))
        await self._run(ws, state, request)
        return ws

    async def _refuse(self, ws: web.WebSocketResponse, code: str, message: str, close: int) -> None:
        self.refused.append(code)
        await ws.send_str(live_error(code, message))
        await ws.close(code=close, message=f"invalid_request_error.{code}".encode())

    async def _run(
        self, ws: web.WebSocketResponse, state: LiveSession, request: web.Request
    ) -> None:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            state.received.append(msg.data)
            event = orjson.loads(msg.data)
            etype = event.get("type")
            eid = event.get("event_id")
            out: list[str] = []
            if etype == "session.input_audio.append":
                out = state.append(str(event.get("audio", "")))
            elif etype == "session.update":
                out = [state.update(event)]
            elif etype in ("session.input_audio.mute", "session.input_audio.unmute"):
                out = [state._ack(etype.replace("mute", "muted"), event)]
            elif etype in (
                "session.instructions.append",
                "session.thinking.append",
                "session.commentary.append",
            ):
                if "delegation_id" not in event:
                    out = [live_error("missing_required_parameter", "delegation_id", None, eid)]
                else:
                    at = state.audio_ms
                    out = [state._ack(etype + "ed", event, start_ms=at, end_ms=at)]
            elif etype == "session.close":
                if not self.answer_close:
                    continue
                await ws.send_str(state.closed(event))
                await ws.close(code=1000)
                return
            elif etype == "test.usage":
                out = [state.usage(float(event["seconds"]))]
            elif etype == "test.response":
                out = state.backend_response(event)
            elif etype == "test.vanish":
                transport = request.transport
                assert transport is not None
                transport.abort()
                return
            else:
                out = [live_error("invalid_event", f"Unknown event {etype!r}.", "type", eid)]
            for frame in out:
                await ws.send_str(frame)
                await asyncio.sleep(0)


#: The SDP the fake answers every offer with.
FAKE_LIVE_SDP_ANSWER = "v=0\r\no=- 4343 2 IN IP4 127.0.0.1\r\ns=fake-live-answer\r\nt=0 0\r\n"


@dataclass
class FakeLiveCalls:
    """The provider's GPT-Live WebRTC/SIP side (docs/protocol-live.md 9): ``POST /v1/live/sessions``
    (JSON with ``transport.sdp``) answered ``{session: {id}, transport: {type, sdp}}``; the
    sideband ``GET /v1/live/sessions/{id}/attach`` (no ``session.start``); ``accept``,
    ``reject``, ``refer``, ``hangup``, answered with no body. A hangup, or ``session.close`` on
    the sideband, ends with ``session.closed`` (the total the test set) and close 1000."""

    sessions: dict[str, LiveSession] = field(default_factory=dict)
    sidebands: dict[str, web.WebSocketResponse] = field(default_factory=dict)
    #: ``POST /v1/live/sessions`` bodies as received.
    created: list[dict[str, Any]] = field(default_factory=list)
    actions: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)
    #: SIP calls ringing: announced (``live.call.incoming``), not yet answered. Any other id
    #: but a session's is unknown to a control but ``accept``.
    ringing: set[str] = field(default_factory=set)

    async def create(self, request: web.Request, key: str) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {key}":
            return web.json_response({"error": {"code": "invalid_api_key"}}, status=401)
        body = orjson.loads(await request.read())
        self.created.append(body)
        config = body.get("session") or {}
        if config.get("model") not in LIVE_MODELS:
            return web.json_response({"error": {"code": "invalid_model"}}, status=400)
        sid = "rtc_" + secrets.token_hex(8)
        resource = {**config, "id": sid, "expires_at": int(time.time()) + 3600, "status": "active"}
        self.sessions[sid] = LiveSession(resource, 1000)
        return web.json_response(
            {"session": {"id": sid}, "transport": {"type": "webrtc", "sdp": FAKE_LIVE_SDP_ANSWER}}
        )

    async def attach(self, request: web.Request, key: str) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        sid = request.match_info["session_id"]
        if request.headers.get("Authorization") != f"Bearer {key}" or sid not in self.sessions:
            await ws.send_str(live_error("invalid_api_key", "No."))
            await ws.close(code=1008)
            return ws
        self.sidebands[sid] = ws
        state = self.sessions[sid]
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                state.received.append(msg.data)
                if orjson.loads(msg.data).get("type") == "session.close":
                    await self.finish(sid)
        return ws

    async def finish(self, sid: str) -> None:
        ws = self.sidebands.get(sid)
        if ws is not None and not ws.closed:
            await ws.send_str(self.sessions[sid].closed({}))
            await ws.close(code=1000)

    async def action(self, request: web.Request, key: str) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {key}":
            return web.json_response({"error": {"code": "invalid_api_key"}}, status=401)
        sid, action = request.match_info["session_id"], request.match_info["action"]
        raw = await request.read()
        self.actions.append((sid, action, orjson.loads(raw) if raw else None))
        if sid not in self.sessions and sid not in self.ringing and action != "accept":
            return web.json_response({"error": {"code": "not_found"}}, status=404)
        self.ringing.discard(sid)
        if action == "accept":
            config = (orjson.loads(raw) if raw else {}).get("session") or {}
            resource = {**config, "id": sid, "expires_at": 1, "status": "active"}
            self.sessions.setdefault(sid, LiveSession(resource, 1000))
        if action in ("hangup", "reject"):
            await self.finish(sid)
        return web.Response(status=200)
