"""The local engine speaks GPT-Live (``/v1/live/sessions``): its protocol state without sockets,
then the official SDK's ``client.live.connect()`` against the engine's route, every event it
receives validated against ``openai.types.live``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from openai import AsyncOpenAI

from rtgate.engine.brain import BrainError, BrainOutput, BrainRequest, EchoBrain, ScriptedBrain
from rtgate.engine.live_session import (
    Answer,
    Backend,
    BargeIn,
    Close,
    LiveEngineSession,
    Say,
    message,
)
from rtgate.engine.options import EngineOptions
from rtgate.engine.ports import Transcript
from rtgate.engine.routes import add_engine_routes
from rtgate.engine.tts import ToneSynthesizer
from rtgate.engine.vad import EnergyVad
from tests.provider import FakeTranscriber
from tests.sdk_events import validate_live_event, validate_responses_event
from tests.test_agents_realtime import RULES

TOKEN = "engine-token-for-tests"
START = {"type": "session.start", "event_id": "evt_start", "session": {"model": "gpt-live-1"}}


def tone(ms: int, amp: int = 8000, rate: int = 24000) -> bytes:
    n = rate * ms // 1000
    return struct.pack(
        f"<{n}h", *(int(amp * math.sin(2 * math.pi * 300 * i / rate)) for i in range(n))
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def started(**session: Any) -> tuple[LiveEngineSession, Clock]:
    clock = Clock()
    s = LiveEngineSession(EnergyVad(), now=clock, wall=lambda: 1_800_000_000.0)
    events, actions = s.handle({**START, "session": {"model": "gpt-live-1", **session}})
    assert [e["type"] for e in events] == ["session.started"] and actions == []
    return s, clock


# -- the protocol state, no sockets ---------------------------------------------------------------


def test_session_start_resolves_the_defaults_and_echoes_the_client_event_id() -> None:
    s, _ = started(instructions="Be brief.")
    (event,) = s.handle({"type": "session.input_audio.mute", "event_id": "m1"})[0]
    validate_live_event(event)
    assert event["client_event_id"] == "m1" and event["type"] == "session.input_audio.muted"
    clock = Clock()
    fresh = LiveEngineSession(EnergyVad(), now=clock, wall=lambda: 1_800_000_000.0)
    (ev,), _ = fresh.handle(START)
    validate_live_event(ev)
    assert ev["client_event_id"] == "evt_start"
    assert ev["session"]["id"].startswith("live_")
    assert ev["session"]["expires_at"] == 1_800_000_000 + 3600
    assert ev["session"]["audio"] == {
        "format": {"type": "audio/pcm", "rate": 24000},
        "output": {"voice": "marin"},
    }
    assert ev["session"]["delegation"] is None and ev["session"]["status"] == "active"


@pytest.mark.parametrize(
    ("session", "code", "param"),
    [
        ({"model": "gpt-live-1", "voice": "marin"}, "unknown_parameter", "voice"),
        ({}, "missing_required_parameter", "session.model"),
        (
            {"model": "gpt-live-1", "audio": {"format": {"type": "audio/pcm", "rate": 8000}}},
            "invalid_value",
            "session.audio.format.rate",
        ),
        (
            {"model": "gpt-live-1", "delegation": {"type": "responses", "responses": {}}},
            "missing_required_parameter",
            "session.delegation.responses.model",
        ),
        (
            {"model": "gpt-live-1", "delegation": {"type": "decisions"}},
            "unsupported_delegation",
            "session.delegation.type",
        ),
        (
            {"model": "gpt-live-1", "delegation": {"type": "responses", "responses": {"model": 5}}},
            "invalid_type",
            "session.delegation.responses.model",
        ),
        (
            {
                "model": "gpt-live-1",
                "delegation": {"type": "responses", "responses": {"model": "m", "tools": "nope"}},
            },
            "invalid_type",
            "session.delegation.responses.tools",
        ),
        # A Realtime model on Live's route, as the provider refuses it (its dated snapshots too).
        ({"model": "gpt-realtime"}, "model_not_found", "session.model"),
        ({"model": "gpt-realtime-mini-2025-12-15"}, "model_not_found", "session.model"),
        ({"model": "gpt-realtime-translate"}, "model_not_found", "session.model"),
    ],
)
def test_a_refused_start_sends_no_session_started(
    session: dict[str, Any], code: str, param: str
) -> None:
    s = LiveEngineSession(EnergyVad())
    (error,), actions = s.handle({**START, "session": session})
    validate_live_event(error)
    assert error["type"] == "error" and actions == [] and not s.started
    assert error["error"]["code"] == code and error["error"]["param"] == param
    assert error["error"]["client_event_id"] == "evt_start"


def test_nothing_but_session_start_comes_first_and_it_comes_once() -> None:
    s = LiveEngineSession(EnergyVad())
    (error,), _ = s.handle({"type": "session.input_audio.append", "audio": b64(tone(20))})
    assert error["error"]["code"] == "session_not_started"
    s, _ = started()
    (error,), _ = s.handle(START)
    assert error["error"]["code"] == "session_already_started"


def test_only_delegation_changes_after_start() -> None:
    s, _ = started()
    (error,), _ = s.handle({"type": "session.update", "session": {"instructions": "x"}})
    assert error["error"]["code"] == "immutable_parameter"
    assert error["error"]["param"] == "session.instructions"
    (ok,), _ = s.handle(
        {"type": "session.update", "event_id": "u1", "session": {"delegation": {"type": "client"}}}
    )
    validate_live_event(ok)
    assert ok["session"]["delegation"] == {"type": "client"} and ok["client_event_id"] == "u1"


def test_audio_must_be_base64_and_pcm16_whole_samples() -> None:
    s, _ = started()
    (error,), _ = s.handle({"type": "session.input_audio.append", "audio": "not base64!"})
    assert error["error"]["code"] == "invalid_audio"
    (error,), _ = s.handle({"type": "session.input_audio.append", "audio": b64(b"\x01\x02\x03")})
    assert error["error"]["code"] == "invalid_audio"


def test_speech_then_silence_is_a_barge_in_then_a_turn_to_answer() -> None:
    s, _ = started()
    actions: list[Any] = []
    for chunk in [bytes(48 * 200), tone(600), bytes(48 * 600)]:
        for off in range(0, len(chunk), 960):
            events, more = s.handle(
                {"type": "session.input_audio.append", "audio": b64(chunk[off : off + 960])}
            )
            assert events == []
            actions += more
    assert [type(a) for a in actions] == [BargeIn, Answer]
    turn = actions[1]
    assert isinstance(turn, Answer)
    # The turn holds the speech (with up to 300 ms of padding before it) and the silence after.
    assert 600 <= turn.end_ms - turn.start_ms <= 1100
    assert len(turn.pcm) == (turn.end_ms - turn.start_ms) * 48


def test_a_16_khz_session_is_heard_at_its_own_rate() -> None:
    s, _ = started(audio={"format": {"type": "audio/pcm", "rate": 16000}})
    actions: list[Any] = []
    for chunk in [tone(600, rate=16000), bytes(32 * 600)]:
        for off in range(0, len(chunk), 640):
            actions += s.handle(
                {"type": "session.input_audio.append", "audio": b64(chunk[off : off + 640])}
            )[1]
    assert [type(a) for a in actions] == [BargeIn, Answer]


def test_muted_audio_reaches_no_one() -> None:
    s, _ = started()
    s.handle({"type": "session.input_audio.mute"})
    actions = s.handle({"type": "session.input_audio.append", "audio": b64(tone(600))})[1]
    actions += s.handle({"type": "session.input_audio.append", "audio": b64(bytes(48 * 600))})[1]
    assert actions == []


def test_appends_are_acknowledged_commentary_is_spoken_and_close_ends() -> None:
    s, clock = started()
    (ack,), _ = s.handle(
        {"type": "session.instructions.append", "content": "VIP caller", "delegation_id": None}
    )
    validate_live_event(ack)
    assert s.history[-1] == message("developer", "VIP caller")
    (error,), _ = s.handle({"type": "session.thinking.append", "content": "hmm"})
    assert error["error"]["code"] == "missing_required_parameter"
    (ack,), actions = s.handle(
        {"type": "session.commentary.append", "content": "One moment.", "delegation_id": None}
    )
    assert ack["type"] == "session.commentary.appended" and actions == [Say("One moment.")]
    clock.t += 61.4
    usage = s.usage_updated()
    validate_live_event(usage)
    assert usage["usage"] == {"seconds": 61}
    events, actions = s.handle({"type": "session.close", "event_id": "c1"})
    assert events == [] and actions == [Close("close_requested", "c1")]
    closed = s.closed("close_requested", "c1")
    validate_live_event(closed)
    assert closed["usage"] == {"seconds": 61} and closed["client_event_id"] == "c1"
    (error,), _ = s.handle({"type": "session.input_audio.append", "audio": ""})
    assert error["error"]["code"] == "session_closing"


@pytest.mark.parametrize(
    ("event", "code"),
    [
        ({"no": "type"}, "invalid_event"),
        ({"type": "decision.create", "event_id": "d1"}, "unsupported_event"),
        ({"type": "session.update", "session": "x"}, "invalid_type"),
        (
            {"type": "session.commentary.append", "content": 3, "delegation_id": None},
            "invalid_type",
        ),
    ],
)
def test_malformed_and_unsupported_commands_get_an_error_and_the_session_goes_on(
    event: dict[str, Any], code: str
) -> None:
    s, _ = started()
    (error,), actions = s.handle(event)
    validate_live_event(error)
    assert error["error"]["code"] == code and actions == []
    (ack,), _ = s.handle({"type": "session.input_audio.unmute"})
    assert ack["type"] == "session.input_audio.unmuted"


def test_backend_commands_need_responses_delegation() -> None:
    s, _ = started()
    (error,), _ = s.handle({"type": "response.create", "event_id": "r1"})
    validate_live_event(error)
    assert error["error"] == {
        "type": "invalid_request_error",
        "code": "delegation_required",
        "message": error["error"]["message"],
        "param": "type",
        "client_event_id": "r1",
    }


#: Responses delegation as LiveKit's GPTLiveModel asks for it by default: a backend model and
#: the agent's tools.
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the weather forecast for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
RESPONSES = {"type": "responses", "responses": {"model": "gpt-5.6-luna", "tools": [WEATHER_TOOL]}}


def nested(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Responses events inside ``response.event``s, each checked against the SDK's types."""
    inner = []
    for e in events:
        validate_live_event(e)
        if e["type"] == "response.event":
            validate_responses_event(e["event"])
            inner.append(e["event"])
    return inner


