"""The local engine's GPT-Live WebSocket: pumps ``LiveEngineSession`` and speaks its answers.

Served beside the Realtime route under the engine's internal path and dialled by the relay
like a provider's ``/v1/live/sessions``, so a Live session on the local engine is admitted,
metered and capped by the same code as one at OpenAI. Underneath it is turn-based: each turn
the session's detector cuts from the caller's audio is transcribed
(``session.input_transcript.delta``), answered by the brain, and spoken sentence by sentence
(``session.output_transcript.delta`` before the sentence's ``session.output_audio.delta``s).
The caller speaking again stops the answer (a barge-in). ``session.usage.updated`` goes out
every ``live_usage_seconds``; ``session.close``, or the session's expiry, ends with
``session.closed`` and close 1000.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Coroutine
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from rtgate.engine.audio import AudioFormat, OutputConverter
from rtgate.engine.brain import ArgumentsDelta, BrainError, BrainRequest, FunctionCall, TextDelta
from rtgate.engine.live_session import (
    EXPIRED,
    Answer,
    Backend,
    BargeIn,
    Close,
    LiveAction,
    LiveEngineSession,
    Say,
    live_error,
    live_event,
    message,
)
from rtgate.engine.options import EngineOptions
from rtgate.engine.responder import sentence_end
from rtgate.engine.routes import ENGINE_OPTIONS, authorized
from rtgate.engine.session import Event

log = logging.getLogger("rtgate.engine")

#: The client's ``session.start`` must come within this (the SDK sends it on connect).
START_TIMEOUT_S = 10.0
#: How far output audio may run ahead of real time (``_Pace``).
LEAD_MS = 300.0


def _dump(event: Event) -> str:
    return orjson.dumps(event).decode()


class LiveConnection:
    def __init__(self, ws: web.WebSocketResponse, opts: EngineOptions) -> None:
        self.ws = ws
        self.opts = opts
        self.s = LiveEngineSession(opts.vad_factory(), max_seconds=opts.max_session_seconds)
        #: The answer being spoken, the newest of a chain (each waits for the one before it):
        #: a barge-in or a newer turn stops them all.
        self._speaking: asyncio.Task[None] | None = None
        self._voices: set[asyncio.Task[None]] = set()
        #: Where on the session's timeline the output placed so far ends: audio goes out up to
        #: ``LEAD_MS`` ahead of playing, so the next sentence starts there, not "now" (its
        #: transcript would overlap the one still playing).
        self._output_end_ms = 0
        #: The Responses backend at work (``response.create``): a barge-in stops what it says,
        #: never the response the client asked for.
        self._backend: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        #: The last turn's transcription (each waits for the one before it), and all running.
        self._heard: asyncio.Task[None] | None = None
        self._hearing: set[asyncio.Task[None]] = set()
        self._ended = asyncio.Event()
        #: Usage snapshots sent so far (one per ``live_usage_seconds`` of the session).
        self._reported = 0

    async def send(self, events: list[Event]) -> None:
        for e in events:
            if not self.ws.closed:
                await self.ws.send_str(_dump(e))

    async def run(self) -> None:
        if not await self._start():
            return
        ticker = asyncio.create_task(self._tick())
        try:
            async for msg in self.ws:
                if msg.type is WSMsgType.TEXT:
                    await self.on_text(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await self.send(
                        [live_error("invalid_event", "Binary frames are not supported; send JSON.")]
                    )
                if self._ended.is_set():
                    break
        finally:
            ticker.cancel()
            await self._stop_backend()
            await self._stop_speaking()
            for task in list(self._hearing):
                task.cancel()
            await asyncio.gather(*self._hearing, return_exceptions=True)
            with contextlib.suppress(asyncio.CancelledError):
                await ticker

    async def _start(self) -> bool:
        """Wait for ``session.start``; anything else first is refused and the session ends
        (1008), as a startup error prevents ``session.started`` (docs/protocol-live.md 6)."""
        while not self.s.started:
            try:
                msg = await self.ws.receive(timeout=START_TIMEOUT_S)
            except TimeoutError:
                await self._refuse("session.start did not arrive in time.")
                return False
            if msg.type is not WSMsgType.TEXT:
                return False
            events, _ = self.s.handle(self._parse(msg.data))
            await self.send(events)
            if not self.s.started:
                await self.ws.close(code=1008, message=b"invalid_request_error.session_start")
                return False
        return True

    async def _refuse(self, message: str) -> None:
        await self.send([live_error("session_not_started", message, "type")])
        await self.ws.close(code=1008, message=b"invalid_request_error.session_start")

    @staticmethod
    def _parse(data: str) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return None

    async def on_text(self, data: str) -> None:
        event = self._parse(data)
        if event is None:
            await self.send([live_error("invalid_event", "The event is not valid JSON.")])
            return
        events, actions = self.s.handle(event)
        await self.send(events)
        for action in actions:
            await self._act(action)

    async def _act(self, action: LiveAction) -> None:
        if isinstance(action, BargeIn):
            await self._stop_speaking()
        elif isinstance(action, Answer):
            # Heard whatever comes next: a turn the caller follows with another is transcribed
            # and joins the conversation, though its own answer is dropped for the newer one.
            self._heard = asyncio.create_task(self._hear(action, self._heard))
            self._hearing.add(self._heard)
            self._heard.add_done_callback(self._heard_done)
            await self._stop_speaking()
            self._voice(self._answer(self._heard, action.end_ms))
        elif isinstance(action, Say):
            prior = self._speaking
            self._voice(self._say(action.text, prior))
        elif isinstance(action, Backend):
            self._backend = asyncio.create_task(self._go_on(action))
        elif isinstance(action, Close):
            await self._close(action.reason, action.client_event_id)

    async def _close(self, reason: str, client_event_id: str | None = None) -> None:
        await self._stop_backend()
        await self._stop_speaking()
        await self.send([self.s.closed(reason, client_event_id)])
        await self.ws.close(code=1000)
        self._ended.set()

    def _voice(self, speech: Coroutine[Any, Any, None]) -> None:
        """``speech`` becomes the newest of the chain of things to say."""
        task = asyncio.create_task(speech)
        self._speaking = task
        self._voices.add(task)
        task.add_done_callback(self._voices.discard)

    async def _stop_speaking(self) -> None:
        # Until none is left: the backend may queue its words while these end.
        while voices := [t for t in self._voices if not t.done()]:
            self._speaking = None
            for task in voices:
                task.cancel()
            for task in voices:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._speaking = None
        # What was cut is not played: the next output starts now.
        self._output_end_ms = min(self._output_end_ms, self.s.timeline_ms())

    async def _stop_backend(self) -> None:
        """The backend's work ends with the session (its sends in flight too)."""
        if self._backend is not None:
            self._backend.cancel()
            await asyncio.gather(self._backend, return_exceptions=True)
        await asyncio.gather(*self._sending, return_exceptions=True)

    async def _send_whole(self, events: list[Event]) -> None:
        """Send ``events`` even if the task sending them is cancelled meanwhile: the calls in
        them wait for outputs from the moment they are made (``LiveEngineSession.delegate``)."""
        task = asyncio.create_task(self.send(events))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        await asyncio.shield(task)

    async def _tick(self) -> None:
        """Usage snapshots on a schedule, and the session's expiry."""
        every = self.opts.live_usage_seconds
        while True:
            await asyncio.sleep(min(every, 1.0))
            if self.s.expired():
                await self._close(EXPIRED)
                return
            due = int(self.s.timeline_ms() // (every * 1000))
            if due > self._reported:
                self._reported = due
                await self.send([self.s.usage_updated()])

    # -- answering ---------------------------------------------------------------------------
    async def _answer(self, heard: asyncio.Task[None], turn_end_ms: int) -> None:
        try:
            await asyncio.wait({heard})  # a barge-in stops the answer, not the hearing
            calls: list[tuple[str, str]] = []
            await self._speak(self._think(calls))
            # A turn the brain answers with a function call is delegated, under Responses
            # delegation; with no backend, the engine delegates to nobody and says nothing of it.
            if calls:
                await self._send_whole(self.s.delegate(calls, None, turn_end_ms))
        except asyncio.CancelledError:
            raise
        except BrainError as exc:
            log.warning("live answer failed: %s", exc)
            error = live_error("server_error", "The engine could not answer.", kind="server_error")
            await self.send([error])

    async def _go_on(self, go_on: Backend) -> None:
        """The backend, given its calls' outputs: more calls, or words (its whole answer
        first, as its ``response.event``s, then said by the voice, which a barge-in may stop).
        A failure is the response's (``response.failed``) and the ``response.create``'s."""
        try:
            calls: list[tuple[str, str]] = []
            sentences = [sentence async for sentence in self._think(calls, backend=True)]
            text = "" if calls else "".join(sentences).strip()
            if calls:
                events = self.s.delegate(calls, go_on.delegation_id)
            else:
                events = self.s.backend_reply(text, go_on.delegation_id)
            await self._send_whole(events)
            if text:  # already in the conversation (backend_reply): said, not recorded again
                self._voice(self._say_all(sentences, self._speaking, record=False))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client's response.create is answered, whatever failed
            if isinstance(exc, BrainError):
                log.warning("live backend failed: %s", exc)
            else:
                log.exception("live backend failed")
            await self.send(self.s.backend_failed(go_on, "The engine could not answer."))
        finally:
            self.s.backend_running = False

    def _heard_done(self, task: asyncio.Task[None]) -> None:
        self._hearing.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("live transcription failed: %r", exc, exc_info=exc)

    async def _hear(self, turn: Answer, before: asyncio.Task[None] | None) -> None:
        """Transcribe ``turn`` (``session.input_transcript.delta``) and add it to the
        conversation, after the turn ``before`` it (the turns' order, whatever each takes)."""
        text = ""
        if self.opts.transcriber is not None:
            heard = await self.opts.transcriber.transcribe(turn.pcm, "gpt-live-transcribe", None)
            text = heard.text
        if before is not None:
            await asyncio.wait({before})
        if text:
            await self.send(
                [
                    live_event(
                        "session.input_transcript.delta",
                        delta=text,
                        start_ms=turn.start_ms,
                        end_ms=turn.end_ms,
                    )
                ]
            )
        self.s.history.append(message("user", text))

    async def _think(
        self, calls: list[tuple[str, str]], backend: bool = False
    ) -> AsyncGenerator[str, None]:
        """The brain's reply, a sentence at a time; its function calls (name, arguments) go
        to ``calls``, never spoken. Under Responses delegation the brain sees the backend's
        tools (the voice delegates what needs one); as the ``backend``, the backend's own
        instructions and tool choice too, where the delegation gives them."""
        delegation = self.s.config.get("delegation") or {}
        responses = delegation.get("responses") or {}
        instructions = self.s.instructions
        if backend and isinstance(responses.get("instructions"), str):
            instructions = responses["instructions"]
        request = BrainRequest(
            instructions=instructions,
            items=list(self.s.history),
            tools=responses.get("tools") or (),
            tool_choice=(responses.get("tool_choice") or "auto") if backend else "auto",
        )
        pending = ""
        async for out in self.opts.brain.reply(request):
            if isinstance(out, TextDelta):
                pending += out.text
                while (end := sentence_end(pending)) is not None:
                    yield pending[:end]
                    pending = pending[end:]
            elif isinstance(out, FunctionCall):
                calls.append((out.name, out.arguments))
            elif isinstance(out, ArgumentsDelta) and calls:
                calls[-1] = (calls[-1][0], calls[-1][1] + out.text)
        if pending.strip():
            yield pending

    async def _say(self, text: str, prior: asyncio.Task[None] | None) -> None:
        await self._say_all([text], prior)

    async def _say_all(
        self, sentences: list[str], prior: asyncio.Task[None] | None, record: bool = True
    ) -> None:
        """Speak ``sentences`` once ``prior`` (what was being said) is over."""
        if prior is not None and not prior.done():
            await asyncio.wait({prior})

        async def given() -> AsyncGenerator[str, None]:
            for sentence in sentences:
                yield sentence

        await self._speak(given(), record)

    async def _speak(self, sentences: AsyncGenerator[str, None], record: bool = True) -> None:
        """Each sentence's transcript, then its audio in the session's format; what was said
        joins the history (``record``) even when a barge-in cuts it short."""
        fmt = self.s.audio_format
        encoder = OutputConverter(AudioFormat(fmt["type"]), rate=fmt["rate"])
        per_ms = 2 * fmt["rate"] // 1000 if fmt["type"] == "audio/pcm" else fmt["rate"] // 1000
        chunk = self.opts.audio_chunk_ms * per_ms
        pace = _Pace()
        said: list[str] = []
        try:
            async for sentence in sentences:
                words = sentence.strip()
                if not words:
                    continue
                pcm = await self.opts.synthesizer.synthesize(words, self.s.voice)
                start = max(self.s.timeline_ms(), self._output_end_ms)
                end = self._output_end_ms = start + len(pcm) // 48
                said.append(words)
                await self.send(
                    [
                        live_event(
                            "session.output_transcript.delta",
                            delta=sentence,
                            start_ms=start,
                            end_ms=end,
                        )
                    ]
                )
                audio = encoder.feed(pcm)
                for off in range(0, len(audio), chunk):
                    await pace.wait()
                    data = audio[off : off + chunk]
                    await self.send(
                        [
                            live_event(
                                "session.output_audio.delta", delta=base64.b64encode(data).decode()
                            )
                        ]
                    )
                    pace.sent(len(data) // per_ms)
            if tail := encoder.flush():
                await self.send(
                    [
                        live_event(
                            "session.output_audio.delta", delta=base64.b64encode(tail).decode()
                        )
                    ]
                )
        finally:
            if said and record:
                self.s.history.append(message("assistant", " ".join(said)))


class _Pace:
    """Output audio at the pace it plays, at most ``LEAD_MS`` ahead: Live has no truncate
    (unlike Realtime's ``conversation.item.truncate``), so what a barge-in stops must not have
    been sent yet, as with the provider's own stream."""

    def __init__(self) -> None:
        self._t0: float | None = None
        self._sent_ms = 0.0

    async def wait(self) -> None:
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        ahead = self._sent_ms - (now - self._t0) * 1000
        await asyncio.sleep(max(0.0, ahead - LEAD_MS) / 1000)

    def sent(self, ms: float) -> None:
        self._sent_ms += ms


async def engine_live(request: web.Request) -> web.StreamResponse:
    """``GET /_engine/v1/live/sessions``: the gateway's per-process token, then a Live session."""
    opts = request.app[ENGINE_OPTIONS]
    # aiohttp refuses a message of exactly max_msg_size bytes: one more, so the largest the
    # gateway takes passes (its relay sizes its own limit alike, relay/endpoint.py).
    ws = web.WebSocketResponse(max_msg_size=opts.max_message_bytes + 1, compress=False)
    await ws.prepare(request)
    if not authorized(request, opts):
        error = live_error("invalid_api_key", "Incorrect API key provided.")
        await ws.send_str(_dump(error))
        await ws.close(code=1008, message=b"invalid_request_error.invalid_api_key")
        return ws
    await LiveConnection(ws, opts).run()
    return ws
