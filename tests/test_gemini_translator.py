"""The Gemini translator (``protocol/gemini.py``) fed plain strings: no sockets, no event loop.
Every event it writes for the client is validated with the ``openai`` SDK's own types."""

from __future__ import annotations

import base64
import itertools
import math
import struct
from typing import Any

import orjson
import pytest

from rtgate.engine.audio import AudioFormat, InputConverter, OutputConverter
from rtgate.protocol.gemini import REPLAY_LIMIT, GeminiTranslator
from rtgate.protocol.gemini_events import Closed, Out, Resume, Switch, ToClient, ToGemini
from rtgate.protocol.gemini_setup import gemini_schema, model_path
from rtgate.protocol.gemini_usage import realtime_usage
from rtgate.protocol.usage import read_response_usage
from tests.sdk_events import validate_server_event


def translator() -> GeminiTranslator:
    return GeminiTranslator(
        "gemini-live",
        "gemini-3.8-live",
        input_converter=lambda fmt, rate: InputConverter(AudioFormat(fmt), "MQ", out_rate=rate),
        output_converter=lambda fmt: OutputConverter(AudioFormat(fmt)),
    )


def client(tr: GeminiTranslator, **event: Any) -> list[Out]:
    return tr.client_frame(orjson.dumps(event).decode())


def gemini(tr: GeminiTranslator, msg: dict[str, Any] | str, *, binary: bool = False) -> list[Out]:
    data = msg if isinstance(msg, str) else orjson.dumps(msg).decode()
    return tr.gemini_frame(data.encode() if binary else data)


def to_client(outs: list[Out]) -> list[dict[str, Any]]:
    events = [orjson.loads(o.frame) for o in outs if isinstance(o, ToClient)]
    for e in events:
        validate_server_event(e)
    return events


def to_gemini(outs: list[Out]) -> list[dict[str, Any]]:
    return [orjson.loads(o.frame) for o in outs if isinstance(o, ToGemini)]


def types(outs: list[Out]) -> list[str]:
    return [e["type"] for e in to_client(outs)]


def ready(tr: GeminiTranslator, **session: Any) -> dict[str, Any]:
    """Through setup: the session's update, a text item (which sends setup), setupComplete."""
    to_client(tr.opened())
    if session:
        client(tr, type="session.update", session=session)
    outs = client(
        tr,
        type="conversation.item.create",
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
    )
    (setup,) = to_gemini(outs)
    assert to_gemini(gemini(tr, {"setupComplete": {}})) == [
        {
            "clientContent": {
                "turns": [{"role": "user", "parts": [{"text": "hi"}]}],
                "turnComplete": False,
            }
        }
    ]
    return dict(setup["setup"])


def tone24k(ms: int) -> bytes:
    n = 24 * ms
    return struct.pack(
        f"<{n}h", *(int(8000 * math.sin(2 * math.pi * 300 * i / 24000)) for i in range(n))
    )


USAGE = {
    "promptTokenCount": 522,
    "responseTokenCount": 42,
    "totalTokenCount": 700,
    "thoughtsTokenCount": 136,
    "cachedContentTokenCount": 100,
    "promptTokensDetails": [
        {"modality": "TEXT", "tokenCount": 332},
        {"modality": "AUDIO", "tokenCount": 165},
    ],
    "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 100}],
    "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": 42}],
}


