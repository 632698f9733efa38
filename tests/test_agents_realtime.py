"""openai-agents' realtime runner, unchanged but for its URL, through rtgate to the local engine.

The engine's scripted brain plays the model: asked about the weather it calls the agent's tool,
and given the tool's output it speaks it. So one user message exercises the whole agent loop over
rtgate: a function call out, the tool run by the agent, its output back, and a spoken reply.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from agents import function_tool
from agents.realtime import (
    RealtimeAgent,
    RealtimeAgentEndEvent,
    RealtimeAudio,
    RealtimeAudioEnd,
    RealtimeError,
    RealtimeHistoryAdded,
    RealtimeHistoryUpdated,
    RealtimeRawModelEvent,
    RealtimeRunner,
    RealtimeSession,
    RealtimeSessionEvent,
    RealtimeToolEnd,
    RealtimeToolStart,
)
from agents.realtime.items import AssistantMessageItem, RealtimeToolCallItem, UserMessageItem

from tests.conftest import RunningGateway

RULES = """
[[rules]]
match = "weather in (?P<city>[a-z]+)"
call = { name = "get_weather", arguments = '{{"city": "{city}"}}' }

[[rules]]
on_tool_output = "get_weather"
say = "The forecast says {output}."
"""

#: What the tool answers for Paris, and so what the assistant must say.
FORECAST = "sunny and twenty degrees in Paris"
REPLY = f"The forecast says {FORECAST}."
#: Seconds the whole exchange may take (both responses); every other wait is bounded too.
TURNS_TIMEOUT = 30.0


async def collect_turns(session: RealtimeSession) -> list[Any]:
    """The session's events until the tool has ended and both responses are done."""
    events: list[Any] = []
    turns_ended = 0
    tool_ended = False
    async with asyncio.timeout(TURNS_TIMEOUT):
        async for event in session:
            events.append(event)
            if isinstance(event, RealtimeToolEnd):
                tool_ended = True
            elif isinstance(event, RealtimeAgentEndEvent):
                turns_ended += 1
            elif isinstance(event, RealtimeError):
                break
            if tool_ended and turns_ended >= 2:
                break
    return events


def describe(events: list[RealtimeSessionEvent]) -> list[str]:
    """A short trace of the events, for assertion messages."""
    out = []
    for e in events:
        if isinstance(e, RealtimeRawModelEvent):
            data = e.data
            if data.type == "raw_server_event":
                out.append(f"raw:{data.data.get('type')}")
            elif data.type in ("error", "exception"):
                out.append(f"model:{data.type}:{data!r}"[:600])
        else:
            out.append(e.type)
    return out


