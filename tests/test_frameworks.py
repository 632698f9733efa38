"""pipecat and LiveKit Agents, pointed at rtgate by base URL only: a spoken turn on the local
engine, billed what the framework was told it used; and an agent's turn with a tool (the
engine's scripted brain asks for the tool, the framework runs it and sends its output back, the
brain speaks it), as each framework's own agent loop runs it.

Each framework runs as its apps run it, in an environment of its own (``make test-frameworks``
builds ``.venv-frameworks`` from ``requirements/frameworks.txt``; it pins packages rtgate's own
lock pins otherwise), one script per framework in ``tests/frameworks/`` printing what the
framework saw. Both parse every server event with their own types (pipecat's pydantic models,
the openai SDK's in LiveKit's plugin) and log what they cannot use: a warning fails the test.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from rtgate.config import Settings
from tests.speech import speak
from tests.test_agents_realtime import FORECAST, RULES
from tests.test_engine_e2e import SENTENCE, normalise, word_errors

pytestmark = pytest.mark.frameworks

SCRIPTS = Path(__file__).parent / "frameworks"


QUESTION = "What is the weather in Paris?"


async def one_turn(
    script: str, url: str, key: str, said: str, model: str = "gpt-realtime", *more: str
) -> dict[str, Any]:
    """Run ``script`` with the frameworks' Python (``said``: a file of speech, or a typed
    line; ``more``: the script's further arguments): its summary, or its output on a
    failure."""
    proc = await asyncio.create_subprocess_exec(
        os.environ["RTGATE_TEST_FRAMEWORKS_PYTHON"],
        str(SCRIPTS / script),
        url,
        key,
        model,
        said,
        *more,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-4000:]
    summary: dict[str, Any] = orjson.loads(out.splitlines()[-1])
    return summary


@pytest.fixture
def speech(tmp_path: Path) -> Path:
    """The sentence spoken, between 600 ms of silence before and 1.5 s after (24 kHz PCM16)."""
    path = tmp_path / "speech.pcm"
    path.write_bytes(bytes(48 * 600) + speak(SENTENCE) + bytes(48 * 1500))
    return path


def heard_and_answered(summary: dict[str, Any], modality: str) -> None:
    assert summary["errors"] == [] and summary["warnings"] == [], summary
    assert word_errors(SENTENCE, summary["heard"]) <= 1, summary["heard"]
    # The echo brain repeats what it heard: aloud, more than a second of it; or as text only,
    # for the app's own speech synthesis.
    assert word_errors(SENTENCE, summary["said"]) <= 1, summary["said"]
    if modality == "audio":
        assert summary["audio_bytes"] > 48 * 1000, summary["audio_bytes"]
    else:
        assert summary["audio_bytes"] == 0, summary["audio_bytes"]


#: The session's output: speech, or text for an app that speaks with a TTS of its own.
MODALITIES = pytest.mark.parametrize("modality", ["audio", "text"])


async def spoken_turn(
    gw: Any, framework: str, speech: Path, modality: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One spoken turn of ``framework`` on ``gw``'s local engine: what the framework saw (heard
    and answered, checked), and what rtgate billed, by model."""
    key = await gw.new_key(framework)
    # pipecat's OpenAIRealtimeLLMService takes the WebSocket URL (it adds ?model=); LiveKit's
    # RealtimeModel the HTTP base, as for the REST API.
    url = f"{gw.ws}/v1/realtime" if framework == "pipecat" else f"{gw.http}/v1"
    summary = await one_turn(
        f"{framework}_turn.py", url, key, str(speech), "gpt-realtime", modality
    )
    heard_and_answered(summary, modality)
    return summary, {r.model: r.usage for r in await gw.store.usage_summary()}


@MODALITIES
async def test_pipecat_holds_a_spoken_turn_and_is_billed_what_it_was_told(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    speech: Path,
    modality: str,
) -> None:
    gw = await start_gateway(make_settings(OPENAI_API_KEY=""))
    summary, rows = await spoken_turn(gw, "pipecat", speech, modality)
    frames = summary["frames"]
    assert frames.index("TranscriptionFrame") < frames.index("LLMFullResponseEndFrame")
    if modality == "audio":
        assert frames.index("TTSStartedFrame") < frames.index("TTSStoppedFrame")
    else:
        assert "TTSStartedFrame" not in frames, frames
    told = summary["usage"]
    billed = rows["gpt-realtime"]
    assert (billed.input_tokens, billed.output_tokens) == (
        told["prompt_tokens"],
        told["completion_tokens"],
    )
    assert (billed.audio_in, billed.audio_out) == (
        told["input_audio_tokens"],
        told["output_audio_tokens"],
    )
    assert rows["gpt-4o-mini-transcribe"].audio_in > 0


@MODALITIES
async def test_livekit_agents_holds_a_spoken_turn_and_is_billed_what_it_was_told(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    speech: Path,
    modality: str,
) -> None:
    gw = await start_gateway(make_settings(OPENAI_API_KEY=""))
    summary, rows = await spoken_turn(gw, "livekit", speech, modality)
    told = summary["usage"]
    billed = rows["gpt-realtime"]
    assert (billed.input_tokens, billed.output_tokens) == (
        told["input_tokens"],
        told["output_tokens"],
    )
    assert rows["gpt-4o-mini-transcribe"].audio_in > 0


@pytest.fixture
def scripted(tmp_path: Path, make_settings: Callable[..., Settings]) -> Settings:
    """The local engine with the scripted brain: asked about the weather, it calls the tool."""
    script = tmp_path / "rules.toml"
    script.write_text(RULES, encoding="utf-8")
    return make_settings(
        OPENAI_API_KEY="", RTGATE_ENGINE_BRAIN="scripted", RTGATE_ENGINE_SCRIPT=str(script)
    )