def test_a_delegated_call_waits_for_its_output_then_the_backend_goes_on() -> None:
    s, clock = started(delegation=RESPONSES)
    s.history.append(message("user", "What is the weather in Paris?"))
    clock.t += 2.5
    # From the turn that ended at 2.4 s.
    events = s.delegate([("get_weather", '{"city": "Paris"}')], None, 2400)
    created = events[0]
    assert created["type"] == "session.delegation.created" and created["offset_ms"] == 2400
    delegation = created["delegation"]
    assert delegation["target"] == "responses" and delegation["type"] == "delegation"
    assert {e["delegation_id"] for e in events[1:]} == {delegation["id"]}
    inner = nested(events)
    assert [e["sequence_number"] for e in inner] == list(range(len(inner)))
    assert [e["type"] for e in inner] == [
        "response.created",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    call = inner[4]["item"]
    assert (call["name"], call["arguments"], call["status"]) == (
        "get_weather",
        '{"city": "Paris"}',
        "completed",
    )
    done = inner[-1]["response"]
    assert done["id"] == delegation["response_id"] and done["model"] == "gpt-5.6-luna"
    assert done["usage"]["input_tokens"] > 0 and done["usage"]["output_tokens"] > 0
    # Not yet: the call has no output. Then a wrong call id, then the output, then on.
    (error,), _ = s.handle({"type": "response.create", "event_id": "r0"})
    assert error["error"]["code"] == "invalid_request" and error["error"]["client_event_id"] == "r0"
    wrong = {"type": "function_call_output", "call_id": "call_nope", "output": "x"}
    (error,), _ = s.handle({"type": "response.item.create", "item": wrong})
    assert (error["error"]["code"], error["error"]["param"]) == ("invalid_value", "item.call_id")
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}
    assert s.handle({"type": "response.item.create", "item": output}) == ([], [])
    assert s.history[-2:] == [
        {
            "type": "function_call",
            "call_id": call["call_id"],
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
        output,
    ]
    assert s.handle({"type": "response.create"}) == ([], [Backend(delegation["id"])])
    # The backend's answer in words, under the same delegation.
    inner = nested(reply := s.backend_reply("The forecast says sunny.", delegation["id"]))
    assert {e["delegation_id"] for e in reply} == {delegation["id"]}
    (item,) = [e["item"] for e in inner if e["type"] == "response.output_item.done"]
    assert item["content"] == [
        {"type": "output_text", "text": "The forecast says sunny.", "annotations": []}
    ]
    assert inner[-1]["type"] == "response.completed"


def test_the_engine_takes_responses_delegation_and_names_its_backend_model() -> None:
    s, _ = started(delegation=RESPONSES)
    assert s.backend_model == "gpt-5.6-luna"
    assert s.resource()["delegation"] == RESPONSES
    (error,), _ = s.handle({"type": "response.item.create", "item": {"type": "reasoning"}})
    assert (error["error"]["code"], error["error"]["param"]) == ("invalid_value", "item.type")


def test_two_calls_are_one_batch_and_a_continuation_may_call_again() -> None:
    s, _ = started(delegation=RESPONSES)
    s.history.append(message("user", "Weather in Oslo and Bergen?"))
    events = s.delegate(
        [("get_weather", '{"city":"Oslo"}'), ("get_weather", '{"city":"Bergen"}')], None, 0
    )
    # One delegation open at a time: another turn answered with a call is not delegated.
    assert s.delegate([("get_weather", "{}")], None, 10) == []
    delegation = events[0]["delegation"]["id"]
    calls = [e["item"] for e in nested(events) if e["type"] == "response.output_item.done"]
    assert [
        e["output_index"] for e in nested(events) if e["type"] == "response.output_item.done"
    ] == [0, 1]
    s.history.append(message("user", "Hurry up."))  # said while the calls wait
    first = {"type": "function_call_output", "call_id": calls[0]["call_id"], "output": "snow"}
    s.handle({"type": "response.item.create", "item": first})
    (error,), _ = s.handle({"type": "response.create", "event_id": "r1"})
    assert (
        error["error"]["code"] == "invalid_request"
        and calls[1]["call_id"] in error["error"]["message"]
    )
    second = {"type": "function_call_output", "call_id": calls[1]["call_id"], "output": "rain"}
    s.handle({"type": "response.item.create", "item": second})
    # Each output right after the calls, before what was said since (a chat model's order).
    assert [i["type"] for i in s.history] == [
        "message",
        "function_call",
        "function_call",
        "function_call_output",
        "function_call_output",
        "message",
    ]
    assert s.handle({"type": "response.create", "event_id": "r2"}) == (
        [],
        [Backend(delegation, "r2")],
    )
    (error,), _ = s.handle({"type": "response.create", "event_id": "r3"})
    assert error["error"]["code"] == "conversation_already_has_active_response"
    # The backend goes on with another call: the same delegation, no new one.
    more = s.delegate([("get_forecast", "{}")], delegation)
    assert {e["type"] for e in more} == {"response.event"}
    assert {e["delegation_id"] for e in more} == {delegation}
    s.backend_running = False  # the connection's part, once the response is sent
    assert s.delegation_id == delegation
    s.backend_reply("Snow, then rain.", delegation)
    # In the conversation as soon as the client has it, whether or not the voice says it all.
    assert s.history[-1] == message("assistant", "Snow, then rain.")
    # Answered in words: the delegation is over; the app's own response.create has none.
    (call,) = [e["item"] for e in nested(more) if e["type"] == "response.output_item.done"]
    s.handle(
        {
            "type": "response.item.create",
            "item": {"type": "function_call_output", "call_id": call["call_id"], "output": "x"},
        }
    )
    assert s.handle({"type": "response.create"}) == ([], [Backend(None)])
    # A call the backend makes then is under no delegation: none is created for it.
    unasked = s.delegate([("get_weather", "{}")], None)
    assert {(e["type"], e["delegation_id"]) for e in unasked} == {("response.event", None)}


def test_a_delegation_update_is_sparse_and_keeps_its_type() -> None:
    s, _ = started(delegation=RESPONSES)
    # LiveKit changes the tools alone (exclude_none): the model and the rest stay.
    tools = [{**WEATHER_TOOL, "name": "get_forecast"}]
    (ok,), _ = s.handle(
        {
            "type": "session.update",
            "session": {"delegation": {"type": "responses", "responses": {"tools": tools}}},
        }
    )
    validate_live_event(ok)
    assert ok["session"]["delegation"]["responses"] == {"model": "gpt-5.6-luna", "tools": tools}
    (ok,), _ = s.handle(
        {
            "type": "session.update",
            "session": {"delegation": {"type": "responses", "acknowledgement_delay_ms": 200}},
        }
    )
    assert ok["session"]["delegation"]["acknowledgement_delay_ms"] == 200
    assert ok["session"]["delegation"]["responses"]["tools"] == tools
    (error,), _ = s.handle(
        {"type": "session.update", "session": {"delegation": {"type": "client"}}}
    )
    assert (error["error"]["code"], error["error"]["param"]) == (
        "invalid_value",
        "session.delegation.type",
    )
    assert s.backend_model == "gpt-5.6-luna"
    # A session started without one delegates to the client: it cannot take a backend later.
    plain, _ = started()
    (error,), _ = plain.handle({"type": "session.update", "session": {"delegation": RESPONSES}})
    assert error["error"]["param"] == "session.delegation.type"
    # Context for a delegation is the client's to give: with a Responses backend, none.
    (error,), _ = s.handle(
        {"type": "session.commentary.append", "content": "Done.", "delegation_id": "dlg_x"}
    )
    assert (error["error"]["code"], error["error"]["param"]) == ("invalid_value", "delegation_id")


# -- the engine's route, with the official SDK ----------------------------------------------------


@pytest.fixture
async def live_engine() -> AsyncIterator[Callable[..., Awaitable[AsyncOpenAI]]]:
    runners: list[web.AppRunner] = []

    async def start(**opts: Any) -> AsyncOpenAI:
        app = web.Application()
        opts.setdefault("transcriber", FakeTranscriber("what is the weather like"))
        opts.setdefault("brain", EchoBrain())
        options = EngineOptions(
            token=TOKEN,
            synthesizer=ToneSynthesizer(),
            audio_chunk_ms=100,
            **opts,
        )
        add_engine_routes(app, options)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return AsyncOpenAI(
            api_key=TOKEN,
            base_url=f"http://127.0.0.1:{port}/_engine/v1",
            websocket_base_url=f"ws://127.0.0.1:{port}/_engine/v1",
        )

    yield start
    for r in runners:
        await r.cleanup()


async def _raw(conn: Any) -> dict[str, Any]:
    event: dict[str, Any] = orjson.loads(await asyncio.wait_for(conn.recv_bytes(), 10))
    validate_live_event(event)
    return event


async def _until(conn: Any, etype: str) -> tuple[dict[str, Any], list[str]]:
    """The first event of ``etype``, and the types of those before it (each validated)."""
    before: list[str] = []
    while (event := await _raw(conn))["type"] != etype:
        before.append(event["type"])
    return event, before


async def test_a_spoken_live_session_through_the_sdk(
    live_engine: Callable[..., Awaitable[AsyncOpenAI]],
) -> None:
    client = await live_engine(live_usage_seconds=0.5)
    async with client.live.connect() as conn:
        await conn.session.start(session={"model": "gpt-live-1", "instructions": "Be brief."})
        first = await _raw(conn)
        assert first["type"] == "session.started"
        speech = bytes(48 * 200) + tone(700) + bytes(48 * 700)
        for off in range(0, len(speech), 960):
            await conn.session.input_audio.append(audio=b64(speech[off : off + 960]))
        seen: list[dict[str, Any]] = []
        while not any(e["type"] == "session.output_audio.delta" for e in seen):
            seen.append(await _raw(conn))
        heard = [e for e in seen if e["type"] == "session.input_transcript.delta"]
        assert [e["delta"] for e in heard] == ["what is the weather like"]
        assert heard[0]["start_ms"] < heard[0]["end_ms"]
        said = [e for e in seen if e["type"] == "session.output_transcript.delta"]
        assert said and "what is the weather like".startswith(said[0]["delta"].strip()[:4])
        # The usage snapshots are cumulative and come on their schedule.
        snapshot, _ = await _until(conn, "session.usage.updated")
        await conn.session.close(event_id="bye")
        event, _ = await _until(conn, "session.closed")
        assert event["reason"] == "close_requested" and event["client_event_id"] == "bye"
        # Cumulative: the final total is never below a snapshot sent before it.
        assert event["usage"]["seconds"] >= snapshot["usage"]["seconds"] >= 0
        assert event["session"]["model"] == "gpt-live-1"


async def test_a_delegated_tool_call_through_the_sdk_is_answered_and_spoken(
    live_engine: Callable[..., Awaitable[AsyncOpenAI]], tmp_path: Any
) -> None:
    """Responses delegation over the engine's socket, as LiveKit's GPTLiveModel runs an
    agent's tools: the caller asks, the backend calls the tool, the client answers it and asks
    the backend to go on, the backend answers in words and the voice speaks them."""
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    client = await live_engine(
        brain=ScriptedBrain.from_file(rules),
        transcriber=FakeTranscriber("what is the weather in paris"),
    )
    async with client.live.connect() as conn:
        await conn.session.start(session={"model": "gpt-live-1", "delegation": RESPONSES})
        started_event = await _raw(conn)
        assert started_event["session"]["delegation"] == RESPONSES
        speech = bytes(48 * 200) + tone(700) + bytes(48 * 700)
        for off in range(0, len(speech), 960):
            await conn.session.input_audio.append(audio=b64(speech[off : off + 960]))
        created, before = await _until(conn, "session.delegation.created")
        assert "session.input_transcript.delta" in before
        assert "session.output_transcript.delta" not in before  # a call is not spoken
        delegation = created["delegation"]["id"]
        # Nothing but the backend's stream until it completes (no voice: a call is not said).
        backend: list[dict[str, Any]] = []
        while not backend or backend[-1].get("event", {}).get("type") != "response.completed":
            backend.append(await _raw(conn))
            assert backend[-1]["type"] == "response.event", backend[-1]
        assert {e["delegation_id"] for e in backend} == {delegation}
        (call,) = [e["item"] for e in nested(backend) if e["type"] == "response.output_item.done"]
        assert (call["name"], call["arguments"]) == ("get_weather", '{"city": "paris"}')
        await conn.send(
            {
                "type": "response.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": call["call_id"],
                    "output": "sunny",
                },
            }
        )
        await conn.send({"type": "response.create"})
        # The backend's answer in words first, under the same delegation, then the voice.
        answer: list[dict[str, Any]] = []
        while (event := await _raw(conn))["type"] == "response.event":
            answer.append(event)
        assert event["type"] == "session.output_transcript.delta", event
        assert event["delta"] == "The forecast says sunny."
        assert {e["delegation_id"] for e in answer} == {delegation}
        (reply,) = [e["item"] for e in nested(answer) if e["type"] == "response.output_item.done"]
        assert reply["content"][0]["text"] == "The forecast says sunny."
        audio, _ = await _until(conn, "session.output_audio.delta")
        assert audio["delta"]