def test_session_updates_before_the_first_turn_make_the_one_setup() -> None:
    tr = translator()
    assert types(tr.opened()) == ["session.created"]
    outs = client(
        tr,
        type="session.update",
        session={
            "type": "realtime",
            "instructions": "Be brief.",
            "audio": {"output": {"voice": "sage"}, "input": {"transcription": {"model": "x"}}},
            "tools": [
                {
                    "type": "function",
                    "name": "get_weather",
                    "description": "Weather",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "additionalProperties": False,
                    },
                }
            ],
        },
    )
    assert types(outs) == ["session.updated"]
    assert to_gemini(outs) == []  # nothing goes to Gemini before the first turn
    assert types(client(tr, type="session.update", session={"max_output_tokens": 512})) == [
        "session.updated"
    ]
    outs = client(tr, type="response.create")
    (setup, *_) = to_gemini(outs)
    s = setup["setup"]
    assert s["model"] == "models/gemini-3.8-live"
    assert s["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert s["generationConfig"] == {
        "responseModalities": ["AUDIO"],
        "maxOutputTokens": 512,
        "speechConfig": {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Kore"}}},
    }
    assert s["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather",
                    "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}},
                }
            ]
        }
    ]
    assert s["inputAudioTranscription"] == {} and s["outputAudioTranscription"] == {}
    assert s["sessionResumption"] == {"transparent": True}
    assert s["realtimeInputConfig"] == {
        "automaticActivityDetection": {
            "disabled": False,
            "prefixPaddingMs": 300,
            "silenceDurationMs": 500,
        }
    }
    # The turn waits for setupComplete, then goes.
    assert len(to_gemini(outs)) == 1
    assert to_gemini(gemini(tr, {"setupComplete": {"sessionId": "s1"}})) == [
        {"clientContent": {"turnComplete": True}}
    ]


def test_a_later_update_gemini_cannot_apply_is_an_error_event_not_a_close() -> None:
    tr = translator()
    ready(tr, instructions="one")
    outs = client(tr, type="session.update", event_id="evt_1", session={"instructions": "two"})
    (err,) = to_client(outs)
    assert err["type"] == "error"
    assert err["error"]["code"] == "session_update_not_supported"
    assert err["error"]["event_id"] == "evt_1"
    assert to_gemini(outs) == []
    assert tr.session["instructions"] == "one"
    # An update that leaves setup as it is (the same instructions; an audio format the gateway
    # converts) is applied.
    outs = client(
        tr,
        type="session.update",
        session={"instructions": "one", "audio": {"output": {"format": {"type": "audio/pcmu"}}}},
    )
    assert types(outs) == ["session.updated"]


def test_model_path_and_schema() -> None:
    assert model_path("gemini-3.8-live") == "models/gemini-3.8-live"
    assert model_path("models/gemini-3.8-live") == "models/gemini-3.8-live"
    assert gemini_schema({"type": "array", "items": {"type": "integer"}, "$schema": "x"}) == {
        "type": "ARRAY",
        "items": {"type": "INTEGER"},
    }


def test_audio_appends_are_resampled_to_16k_and_commit_ends_the_stream() -> None:
    tr = translator()
    ready(tr)
    pcm = tone24k(1000)
    sent = b""
    for off in range(0, len(pcm), 960):  # 20 ms chunks
        outs = client(
            tr,
            type="input_audio_buffer.append",
            audio=base64.b64encode(pcm[off : off + 960]).decode(),
        )
        for m in to_gemini(outs):
            audio = m["realtimeInput"]["audio"]
            assert audio["mimeType"] == "audio/pcm;rate=16000"
            sent += base64.b64decode(audio["data"])
    outs = client(tr, type="input_audio_buffer.commit")
    msgs = to_gemini(outs)
    assert msgs[-1] == {"realtimeInput": {"audioStreamEnd": True}}
    for m in msgs[:-1]:
        sent += base64.b64decode(m["realtimeInput"]["audio"]["data"])
    assert types(outs) == ["input_audio_buffer.committed"]
    # One second at 24 kHz is 16000 samples at 16 kHz, give or take the filter's edge.
    assert abs(len(sent) // 2 - 16000) <= 16
    # The tone survives: 300 Hz is about 600 zero crossings a second.
    samples = struct.unpack(f"<{len(sent) // 2}h", sent)
    crossings = sum(1 for a, b in itertools.pairwise(samples[100:]) if (a < 0) != (b < 0))
    assert 560 <= crossings <= 620


def test_manual_turns_wrap_audio_in_activity_start_and_end() -> None:
    tr = translator()
    setup = ready(tr, audio={"input": {"turn_detection": None}})
    assert setup["realtimeInputConfig"] == {"automaticActivityDetection": {"disabled": True}}
    outs = client(
        tr, type="input_audio_buffer.append", audio=base64.b64encode(tone24k(100)).decode()
    )
    assert to_gemini(outs)[0] == {"realtimeInput": {"activityStart": {}}}
    msgs = to_gemini(client(tr, type="input_audio_buffer.commit"))
    assert msgs[-1] == {"realtimeInput": {"activityEnd": {}}}
    # Gemini answers the turn on its own: the client's response.create sends nothing, even
    # once the answer has started (a turnComplete would interrupt it).
    gemini(tr, {"serverContent": {"modelTurn": {"parts": [{"text": "x"}]}}})
    assert client(tr, type="response.create") == []
    # The next one, after a text item, asks for a turn.
    gemini(tr, {"serverContent": {"turnComplete": True}})
    client(
        tr,
        type="conversation.item.create",
        item={
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "and?"}],
        },
    )
    assert to_gemini(client(tr, type="response.create")) == [
        {"clientContent": {"turnComplete": True}}
    ]