async def billed_two_responses(gw: Any) -> None:
    """The function call's response and the spoken reply's, both metered."""
    (row,) = [r for r in await gw.store.usage_summary() if r.model == "gpt-realtime"]
    assert row.records == 2, row
    assert row.usage.input_tokens > 0 and row.usage.audio_out > 0, row


async def test_a_pipecat_bot_runs_its_tool_and_speaks_the_result(
    scripted: Settings, start_gateway: Callable[..., Any]
) -> None:
    gw = await start_gateway(scripted)
    key = await gw.new_key("pipecat")
    summary = await one_turn("pipecat_agent.py", f"{gw.ws}/v1/realtime", key, QUESTION)
    assert summary["errors"] == [] and summary["warnings"] == [], summary
    assert summary["calls"] == ["Paris"], summary
    # The context as pipecat kept it: the question, the call, the tool's result, the answer
    # (pipecat sends a function's result as JSON, so the brain says it quoted).
    roles = [m["role"] for m in summary["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant"], summary["messages"]
    (call,) = summary["messages"][1]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert orjson.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert summary["messages"][2]["tool_call_id"] == call["id"]
    assert summary["said"] == [f'The forecast says "{FORECAST}".'], summary["said"]
    await billed_two_responses(gw)


async def test_a_livekit_agent_runs_its_tool_and_speaks_the_result(
    scripted: Settings, start_gateway: Callable[..., Any]
) -> None:
    gw = await start_gateway(scripted)
    key = await gw.new_key("livekit")
    summary = await one_turn("livekit_agent.py", f"{gw.http}/v1", key, QUESTION)
    assert summary["warnings"] == [], summary
    assert summary["calls"] == ["Paris"], summary
    # The run's events, as AgentSession.run reports them (LiveKit's own agent tests read these).
    assert summary["events"] == [
        {"type": "function_call", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "output": FORECAST},
        {"type": "message", "role": "assistant", "text": f"The forecast says {FORECAST}."},
    ], summary["events"]
    await billed_two_responses(gw)


async def test_a_livekit_agent_on_gpt_live_is_answered_and_billed_by_the_second(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any]
) -> None:
    """LiveKit's ``GPTLiveModel`` (the second voice API, ``/v1/live/sessions``) through rtgate
    to the local engine: the session starts with the user's words as history, LiveKit's ask
    (a ``session.commentary.append``) is answered, and the close is finalised and billed."""
    gw = await start_gateway(make_settings(OPENAI_API_KEY=""))
    key = await gw.new_key("livekit")
    summary = await one_turn("livekit_live.py", f"{gw.http}/v1", key, SENTENCE, "gpt-live-1")
    assert summary["warnings"] == [], summary
    (reply,) = summary["events"]
    assert reply["type"] == "message" and reply["role"] == "assistant", reply
    # The echo brain repeats what it was given: LiveKit's ask, with the typed words in it.
    assert normalise(SENTENCE) in normalise(reply["text"]), reply
    (row,) = [r for r in await gw.store.usage_summary() if r.model == "gpt-live-1"]
    assert row.records >= 1 and row.usage.audio_ms > 0, row


@pytest.fixture
def question(tmp_path: Path) -> Path:
    """The weather question spoken, between 600 ms of silence before and 1.5 s after."""
    path = tmp_path / "question.pcm"
    path.write_bytes(bytes(48 * 600) + speak(QUESTION) + bytes(48 * 1500))
    return path


async def spoken_agent_answers(gw: Any, question: Path, model: str) -> None:
    """A LiveKit voice agent on ``model`` hears ``question``, runs its tool (once, for Paris),
    and speaks the tool's result; LiveKit logs no warning."""
    key = await gw.new_key("livekit")
    summary = await one_turn("livekit_spoken_agent.py", f"{gw.http}/v1", key, str(question), model)
    assert summary["warnings"] == [], summary
    assert summary["calls"] == ["Paris"], summary
    said = {i["role"]: i["text"] for i in summary["items"]}
    assert word_errors(QUESTION, said["user"]) <= 1, summary["items"]
    assert said["assistant"] == f"The forecast says {FORECAST}.", summary["items"]


async def test_a_livekit_agent_on_gpt_live_runs_its_tool_through_the_responses_backend(
    scripted: Settings, start_gateway: Callable[..., Any], question: Path
) -> None:
    """LiveKit's ``GPTLiveModel`` as it comes (Responses delegation): the caller's spoken
    question is delegated, the backend calls the agent's tool, LiveKit runs it and sends the
    output back, and the voice speaks the backend's answer; voice billed by the second, the
    backend's two responses as tokens of its model."""
    gw = await start_gateway(scripted)
    await spoken_agent_answers(gw, question, "gpt-live-1")
    rows = {r.model: r for r in await gw.store.usage_summary()}
    assert rows["gpt-live-1"].usage.audio_ms > 0, rows
    backend = rows["gpt-5.6-luna"]  # LiveKit's default backend model
    assert backend.records == 2 and backend.usage.input_tokens > 0, backend


async def test_a_livekit_voice_agent_runs_its_tool_from_a_spoken_question(
    scripted: Settings, start_gateway: Callable[..., Any], question: Path
) -> None:
    """The LiveKit agent most apps are: ``AgentSession`` over ``RealtimeModel``, server turn
    detection as LiveKit sets it (semantic VAD), the caller's question spoken, the tool run by
    the session, its result spoken."""
    gw = await start_gateway(scripted)
    await spoken_agent_answers(gw, question, "gpt-realtime")
    await billed_two_responses(gw)
