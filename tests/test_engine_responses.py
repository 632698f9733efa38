"""Responses of the local engine (``engine.responder``) with no socket: ``max_output_tokens``
and the voice that locks with the first audio.

A ``Responder`` is driven against an ``EngineSession`` with an in-memory ``send``; every event is
checked against the SDK's GA server event union, and each response against the skeleton of
docs/protocol.md section 6.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rtgate.engine.brain import (
    ArgumentsDelta,
    BrainOutput,
    BrainRequest,
    EchoBrain,
    FunctionCall,
    TextDelta,
)
from rtgate.engine.options import EngineOptions
from rtgate.engine.responder import Responder
from rtgate.engine.response_plan import ResponsePlan
from rtgate.engine.session import EngineSession
from rtgate.engine.tokens import count_tokens
from rtgate.engine.tts import ToneSynthesizer
from tests.sdk_events import validate_server_event

Event = dict[str, Any]
#: ``ToneSynthesizer`` speaks 60 ms a character; 48 bytes a millisecond of 24 kHz PCM16.
MS_PER_CHAR = 60


class Engine(Responder):
    """A ``Responder`` whose ``send`` keeps the events (validated) instead of writing a socket."""

    def __init__(self, brain: Any = None) -> None:
        self.s = EngineSession(model="gpt-realtime")
        self.opts = EngineOptions(
            token="", brain=brain or EchoBrain(), synthesizer=ToneSynthesizer()
        )
        self._stops: dict[str, asyncio.Event] = {}
        self.events: list[Event] = []

    async def send(self, events: list[Event]) -> None:
        for e in events:
            validate_server_event(e)
            self.events.append(e)

    def handle(self, etype: str, **fields: Any) -> tuple[list[Event], ResponsePlan | None]:
        events, plan = self.s.handle({"type": etype, **fields})
        for e in events:
            validate_server_event(e)
        return events, plan

    async def ask(self, text: str, **response: Any) -> dict[str, Any]:
        """The user says ``text``; run the response ``response.create`` asks for."""
        self.handle(
            "conversation.item.create",
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": text}],
            },
        )
        events, plan = self.handle(
            "response.create", **({"response": response} if response else {})
        )
        assert events == [] and plan is not None
        start = len(self.events)
        await self.respond(plan)
        mine = self.events[start:]
        check_skeleton(mine)
        done = next(e for e in mine if e["type"] == "response.done")
        resp: dict[str, Any] = done["response"]
        return resp

    def of(self, etype: str) -> list[Event]:
        return [e for e in self.events if e["type"] == etype]


_PART = (
    r"response\.output_item\.added conversation\.item\.added (response\.content_part\.added )?"
    r"((response\.output_(text|audio|audio_transcript)|response\.function_call_arguments)"
    r"\.delta )*"
    r"(response\.output_audio\.done response\.output_audio_transcript\.done "
    r"response\.content_part\.done |response\.output_text\.done response\.content_part\.done "
    r"|response\.function_call_arguments\.done )"
    r"response\.output_item\.done conversation\.item\.done "
)
_SKELETON = re.compile(rf"response\.created ({_PART})*response\.done rate_limits\.updated ")


def check_skeleton(events: list[Event]) -> None:
    """docs/protocol.md 6, steps 10-22: every part opened is closed, then response.done."""
    line = " ".join(e["type"] for e in events) + " "
    assert _SKELETON.fullmatch(line), line


def usage_out(response: dict[str, Any]) -> tuple[int, int, int]:
    u = response["usage"]
    otd = u["output_token_details"]
    assert u["output_tokens"] == otd["text_tokens"] + otd["audio_tokens"]
    return u["output_tokens"], otd["text_tokens"], otd["audio_tokens"]


INCOMPLETE = {"type": "incomplete", "reason": "max_output_tokens"}
WORDS = "one two three four five six seven eight"


# -- max_output_tokens ------------------------------------------------------------------------


async def test_a_text_response_stops_at_max_output_tokens_as_incomplete() -> None:
    engine = Engine()
    response = await engine.ask(WORDS, output_modalities=["text"], max_output_tokens=3)
    assert response["status"] == "incomplete"
    assert response["status_details"] == INCOMPLETE
    assert response["max_output_tokens"] == 3
    (item,) = response["output"]
    text = item["content"][0]["text"]
    assert item["status"] == "incomplete"
    assert WORDS.startswith(text) and text != WORDS
    assert count_tokens(text) == 3
    # Usage is still reported: exactly the tokens sent.
    assert usage_out(response) == (3, 3, 0)
    assert "".join(d["delta"] for d in engine.of("response.output_text.delta")) == text
    (part_done,) = engine.of("response.content_part.done")
    assert part_done["part"] == {"type": "text", "text": text}
    (item_done,) = engine.of("response.output_item.done")
    (conv_done,) = [e for e in engine.of("conversation.item.done") if e["item"]["id"] == item["id"]]
    assert item_done["item"]["status"] == conv_done["item"]["status"] == "incomplete"
    assert item_done["item"] == item


async def test_an_audio_response_stops_mid_audio_on_whole_tokens() -> None:
    engine = Engine()
    said = "hello there friend"
    limit = count_tokens(said) + 10  # the transcript, then 10 audio tokens: 500 ms
    response = await engine.ask(said, max_output_tokens=limit)
    assert response["status"] == "incomplete" and response["status_details"] == INCOMPLETE
    assert usage_out(response) == (limit, count_tokens(said), 10)
    audio = b"".join(base64.b64decode(e["delta"]) for e in engine.of("response.output_audio.delta"))
    assert len(audio) == 500 * 48 < MS_PER_CHAR * len(said) * 48
    (item,) = response["output"]
    assert item["status"] == "incomplete"
    assert item["content"] == [{"type": "output_audio", "transcript": said}]
    assert len(engine.of("response.output_audio.done")) == 1
    # What was kept is what was sent: truncate and retrieve measure against it.
    assert engine.s.audio_ms_by_item[item["id"]] == 500


async def test_the_session_limit_applies_and_a_response_can_lift_it() -> None:
    engine = Engine()
    (updated,), _ = engine.handle(
        "session.update", session={"type": "realtime", "max_output_tokens": 2}
    )
    assert updated["session"]["max_output_tokens"] == 2
    limited = await engine.ask(WORDS, output_modalities=["text"])
    assert (limited["status"], limited["max_output_tokens"]) == ("incomplete", 2)
    assert usage_out(limited)[0] == 2
    lifted = await engine.ask(WORDS, output_modalities=["text"], max_output_tokens="inf")
    assert (lifted["status"], lifted["status_details"]) == ("completed", None)
    assert lifted["output"][0]["content"][0]["text"] == WORDS


async def test_an_answer_that_fits_exactly_is_complete() -> None:
    engine = Engine()
    response = await engine.ask(
        WORDS, output_modalities=["text"], max_output_tokens=count_tokens(WORDS)
    )
    assert response["status"] == "completed" and response["status_details"] is None
    assert response["output"][0]["status"] == "completed"


class CallingBrain:
    """Says a sentence, then calls a tool with long arguments."""

    def __init__(self, arguments: str) -> None:
        self.arguments = arguments

    async def reply(self, request: BrainRequest) -> AsyncIterator[BrainOutput]:
        yield TextDelta("Let me check.")
        yield FunctionCall("get_weather", self.arguments, call_id="call_0123456789abcdef")


async def test_a_function_call_cut_by_the_limit_is_closed_incomplete() -> None:
    arguments = '{"city": "paris", "unit": "celsius", "days": 3}'
    engine = Engine(CallingBrain(arguments))
    limit = count_tokens("Let me check.") + count_tokens("get_weather") + 4
    response = await engine.ask("weather?", output_modalities=["text"], max_output_tokens=limit)
    assert response["status_details"] == INCOMPLETE
    message, call = response["output"]
    assert message["status"] == "completed"  # closed before the limit was reached
    assert call["type"] == "function_call" and call["status"] == "incomplete"
    (done,) = engine.of("response.function_call_arguments.done")
    assert done["arguments"] == call["arguments"] != arguments
    assert arguments.startswith(call["arguments"]) and count_tokens(call["arguments"]) == 4
    assert usage_out(response)[0] == limit


class StreamingCallBrain:
    """Calls a tool whose arguments come in fragments, as a streaming model sends them."""

    def __init__(self, fragments: list[str]) -> None:
        self.fragments = fragments

    async def reply(self, request: BrainRequest) -> AsyncIterator[BrainOutput]:
        yield FunctionCall("get_weather", "", call_id="call_0123456789abcdef")
        for f in self.fragments:
            yield ArgumentsDelta(f)


async def test_streamed_arguments_go_out_a_delta_per_fragment_until_the_limit() -> None:
    fragments = ['{"city": ', '"paris", ', '"unit": "celsius", ', '"days": 3}']
    engine = Engine(StreamingCallBrain(fragments))
    whole = await engine.ask("weather?", output_modalities=["text"])
    assert [d["delta"] for d in engine.of("response.function_call_arguments.delta")] == fragments
    assert whole["output"][0]["arguments"] == "".join(fragments)

    # Cut inside the third fragment: the deltas are what fits, and nothing after it.
    fits = count_tokens("".join(fragments[:2])) + 2
    limit = count_tokens("get_weather") + fits
    engine = Engine(StreamingCallBrain(fragments))
    cut = await engine.ask("weather?", output_modalities=["text"], max_output_tokens=limit)
    assert cut["status_details"] == INCOMPLETE
    deltas = [d["delta"] for d in engine.of("response.function_call_arguments.delta")]
    assert deltas[:2] == fragments[:2] and len(deltas) == 3
    assert fragments[2].startswith(deltas[2]) and deltas[2] != fragments[2]
    (call,) = cut["output"]
    assert call["status"] == "incomplete" and call["arguments"] == "".join(deltas)
    assert usage_out(cut)[0] == count_tokens("get_weather") + count_tokens(call["arguments"])
    assert count_tokens(call["arguments"]) <= fits


async def test_with_no_room_left_the_call_is_not_started() -> None:
    engine = Engine(CallingBrain("{}"))
    response = await engine.ask(
        "weather?", output_modalities=["text"], max_output_tokens=count_tokens("Let me check.")
    )
    assert response["status_details"] == INCOMPLETE
    assert [i["type"] for i in response["output"]] == ["message"]
    assert response["output"][0]["status"] == "completed"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (0, "integer_below_min_value"),
        (4097, "integer_above_max_value"),
        ("lots", "invalid_value"),  # a string, but not "inf"
        (2.5, "invalid_type"),
        (True, "invalid_type"),
    ],
)
def test_max_output_tokens_outside_1_to_4096_or_inf_is_refused(value: Any, code: str) -> None:
    engine = Engine()
    (err,), _ = engine.handle(
        "session.update", event_id="ev_s", session={"type": "realtime", "max_output_tokens": value}
    )
    assert err["type"] == "error"
    assert (err["error"]["code"], err["error"]["param"], err["error"]["event_id"]) == (
        code,
        "session.max_output_tokens",
        "ev_s",
    )
    assert engine.s.session["max_output_tokens"] == "inf"
    events, plan = engine.handle(
        "response.create", event_id="ev_r", response={"max_output_tokens": value}
    )
    assert plan is None and engine.s.active is None
    (err,) = events
    assert (err["error"]["code"], err["error"]["param"], err["error"]["event_id"]) == (
        code,
        "response.max_output_tokens",
        "ev_r",
    )


# -- the voice --------------------------------------------------------------------------------


def set_voice(engine: Engine, voice: str, **more: Any) -> list[Event]:
    events, _ = engine.handle(
        "session.update",
        event_id="ev_voice",
        session={"type": "realtime", "audio": {"output": {"voice": voice}}, **more},
    )
    return events


async def test_the_voice_can_change_until_the_first_audio_then_not() -> None:
    engine = Engine()
    (updated,) = set_voice(engine, "marin")
    assert updated["session"]["audio"]["output"]["voice"] == "marin"
    # A text answer produces no audio: the voice is still free.
    await engine.ask("hi", output_modalities=["text"])
    assert not engine.s.audio_produced
    (updated,) = set_voice(engine, "cedar")
    assert updated["session"]["audio"]["output"]["voice"] == "cedar"

    await engine.ask("hi")
    assert engine.s.audio_produced
    (err,) = set_voice(engine, "marin", instructions="Not applied either.")
    assert err["type"] == "error"
    assert err["error"] == {
        "type": "invalid_request_error",
        "code": "cannot_update_voice",
        "message": "Cannot update a conversation's voice if assistant audio is present.",
        "param": None,
        "event_id": "ev_voice",
    }
    assert engine.s.session["audio"]["output"]["voice"] == "cedar"
    assert engine.s.session["instructions"] != "Not applied either."
    # Naming the voice it already has is no change, and other fields still update.
    (updated,) = set_voice(engine, "cedar", instructions="Fine.")
    assert updated["session"]["instructions"] == "Fine."
    (updated,), _ = engine.handle(
        "session.update", session={"type": "realtime", "audio": {"output": {"speed": 1.2}}}
    )
    assert updated["session"]["audio"]["output"]["speed"] == 1.2
