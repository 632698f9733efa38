"""The local engine's WebSocket server: pumps ``EngineSession`` and runs responses.

Served by the gateway itself under an internal path, guarded by a per-process token, and dialled
by the relay like any other upstream, so local sessions are authenticated, metered and capped by
exactly the same code as provider sessions.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from rtgate.engine.ports import Brain, EchoBrain, Synthesizer, ToneSynthesizer, Transcriber
from rtgate.engine.session import (
    PCM_BYTES_PER_MS,
    EngineSession,
    Event,
    ResponsePlan,
    estimate_text_tokens,
    ev,
    obfuscation,
    public_item,
)
from rtgate.engine.vad import EnergyVad, SpeechStarted
from rtgate.protocol.ids import new_id

log = logging.getLogger("rtgate.engine")


@dataclass
class EngineOptions:
    token: str
    brain: Brain = field(default_factory=EchoBrain)
    synthesizer: Synthesizer = field(default_factory=ToneSynthesizer)
    transcriber: Transcriber | None = None
    #: Size of each ``response.output_audio.delta``; audio is sent faster than real time.
    audio_chunk_ms: int = 100
    max_session_seconds: int = 3600


def _dump(event: Event) -> str:
    return orjson.dumps(event).decode()


class EngineConnection:
    def __init__(
        self, ws: web.WebSocketResponse, opts: EngineOptions, session: EngineSession
    ) -> None:
        self.ws = ws
        self.opts = opts
        self.s = session
        self.vad = EnergyVad()
        self.tasks: set[asyncio.Task[None]] = set()
        self._turn_item: str | None = None
        self._turn_start_ms = 0

    async def send(self, events: list[Event]) -> None:
        for e in events:
            await self.ws.send_str(_dump(e))

    def spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self) -> None:
        await self.send(self.s.created())
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

    async def on_text(self, data: str) -> None:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            await self.send([self.s.error("invalid_event", "The event is not valid JSON.", None)])
            return
        events, plan = self.s.handle(event)
        await self.send(events)
        etype = event.get("type") if isinstance(event, dict) else None
        if etype == "input_audio_buffer.append" and not events:
            await self.on_audio(event)
        elif etype == "input_audio_buffer.commit" and events and events[0]["type"] != "error":
            self.after_commit(events[0]["item_id"])
        elif etype == "session.update":
            td = self.s.turn_detection
            if td:
                self.vad.configure(
                    float(td.get("threshold") or 0.5),
                    int(td.get("prefix_padding_ms") or 0),
                    int(td.get("silence_duration_ms") or 0),
                )
        if plan is not None:
            self.spawn(self.respond(plan))

    async def on_audio(self, event: dict[str, Any]) -> None:
        td = self.s.turn_detection
        if not td or td.get("type") not in ("server_vad", "semantic_vad"):
            return
        pcm = base64.b64decode(event["audio"])
        for edge in self.vad.feed(pcm, floor_ms=self.s.buffer_start_ms):
            if isinstance(edge, SpeechStarted):
                self._turn_item = new_id("item")
                self._turn_start_ms = edge.audio_start_ms
                await self.send(
                    [
                        ev(
                            "input_audio_buffer.speech_started",
                            audio_start_ms=edge.audio_start_ms,
                            item_id=self._turn_item,
                        )
                    ]
                )
                active = self.s.active
                if active is not None and td.get("interrupt_response", True):
                    active.cancelled = True
                    active.cancel_reason = "turn_detected"
            else:
                item_id = self._turn_item or new_id("item")
                await self.send(
                    [
                        ev(
                            "input_audio_buffer.speech_stopped",
                            audio_end_ms=edge.audio_end_ms,
                            item_id=item_id,
                        )
                    ]
                )
                # Keep the turn's audio only: from its padded start to its end.
                start = max(
                    0, int((self._turn_start_ms - self.s.buffer_start_ms) * PCM_BYTES_PER_MS)
                )
                del self.s.buffer[: start - start % 2]
                await self.send(self.s.commit(item_id))
                self._turn_item = None
                self.after_commit(item_id)
                if (
                    td.get("create_response", True)
                    and not self.s.transcription
                    and self.s.active is None
                ):
                    self.spawn(self.respond(self.s.plan_response({})))

    def after_commit(self, item_id: str) -> None:
        if self.s.transcription_config:
            self.spawn(self.transcribe(item_id))

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
        if model == "whisper-1":
            usage: dict[str, Any] = {"type": "duration", "seconds": round(result.seconds, 3)}
        else:
            audio_tokens = int(len(audio) / PCM_BYTES_PER_MS // 100) + 1
            out_tokens = estimate_text_tokens(result.text)
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

    async def respond(self, plan: ResponsePlan) -> None:
        s, resp = self.s, plan.response
        # What the model reads: everything before this response's own output.
        text_in, audio_in = s.input_usage(plan)
        await self.send([ev("response.created", response=dict(resp, output=[]))])
        audio_mode = "audio" in plan.modalities
        item_id = new_id("item")
        item: dict[str, Any] = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        prev = s.items[-1]["id"] if s.items and plan.conversation else None
        idx = {"response_id": resp["id"], "item_id": item_id, "output_index": 0}
        await self.send(
            [
                ev(
                    "response.output_item.added",
                    response_id=resp["id"],
                    output_index=0,
                    item=dict(item),
                )
            ]
        )
        if plan.conversation:
            s.items.append(item)
            await self.send(
                [ev("conversation.item.added", previous_item_id=prev, item=public_item(item))]
            )
        part: dict[str, Any] = (
            {"type": "audio", "transcript": ""} if audio_mode else {"type": "text", "text": ""}
        )
        await self.send(
            [ev("response.content_part.added", content_index=0, part=dict(part), **idx)]
        )
        text, audio_ms = "", 0
        chunk = self.opts.audio_chunk_ms * PCM_BYTES_PER_MS
        try:
            async for piece in self.opts.brain.reply(plan.instructions, plan.input_items, []):
                if plan.cancelled:
                    break
                text += piece
                if not audio_mode:
                    await self.send(
                        [ev("response.output_text.delta", content_index=0, delta=piece, **idx)]
                    )
                    continue
                await self.send(
                    [
                        ev(
                            "response.output_audio_transcript.delta",
                            content_index=0,
                            delta=piece,
                            obfuscation=obfuscation(),
                            **idx,
                        )
                    ]
                )
                pcm = await self.opts.synthesizer.synthesize(piece, plan.voice)
                for off in range(0, len(pcm), chunk):
                    if plan.cancelled:
                        break
                    part_pcm = pcm[off : off + chunk]
                    audio_ms += len(part_pcm) // PCM_BYTES_PER_MS
                    await self.send(
                        [
                            ev(
                                "response.output_audio.delta",
                                content_index=0,
                                delta=base64.b64encode(part_pcm).decode(),
                                **idx,
                            )
                        ]
                    )
                    await asyncio.sleep(0)
        finally:
            status = "cancelled" if plan.cancelled else "completed"
            text = text.strip()
            if audio_mode:
                content = {"type": "output_audio", "transcript": text}
                closing = [
                    ev("response.output_audio.done", content_index=0, **idx),
                    ev(
                        "response.output_audio_transcript.done",
                        content_index=0,
                        transcript=text,
                        **idx,
                    ),
                    ev(
                        "response.content_part.done",
                        content_index=0,
                        part={"type": "audio", "transcript": text},
                        **idx,
                    ),
                ]
            else:
                content = {"type": "output_text", "text": text}
                closing = [
                    ev("response.output_text.done", content_index=0, text=text, **idx),
                    ev(
                        "response.content_part.done",
                        content_index=0,
                        part={"type": "text", "text": text},
                        **idx,
                    ),
                ]
            item["content"] = [content]
            item["status"] = "incomplete" if plan.cancelled else "completed"
            s.audio_ms_by_item[item_id] = audio_ms
            text_out = estimate_text_tokens(text)
            audio_out = audio_ms // 50
            resp.update(
                status=status,
                status_details=(
                    {"type": "cancelled", "reason": plan.cancel_reason} if plan.cancelled else None
                ),
                output=[public_item(item)],
                usage={
                    "total_tokens": text_in + audio_in + text_out + audio_out,
                    "input_tokens": text_in + audio_in,
                    "output_tokens": text_out + audio_out,
                    "input_token_details": {
                        "text_tokens": text_in,
                        "audio_tokens": audio_in,
                        "image_tokens": 0,
                        "cached_tokens": 0,
                        "cached_tokens_details": {
                            "text_tokens": 0,
                            "audio_tokens": 0,
                            "image_tokens": 0,
                        },
                    },
                    "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
                },
            )
            if s.active is plan:
                s.active = None
            tail = [
                *closing,
                ev(
                    "response.output_item.done",
                    response_id=resp["id"],
                    output_index=0,
                    item=public_item(item),
                ),
            ]
            if plan.conversation:
                tail.append(
                    ev("conversation.item.done", previous_item_id=prev, item=public_item(item))
                )
            tail.append(ev("response.done", response=resp))
            tail.append(
                ev(
                    "rate_limits.updated",
                    rate_limits=[
                        {"name": "tokens", "limit": 40000, "remaining": 40000, "reset_seconds": 0.0}
                    ],
                )
            )
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.send(tail)


ENGINE_OPTIONS: web.AppKey[EngineOptions] = web.AppKey("engine_options", EngineOptions)


async def engine_realtime(request: web.Request) -> web.StreamResponse:
    opts = request.app[ENGINE_OPTIONS]
    ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024, compress=False)
    await ws.prepare(request)
    auth = request.headers.get("Authorization", "")
    if not hmac.compare_digest(auth.encode(), f"Bearer {opts.token}".encode()):
        await ws.send_str(
            _dump(
                ev(
                    "error",
                    error={
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                        "message": "Incorrect API key provided.",
                        "param": None,
                        "event_id": None,
                    },
                )
            )
        )
        await ws.close(code=3000, message=b"invalid_request_error.invalid_api_key")
        return ws
    transcription = request.query.get("intent") == "transcription"
    model = request.query.get("model") or "local"
    session = EngineSession(
        model=model, transcription=transcription, max_seconds=opts.max_session_seconds
    )
    await EngineConnection(ws, opts, session).run()
    return ws


def add_engine_routes(
    app: web.Application, opts: EngineOptions, path: str = "/_engine/v1/realtime"
) -> None:
    app[ENGINE_OPTIONS] = opts
    app.router.add_get(path, engine_realtime)