class SlowBackend:
    """A brain that takes ``delay`` seconds when it plays the backend (a tool's output last),
    or fails there when ``delay`` is None."""

    def __init__(self, inner: Any, delay: float | None) -> None:
        self.inner, self.delay = inner, delay
        self.requests: list[BrainRequest] = []

    async def reply(self, request: BrainRequest) -> AsyncIterator[BrainOutput]:
        self.requests.append(request)
        if request.items and request.items[-1].get("type") == "function_call_output":
            if self.delay is None:
                raise BrainError("the backend is down")
            await asyncio.sleep(self.delay)
        async for out in self.inner.reply(request):
            yield out


async def delegated(
    live_engine: Callable[..., Awaitable[AsyncOpenAI]],
    tmp_path: Path,
    delay: float | None,
    brain: SlowBackend | None = None,
    **session: Any,
) -> tuple[Any, Any, dict[str, Any]]:
    """A Live session that asked about the weather: its backend's call, waiting for its
    output (the connection still open: close it)."""
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    client = await live_engine(
        brain=brain or SlowBackend(ScriptedBrain.from_file(rules), delay),
        transcriber=FakeTranscriber("what is the weather in paris"),
    )
    manager = client.live.connect()
    conn = await manager.__aenter__()
    start = {"model": "gpt-live-1", "delegation": RESPONSES, **session}
    await conn.session.start(session=start)
    await _raw(conn)
    speech = bytes(48 * 200) + tone(700) + bytes(48 * 700)
    for off in range(0, len(speech), 960):
        await conn.session.input_audio.append(audio=b64(speech[off : off + 960]))
    await _until(conn, "session.delegation.created")
    backend: list[dict[str, Any]] = []
    while not backend or backend[-1]["event"]["type"] != "response.completed":
        backend.append(await _raw(conn))
    (call,) = [e["item"] for e in nested(backend) if e["type"] == "response.output_item.done"]
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}
    await conn.send({"type": "response.item.create", "item": output})
    return manager, conn, call