def test_a_spoken_turn_becomes_transcripts_audio_and_a_completed_response_with_usage() -> None:
    tr = translator()
    ready(tr, audio={"input": {"transcription": {"model": "gemini"}}})
    audio = base64.b64encode(b"\x01\x00" * 480).decode()
    outs = gemini(tr, {"serverContent": {"inputTranscription": {"text": "what's the "}}})
    outs += gemini(tr, {"serverContent": {"inputTranscription": {"text": "weather"}}}, binary=True)
    outs += gemini(
        tr,
        {
            "serverContent": {
                "modelTurn": {
                    "parts": [{"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": audio}}]
                },
                "outputTranscription": {"text": "Sunny"},
            }
        },
    )
    outs += gemini(tr, {"serverContent": {"outputTranscription": {"text": " today"}}})
    outs += gemini(tr, {"serverContent": {"generationComplete": True}})
    outs += gemini(tr, {"serverContent": {"turnComplete": True}, "usageMetadata": USAGE})
    events = to_client(outs)
    assert [e["type"] for e in events] == [
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    assert events[2]["transcript"] == "what's the weather"
    assert events[7]["delta"] == audio  # 24 kHz PCM passes untouched
    done = events[-1]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"] == [{"type": "output_audio", "transcript": "Sunny today"}]
    usage = read_response_usage(done["usage"]).usage
    # 522 prompt = 332 text + 165 audio + a 25-token gap counted as text; 100 of the text cached.
    assert (usage.text_in, usage.audio_in, usage.text_in_cached) == (357, 165, 100)
    # Output: 42 audio; the 136 thinking tokens are billed as text output.
    assert (usage.audio_out, usage.text_out) == (42, 136)


def test_vertex_usage_dialect_reads_the_same() -> None:
    vertex = {k: v for k, v in USAGE.items() if not k.startswith("response")}
    vertex["candidatesTokenCount"] = 42
    vertex["candidatesTokensDetails"] = [{"modality": "AUDIO", "tokenCount": 42}]
    assert realtime_usage(vertex) == realtime_usage(USAGE)
    tool = realtime_usage({"promptTokenCount": 10, "toolUsePromptTokenCount": 5})
    assert tool["input_tokens"] == 15


def test_barge_in_starts_speech_at_once_and_ends_the_response_cancelled() -> None:
    tr = translator()
    ready(tr)
    audio = base64.b64encode(b"\x00\x00" * 480).decode()
    part = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": audio}}
    gemini(tr, {"serverContent": {"modelTurn": {"parts": [part]}}})
    outs = gemini(tr, {"serverContent": {"interrupted": True}})
    assert types(outs) == ["input_audio_buffer.speech_started"]
    # What Gemini still sends of the interrupted turn is dropped.
    assert types(gemini(tr, {"serverContent": {"modelTurn": {"parts": [part]}}})) == []
    outs = gemini(tr, {"serverContent": {"turnComplete": True}, "usageMetadata": USAGE})
    events = to_client(outs)
    done = events[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert done["output"][0]["status"] == "incomplete"
    assert done["usage"]["output_token_details"]["audio_tokens"] == 42


def test_response_cancel_drops_the_rest_and_ends_cancelled() -> None:
    tr = translator()
    ready(tr)
    assert (
        to_client(client(tr, type="response.cancel"))[0]["error"]["code"]
        == "response_cancel_not_active"
    )
    gemini(tr, {"serverContent": {"modelTurn": {"parts": [{"text": "Hel"}]}}})
    assert client(tr, type="response.cancel") == []
    assert types(gemini(tr, {"serverContent": {"modelTurn": {"parts": [{"text": "lo"}]}}})) == []
    events = to_client(gemini(tr, {"serverContent": {"turnComplete": True}}))
    assert events[-1]["response"]["status_details"]["reason"] == "client_cancelled"
    assert events[-1]["response"]["output"][0]["content"] == [
        {"type": "output_text", "text": "Hel"}
    ]


def test_a_tool_call_round_trip() -> None:
    tr = translator()
    ready(tr)
    outs = gemini(
        tr,
        {
            "toolCall": {
                "functionCalls": [{"id": "fc_1", "name": "get_weather", "args": {"city": "Paris"}}]
            },
            "usageMetadata": USAGE,
        },
    )
    events = to_client(outs)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    args = events[4]
    assert (args["call_id"], args["name"], orjson.loads(args["arguments"])) == (
        "fc_1",
        "get_weather",
        {"city": "Paris"},
    )
    assert events[-1]["response"]["output"][0]["type"] == "function_call"
    assert events[-1]["response"]["usage"]["input_tokens"] == 522
    # A bare turnComplete after the call carries nothing to bill: nothing for the client.
    assert types(gemini(tr, {"serverContent": {"turnComplete": True}})) == []
    outs = client(
        tr,
        type="conversation.item.create",
        item={"type": "function_call_output", "call_id": "fc_1", "output": '{"temp": "18C"}'},
    )
    assert to_gemini(outs) == [
        {
            "toolResponse": {
                "functionResponses": [
                    {"id": "fc_1", "name": "get_weather", "response": {"temp": "18C"}}
                ]
            }
        }
    ]
    assert types(outs) == ["conversation.item.added", "conversation.item.done"]
    # Gemini continues by itself: response.create sends nothing (a turnComplete would interrupt).
    assert client(tr, type="response.create") == []
    # Plain text output is wrapped in an object.
    outs = client(
        tr,
        type="conversation.item.create",
        item={"type": "function_call_output", "call_id": "fc_1", "output": "18C"},
    )
    assert to_gemini(outs)[0]["toolResponse"]["functionResponses"][0]["response"] == {
        "result": "18C"
    }


def test_usage_no_response_carried_gets_a_response_of_its_own() -> None:
    tr = translator()
    ready(tr)
    outs = gemini(tr, {"usageMetadata": USAGE})
    assert outs == []
    events = to_client(gemini(tr, {"serverContent": {"turnComplete": True}}))
    assert [e["type"] for e in events] == ["response.created", "response.done"]
    assert events[-1]["response"]["usage"]["input_tokens"] == 522
    # Usage left when the upstream ends is metered before the close.
    gemini(tr, {"usageMetadata": USAGE})
    outs = tr.gemini_closed(1011, "Internal error occurred")
    assert types(outs) == ["response.created", "response.done", "error"]


def test_go_away_resumes_with_the_handle_and_replays_what_gemini_did_not_consume() -> None:
    tr = translator()
    ready(tr)
    for i in range(3):
        client(tr, type="input_audio_buffer.append", audio=base64.b64encode(tone24k(100)).decode())
        if i == 0:
            gemini(
                tr,
                {
                    "sessionResumptionUpdate": {
                        "newHandle": "h_1",
                        "resumable": True,
                        "lastConsumedClientMessageIndex": "1",
                    }
                },
            )
    # A response in flight: the resumption waits for its end.
    gemini(tr, {"serverContent": {"modelTurn": {"parts": [{"text": "x"}]}}})
    assert gemini(tr, {"goAway": {"timeLeft": "10s"}}) == []
    outs = gemini(tr, {"serverContent": {"turnComplete": True}})
    assert [o for o in outs if isinstance(o, Resume)] == [Resume()]
    assert tr.resuming
    assert orjson.loads(tr.resume_setup())["setup"]["sessionResumption"] == {
        "handle": "h_1",
        "transparent": True,
    }
    # Appends meanwhile wait for the new connection.
    assert (
        to_gemini(
            client(
                tr, type="input_audio_buffer.append", audio=base64.b64encode(tone24k(100)).decode()
            )
        )
        == []
    )
    outs = gemini(tr, {"setupComplete": {}})
    assert isinstance(outs[0], Switch)
    replay = to_gemini(outs)
    # Indexes 0 and 1 were consumed; the rest (two appends before, one during) are replayed.
    assert len(replay) == 3
    assert all("realtimeInput" in m for m in replay)
    assert to_client(outs) == []  # the client hears nothing of it


def test_a_close_after_go_away_resumes_instead_of_ending() -> None:
    tr = translator()
    ready(tr)
    gemini(tr, {"sessionResumptionUpdate": {"newHandle": "h_1", "resumable": True}})
    gemini(tr, {"serverContent": {"modelTurn": {"parts": [{"text": "x"}]}}})
    gemini(tr, {"goAway": {"timeLeft": "1s"}})
    outs = tr.gemini_closed(1000, "")
    assert outs[-1] == Resume()
    # The response in flight cannot end on a connection that is gone: failed, not left open.
    assert to_client(outs)[-1]["response"]["status"] == "failed"
    outs = gemini(tr, {"setupComplete": {}})
    assert isinstance(outs[0], Switch)
    # The next turn is relayed, not dropped as the rest of the lost one.
    assert "response.created" in types(
        gemini(tr, {"serverContent": {"modelTurn": {"parts": [{"text": "y"}]}}})
    )


def test_close_codes_become_error_events_and_closes() -> None:
    cases = [
        (
            1008,
            "Your API key was reported as leaked. AIzaSyA1234567890abcdefghij",
            "invalid_api_key",
            1008,
        ),
        (1008, "models/x is not found for API version v1beta", "model_not_found", 1008),
        (1007, "Request contains an invalid argument", "upstream_refused", 1007),
        (1011, "Internal error occurred", "upstream_error", 1011),
    ]
    for code, reason, ecode, close in cases:
        tr = translator()
        ready(tr)
        outs = tr.gemini_closed(code, reason)
        (err,) = to_client(outs)
        assert err["error"]["code"] == ecode
        assert "AIza" not in err["error"]["message"]
        closed = outs[-1]
        assert isinstance(closed, Closed)
        assert closed.code == close
        assert closed.reason.endswith(ecode)


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[1, 2]",
        '{"serverContent": 3}',
        '{"toolCall": {}}',
        '{"somethingNew": {}}',
        '{"usageMetadata": []}',
    ],
)
def test_malformed_or_unexpected_gemini_messages_get_a_clear_error(frame: str) -> None:
    tr = translator()
    ready(tr)
    (err,) = to_client(gemini(tr, frame))
    assert err["error"]["code"] == "upstream_protocol_error"
    assert err["error"]["type"] == "server_error"


