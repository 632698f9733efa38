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
from typing import Any

import orjson
import pytest
from aiohttp import web
from openai import AsyncOpenAI

from rtgate.engine.brain import EchoBrain
from rtgate.engine.live_session import (
    Answer,
    BargeIn,
    Close,
    LiveEngineSession,
    Say,
)
from rtgate.engine.options import EngineOptions
from rtgate.engine.ports import Transcript
from rtgate.engine.routes import add_engine_routes
from rtgate.engine.tts import ToneSynthesizer
from rtgate.engine.vad import EnergyVad
from tests.provider import FakeTranscriber
from tests.sdk_events import validate_live_event

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
            "unsupported_delegation",
            "session.delegation.type",
        ),
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
    assert s.history[-1] == ("developer", "VIP caller")
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


def test_backend_delegation_commands_are_refused_with_the_live_envelope() -> None:
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


# -- the engine's route, with the official SDK ----------------------------------------------------


@pytest.fixture
async def live_engine() -> AsyncIterator[Callable[..., Awaitable[AsyncOpenAI]]]:
    runners: list[web.AppRunner] = []

    async def start(**opts: Any) -> AsyncOpenAI:
        app = web.Application()
        opts.setdefault("transcriber", FakeTranscriber("what is the weather like"))
        options = EngineOptions(
            token=TOKEN,
            brain=EchoBrain(),
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
        assert 0 < len(rest) < 15 and set(rest) == {"session.output_audio.delta"}, rest
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