async def test_a_barge_in_while_the_backend_works_loses_no_response(
    live_engine: Callable[..., Awaitable[AsyncOpenAI]], tmp_path: Path
) -> None:
    manager, conn, _ = await delegated(live_engine, tmp_path, 0.8)
    try:
        await conn.send({"type": "response.create", "event_id": "go"})
        await conn.send({"type": "response.create", "event_id": "again"})
        error, _ = await _until(conn, "error")
        assert error["error"]["code"] == "conversation_already_has_active_response"
        assert error["error"]["client_event_id"] == "again"
        # The caller says "mm-hm" while the backend works: its answer still comes, and is said.
        for off in range(0, 48 * 400, 960):
            await conn.session.input_audio.append(audio=b64(tone(400)[off : off + 960]))
        done, _ = await _until(conn, "response.event")
        seen = [done]
        while seen[-1]["type"] != "session.output_transcript.delta":
            seen.append(await _raw(conn))
        inner = nested([e for e in seen if e["type"] == "response.event"])
        assert inner[0]["type"] == "response.created" and inner[-1]["type"] == "response.completed"
        assert seen[-1]["delta"] == "The forecast says sunny."
    finally:
        await manager.__aexit__(None, None, None)


async def test_the_backend_takes_its_own_instructions_and_tool_choice(
    live_engine: Callable[..., Awaitable[AsyncOpenAI]], tmp_path: Path
) -> None:
    rules = tmp_path / "backend.toml"
    rules.write_text(RULES)
    brain = SlowBackend(ScriptedBrain.from_file(rules), 0)
    backend = {
        **RESPONSES["responses"],
        "instructions": "Be a careful backend.",
        "tool_choice": "required",
    }
    manager, conn, _ = await delegated(
        live_engine,
        tmp_path,
        0,
        brain,
        instructions="Be a friendly voice.",
        delegation={"type": "responses", "responses": backend},
    )
    try:
        await conn.send({"type": "response.create"})
        await _until(conn, "session.output_transcript.delta")
    finally:
        await manager.__aexit__(None, None, None)
    voice, answer = brain.requests
    assert (voice.instructions, voice.tool_choice) == ("Be a friendly voice.", "auto")
    assert (answer.instructions, answer.tool_choice) == ("Be a careful backend.", "required")
    assert [t["name"] for t in answer.tools] == ["get_weather"]


