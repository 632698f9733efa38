"""Producing responses: docs/protocol.md section 6, steps 10-22, for the local engine.

The brain's output becomes output items: text and audio messages (synthesised sentence by
sentence as the text streams in) and function calls, whose arguments go out a
``response.function_call_arguments.delta`` per fragment the brain produces. A response can be
stopped at any point (cancel or barge-in); it always ends with ``response.done`` and its usage,
then ``rate_limits.updated``.

``max_output_tokens`` bounds the output tokens the usage reports (text, transcripts and
function call arguments with the o200k tokenizer, audio at 20 tokens a second). Output is
counted as it is sent; the piece that would cross the limit is cut to fit (a text delta to whole
tokens, audio to whole 50 ms tokens), and the response stops there: the open item is closed
with status ``incomplete``, and ``response.done`` has status ``incomplete``, reason
``max_output_tokens``. A sentence's transcript is sent before its audio, so an audio answer cut
short may have a transcript a few words ahead of what was spoken.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from rtgate.engine.brain import (
    ArgumentsDelta,
    BrainError,
    BrainOutput,
    BrainRequest,
    FunctionCall,
    TextDelta,
)
from rtgate.engine.conversation import PCM_BYTES_PER_MS, public_item
from rtgate.engine.options import EngineOptions
from rtgate.engine.response_plan import ResponsePlan
from rtgate.engine.session import (
    EngineSession,
    Event,
    ev,
    obfuscation,
)
from rtgate.engine.tokens import count_tokens
from rtgate.protocol.ids import new_id

log = logging.getLogger("rtgate.engine")


class Responder:
    """Response production, mixed into ``EngineConnection`` (which provides these members)."""

    s: EngineSession
    opts: EngineOptions
    #: A stop signal per running response (set by cancel and barge-in).
    _stops: dict[str, asyncio.Event]

    async def send(self, events: list[Event]) -> None:
        """Provided by the connection: send events in order."""

    async def heard(self) -> None:
        """Provided by the connection: wait for pending recognition of user turns."""

    async def respond(self, plan: ResponsePlan, prior: asyncio.Task[None] | None = None) -> None:
        """Run one response: the skeleton of docs/protocol.md section 6, steps 10-22.

        ``prior``: the conversation's previous response, which must have ended first.
        """
        s, resp = self.s, plan.response
        if prior is not None and not prior.done():
            await asyncio.wait({prior})
        await self.heard()
        # What the model reads: everything before this response's own output.
        text_in, audio_in = s.input_usage(plan)
        request = BrainRequest(
            instructions=plan.instructions,
            items=[public_item(i) for i in (s.items if plan.conversation else plan.input_items)],
            tools=plan.tools,
            tool_choice=plan.tool_choice,
        )
        outputs: list[dict[str, Any]] = []
        message: _MessageOut | None = None
        call: _CallOut | None = None
        failure: str | None = None
        try:
            await self.send([ev("response.created", response=dict(resp, output=[]))])
            stop = self._stops.setdefault(resp["id"], asyncio.Event())
            async with contextlib.aclosing(
                _until_stopped(stop, self.opts.brain.reply(request))
            ) as brain_outputs:
                async for out in brain_outputs:
                    if plan.stopped:
                        break
                    if isinstance(out, ArgumentsDelta):
                        if call is not None:
                            await self._arguments(plan, call, out.text)
                        continue
                    if call is not None:
                        await self._close_call(plan, call)
                        call = None
                    if isinstance(out, TextDelta):
                        if message is None:
                            if out.text and self._room(plan) == 0:
                                plan.incomplete = True  # no room left for another message
                                break
                            message = await self._open_message(plan, len(outputs))
                            outputs.append(message.item)
                        await self._speak(plan, message, out.text, final=False)
                        continue
                    if message is not None:
                        await self._speak(plan, message, "", final=True)
                        await self._close_message(plan, message)
                        message = None
                    room = self._room(plan)
                    if room is not None and room < count_tokens(out.name):
                        plan.incomplete = True  # no room left for the call
                        break
                    call = await self._open_call(plan, out, len(outputs))
                    outputs.append(call.item)
                    await self._arguments(plan, call, out.arguments)
            if message is not None and not plan.stopped:
                await self._speak(plan, message, "", final=True)
        except BrainError as exc:
            log.warning("brain failed: %s", exc)
            failure = str(exc)
        except Exception as exc:
            # Whatever broke, the client still gets its response.done (docs/protocol.md 5.9).
            log.exception("response failed")
            failure = f"internal error: {type(exc).__name__}"
        finally:
            self._stops.pop(resp["id"], None)
            with contextlib.suppress(ConnectionError, RuntimeError):
                if message is not None:
                    await self._close_message(plan, message)
                if call is not None:
                    await self._close_call(plan, call)
            await self._finish(plan, outputs, text_in, audio_in, failure)

    async def _open_message(self, plan: ResponsePlan, index: int) -> _MessageOut:
        item: dict[str, Any] = {
            "id": new_id("item"),
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        msg = _MessageOut(item=item, index=index, audio="audio" in plan.modalities)
        prev = self._add_item(plan, item)
        await self.send(
            [
                ev(
                    "response.output_item.added",
                    response_id=plan.response["id"],
                    output_index=index,
                    item=public_item(item),
                ),
                *(
                    [ev("conversation.item.added", previous_item_id=prev, item=public_item(item))]
                    if plan.conversation
                    else []
                ),
                ev(
                    "response.content_part.added",
                    content_index=0,
                    part={"type": "audio", "transcript": ""}
                    if msg.audio
                    else {"type": "text", "text": ""},
                    **msg.indices(plan),
                ),
            ]
        )
        return msg

    def _add_item(self, plan: ResponsePlan, item: dict[str, Any]) -> str | None:
        if not plan.conversation:
            return None
        prev = self.s.items[-1]["id"] if self.s.items else None
        self.s.items.append(item)
        return prev

    def _room(
        self, plan: ResponsePlan, msg: _MessageOut | None = None, call: _CallOut | None = None
    ) -> int | None:
        """Output tokens ``plan`` may still produce (``None``: no limit), ``msg`` or ``call``
        being open."""
        if plan.max_output_tokens is None:
            return None
        used = plan.text_out + (plan.audio_out_ms + (msg.audio_ms if msg else 0)) // 50
        if msg is not None:
            used += count_tokens(msg.text)
        if call is not None:
            used += count_tokens(call.item["name"]) + count_tokens(call.arguments)
        return max(0, plan.max_output_tokens - used)

    async def _speak(self, plan: ResponsePlan, msg: _MessageOut, text: str, *, final: bool) -> None:
        """Stream ``text``; with audio, synthesise each sentence as soon as it is complete."""
        idx = msg.indices(plan)
        room = self._room(plan, msg) if text else None
        if room is not None:
            fitted = _fit(text, room, before=msg.text)
            if fitted != text:
                plan.incomplete = True
                text = fitted
        if text:
            msg.text += text
            if not msg.audio:
                await self.send(
                    [ev("response.output_text.delta", content_index=0, delta=text, **idx)]
                )
                return
            await self.send(
                [
                    ev(
                        "response.output_audio_transcript.delta",
                        content_index=0,
                        delta=text,
                        obfuscation=obfuscation(),
                        **idx,
                    )
                ]
            )
            msg.pending += text
        if not msg.audio or plan.stopped:
            return
        while True:
            cut = sentence_end(msg.pending)
            if cut is None:
                if not final or not msg.pending.strip():
                    return
                cut = len(msg.pending)
            sentence, msg.pending = msg.pending[:cut], msg.pending[cut:]
            await self._synthesize(plan, msg, sentence.strip())
            if plan.stopped:
                return

    async def _synthesize(self, plan: ResponsePlan, msg: _MessageOut, sentence: str) -> None:
        if not sentence:
            return
        pcm = await self.opts.synthesizer.synthesize(sentence, plan.voice)
        audio = self.s.encode_output(pcm)
        per_ms = self.s.output_bytes_per_ms()
        chunk = self.opts.audio_chunk_ms * per_ms
        idx = msg.indices(plan)
        sent = 0
        for off in range(0, len(audio), chunk):
            if plan.stopped:
                break
            data = audio[off : off + chunk]
            room = self._room(plan, msg)
            if room is not None:
                # Whole 50 ms tokens: the audio may reach (tokens it has + room) * 50 ms.
                total_ms = plan.audio_out_ms + msg.audio_ms
                allowed_ms = (total_ms // 50 + room) * 50 - plan.audio_out_ms
                allowed = max(0, allowed_ms * per_ms - msg.audio_bytes)
                if len(data) > allowed:
                    plan.incomplete = True
                    data = data[: allowed - allowed % 2] if per_ms % 2 == 0 else data[:allowed]
                    if not data:
                        break
            sent += len(data)
            self.s.audio_produced = True
            # From the bytes sent so far, so sub-millisecond chunk ends are not lost.
            msg.audio_bytes += len(data)
            msg.audio_ms = msg.audio_bytes // per_ms
            await self.send(
                [
                    ev(
                        "response.output_audio.delta",
                        content_index=0,
                        delta=base64.b64encode(data).decode(),
                        **idx,
                    )
                ]
            )
            await asyncio.sleep(0)
        # What was sent, as 24 kHz PCM16: conversation.item.retrieve returns it
        # (docs/protocol.md 2.1).
        keep = sent * PCM_BYTES_PER_MS // per_ms
        msg.pcm += pcm[: keep - keep % 2]

    async def _close_message(self, plan: ResponsePlan, msg: _MessageOut) -> None:
        # The whole text is exactly its deltas joined, as clients that accumulate them expect.
        text, idx = msg.text, msg.indices(plan)
        if msg.audio:
            content: dict[str, Any] = {"type": "output_audio", "transcript": text}
            closing = [
                ev("response.output_audio.done", content_index=0, **idx),
                ev(
                    "response.output_audio_transcript.done", content_index=0, transcript=text, **idx
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
        item = msg.item
        item["content"] = [content]
        item["status"] = "incomplete" if plan.stopped else "completed"
        if msg.audio:
            item["_audio"] = bytes(msg.pcm)
        self.s.audio_ms_by_item[item["id"]] = msg.audio_ms
        plan.text_out += count_tokens(text)
        plan.audio_out_ms += msg.audio_ms
        await self._close_item(plan, item, msg.index, closing)

    async def _close_item(
        self, plan: ResponsePlan, item: dict[str, Any], index: int, closing: list[Event]
    ) -> None:
        tail = [
            *closing,
            ev(
                "response.output_item.done",
                response_id=plan.response["id"],
                output_index=index,
                item=public_item(item),
            ),
        ]
        if plan.conversation:
            prev = self._previous_of(item["id"])
            tail.append(ev("conversation.item.done", previous_item_id=prev, item=public_item(item)))
        await self.send(tail)

    def _previous_of(self, item_id: str) -> str | None:
        ids = [i["id"] for i in self.s.items]
        pos = ids.index(item_id) if item_id in ids else 0
        return ids[pos - 1] if pos > 0 else None

    async def _open_call(self, plan: ResponsePlan, call: FunctionCall, index: int) -> _CallOut:
        item: dict[str, Any] = {
            "id": new_id("item"),
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "name": call.name,
            "call_id": call.call_id,
            "arguments": "",
        }
        prev = self._add_item(plan, item)
        await self.send(
            [
                ev(
                    "response.output_item.added",
                    response_id=plan.response["id"],
                    output_index=index,
                    item=public_item(item),
                ),
                *(
                    [ev("conversation.item.added", previous_item_id=prev, item=public_item(item))]
                    if plan.conversation
                    else []
                ),
            ]
        )
        return _CallOut(item=item, index=index)

    async def _arguments(self, plan: ResponsePlan, call: _CallOut, text: str) -> None:
        """Stream a fragment of ``call``'s arguments: one delta per fragment, cut to fit."""
        room = self._room(plan, call=call)
        if room is not None:
            fitted = _fit(text, room, before=call.arguments)
            if fitted != text:
                plan.incomplete = True
                text = fitted
        if not text:
            return
        call.arguments += text
        await self.send(
            [
                ev(
                    "response.function_call_arguments.delta",
                    delta=text,
                    call_id=call.item["call_id"],
                    **call.indices(plan),
                )
            ]
        )

    async def _close_call(self, plan: ResponsePlan, call: _CallOut) -> None:
        item = call.item
        item["arguments"] = call.arguments
        item["status"] = "incomplete" if plan.stopped else "completed"
        plan.text_out += count_tokens(item["name"]) + count_tokens(call.arguments)
        await self._close_item(
            plan,
            item,
            call.index,
            [
                ev(
                    "response.function_call_arguments.done",
                    call_id=item["call_id"],
                    name=item["name"],
                    arguments=call.arguments,
                    **call.indices(plan),
                ),
            ],
        )

    async def _finish(
        self,
        plan: ResponsePlan,
        outputs: list[dict[str, Any]],
        text_in: int,
        audio_in: int,
        failure: str | None,
    ) -> None:
        s, resp = self.s, plan.response
        text_out, audio_out = plan.text_out, plan.audio_out_ms // 50
        if failure is not None:
            status, details = (
                "failed",
                {
                    "type": "failed",
                    "error": {"type": "server_error", "code": "brain_error", "message": failure},
                },
            )
        elif plan.cancelled:
            status, details = "cancelled", {"type": "cancelled", "reason": plan.cancel_reason}
        elif plan.incomplete:
            status, details = "incomplete", {"type": "incomplete", "reason": "max_output_tokens"}
        else:
            status, details = "completed", None
        resp.update(
            status=status,
            status_details=details,
            output=[public_item(i) for i in outputs],
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
        s.finished(plan)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.send(
                [
                    ev("response.done", response=resp),
                    ev(
                        "rate_limits.updated",
                        rate_limits=[
                            {
                                "name": "tokens",
                                "limit": 40000,
                                "remaining": max(0, 40000 - text_in - audio_in),
                                "reset_seconds": 0.0,
                            }
                        ],
                    ),
                ]
            )


async def _until_stopped(
    stop: asyncio.Event, outputs: AsyncIterator[BrainOutput]
) -> AsyncGenerator[BrainOutput, None]:
    """The brain's outputs until ``stop`` is set, which interrupts a brain still thinking.

    Each step runs as its own task so it can be abandoned: cancelling it unwinds the brain (an
    HTTP stream is closed) and ``response.done`` need not wait for a slow or stalled model.
    """
    stopped = asyncio.ensure_future(stop.wait())
    step: asyncio.Future[BrainOutput] | None = None
    try:
        while not stop.is_set():
            step = asyncio.ensure_future(anext(outputs))
            await asyncio.wait((step, stopped), return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                return
            try:
                out = step.result()
            except StopAsyncIteration:
                return
            yield out
    finally:
        stopped.cancel()
        if step is not None and not step.done():
            step.cancel()
            await asyncio.wait({step})
        if isinstance(outputs, AsyncGenerator):
            await outputs.aclose()


_SENTENCE = re.compile(r"[.!?;:](?=\s)")


def _fit(text: str, tokens: int, before: str = "") -> str:
    """The longest start of ``text`` that adds at most ``tokens`` tokens to ``before``."""
    base = count_tokens(before)
    if count_tokens(before + text) - base <= tokens:
        return text
    lo, hi = 0, len(text)  # text[:lo] fits, text[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count_tokens(before + text[:mid]) - base <= tokens:
            lo = mid
        else:
            hi = mid
    return text[:lo]


def sentence_end(text: str) -> int | None:
    """Where the first sentence of ``text`` ends, once a space follows its punctuation."""
    m = _SENTENCE.search(text)
    return m.end() if m else None


@dataclass
class _CallOut:
    """A function call being produced: its arguments so far."""

    item: dict[str, Any]
    index: int
    arguments: str = ""

    def indices(self, plan: ResponsePlan) -> dict[str, Any]:
        return {
            "response_id": plan.response["id"],
            "item_id": self.item["id"],
            "output_index": self.index,
        }


@dataclass
class _MessageOut:
    """An assistant message being produced."""

    item: dict[str, Any]
    index: int
    audio: bool
    text: str = ""
    pending: str = ""
    audio_bytes: int = 0
    audio_ms: int = 0
    pcm: bytearray = field(default_factory=bytearray)

    def indices(self, plan: ResponsePlan) -> dict[str, Any]:
        return {
            "response_id": plan.response["id"],
            "item_id": self.item["id"],
            "output_index": self.index,
        }
