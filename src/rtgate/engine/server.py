"""The local engine's WebSocket server: pumps ``EngineSession`` and runs responses.

Served by the gateway itself under an internal path, guarded by a per-process token, and dialled
by the relay like any other upstream, so local sessions are authenticated, metered and capped by
exactly the same code as provider sessions.

One difference from a provider, on purpose: the gateway announces its setup ``session.update``
(the key's defaults, a client secret's template) with ``Rtgate-Setup-Frames``, and the engine
applies it before ``session.created``, so that event carries the session the minter chose, as
OpenAI's does for a minted secret.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from rtgate.catalog import typed_for, wrong_route
from rtgate.config import model_family
from rtgate.engine.conversation import PCM_BYTES_PER_MS
from rtgate.engine.options import DURATION_MODELS, EngineOptions
from rtgate.engine.responder import Responder
from rtgate.engine.response_plan import ResponsePlan
from rtgate.engine.routes import ENGINE_OPTIONS, authorized
from rtgate.engine.session import (
    EngineSession,
    Event,
    ev,
    obfuscation,
)
from rtgate.engine.tokens import count_tokens
from rtgate.relay.upstream import SETUP_FRAMES_HEADER

log = logging.getLogger("rtgate.engine")

#: The gateway sends its setup frames right after dialling; a gateway that does not is gone.
SETUP_TIMEOUT_S = 10.0
#: At most this many setup frames (the gateway sends one).
MAX_SETUP_FRAMES = 4


def _dump(event: Event) -> str:
    return orjson.dumps(event).decode()


class EngineConnection(Responder):
    def __init__(
        self, ws: web.WebSocketResponse, opts: EngineOptions, session: EngineSession
    ) -> None:
        self.ws = ws
        self.opts = opts
        self.s = session
        self.vad = opts.vad_factory()
        session.use_vad(self.vad)
        self.tasks: set[asyncio.Task[None]] = set()
        #: Recognition of committed user turns still running, by item id.
        self._hearing: dict[str, asyncio.Task[None]] = {}
        #: Per running response, set when it is cancelled: nothing waits on a stalled brain.
        self._stops: dict[str, asyncio.Event] = {}
        #: The response writing to the conversation; the next one starts once it has ended.
        self._in_conversation: asyncio.Task[None] | None = None

    async def send(self, events: list[Event]) -> None:
        for e in events:
            await self.ws.send_str(_dump(e))

    def spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def start_response(self, plan: ResponsePlan) -> None:
        prior = self._in_conversation if plan.conversation else None
        self._stops[plan.response["id"]] = asyncio.Event()
        task = self.spawn(self.respond(plan, prior))
        if plan.conversation:
            self._in_conversation = task

    def cancel(self, plan: ResponsePlan, reason: str) -> None:
        """End ``plan`` now (``response.cancel``, barge-in), even while its brain is thinking."""
        plan.cancelled = True
        plan.cancel_reason = reason
        if (stop := self._stops.get(plan.response["id"])) is not None:
            stop.set()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("engine task failed: %r", exc, exc_info=exc)

    async def run(self, setup_frames: int = 0) -> None:
        """Serve the session; its first ``setup_frames`` text frames are the gateway's setup
        ``session.update``, applied before ``session.created`` (a refusal of it follows that)."""
        refusals = await self.set_up(setup_frames)
        await self.send(self.s.created())
        await self.send(refusals)
        try:
            async for msg in self.ws:
                if msg.type is WSMsgType.TEXT:
                    await self.on_text(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await self.send(
                        [
                            self.s.error(
                                "invalid_event", "Binary frames are not supported; send JSON text."
                            )
                        ]
                    )
        finally:
            for t in list(self.tasks):
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def set_up(self, frames: int) -> list[Event]:
        """Apply the gateway's setup frames silently; the errors they met, if any."""
        refusals: list[Event] = []
        while frames > 0:
            msg = await self.ws.receive(timeout=SETUP_TIMEOUT_S)
            if msg.type is not WSMsgType.TEXT:
                break
            frames -= 1
            try:
                events, _ = self.s.handle(orjson.loads(msg.data))
            except orjson.JSONDecodeError:
                continue
            refusals.extend(e for e in events if e["type"] == "error")
        return refusals

    async def on_text(self, data: str) -> None:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            await self.send([self.s.error("invalid_event", "The event is not valid JSON.", None)])
            return
        events, plan = self.s.handle(event)
        await self.send(events)
        for e in events:
            # A manual commit, a turn's end or an idle timeout: the new user item is heard.
            if e["type"] == "input_audio_buffer.committed":
                self.after_commit(e["item_id"])
        # response.cancel or a barge-in marked responses cancelled: stop them now, even while
        # their brain is thinking.
        for running in list(self.s.running.values()):
            if running.cancelled:
                self.cancel(running, running.cancel_reason)
        if plan is not None:
            self.start_response(plan)

    def after_commit(self, item_id: str) -> None:
        # The brain reads words, not audio: every committed turn is recognised, whether or not
        # the client asked for input transcription events (those are sent only if it did).
        if self.s.transcription_config or self.opts.transcriber is not None:
            task = asyncio.create_task(self.transcribe(item_id))
            self.tasks.add(task)
            self._hearing[item_id] = task
            task.add_done_callback(self._task_done)

    async def heard(self) -> None:
        """Wait until every committed user turn has its transcript (the brain needs them)."""
        pending = [t for t in self._hearing.values() if not t.done()]
        if pending:
            await asyncio.wait(pending)
        self._hearing = {k: t for k, t in self._hearing.items() if not t.done()}

    async def transcribe(self, item_id: str) -> None:
        item = self.s.find(item_id)
        cfg = self.s.transcription_config or {}
        model = str(cfg.get("model") or "whisper-1")
        if item is None:
            return
        audio: bytes = item.get("_audio", b"")
        if self.opts.transcriber is None:
            await self.send(
                [
                    ev(
                        "conversation.item.input_audio_transcription.failed",
                        item_id=item_id,
                        content_index=0,
                        error={
                            "type": "transcription_error",
                            "code": "transcriber_unavailable",
                            "message": "No speech recognizer is installed in this engine.",
                            "param": None,
                        },
                    )
                ]
            )
            return
        result = await self.opts.transcriber.transcribe(audio, model, cfg.get("language"))
        for c in item.get("content") or []:
            if c.get("type") == "input_audio":
                c["transcript"] = result.text
        if not self.s.transcription_config:
            return
        if result.text:
            await self.send(
                [
                    ev(
                        "conversation.item.input_audio_transcription.delta",
                        item_id=item_id,
                        content_index=0,
                        delta=result.text,
                        obfuscation=obfuscation(),
                    )
                ]
            )
        if model_family(model) in DURATION_MODELS:
            usage: dict[str, Any] = {"type": "duration", "seconds": round(result.seconds, 3)}
        else:
            audio_tokens = int(len(audio) / PCM_BYTES_PER_MS // 100) + 1
            out_tokens = count_tokens(result.text)
            usage = {
                "type": "tokens",
                "input_tokens": audio_tokens,
                "output_tokens": out_tokens,
                "total_tokens": audio_tokens + out_tokens,
                "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
            }
        await self.send(
            [
                ev(
                    "conversation.item.input_audio_transcription.completed",
                    item_id=item_id,
                    content_index=0,
                    transcript=result.text,
                    usage=usage,
                )
            ]
        )


async def engine_realtime(request: web.Request) -> web.StreamResponse:
    opts = request.app[ENGINE_OPTIONS]
    # aiohttp refuses a message of exactly max_msg_size bytes: one more, so the largest the
    # gateway takes passes (its relay sizes its own limit alike, relay/endpoint.py).
    ws = web.WebSocketResponse(max_msg_size=opts.max_message_bytes + 1, compress=False)
    await ws.prepare(request)
    if not authorized(request, opts):
        return await _refuse(ws, 3000, "invalid_api_key", "Incorrect API key provided.")
    transcription = request.query.get("intent") == "transcription"
    model = request.query.get("model") or "local"
    if typed_for(model) not in (None, "realtime"):
        # As OpenAI's Realtime route refuses a model it does not serve (docs/protocol.md 5.4).
        return await _refuse(ws, 4004, "model_not_found", wrong_route(model, "/v1/realtime"))
    session = EngineSession(
        model=model, transcription=transcription, max_seconds=opts.max_session_seconds
    )
    await EngineConnection(ws, opts, session).run(setup_frames(request.headers))
    return ws


async def _refuse(
    ws: web.WebSocketResponse, close_code: int, code: str, message: str
) -> web.WebSocketResponse:
    """A session refused before it starts: OpenAI's ``error`` event, then the close whose
    reason is ``<type>.<code>`` (docs/protocol.md 0, fact 11)."""
    error = {
        "type": "invalid_request_error",
        "code": code,
        "message": message,
        "param": None,
        "event_id": None,
    }
    await ws.send_str(_dump(ev("error", error=error)))
    await ws.close(code=close_code, message=f"invalid_request_error.{code}".encode())
    return ws


def setup_frames(headers: Mapping[str, str]) -> int:
    """How many setup frames the gateway announced (``SETUP_FRAMES_HEADER``)."""
    raw = headers.get(SETUP_FRAMES_HEADER, "0")
    return min(int(raw), MAX_SETUP_FRAMES) if raw.isdigit() else 0