async def test_a_backend_that_fails_answers_the_response_create_with_a_failed_response(
    live_engine: Callable[..., Awaitable[AsyncOpenAI]], tmp_path: Path
) -> None:
    manager, conn, _ = await delegated(live_engine, tmp_path, None)
    try:
        await conn.send({"type": "response.create", "event_id": "go"})
        failed: list[dict[str, Any]] = []
        while not failed or failed[-1]["type"] != "error":
            failed.append(await _raw(conn))
        inner = nested(failed[:-1])
        assert [e["type"] for e in inner] == ["response.created", "response.failed"]
        assert inner[-1]["response"]["error"]["code"] == "server_error"
        assert failed[-1]["error"]["client_event_id"] == "go"
        assert failed[-1]["error"]["type"] == "server_error"
        # The session goes on: the delegation is over, a new response.create may come.
        await conn.send({"type": "response.create", "event_id": "again"})
        retried, _ = await _until(conn, "response.event")
        assert retried["delegation_id"] is None
    finally:
        await manager.__aexit__(None, None, None)


class SlowTranscriber:
    """Takes a while, like Whisper, and hears each turn as the next of ``texts``."""

    def __init__(self, *texts: str) -> None:
        self.texts = list(texts)

    async def transcribe(self, pcm24k: bytes, model: str, language: str | None) -> Transcript:
        text = self.texts.pop(0)
        await asyncio.sleep(0.4)
        return Transcript(text, len(pcm24k) / 48000)