def test_unsupported_client_events_get_an_error_and_nothing_reaches_gemini() -> None:
    tr = translator()
    ready(tr)
    for event in (
        {"type": "conversation.item.delete", "item_id": "x"},
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "system",
                "content": [{"type": "input_text", "text": "x"}],
            },
        },
        {"type": "session.update", "session": {"type": "transcription"}},
    ):
        outs = client(tr, **event)
        assert to_gemini(outs) == []
        assert types(outs) == ["error"]


def test_g711_output_is_converted() -> None:
    tr = translator()
    ready(tr, audio={"output": {"format": {"type": "audio/pcmu"}}})
    pcm = tone24k(300)
    events: list[dict[str, Any]] = []
    for off in range(0, len(pcm), 2400):
        data = base64.b64encode(pcm[off : off + 2400]).decode()
        events += to_client(
            gemini(
                tr, {"serverContent": {"modelTurn": {"parts": [{"inlineData": {"data": data}}]}}}
            )
        )
    events += to_client(gemini(tr, {"serverContent": {"turnComplete": True}}))
    deltas = [
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    ]
    assert all(deltas)
    # 300 ms at 8 kHz mu-law is 2400 bytes (8 a millisecond), the flush included.
    assert abs(sum(len(d) for d in deltas) - 2400) <= 8