async def test_agent_calls_a_tool_and_speaks_its_result_through_the_gateway(
    make_settings: Any, start_gateway: Any, tmp_path: Path
) -> None:
    script = tmp_path / "rules.toml"
    script.write_text(RULES, encoding="utf-8")
    gw: RunningGateway = await start_gateway(
        make_settings(
            OPENAI_API_KEY="",
            RTGATE_ENGINE_BRAIN="scripted",
            RTGATE_ENGINE_SCRIPT=str(script),
        )
    )
    assert gw.settings.default_upstream == "local"
    key = await gw.new_key()

    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Get the weather forecast for a city."""
        calls.append(city)
        return f"sunny and twenty degrees in {city}"

    agent = RealtimeAgent(
        name="Forecaster",
        instructions="Answer weather questions with the get_weather tool.",
        tools=[get_weather],
    )
    runner = RealtimeRunner(agent)
    session = await runner.run(
        model_config={"url": f"{gw.ws}/v1/realtime?model=gpt-realtime", "api_key": key}
    )
    async with asyncio.timeout(10):
        await session.enter()
    try:
        async with asyncio.timeout(10):
            await session.send_message("What is the weather in Paris?")
        events = await collect_turns(session)
    finally:
        async with asyncio.timeout(10):
            await session.close()
    trace = describe(events)

    # Nothing was rejected on the way: no error event, no server event the library failed to
    # parse (those surface as model errors or exceptions).
    assert not [e for e in events if isinstance(e, RealtimeError)], trace
    raw_model = [e.data for e in events if isinstance(e, RealtimeRawModelEvent)]
    assert not [d for d in raw_model if d.type in ("error", "exception")], trace
    server_events = [d.data for d in raw_model if d.type == "raw_server_event"]
    server_types = [s.get("type") for s in server_events]
    assert "error" not in server_types, [s for s in server_events if s.get("type") == "error"]

    # The scripted brain called the tool, and the agent really ran it with the city.
    assert calls == ["Paris"], trace
    (start,) = [e for e in events if isinstance(e, RealtimeToolStart)]
    assert start.tool.name == "get_weather"
    assert json.loads(start.arguments) == {"city": "Paris"}
    (end,) = [e for e in events if isinstance(e, RealtimeToolEnd)]
    assert end.output == FORECAST
    assert json.loads(end.arguments) == {"city": "Paris"}

    # Two responses: the function call, then the reply that speaks the tool's output.
    done = [s["response"] for s in server_events if s.get("type") == "response.done"]
    assert len(done) == 2, server_types
    assert [r["status"] for r in done] == ["completed", "completed"]
    (call_item,) = done[0]["output"]
    assert call_item["type"] == "function_call"
    assert call_item["name"] == "get_weather"
    assert json.loads(call_item["arguments"]) == {"city": "Paris"}
    (reply_item,) = done[1]["output"]
    assert reply_item["type"] == "message" and reply_item["role"] == "assistant"
    assert reply_item["content"][0]["type"] == "output_audio"
    assert reply_item["content"][0]["transcript"] == REPLY

    # The tool output went back as a function_call_output item for that call.
    outputs = [
        s["item"]
        for s in server_events
        if s.get("type") == "conversation.item.done"
        and s["item"].get("type") == "function_call_output"
    ]
    assert [(o["call_id"], o["output"]) for o in outputs] == [(call_item["call_id"], FORECAST)]

    # The reply reached the agent as audio, for the reply's item, and then ended.
    audio = [e for e in events if isinstance(e, RealtimeAudio)]
    assert audio, trace
    assert {a.item_id for a in audio} == {reply_item["id"]}
    pcm = b"".join(a.audio.data for a in audio)
    assert len(pcm) > 0 and len(pcm) % 2 == 0
    assert all(a.audio.response_id == done[1]["id"] for a in audio)
    assert [e.item_id for e in events if isinstance(e, RealtimeAudioEnd)] == [reply_item["id"]]
    deltas = [s for s in server_events if s.get("type") == "response.output_audio_transcript.delta"]
    transcript = "".join(s["delta"] for s in deltas)
    assert transcript.strip() == REPLY

    # The agent's history: the user's words, the tool call with its output, the spoken reply.
    assert any(isinstance(e, RealtimeHistoryAdded) for e in events), trace
    history = [e for e in events if isinstance(e, RealtimeHistoryUpdated)][-1].history
    users = [i for i in history if isinstance(i, UserMessageItem)]
    assert [c.text for u in users for c in u.content if c.type == "input_text"] == [
        "What is the weather in Paris?"
    ]
    tools = [i for i in history if isinstance(i, RealtimeToolCallItem)]
    assert [(t.name, t.status, t.output) for t in tools] == [("get_weather", "completed", FORECAST)]
    assistants = [i for i in history if isinstance(i, AssistantMessageItem)]
    assert len(assistants) == 1, history
    (reply,) = assistants
    assert reply.item_id == reply_item["id"]
    assert reply.status == "completed"
    assert [c.transcript for c in reply.content if c.type == "audio"] == [REPLY]

    # Usage: the agent counted both responses, and the gateway metered both of them.
    agent_usage = events[-1].info.context.usage
    assert agent_usage.requests == 2
    assert agent_usage.output_tokens == sum(r["usage"]["output_tokens"] for r in done)
    rows = await gw.store.usage_summary()
    assert [r.model for r in rows] == ["gpt-realtime"]
    (row,) = rows
    assert row.records == 2
    otd = [r["usage"]["output_token_details"] for r in done]
    assert row.usage.audio_out == sum(d["audio_tokens"] for d in otd) > 0
    assert row.usage.text_out == sum(d["text_tokens"] for d in otd) > 0
    assert row.charged_nanos == 0  # the local engine is free
    (sess,) = await gw.store.recent_sessions()
    assert sess.upstream == "local"