async def test_a_turn_followed_at_once_by_another_is_still_heard(
    live_engine: Callable[..., Awaitable[AsyncOpenAI]],
) -> None:
    """The caller pauses just long enough to end a turn, then goes on: the first turn's answer
    is dropped for the second's, but its words are transcribed and in the conversation."""
    client = await live_engine(transcriber=SlowTranscriber("hello there", "what is the time"))
    async with client.live.connect() as conn:
        await conn.session.start(session={"model": "gpt-live-1"})
        assert (await _raw(conn))["type"] == "session.started"
        speech = tone(500) + bytes(48 * 700) + tone(500) + bytes(48 * 900)
        for off in range(0, len(speech), 960):
            await conn.session.input_audio.append(audio=b64(speech[off : off + 960]))
        heard: list[str] = []
        while (event := await _raw(conn))["type"] != "session.output_transcript.delta":
            if event["type"] == "session.input_transcript.delta":
                heard.append(event["delta"])
        assert heard == ["hello there", "what is the time"]
        # The echo brain answers the last turn, with both in its conversation.
        assert event["delta"].strip().startswith("what is the time")
        await conn.session.close()
        closed, _ = await _until(conn, "session.closed")
        assert closed["reason"] == "close_requested"


async def test_the_engine_refuses_a_first_event_other_than_session_start(
    live_engine: Callable[..., Awaitable[AsyncOpenAI]],
) -> None:
    client = await live_engine()
    async with client.live.connect(max_retries=0) as conn:
        await conn.session.input_audio.append(audio=b64(tone(20)))
        error = await _raw(conn)
        assert error["type"] == "error"
        assert error["error"]["code"] == "session_not_started"
        with pytest.raises(Exception, match="1008"):
            await conn.recv_bytes()