def test_the_replay_log_is_bounded() -> None:
    tr = translator()
    ready(tr)
    chunk = base64.b64encode(tone24k(100)).decode()
    for _ in range(REPLAY_LIMIT + 200):
        client(tr, type="input_audio_buffer.append", audio=chunk)
    assert len(tr._log) == REPLAY_LIMIT


def test_a_server_fault_with_a_handle_is_resumed_a_bounded_number_of_times() -> None:
    tr = translator()
    ready(tr)
    gemini(tr, {"sessionResumptionUpdate": {"newHandle": "h_1", "resumable": True}})
    gemini(tr, {"serverContent": {"modelTurn": {"parts": [{"text": "x"}]}}, "usageMetadata": USAGE})
    outs = tr.gemini_closed(1011, "Deadline expired before operation could complete")
    assert outs[-1] == Resume()
    # The response in flight ends failed, with the usage Gemini reported for it.
    (*_, done) = to_client(outs)
    assert done["response"]["status"] == "failed"
    assert done["response"]["status_details"]["error"]["code"] == "upstream_connection_lost"
    assert done["response"]["usage"]["input_tokens"] == 522
    gemini(tr, {"setupComplete": {}})
    assert tr.gemini_closed(1011, "Internal error occurred") == [Resume()]
    gemini(tr, {"setupComplete": {}})
    # A third fault in a row, no turn completed between: the session ends.
    outs = tr.gemini_closed(1011, "Internal error occurred")
    assert isinstance(outs[-1], Closed)
    assert outs[-1].code == 1011


