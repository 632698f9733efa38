"""The engine's conformance, measured: every server event type and every error code the engine
can send, produced over a real socket and validated against the official SDK's GA union and,
as a legacy beta client would receive it, its beta union (``tests/sdk_events.py``).

The scenarios cover the session lifecycle, text, audio, input transcription (and its failure),
tools, barge-in, the idle timeout, truncation and every error path. What they must cover is read
from the engine's own source (every ``ev("...")`` it can emit, every refusal code) and from the
GA event table (every code its check gives), so a new event or error path in the engine fails
here until a scenario produces it and the SDK's types accept it.
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect

from rtgate.engine.brain import (
    ArgumentsDelta,
    BrainError,
    BrainOutput,
    BrainRequest,
    FunctionCall,
    TextDelta,
    last_user_text,
    words,
)
from rtgate.engine.options import EngineOptions
from rtgate.engine.routes import add_engine_routes
from rtgate.engine.tts import ToneSynthesizer
from tests.provider import FakeTranscriber
from tests.sdk_events import validate_server_event

Event = dict[str, Any]
ENGINE = Path(__file__).resolve().parent.parent / "src" / "rtgate" / "engine"
TOKEN = "conformance-token"


class ConformanceBrain:
    """Echoes; calls a tool when asked about the weather (its arguments in two fragments);
    answers a tool's output; stalls mid-story (to be interrupted); fails when told to."""

    async def reply(self, request: BrainRequest) -> AsyncIterator[BrainOutput]:
        last = request.items[-1] if request.items else {}
        text = last_user_text(request.items)
        if last.get("type") == "function_call_output":
            for w in words(f"It is {last.get('output')}."):
                yield TextDelta(w)
        elif "weather" in text:
            yield FunctionCall("get_weather", '{"city": ', call_id="call_conformance01")
            yield ArgumentsDelta('"Oslo"}')
        elif "fail" in text:
            raise BrainError("the brain broke")
        elif "story" in text:
            yield TextDelta("Once upon a time.")
            yield TextDelta(" There was")  # the first sentence is complete: it is spoken
            await asyncio.Event().wait()
        else:
            for w in words(text or "I am listening."):
                yield TextDelta(w)


class Conn:
    """One socket to the engine: what is sent, and every event received (validated)."""

    def __init__(self, ws: ClientConnection, seen: list[Event]) -> None:
        self.ws = ws
        self.seen = seen

    async def send(self, etype: str, **fields: Any) -> None:
        await self.ws.send(orjson.dumps({"type": etype, **fields}).decode())

    async def next(self) -> Event:
        event: Event = orjson.loads(await asyncio.wait_for(self.ws.recv(), 15))
        validate_server_event(event)
        self.seen.append(event)
        return event

    async def until(self, etype: str, **match: Any) -> Event:
        while True:
            e = await self.next()
            if e["type"] == etype and all(e.get(k) == v for k, v in match.items()):
                return e

    async def error(self, etype: str | None = None, raw: str | None = None, **fields: Any) -> Any:
        """Send an event (or a raw frame) that must be refused; the ``error`` it gets."""
        if raw is not None:
            await self.ws.send(raw)
        else:
            assert etype is not None
            await self.send(etype, **fields)
        return (await self.until("error"))["error"]

    async def done(self) -> Event:
        response = (await self.until("response.done"))["response"]
        await self.until("rate_limits.updated")
        return response


def tone(ms: int, amp: int = 8000) -> bytes:
    n = 24 * ms
    return struct.pack(
        f"<{n}h", *(int(amp * math.sin(2 * math.pi * 300 * i / 24000)) for i in range(n))
    )


async def append(conn: Conn, pcm: bytes) -> None:
    for off in range(0, len(pcm), 960):
        await conn.send(
            "input_audio_buffer.append", audio=base64.b64encode(pcm[off : off + 960]).decode()
        )


@pytest.fixture
async def engine() -> AsyncIterator[Callable[..., Awaitable[Conn]]]:
    """``open(query, transcriber=..., token=...)``: a socket to an engine route of its own."""
    runners: list[web.AppRunner] = []
    sockets: list[ClientConnection] = []
    seen: list[Event] = []

    async def open_(
        query: str = "model=gpt-realtime",
        transcriber: FakeTranscriber | None = None,
        token: str = TOKEN,
    ) -> Conn:
        app = web.Application()
        add_engine_routes(
            app,
            EngineOptions(
                token=TOKEN,
                brain=ConformanceBrain(),
                synthesizer=ToneSynthesizer(),
                transcriber=transcriber,
                audio_chunk_ms=40,
            ),
        )
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ws = await connect(
            f"ws://127.0.0.1:{port}/_engine/v1/realtime?{query}",
            additional_headers={"Authorization": f"Bearer {token}"},
            max_size=None,
            # Read on however far a test gets: a full queue stops websockets reading, and a
            # socket closed mid-response then waits out close_timeout (10 s) for the engine's
            # close frame behind the audio it never read.
            max_queue=None,
        )
        sockets.append(ws)
        return Conn(ws, seen)

    open_.seen = seen  # type: ignore[attr-defined]
    yield open_
    for ws in sockets:
        await ws.close()
    for runner in runners:
        await runner.cleanup()