async def test_a_barge_in_stops_the_answer(
    live_engine: Callable[..., Awaitable[AsyncOpenAI]],
) -> None:
    client = await live_engine()
    async with client.live.connect() as conn:
        await conn.session.start(session={"model": "gpt-live-1"})
        assert (await _raw(conn))["type"] == "session.started"
        await conn.session.commentary.append(
            content="This is a long commentary that takes several seconds of tone to speak out.",
            delegation_id=None,
        )
        # A second one waits for the first: the barge-in stops both.
        await conn.session.commentary.append(content="And then some more.", delegation_id=None)
        _, before = await _until(conn, "session.output_audio.delta")
        assert "session.output_transcript.delta" in before  # the words, then their audio
        # The caller speaks: what is left of the answer is not sent.
        speech = tone(400)
        for off in range(0, len(speech), 960):
            await conn.session.input_audio.append(audio=b64(speech[off : off + 960]))
        rest: list[str] = []
        with contextlib.suppress(TimeoutError):
            while True:
                rest.append((await asyncio.wait_for(_raw(conn), 1.5))["type"])
        # 4 s of tone at 100 ms a delta would be 40, played in real time; the barge-in stopped
        # it a few hundred ms in, and nothing came for the 1.5 s after.
        assert 0 < len(rest) < 15, rest
        assert set(rest) <= {"session.output_audio.delta", "session.commentary.appended"}, rest
        await conn.session.close()
        _, after = await _until(conn, "session.closed")
        assert "session.output_audio.delta" not in after  # nothing more of the cut answer