@pytest.mark.parametrize(
    ("why", "status", "detail"),
    [
        ("RESPONSE_REJECTED", "incomplete", {"type": "incomplete", "reason": "content_filter"}),
        (
            "PROHIBITED_INPUT_CONTENT",
            "incomplete",
            {"type": "incomplete", "reason": "content_filter"},
        ),
        ("MALFORMED_FUNCTION_CALL", "failed", None),
        ("NEED_MORE_INPUT", "completed", None),
    ],
)
def test_turn_complete_reasons(why: str, status: str, detail: dict[str, str] | None) -> None:
    tr = translator()
    ready(tr)
    gemini(tr, {"serverContent": {"modelTurn": {"parts": [{"text": "x"}]}}})
    outs = gemini(tr, {"serverContent": {"turnComplete": True, "turnCompleteReason": why}})
    done = to_client(outs)[-1]["response"]
    assert done["status"] == status
    if detail is not None:
        assert done["status_details"] == detail
    if status == "failed":
        assert done["status_details"]["error"]["code"] == "malformed_function_call"


@pytest.mark.parametrize("transcribing", [True, False])
def test_a_committed_turn_gemini_heard_no_words_in_ends_its_item(transcribing: bool) -> None:
    """An audit's find: a committed turn with no ``inputTranscription`` kept its item open, so
    the next commit reused its id, and a session transcribing its input waited out its close
    grace at the end for a transcription that never came. Its transcript is now empty."""
    tr = translator()
    ready(tr, audio={"input": {"transcription": {"model": "gemini"} if transcribing else None}})
    audio = base64.b64encode(tone24k(100)).decode()
    client(tr, type="input_audio_buffer.append", audio=audio)
    (first,) = to_client(client(tr, type="input_audio_buffer.commit"))
    outs = gemini(tr, {"serverContent": {"modelTurn": {"parts": [{"text": "Hm?"}]}}})
    outs += gemini(tr, {"serverContent": {"turnComplete": True}})
    done = [e for e in to_client(outs) if e["type"].startswith("conversation.item.input_audio")]
    if transcribing:
        assert [(e["type"], e["item_id"], e["transcript"]) for e in done] == [
            ("conversation.item.input_audio_transcription.completed", first["item_id"], "")
        ]
    else:
        assert done == []
    client(tr, type="input_audio_buffer.append", audio=audio)
    (second,) = to_client(client(tr, type="input_audio_buffer.commit"))
    assert second["item_id"] != first["item_id"]
    assert second["previous_item_id"] == first["item_id"]
