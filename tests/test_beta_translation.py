"""The beta <-> GA translator (docs/protocol.md 2.4) with plain strings: no sockets, no event
loop."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from rtgate.protocol.beta import GA_ONLY_SERVER_EVENTS, BetaTranslator


def up(event: dict[str, Any], *, transcription: bool = False) -> dict[str, Any]:
    out = BetaTranslator(transcription=transcription).to_upstream(orjson.dumps(event).decode())
    parsed: dict[str, Any] = orjson.loads(out)
    return parsed


def down(event: dict[str, Any]) -> dict[str, Any] | None:
    out = BetaTranslator().to_client(orjson.dumps(event).decode())
    return None if out is None else orjson.loads(out)


# -- client -> upstream ---------------------------------------------------------------------------
def test_flat_session_update_becomes_the_nested_ga_session() -> None:
    got = up(
        {
            "type": "session.update",
            "event_id": "evt_1",
            "session": {
                "model": "gpt-realtime",
                "modalities": ["text", "audio"],
                "instructions": "Be brief.",
                "voice": "ash",
                "speed": 1.1,
                "input_audio_format": "g711_alaw",
                "output_audio_format": "g711_ulaw",
                "input_audio_transcription": {"model": "whisper-1", "language": "en"},
                "input_audio_noise_reduction": {"type": "near_field"},
                "turn_detection": {"type": "semantic_vad", "eagerness": "low"},
                "tools": [{"type": "function", "name": "f", "parameters": {}}],
                "tool_choice": "auto",
                "temperature": 0.8,
                "max_response_output_tokens": "inf",
                "tracing": "auto",
                "client_secret": {"expires_after": {"anchor": "created_at", "seconds": 60}},
            },
        }
    )
    assert got == {
        "type": "session.update",
        "event_id": "evt_1",
        "session": {
            "type": "realtime",
            "model": "gpt-realtime",
            "output_modalities": ["audio"],
            "instructions": "Be brief.",
            "tools": [{"type": "function", "name": "f", "parameters": {}}],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "tracing": "auto",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcma"},
                    "transcription": {"model": "whisper-1", "language": "en"},
                    "noise_reduction": {"type": "near_field"},
                    "turn_detection": {"type": "semantic_vad", "eagerness": "low"},
                },
                "output": {"format": {"type": "audio/pcmu"}, "voice": "ash", "speed": 1.1},
            },
        },
    }


@pytest.mark.parametrize(
    ("beta", "ga"),
    [
        (["text", "audio"], ["audio"]),
        (["audio"], ["audio"]),
        (["text"], ["text"]),
    ],
)
def test_modality_pairs_map_to_one_ga_modality(beta: list[str], ga: list[str]) -> None:
    got = up({"type": "session.update", "session": {"modalities": beta}})
    assert got["session"]["output_modalities"] == ga


def test_pcm16_becomes_24khz_pcm_and_null_turn_detection_stays_null() -> None:
    got = up(
        {
            "type": "session.update",
            "session": {"input_audio_format": "pcm16", "turn_detection": None},
        }
    )
    assert got["session"]["audio"]["input"] == {
        "format": {"type": "audio/pcm", "rate": 24000},
        "turn_detection": None,
    }


def test_transcription_session_update_becomes_a_ga_transcription_session() -> None:
    got = up(
        {
            "type": "transcription_session.update",
            "session": {
                "input_audio_format": "pcm16",
                "input_audio_transcription": {"model": "gpt-4o-transcribe", "prompt": "p"},
                "turn_detection": {"type": "server_vad"},
                "input_audio_noise_reduction": {"type": "far_field"},
                "include": ["item.input_audio_transcription.logprobs"],
                "modalities": ["text"],
            },
        }
    )
    assert got == {
        "type": "session.update",
        "session": {
            "type": "transcription",
            "include": ["item.input_audio_transcription.logprobs"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": {"model": "gpt-4o-transcribe", "prompt": "p"},
                    "turn_detection": {"type": "server_vad"},
                    "noise_reduction": {"type": "far_field"},
                }
            },
        },
    }


def test_session_update_on_a_transcription_connection_is_a_transcription_session() -> None:
    got = up(
        {"type": "session.update", "session": {"voice": "ash", "input_audio_format": "pcm16"}},
        transcription=True,
    )
    assert got["session"] == {
        "type": "transcription",
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}},
    }


def test_response_create_params_are_nested_and_input_items_renamed() -> None:
    got = up(
        {
            "type": "response.create",
            "response": {
                "modalities": ["text"],
                "voice": "sage",
                "output_audio_format": "pcm16",
                "temperature": 0.9,
                "max_response_output_tokens": 50,
                "instructions": "Shout.",
                "conversation": "none",
                "metadata": {"k": "v"},
                "input": [
                    {"type": "item_reference", "id": "item_1"},
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "text", "text": "hi"}],
                    },
                ],
            },
        }
    )
    assert got["response"] == {
        "output_modalities": ["text"],
        "audio": {"output": {"voice": "sage", "format": {"type": "audio/pcm", "rate": 24000}}},
        "max_output_tokens": 50,
        "instructions": "Shout.",
        "conversation": "none",
        "metadata": {"k": "v"},
        "input": [
            {"type": "item_reference", "id": "item_1"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "hi"}],
            },
        ],
    }


@pytest.mark.parametrize(
    ("beta", "ga"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ("get_weather", {"type": "function", "name": "get_weather"}),
    ],
)
def test_a_beta_tool_choice_naming_a_function_becomes_the_ga_function_choice(
    beta: str, ga: Any
) -> None:
    assert up({"type": "session.update", "session": {"tool_choice": beta}})["session"] == {
        "type": "realtime",
        "tool_choice": ga,
    }
    assert up({"type": "response.create", "response": {"tool_choice": beta}})["response"] == {
        "tool_choice": ga
    }


@pytest.mark.parametrize(
    ("role", "beta", "ga"),
    [
        ("assistant", "text", "output_text"),
        ("assistant", "audio", "output_audio"),
        ("user", "text", "input_text"),
        ("user", "input_text", "input_text"),
        ("user", "input_audio", "input_audio"),
        ("system", "input_text", "input_text"),
    ],
)
def test_item_create_content_types(role: str, beta: str, ga: str) -> None:
    got = up(
        {
            "type": "conversation.item.create",
            "previous_item_id": None,
            "item": {"type": "message", "role": role, "content": [{"type": beta, "text": "x"}]},
        }
    )
    assert got["item"]["content"] == [{"type": ga, "text": "x"}]
    assert got["previous_item_id"] is None


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"input_audio_buffer.append","audio":"AAAA"}',
        '{"type": "input_audio_buffer.commit"}',
        '{"type":"response.cancel","event_id":"e"}',
        '{"type":"response.create"}',
        '{"type":"conversation.item.truncate","item_id":"i","content_index":0,"audio_end_ms":5}',
        '{"type":"conversation.item.create","item":{"type":"function_call_output","call_id":"c"}}',
        "not json at all",
        '{"type":"test.unknown","note":"\\"session.update\\""}',
    ],
)
def test_client_frames_that_need_no_change_are_the_same_string(frame: str) -> None:
    assert BetaTranslator().to_upstream(frame) is frame


# -- upstream -> client ---------------------------------------------------------------------------
_RENAMES = [
    ("response.output_audio.delta", "response.audio.delta"),
    ("response.output_audio.done", "response.audio.done"),
    ("response.output_audio_transcript.delta", "response.audio_transcript.delta"),
    ("response.output_audio_transcript.done", "response.audio_transcript.done"),
    ("response.output_text.delta", "response.text.delta"),
    ("response.output_text.done", "response.text.done"),
]


@pytest.mark.parametrize(("ga", "beta"), _RENAMES)
def test_renamed_events_led_by_their_type_keep_the_rest_byte_for_byte(ga: str, beta: str) -> None:
    rest = ',"event_id":"e","response_id":"r","item_id":"i","content_index":0,"delta":"Zm9v"}'
    assert BetaTranslator().to_client(f'{{"type":"{ga}"' + rest) == f'{{"type":"{beta}"' + rest


@pytest.mark.parametrize(("ga", "beta"), _RENAMES)
def test_renamed_events_in_any_key_order(ga: str, beta: str) -> None:
    assert down({"event_id": "e", "type": ga, "item_id": "i"}) == {
        "event_id": "e",
        "type": beta,
        "item_id": "i",
    }


def test_item_added_becomes_item_created_with_beta_content_types() -> None:
    item = {
        "id": "item_1",
        "type": "message",
        "role": "assistant",
        "content": [
            {"type": "output_audio", "transcript": "hi"},
            {"type": "output_text", "text": "x"},
        ],
    }
    got = down(
        {"type": "conversation.item.added", "event_id": "e", "previous_item_id": None, "item": item}
    )
    assert got == {
        "type": "conversation.item.created",
        "event_id": "e",
        "previous_item_id": None,
        "item": {
            **item,
            "content": [{"type": "audio", "transcript": "hi"}, {"type": "text", "text": "x"}],
        },
    }


def test_item_done_has_no_beta_counterpart_and_is_dropped() -> None:
    assert down({"type": "conversation.item.done", "event_id": "e", "item": {"id": "i"}}) is None


@pytest.mark.parametrize("etype", sorted(GA_ONLY_SERVER_EVENTS))
def test_ga_only_events_are_dropped_whether_or_not_their_type_leads(etype: str) -> None:
    t = BetaTranslator()
    assert t.to_client(f'{{"type":"{etype}","event_id":"e","item_id":"i"}}') is None
    assert t.to_client(f'{{"event_id":"e","item_id":"i","type":"{etype}"}}') is None
    assert t.to_client(f'{{ "type": "{etype}", "event_id": "e"}}') is None


def test_a_type_with_an_escape_in_it_is_read_by_the_parser() -> None:
    assert (
        BetaTranslator().to_client('{"type":"mcp_list_tools\\u002efailed","item_id":"i"}') is None
    )


def test_the_ga_conversation_item_created_gets_beta_content_types() -> None:
    item = {"type": "message", "role": "assistant", "content": [{"type": "output_text"}]}
    got = down({"type": "conversation.item.created", "item": item})
    assert got == {
        "type": "conversation.item.created",
        "item": {**item, "content": [{"type": "text"}]},
    }


_MCP_CALL = {"type": "mcp_call", "id": "item_2", "server_label": "s", "name": "n", "arguments": ""}


@pytest.mark.parametrize(
    "etype",
    [
        "conversation.item.added",
        "conversation.item.created",
        "conversation.item.retrieved",
        "response.output_item.added",
        "response.output_item.done",
    ],
)
def test_item_events_carrying_an_mcp_item_are_dropped(etype: str) -> None:
    assert down({"type": etype, "event_id": "e", "item": _MCP_CALL}) is None


def test_mcp_items_are_left_out_of_the_response_output() -> None:
    call = {"type": "function_call", "name": "f", "arguments": "{}", "call_id": "c"}
    got = down({"type": "response.done", "response": {"output": [_MCP_CALL, call]}})
    assert got == {"type": "response.done", "response": {"output": [call]}}


def test_input_image_parts_are_left_out_of_an_item() -> None:
    item = {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
            {"type": "input_text", "text": "what is this?"},
        ],
    }
    got = down({"type": "conversation.item.added", "item": item})
    assert got is not None
    assert got["item"]["content"] == [{"type": "input_text", "text": "what is this?"}]


@pytest.mark.parametrize(
    "etype",
    ["response.output_item.added", "response.output_item.done", "conversation.item.retrieved"],
)
def test_item_events_get_beta_content_types(etype: str) -> None:
    item = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "t"}],
    }
    got = down({"type": etype, "item": item})
    assert got is not None and got["type"] == etype
    assert got["item"]["content"] == [{"type": "text", "text": "t"}]


@pytest.mark.parametrize("etype", ["response.content_part.added", "response.content_part.done"])
@pytest.mark.parametrize(("ga", "beta"), [("output_audio", "audio"), ("output_text", "text")])
def test_content_part_types(etype: str, ga: str, beta: str) -> None:
    got = down({"type": etype, "part": {"type": ga, "transcript": ""}})
    assert got == {"type": etype, "part": {"type": beta, "transcript": ""}}


def test_ga_session_object_is_flattened_for_session_created_and_updated() -> None:
    session = {
        "type": "realtime",
        "object": "realtime.session",
        "id": "sess_1",
        "model": "gpt-realtime",
        "output_modalities": ["audio"],
        "instructions": "hi",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "expires_at": 1,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {"type": "server_vad", "threshold": 0.5},
            },
            "output": {"format": {"type": "audio/pcmu"}, "voice": "alloy", "speed": 1.0},
        },
    }
    flat = {
        "object": "realtime.session",
        "id": "sess_1",
        "model": "gpt-realtime",
        "modalities": ["text", "audio"],
        "instructions": "hi",
        "tools": [],
        "tool_choice": "auto",
        "max_response_output_tokens": "inf",
        "tracing": None,
        "expires_at": 1,
        "input_audio_format": "pcm16",
        "input_audio_transcription": None,
        "input_audio_noise_reduction": None,
        "turn_detection": {"type": "server_vad", "threshold": 0.5},
        "output_audio_format": "g711_ulaw",
        "voice": "alloy",
        "speed": 1.0,
    }
    for etype in ("session.created", "session.updated"):
        assert down({"type": etype, "event_id": "e", "session": session}) == {
            "type": etype,
            "event_id": "e",
            "session": flat,
        }


@pytest.mark.parametrize(
    ("ga", "beta"),
    [
        ("auto", {"tool_choice": "auto"}),
        ({"type": "function", "name": "get_weather"}, {"tool_choice": "get_weather"}),
        ({"type": "mcp", "server_label": "s", "name": "n"}, {}),
    ],
)
def test_session_tool_choice_is_the_beta_string_or_left_out(ga: Any, beta: Any) -> None:
    got = down({"type": "session.updated", "session": {"type": "realtime", "tool_choice": ga}})
    assert got == {"type": "session.updated", "session": beta}


def test_session_keeps_function_tools_and_voice_names_only() -> None:
    function = {"type": "function", "name": "f", "parameters": {}}
    mcp = {"type": "mcp", "server_label": "s", "server_url": "https://mcp.example"}
    for voice, beta in (("marin", {"voice": "marin"}), ({"id": "voice_1"}, {})):
        session = {
            "type": "realtime",
            "tools": [mcp, function],
            "audio": {"output": {"voice": voice}},
        }
        got = down({"type": "session.created", "session": session})
        assert got == {"type": "session.created", "session": {"tools": [function], **beta}}
    response = {"audio": {"output": {"voice": {"id": "voice_1"}, "format": {"type": "audio/pcmu"}}}}
    got = down({"type": "response.created", "response": response})
    assert got == {"type": "response.created", "response": {"output_audio_format": "g711_ulaw"}}


def test_ga_transcription_session_becomes_a_transcription_session_event() -> None:
    session = {
        "type": "transcription",
        "audio": {
            "input": {"format": {"type": "audio/pcma"}, "transcription": {"model": "whisper-1"}}
        },
    }
    got = down({"type": "session.updated", "session": session})
    assert got == {
        "type": "transcription_session.updated",
        "session": {
            "input_audio_format": "g711_alaw",
            "input_audio_transcription": {"model": "whisper-1"},
        },
    }


def test_response_object_is_beta_shaped_and_usage_loses_image_tokens() -> None:
    usage = {
        "total_tokens": 30,
        "input_tokens": 10,
        "output_tokens": 20,
        "input_token_details": {
            "text_tokens": 6,
            "audio_tokens": 4,
            "image_tokens": 0,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": 5, "audio_tokens": 15},
    }
    response = {
        "object": "realtime.response",
        "id": "resp_1",
        "status": "completed",
        "output_modalities": ["audio"],
        "max_output_tokens": "inf",
        "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}},
        "output": [
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_audio", "transcript": "t"}],
            }
        ],
        "usage": usage,
    }
    for etype in ("response.created", "response.done"):
        got = down({"type": etype, "response": response})
        assert got is not None
        assert got["response"] == {
            "object": "realtime.response",
            "id": "resp_1",
            "status": "completed",
            "modalities": ["text", "audio"],
            "max_output_tokens": "inf",
            "voice": "alloy",
            "output_audio_format": "pcm16",
            "output": [
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "audio", "transcript": "t"}],
                }
            ],
            "usage": {
                **usage,
                "input_token_details": {
                    "text_tokens": 6,
                    "audio_tokens": 4,
                    "cached_tokens": 0,
                    "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0},
                },
            },
        }


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"error","event_id":"e","error":{"type":"invalid_request_error","message":"m"}}',
        '{"type":"input_audio_buffer.speech_started","event_id":"e","audio_start_ms":0,"item_id":"i"}',
        '{"type":"input_audio_buffer.committed","event_id":"e","item_id":"i"}',
        '{"type":"rate_limits.updated","event_id":"e","rate_limits":[{"name":"tokens","limit":1}]}',
        '{"type":"response.function_call_arguments.delta","delta":"{}","call_id":"c"}',
        '{"type":"conversation.item.input_audio_transcription.completed","transcript":"t"}',
        '{"type":"output_audio_buffer.started","event_id":"e","response_id":"r"}',
        '{"type":"some.future.event","text":"\\"response.done\\""}',
        '{"event_id":"e","type":"input_audio_buffer.speech_stopped","audio_end_ms":5}',
        '{"type":"conversation.item.deleted","event_id":"e","item_id":"i"}',
        '{"type":"',
        "not json at all",
    ],
)
def test_server_frames_that_need_no_change_are_the_same_string(frame: str) -> None:
    assert BetaTranslator().to_client(frame) is frame


def test_parsed_frames_that_translate_to_themselves_keep_their_bytes() -> None:
    t = BetaTranslator()
    user = '{"type":"conversation.item.create","item":{"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}]}}'  # noqa: E501
    assert t.to_upstream(user) is user
    call = '{"type":"response.output_item.done","item":{"type":"function_call","name":"f"}}'
    assert t.to_client(call) is call


@pytest.mark.parametrize(
    ("ga", "beta"),
    [
        ("session.audio.output.voice", "session.voice"),
        ("session.audio.output.speed", "session.speed"),
        ("session.audio.input.format.type", "session.input_audio_format"),
        ("session.audio.output.format.rate", "session.output_audio_format"),
        ("session.audio.input.turn_detection.type", "session.turn_detection.type"),
        (
            "session.audio.input.transcription.model",
            "session.input_audio_transcription.model",
        ),
        ("session.audio.input.noise_reduction", "session.input_audio_noise_reduction"),
        ("session.output_modalities", "session.modalities"),
        ("session.max_output_tokens", "session.max_response_output_tokens"),
        ("response.audio.output.voice", "response.voice"),
        ("response.max_output_tokens", "response.max_response_output_tokens"),
        ("session.instructions", "session.instructions"),
        ("session.tools[0].name", "session.tools[0].name"),
    ],
)
def test_an_error_names_the_beta_member_the_client_sent(ga: str, beta: str) -> None:
    """A beta client's ``session.update`` is sent upstream GA-shaped, so the upstream's error
    names the GA member; the client is told about the field it sent."""
    error = {"type": "invalid_request_error", "code": "invalid_value", "message": "m", "param": ga}
    out = down({"type": "error", "event_id": "e1", "error": error})
    assert out == {"type": "error", "event_id": "e1", "error": {**error, "param": beta}}


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"error","event_id":"e1","error":{"type":"invalid_request_error","param":null}}',
        '{"type":"error","error":{"type":"invalid_request_error","param":"item_id"}}',
        '{"error":{"param":"event_id","type":"invalid_request_error"},"type":"error"}',
    ],
)
def test_an_error_naming_no_session_member_keeps_its_bytes(frame: str) -> None:
    assert BetaTranslator().to_client(frame) is frame


def test_an_error_led_by_another_member_is_translated_too() -> None:
    frame = '{"error":{"param":"session.audio.output.voice","type":"x"},"type":"error"}'
    out = BetaTranslator().to_client(frame)
    assert out is not None and orjson.loads(out)["error"]["param"] == "session.voice"