MANUAL = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}


async def lifecycle_and_every_refusal(engine: Callable[..., Awaitable[Conn]]) -> set[Any]:
    conn = await engine()
    await conn.until("session.created")
    await conn.send("session.update", session=MANUAL)
    await conn.until("session.updated")
    codes = set()
    for etype, raw, fields in [
        (None, "{not json", {}),
        (None, '{"event_id": "no type"}', {}),
        ("response.frobnicate", None, {}),
        ("input_audio_buffer.commit", None, {"foo": 1}),
        ("conversation.item.retrieve", None, {}),
        ("session.update", None, {"session": {"type": "realtime", "instructions": 1}}),
        ("response.create", None, {"response": {"max_output_tokens": 0}}),
        ("response.create", None, {"response": {"max_output_tokens": 4097}}),
        (
            "session.update",
            None,
            {"session": {"type": "realtime", "audio": {"output": {"speed": 0.1}}}},
        ),
        (
            "session.update",
            None,
            {"session": {"type": "realtime", "audio": {"output": {"speed": 9}}}},
        ),
        ("input_audio_buffer.clear", None, {"event_id": "e" * 513}),
        ("response.create", None, {"response": {"metadata": {str(i): "v" for i in range(17)}}}),
        ("response.create", None, {"response": {"metadata": {"k" * 65: "v"}}}),
        ("session.update", None, {"session": {"type": "transcription"}}),
        ("input_audio_buffer.commit", None, {}),
        ("response.cancel", None, {}),
        ("output_audio_buffer.clear", None, {}),
        ("conversation.item.retrieve", None, {"item_id": "item_nope"}),
    ]:
        codes.add((await conn.error(etype, raw, **fields))["code"])
    await conn.ws.send(b"\x00binary")
    codes.add((await conn.until("error"))["error"]["code"])
    # A user item cannot be truncated.
    await conn.send(
        "conversation.item.create",
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
    )
    item = (await conn.until("conversation.item.done"))["item"]["id"]
    err = await conn.error(
        "conversation.item.truncate", item_id=item, content_index=0, audio_end_ms=0
    )
    codes.add(err["code"])
    return codes


async def text_turn(engine: Callable[..., Awaitable[Conn]]) -> None:
    conn = await engine()
    await conn.until("session.created")
    await conn.send(
        "conversation.item.create",
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
    )
    item = (await conn.until("conversation.item.done"))["item"]["id"]
    await conn.send("response.create", response={"output_modalities": ["text"]})
    assert (await conn.done())["status"] == "completed"
    await conn.send("conversation.item.retrieve", item_id=item)
    await conn.until("conversation.item.retrieved")
    await conn.send("conversation.item.delete", item_id=item)
    await conn.until("conversation.item.deleted")
    await conn.send("input_audio_buffer.clear")
    await conn.until("input_audio_buffer.cleared")


async def audio_turn_truncation_and_its_refusals(
    engine: Callable[..., Awaitable[Conn]],
) -> set[Any]:
    conn = await engine(transcriber=FakeTranscriber("tell me more"))
    await conn.until("session.created")
    await conn.send(
        "session.update",
        session={
            **MANUAL,
            "audio": {"input": {"turn_detection": None, "transcription": {"model": "whisper-1"}}},
        },
    )
    await conn.until("session.updated")
    await append(conn, tone(600))
    await conn.send("input_audio_buffer.commit")
    await conn.until("conversation.item.input_audio_transcription.completed")
    await conn.send("response.create")
    response = await conn.done()
    assistant = response["output"][0]["id"]
    codes = set()
    err = await conn.error(
        "conversation.item.truncate", item_id=assistant, content_index=0, audio_end_ms=10**6
    )
    codes.add(err["code"])  # None: OpenAI sends this one with no code
    await conn.send(
        "conversation.item.truncate", item_id=assistant, content_index=0, audio_end_ms=100
    )
    await conn.until("conversation.item.truncated")
    err = await conn.error(
        "session.update", session={"type": "realtime", "audio": {"output": {"voice": "marin"}}}
    )
    codes.add(err["code"])
    # One response at a time in the conversation.
    await conn.send(
        "conversation.item.create",
        item={
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "a story"}],
        },
    )
    await conn.send("response.create")
    await conn.until("response.output_audio.delta")
    codes.add((await conn.error("response.create"))["code"])
    await conn.send("response.cancel")
    assert (await conn.done())["status"] == "cancelled"
    return codes