async def test_a_wrong_engine_token_is_refused(
    live_engine: Callable[..., Awaitable[AsyncOpenAI]],
) -> None:
    client = await live_engine()
    client = client.with_options(api_key="sk-wrong")
    async with client.live.connect(max_retries=0) as conn:
        error = await _raw(conn)
        assert error["error"]["code"] == "invalid_api_key"


def test_the_models_each_route_refuses_are_the_sdks_literals() -> None:
    """``catalog.LIVE_MODELS`` and ``REALTIME_MODELS``, the families of the model literals the
    installed SDK types each session with."""
    import typing

    from openai.types.live.session_config import SessionConfig
    from openai.types.realtime.realtime_session_create_request import (
        RealtimeSessionCreateRequest,
    )

    from rtgate.catalog import LIVE_MODELS, REALTIME_MODELS
    from rtgate.config import model_family

    def families(annotation: Any) -> set[str]:
        out: set[str] = set()
        for arg in typing.get_args(annotation):
            if typing.get_origin(arg) is typing.Literal:
                out |= {model_family(name) for name in typing.get_args(arg)}
        return out

    assert families(SessionConfig.model_fields["model"].annotation) == LIVE_MODELS
    realtime = RealtimeSessionCreateRequest.model_fields["model"].annotation
    assert families(realtime) == REALTIME_MODELS


def test_a_model_is_served_only_on_its_protocols_route(tmp_path: Path) -> None:
    """``check_served``: a model of another protocol is ``model_not_found``; an upstream that
    cannot serve the route (the engine translating, Gemini on Live or translations) is
    ``unsupported_upstream``."""
    from rtgate.catalog import Catalog, WrongProtocol, check_served
    from rtgate.config import load_settings
    from rtgate.errors import UnsupportedUpstream

    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[upstreams.gemini]\nkind = "gemini"\n[models.gemini-live]\nupstream = "gemini"\n'
    )
    catalog = Catalog(load_settings(cfg, {"OPENAI_API_KEY": "sk-x"}))
    local = Catalog(load_settings(None, {}))
    refused: dict[tuple[str, str], type[Exception]] = {
        ("gpt-realtime-mini-2025-12-15", "live"): WrongProtocol,
        ("gpt-realtime-mini-2025-12-15", "translation"): WrongProtocol,
        ("gpt-live-1", "realtime"): WrongProtocol,
        ("gpt-live-1", "translation"): WrongProtocol,
        ("gpt-realtime-translate", "realtime"): WrongProtocol,
        ("gpt-realtime-translate", "live"): WrongProtocol,
        ("gemini-live", "live"): UnsupportedUpstream,
        ("gemini-live", "translation"): UnsupportedUpstream,
        ("local", "translation"): UnsupportedUpstream,
    }
    for model in (
        "gpt-realtime-mini-2025-12-15",
        "gpt-live-1",
        "gpt-realtime-translate",
        "gemini-live",
        "local",
    ):
        route = (local if model == "local" else catalog).resolve(model)
        for protocol in ("realtime", "live", "translation"):
            error = refused.get((model, protocol))
            if error is None:
                check_served(route, protocol)  # type: ignore[arg-type]
                continue
            with pytest.raises(error):
                check_served(route, protocol)  # type: ignore[arg-type]


async def test_outputs_follow_one_another_on_the_timeline(
    live_engine: Callable[..., Awaitable[AsyncOpenAI]],
) -> None:
    """A newcomer's find: audio goes out up to 300 ms ahead of playing, and each sentence was
    placed at "now", so the next one's transcript overlapped the one still playing."""
    client = await live_engine()
    async with client.live.connect() as conn:
        await conn.session.start(session={"model": "gpt-live-1"})
        assert (await _raw(conn))["type"] == "session.started"
        await conn.session.commentary.append(content="One moment please.", delegation_id=None)
        await conn.session.commentary.append(content="Still here.", delegation_id=None)
        placed: list[dict[str, Any]] = []
        while len(placed) < 2:
            event = await _raw(conn)
            if event["type"] == "session.output_transcript.delta":
                placed.append(event)
        await conn.session.close()
        await _until(conn, "session.closed")
    first, second = placed
    assert first["start_ms"] < first["end_ms"] <= second["start_ms"] < second["end_ms"]