async def vad_turns_barge_in_and_idle_timeout(engine: Callable[..., Awaitable[Conn]]) -> None:
    conn = await engine(transcriber=FakeTranscriber("tell me a story"))
    await conn.until("session.created")
    vad = {"type": "server_vad", "silence_duration_ms": 300, "idle_timeout_ms": 300}
    await conn.send(
        "session.update", session={"type": "realtime", "audio": {"input": {"turn_detection": vad}}}
    )
    await conn.until("session.updated")
    await append(conn, bytes(48 * 300) + tone(600) + bytes(48 * 600))
    await conn.until("input_audio_buffer.speech_stopped")
    await conn.until("response.output_audio.delta")  # the story stalls: speech interrupts it
    await append(conn, tone(600) + bytes(48 * 600))
    interrupted = await conn.until("response.done")
    assert interrupted["response"]["status_details"]["reason"] == "turn_detected"
    # The next turn's story stalls too; cancel it, then stay silent past the idle timeout.
    await conn.until("response.output_audio.delta")
    await conn.send("response.cancel")
    await conn.until("response.done")
    await append(conn, bytes(48 * 3000))
    await conn.until("input_audio_buffer.timeout_triggered")


async def tools_and_a_failing_brain(engine: Callable[..., Awaitable[Conn]]) -> None:
    conn = await engine()
    await conn.until("session.created")
    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
    await conn.send("session.update", session={**MANUAL, "tools": [tool]})
    await conn.until("session.updated")
    await conn.send(
        "conversation.item.create",
        item={
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "weather?"}],
        },
    )
    await conn.send("response.create", response={"output_modalities": ["text"]})
    call = (await conn.done())["output"][0]
    assert call["arguments"] == '{"city": "Oslo"}'
    await conn.send(
        "conversation.item.create",
        item={"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"},
    )
    await conn.send("response.create")
    assert (await conn.done())["status"] == "completed"
    await conn.send(
        "conversation.item.create",
        item={
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "fail"}],
        },
    )
    await conn.send("response.create")
    failed = await conn.done()
    assert failed["status_details"]["error"]["code"] == "brain_error"


async def transcription_sessions(engine: Callable[..., Awaitable[Conn]]) -> str | None:
    conn = await engine("intent=transcription", transcriber=FakeTranscriber("hello"))
    await conn.until("session.created")
    await append(conn, tone(600) + bytes(48 * 600))
    await conn.until("conversation.item.input_audio_transcription.completed")
    deaf = await engine("intent=transcription")
    await deaf.until("session.created")
    await append(deaf, tone(600) + bytes(48 * 600))
    failed = await deaf.until("conversation.item.input_audio_transcription.failed")
    code: str | None = failed["error"]["code"]
    return code


async def a_wrong_token(engine: Callable[..., Awaitable[Conn]]) -> str | None:
    conn = await engine(token="wrong")
    err = (await conn.until("error"))["error"]
    with pytest.raises(websockets.ConnectionClosed):
        await conn.next()
    assert conn.ws.close_code == 3000
    code: str | None = err["code"]
    return code


def engine_source() -> str:
    """The Realtime engine's source; the GPT-Live modules (``live_*.py``) speak another
    protocol and have their own checks (``tests/test_engine_live.py``)."""
    return "".join(
        p.read_text() for p in sorted(ENGINE.glob("*.py")) if not p.name.startswith("live_")
    )


def emittable_types() -> set[str]:
    """Every event type the engine's source can emit."""
    return set(re.findall(r'\bev\(\s*"([a-z_.]+)"', engine_source()))


def engine_codes() -> set[str]:
    """Every error code the engine's source gives: its refusals, errors and failures."""
    src = engine_source()
    return set(re.findall(r'(?:Refusal|error)\(\s*"([a-z_]+)"', src)) | set(
        re.findall(r'"code": "([a-z_]+)"', src)
    )


def schema_codes() -> set[str]:
    """Every code the GA event table's check gives (``protocol/schema.py``)."""
    src = (ENGINE.parent / "protocol" / "schema.py").read_text()
    codes = set(re.findall(r'Problem\(\s*"([a-z_]+)"', src))
    return codes | {
        f"{k}_{e}" for k in ("integer", "decimal") for e in ("below_min_value", "above_max_value")
    }


async def test_every_event_and_every_error_the_engine_sends_is_valid_ga_and_beta(
    engine: Callable[..., Awaitable[Conn]],
) -> None:
    codes: set[Any] = set()
    codes |= await lifecycle_and_every_refusal(engine)
    await text_turn(engine)
    codes |= await audio_turn_truncation_and_its_refusals(engine)
    await vad_turns_barge_in_and_idle_timeout(engine)
    await tools_and_a_failing_brain(engine)
    codes.add(await transcription_sessions(engine))
    codes.add(await a_wrong_token(engine))
    seen: list[Event] = engine.seen  # type: ignore[attr-defined]
    types = {e["type"] for e in seen}
    assert emittable_types() - types == set(), "event types no scenario produced"
    codes |= {
        e["response"]["status_details"]["error"]["code"]
        for e in seen
        if e["type"] == "response.done" and e["response"]["status"] == "failed"
    }
    assert (engine_codes() | schema_codes()) - codes == set(), "error codes no scenario produced"
    assert None in codes  # the truncation OpenAI sends without a code
