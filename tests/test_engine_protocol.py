"""``EngineSession``, the engine's sans-I/O protocol core, driven with plain dicts.

Client events go in as the SDK would send them; every server event that comes out is checked
against the official SDK's pydantic union, then against docs/protocol.md sections 2, 5 and 8.3.
"""

from __future__ import annotations

import base64
import math
import re
import struct
from typing import Any

import pytest

from rtgate.engine.audio import AudioFormat, from_pcm24k
from rtgate.engine.response_plan import ResponsePlan
from rtgate.engine.session import EngineSession
from rtgate.engine.tokens import count_tokens
from tests.sdk_events import validate_server_event

Event = dict[str, Any]
ID = re.compile(r"^(event|item|resp|sess|conv)_[0-9A-Za-z]{21}$")


def handle(s: EngineSession, etype: str, **fields: Any) -> tuple[list[Event], ResponsePlan | None]:
    events, plan = s.handle({"type": etype, **fields})
    for e in events:
        validate_server_event(e)
        assert ID.match(e["event_id"]), e["event_id"]
    return events, plan


def send(s: EngineSession, etype: str, **fields: Any) -> list[Event]:
    events, plan = handle(s, etype, **fields)
    assert plan is None
    return events


def only_error(events: list[Event]) -> dict[str, Any]:
    assert [e["type"] for e in events] == ["error"], events
    err: dict[str, Any] = events[0]["error"]
    return err


def tone(ms: int, amp: int = 8000) -> bytes:
    n = 24 * ms
    return struct.pack(
        f"<{n}h", *(int(amp * math.sin(2 * math.pi * 300 * i / 24000)) for i in range(n))
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def user_text(text: str, item_id: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": text}],
    }
    if item_id:
        item["id"] = item_id
    return item


def ids(s: EngineSession) -> list[str]:
    return [i["id"] for i in s.items]


# -- session ---------------------------------------------------------------------------------------


def test_session_created_carries_the_ga_defaults() -> None:
    s = EngineSession(model="gpt-realtime")
    (created,) = s.created()
    validate_server_event(created)
    sess = created["session"]
    assert created["type"] == "session.created"
    assert (sess["type"], sess["object"], sess["model"]) == (
        "realtime",
        "realtime.session",
        "gpt-realtime",
    )
    assert ID.match(sess["id"]) and sess["id"].startswith("sess_")
    assert sess["output_modalities"] == ["audio"]
    assert sess["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert sess["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    td = sess["audio"]["input"]["turn_detection"]
    assert td["type"] == "server_vad"
    assert (td["threshold"], td["prefix_padding_ms"], td["silence_duration_ms"]) == (0.5, 300, 200)
    assert td["create_response"] is td["interrupt_response"] is True
    assert sess["max_output_tokens"] == "inf"


def test_a_transcription_session_is_created_as_one() -> None:
    s = EngineSession(model="gpt-realtime", transcription=True)
    (created,) = s.created()
    validate_server_event(created)
    assert created["session"]["type"] == "transcription"
    assert created["session"]["object"] == "realtime.transcription_session"
    assert "output" not in created["session"]["audio"]
    # With no model chosen it transcribes anyway, and says with which (docs/engine-fidelity.md).
    transcription = created["session"]["audio"]["input"]["transcription"]
    assert transcription["model"] == "gpt-4o-mini-transcribe"
    # A realtime session transcribes its input only when asked to.
    (realtime,) = EngineSession(model="gpt-realtime").created()
    assert realtime["session"]["audio"]["input"]["transcription"] is None


def test_session_update_without_a_type_is_refused_with_the_event_id_echoed() -> None:
    s = EngineSession(model="gpt-realtime")
    err = only_error(send(s, "session.update", event_id="ev_1", session={"instructions": "x"}))
    assert err["type"] == "invalid_request_error"
    assert err["code"] == "missing_required_parameter"
    assert err["param"] == "session.type"
    assert err["message"] == "Missing required parameter: 'session.type'."
    assert err["event_id"] == "ev_1"
    assert s.session["instructions"] != "x"


def test_session_update_with_an_unknown_parameter_names_it() -> None:
    s = EngineSession(model="gpt-realtime")
    events = send(
        s,
        "session.update",
        event_id="ev_2",
        session={"type": "realtime", "instructions": "x", "temperature": 0.7},
    )
    err = only_error(events)
    assert err["code"] == "unknown_parameter"
    assert err["param"] == "session.temperature"
    assert err["message"] == "Unknown parameter: 'session.temperature'."
    assert err["event_id"] == "ev_2"
    assert s.session["instructions"] != "x"  # nothing of a refused update is applied


@pytest.mark.parametrize(
    ("side", "fmt", "code", "field"),
    [
        ("input", {"type": "audio/pcm", "rate": 16000}, "invalid_value", ".rate"),
        ("input", {"type": "audio/mp3"}, "invalid_value", ".type"),
        ("output", {"type": "g711_ulaw"}, "invalid_value", ".type"),
        # The beta spelling: "Invalid type for 'session.audio.input.format': expected an
        # object, but got a string instead." as OpenAI answers it.
        ("output", "audio/pcmu", "invalid_type", ""),
    ],
)
def test_session_update_with_a_bad_audio_format_is_refused(
    side: str, fmt: Any, code: str, field: str
) -> None:
    s = EngineSession(model="gpt-realtime")
    err = only_error(
        send(
            s,
            "session.update",
            event_id="ev_fmt",
            session={"type": "realtime", "audio": {side: {"format": fmt}}},
        )
    )
    assert err["code"] == code
    assert err["param"] == f"session.audio.{side}.format{field}"
    assert err["event_id"] == "ev_fmt"
    if code == "invalid_type":
        assert err["message"] == (
            f"Invalid type for 'session.audio.{side}.format': expected an object, "
            "but got a string instead."
        )
    assert s.session["audio"][side]["format"] == {"type": "audio/pcm", "rate": 24000}


def test_session_update_of_the_wrong_session_type_is_refused() -> None:
    s = EngineSession(model="gpt-realtime", transcription=True)
    err = only_error(send(s, "session.update", event_id="e", session={"type": "realtime"}))
    assert (err["code"], err["param"], err["event_id"]) == ("invalid_value", "session.type", "e")


def test_session_update_merges_and_leaves_the_rest_alone() -> None:
    s = EngineSession(model="gpt-realtime")
    (updated,) = send(
        s,
        "session.update",
        session={
            "type": "realtime",
            "model": "another-model",  # the model is fixed for the session
            "instructions": "Be brief.",
            "audio": {
                "input": {"format": {"type": "audio/pcmu"}, "turn_detection": None},
                "output": {"voice": "marin"},
            },
        },
    )
    assert updated["type"] == "session.updated"
    sess = updated["session"]
    assert sess["model"] == "gpt-realtime"
    assert sess["instructions"] == "Be brief."
    assert sess["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert sess["audio"]["input"]["turn_detection"] is None
    assert sess["audio"]["output"] == {
        "format": {"type": "audio/pcm", "rate": 24000},
        "voice": "marin",
        "speed": 1.0,
    }
    assert sess["id"] == s.created()[0]["session"]["id"]


def test_a_partial_turn_detection_takes_the_defaults_for_the_rest() -> None:
    s = EngineSession(model="gpt-realtime")
    (updated,) = send(
        s,
        "session.update",
        session={
            "type": "realtime",
            "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 0.7}}},
        },
    )
    td = updated["session"]["audio"]["input"]["turn_detection"]
    assert td["threshold"] == 0.7
    assert (td["prefix_padding_ms"], td["silence_duration_ms"]) == (300, 200)
    assert td["create_response"] is True


def test_transcription_sessions_accept_only_their_own_keys() -> None:
    s = EngineSession(model="gpt-realtime", transcription=True)
    err = only_error(
        send(s, "session.update", session={"type": "transcription", "instructions": "no"})
    )
    assert err["param"] == "session.instructions"
    (updated,) = send(
        s,
        "session.update",
        session={
            "type": "transcription",
            "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}},
        },
    )
    assert updated["session"]["audio"]["input"]["transcription"] == {
        "model": "gpt-4o-mini-transcribe"
    }


def test_unknown_and_malformed_events_are_named() -> None:
    s = EngineSession(model="gpt-realtime")
    err = only_error(send(s, "session.frobnicate", event_id="ev_u"))
    assert (err["code"], err["param"], err["event_id"]) == ("invalid_value", "type", "ev_u")
    assert "'response.create'" in err["message"]
    events, plan = s.handle({"event_id": "ev_notype", "session": {}})
    for e in events:
        validate_server_event(e)
    err = only_error(events)
    assert plan is None
    assert err["code"] == "invalid_event"
    assert err["message"] == "The 'type' field is missing."
    assert err["event_id"] == "ev_notype"
    events, plan = s.handle(["not", "an", "object"])
    for e in events:
        validate_server_event(e)
    assert only_error(events)["code"] == "invalid_event" and plan is None


# -- conversation items ----------------------------------------------------------------------------


def test_item_create_appends_then_inserts_at_root_and_after_an_id() -> None:
    s = EngineSession(model="gpt-realtime")
    added, done = send(s, "conversation.item.create", item=user_text("one", "item_one"))
    assert (added["type"], done["type"]) == ("conversation.item.added", "conversation.item.done")
    assert added["previous_item_id"] is None
    assert added["item"]["id"] == "item_one"
    assert added["item"]["object"] == "realtime.item"
    assert added["item"]["status"] == "completed"
    assert added["item"]["content"] == [{"type": "input_text", "text": "one"}]
    added, _ = send(s, "conversation.item.create", item=user_text("two", "item_two"))
    assert added["previous_item_id"] == "item_one"

    added, done = send(
        s, "conversation.item.create", previous_item_id="root", item=user_text("zero", "item_zero")
    )
    assert added["previous_item_id"] is None and done["previous_item_id"] is None
    added, _ = send(
        s,
        "conversation.item.create",
        previous_item_id="item_one",
        item=user_text("one and a half", "item_half"),
    )
    assert added["previous_item_id"] == "item_one"
    assert ids(s) == ["item_zero", "item_one", "item_half", "item_two"]

    # With no id of its own, the item gets one.
    added, _ = send(s, "conversation.item.create", item=user_text("three"))
    assert ID.match(added["item"]["id"]) and added["item"]["id"].startswith("item_")
    assert added["previous_item_id"] == "item_two"


def test_item_create_after_an_unknown_id_is_refused() -> None:
    s = EngineSession(model="gpt-realtime")
    send(s, "conversation.item.create", item=user_text("one", "item_one"))
    err = only_error(
        send(
            s,
            "conversation.item.create",
            event_id="ev_prev",
            previous_item_id="item_nope",
            item=user_text("lost"),
        )
    )
    assert err["code"] == "invalid_value"
    assert err["param"] == "previous_item_id"
    assert "item_nope" in err["message"]
    assert err["event_id"] == "ev_prev"
    assert ids(s) == ["item_one"]


def test_item_create_without_an_item_is_refused() -> None:
    s = EngineSession(model="gpt-realtime")
    err = only_error(send(s, "conversation.item.create", event_id="e"))
    assert (err["code"], err["event_id"]) == ("missing_required_parameter", "e")
    assert s.items == []


def test_function_call_output_items_are_accepted() -> None:
    s = EngineSession(model="gpt-realtime")
    added, _ = send(
        s,
        "conversation.item.create",
        item={"type": "function_call_output", "call_id": "call_1", "output": '{"ok": true}'},
    )
    assert added["item"]["type"] == "function_call_output"
    assert added["item"]["call_id"] == "call_1"


def test_retrieve_and_delete() -> None:
    s = EngineSession(model="gpt-realtime")
    send(s, "conversation.item.create", item=user_text("keep me", "item_a"))
    (got,) = send(s, "conversation.item.retrieve", item_id="item_a")
    assert got["type"] == "conversation.item.retrieved"
    assert got["item"]["content"] == [{"type": "input_text", "text": "keep me"}]

    err = only_error(send(s, "conversation.item.retrieve", event_id="r", item_id="item_zz"))
    assert (err["code"], err["param"], err["event_id"]) == ("invalid_value", "item_id", "r")

    (deleted,) = send(s, "conversation.item.delete", item_id="item_a")
    assert deleted == {**deleted, "type": "conversation.item.deleted", "item_id": "item_a"}
    assert s.items == []
    err = only_error(send(s, "conversation.item.retrieve", item_id="item_a"))
    assert err["param"] == "item_id"
    err = only_error(send(s, "conversation.item.delete", event_id="d", item_id="item_a"))
    assert (err["code"], err["event_id"]) == ("invalid_value", "d")


def test_retrieve_returns_the_committed_audio_other_events_never_do() -> None:
    s = EngineSession(model="gpt-realtime")
    audio = tone(300)
    send(s, "input_audio_buffer.append", audio=b64(audio))
    events = send(s, "input_audio_buffer.commit")
    for e in events:
        for c in (e.get("item") or {}).get("content") or []:
            assert "audio" not in c
    item_id = events[0]["item_id"]
    (got,) = send(s, "conversation.item.retrieve", item_id=item_id)
    assert base64.b64decode(got["item"]["content"][0]["audio"]) == audio


def assistant_audio_item(s: EngineSession, transcript: str, audio_ms: int) -> str:
    """An assistant audio message as ``engine.server`` leaves it after a response."""
    item_id = "item_assistant0000000000"
    s.items.append(
        {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_audio", "transcript": transcript}],
        }
    )
    s.audio_ms_by_item[item_id] = audio_ms
    return item_id


def test_truncate_shortens_the_transcript_and_the_audio_length() -> None:
    s = EngineSession(model="gpt-realtime")
    item_id = assistant_audio_item(s, "abcdefghij", 1000)
    (truncated,) = send(
        s, "conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=400
    )
    assert truncated["type"] == "conversation.item.truncated"
    assert (truncated["item_id"], truncated["content_index"], truncated["audio_end_ms"]) == (
        item_id,
        0,
        400,
    )
    (got,) = send(s, "conversation.item.retrieve", item_id=item_id)
    assert got["item"]["content"][0]["transcript"] == "abcd"
    # The unheard audio is gone: truncating past the new end is now an error.
    err = only_error(
        send(
            s,
            "conversation.item.truncate",
            event_id="t",
            item_id=item_id,
            content_index=0,
            audio_end_ms=401,
        )
    )
    assert err["message"] == "Audio content of 400ms is already shorter than 401ms"


def test_truncate_beyond_the_audio_or_of_a_user_item_is_refused() -> None:
    s = EngineSession(model="gpt-realtime")
    item_id = assistant_audio_item(s, "hello there", 500)
    err = only_error(
        send(
            s,
            "conversation.item.truncate",
            event_id="t1",
            item_id=item_id,
            content_index=0,
            audio_end_ms=501,
        )
    )
    # OpenAI's refusal, as clients log it: no code, no param, and no event_id either.
    assert err == {
        "type": "invalid_request_error",
        "code": None,
        "message": "Audio content of 500ms is already shorter than 501ms",
        "param": None,
        "event_id": None,
    }
    send(s, "conversation.item.create", item=user_text("mine", "item_user"))
    err = only_error(
        send(
            s,
            "conversation.item.truncate",
            event_id="t2",
            item_id="item_user",
            content_index=0,
            audio_end_ms=0,
        )
    )
    assert (err["code"], err["param"], err["event_id"]) == ("unsupported_content_type", None, "t2")
    assert err["message"] == "Only model output audio messages can be truncated"
    err = only_error(
        send(s, "conversation.item.truncate", item_id="item_gone", content_index=0, audio_end_ms=0)
    )
    assert (err["code"], err["param"]) == ("invalid_value", "item_id")
    assert "item_gone" in err["message"]
    (got,) = send(s, "conversation.item.retrieve", item_id=item_id)
    assert got["item"]["content"][0]["transcript"] == "hello there"


def test_truncate_names_the_audio_part_by_its_content_index() -> None:
    s = EngineSession(model="gpt-realtime")
    item_id = assistant_audio_item(s, "hello there", 500)
    for index, code in (
        (1, "invalid_value"),
        (-1, "integer_below_min_value"),
        ("0", "invalid_type"),
    ):
        err = only_error(
            send(
                s,
                "conversation.item.truncate",
                event_id="ci",
                item_id=item_id,
                content_index=index,
                audio_end_ms=100,
            )
        )
        assert (err["code"], err["param"], err["event_id"]) == (code, "content_index", "ci")
    err = only_error(send(s, "conversation.item.truncate", item_id=item_id, audio_end_ms=100))
    assert (err["code"], err["param"]) == ("missing_required_parameter", "content_index")
    err = only_error(send(s, "conversation.item.truncate", item_id=item_id, content_index=0))
    assert (err["code"], err["param"]) == ("missing_required_parameter", "audio_end_ms")
    err = only_error(
        send(s, "conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=-5)
    )
    assert (err["code"], err["param"]) == ("integer_below_min_value", "audio_end_ms")
    # Nothing was cut by the refusals; the audio's own end is a valid place to cut.
    (truncated,) = send(
        s, "conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=500
    )
    assert (truncated["content_index"], truncated["audio_end_ms"]) == (0, 500)
    (got,) = send(s, "conversation.item.retrieve", item_id=item_id)
    assert got["item"]["content"][0]["transcript"] == "hello there"


def test_only_model_output_audio_with_audio_can_be_truncated() -> None:
    s = EngineSession(model="gpt-realtime")
    # Interrupted before its first audio: an audio part, but no audio (livekit/agents#6157).
    silent = assistant_audio_item(s, "", 0)
    s.items.append(
        {
            "id": "item_text",
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "written"}],
        }
    )
    s.items.append(
        {
            "id": "item_call",
            "object": "realtime.item",
            "type": "function_call",
            "status": "completed",
            "name": "f",
            "call_id": "call_1",
            "arguments": "{}",
        }
    )
    for item_id in (silent, "item_text", "item_call"):
        err = only_error(
            send(
                s,
                "conversation.item.truncate",
                event_id="u",
                item_id=item_id,
                content_index=0,
                audio_end_ms=0,
            )
        )
        assert err == {
            "type": "invalid_request_error",
            "code": "unsupported_content_type",
            "message": "Only model output audio messages can be truncated",
            "param": None,
            "event_id": "u",
        }


# -- input audio buffer ----------------------------------------------------------------------------


@pytest.mark.parametrize("ms", [0, 20, 99])
def test_commit_under_100_ms_is_commit_empty(ms: int) -> None:
    s = EngineSession(model="gpt-realtime")
    if ms:
        send(s, "input_audio_buffer.append", audio=b64(tone(ms)))
    err = only_error(send(s, "input_audio_buffer.commit", event_id="c"))
    assert err["code"] == "input_audio_buffer_commit_empty"
    assert err["event_id"] == "c"
    assert f"buffer only has {ms:.2f}ms of audio" in err["message"]
    assert s.items == []


def test_commit_turns_the_buffer_into_a_user_audio_item() -> None:
    s = EngineSession(model="gpt-realtime")
    send(s, "conversation.item.create", item=user_text("before", "item_before"))
    for _ in range(5):
        assert send(s, "input_audio_buffer.append", audio=b64(tone(20))) == []  # no ack
    committed, added, done = send(s, "input_audio_buffer.commit")
    assert committed["type"] == "input_audio_buffer.committed"
    assert committed["previous_item_id"] == "item_before"
    assert (added["type"], done["type"]) == ("conversation.item.added", "conversation.item.done")
    assert added["item"]["id"] == done["item"]["id"] == committed["item_id"]
    assert added["previous_item_id"] == "item_before"
    assert added["item"]["role"] == "user"
    assert added["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    # The buffer is now empty.
    err = only_error(send(s, "input_audio_buffer.commit"))
    assert err["code"] == "input_audio_buffer_commit_empty"


def test_clear_empties_the_buffer() -> None:
    s = EngineSession(model="gpt-realtime")
    send(s, "input_audio_buffer.append", audio=b64(tone(500)))
    (cleared,) = send(s, "input_audio_buffer.clear")
    assert cleared["type"] == "input_audio_buffer.cleared"
    err = only_error(send(s, "input_audio_buffer.commit"))
    assert "0.00ms" in err["message"]
    send(s, "input_audio_buffer.append", audio=b64(tone(150)))
    committed, _, _ = send(s, "input_audio_buffer.commit")
    (got,) = send(s, "conversation.item.retrieve", item_id=committed["item_id"])
    assert len(base64.b64decode(got["item"]["content"][0]["audio"])) == 150 * 48


def test_bad_appends_are_errors_not_audio() -> None:
    s = EngineSession(model="gpt-realtime")
    err = only_error(send(s, "input_audio_buffer.append", event_id="a1", audio="%%%not base64"))
    assert (err["code"], err["param"], err["event_id"]) == ("invalid_value", "audio", "a1")
    err = only_error(send(s, "input_audio_buffer.append", event_id="a2"))
    assert (err["code"], err["event_id"]) == ("missing_required_parameter", "a2")
    assert s.appended_ms == 0


def test_output_audio_buffer_clear_is_webrtc_only() -> None:
    s = EngineSession(model="gpt-realtime")
    err = only_error(send(s, "output_audio_buffer.clear", event_id="o"))
    assert err["event_id"] == "o"


@pytest.mark.parametrize("fmt", [AudioFormat.PCMU, AudioFormat.PCMA])
def test_g711_input_is_decoded_with_its_own_clock(fmt: AudioFormat) -> None:
    s = EngineSession(model="gpt-realtime")
    send(
        s,
        "session.update",
        session={"type": "realtime", "audio": {"input": {"format": {"type": str(fmt)}}}},
    )
    g711 = from_pcm24k(tone(600), fmt)
    assert len(g711) == 600 * 8
    for off in range(0, len(g711), 160):  # 20 ms telephony frames
        send(s, "input_audio_buffer.append", audio=b64(g711[off : off + 160]))
    committed, _, _ = send(s, "input_audio_buffer.commit")
    # 8 bytes/ms in, 48 bytes/ms inside: the clock and the item both hold 600 ms.
    assert s.appended_ms == pytest.approx(600, abs=1)
    (got,) = send(s, "conversation.item.retrieve", item_id=committed["item_id"])
    back = base64.b64decode(got["item"]["content"][0]["audio"])
    assert abs(len(back) - 600 * 8) <= 8
    # 600 ms of user audio: 10 tokens a second (docs/protocol.md 4.1), plus one.
    plan = s.plan_response({})
    assert s.input_usage(plan)[1] == 7


@pytest.mark.parametrize("fmt", [AudioFormat.PCMU, AudioFormat.PCMA])
def test_g711_commit_under_100_ms_counts_g711_milliseconds(fmt: AudioFormat) -> None:
    s = EngineSession(model="gpt-realtime")
    send(
        s,
        "session.update",
        session={"type": "realtime", "audio": {"input": {"format": {"type": str(fmt)}}}},
    )
    send(s, "input_audio_buffer.append", audio=b64(from_pcm24k(tone(60), fmt)))
    err = only_error(send(s, "input_audio_buffer.commit"))
    assert err["code"] == "input_audio_buffer_commit_empty"
    assert re.search(r"only has (59|60)\.\d\dms", err["message"]), err["message"]


@pytest.mark.parametrize("fmt", [AudioFormat.PCMU, AudioFormat.PCMA])
def test_g711_audio_items_are_stored_as_the_engine_hears_them(fmt: AudioFormat) -> None:
    # An input_audio item created by the client is in the session's input format too.
    s = EngineSession(model="gpt-realtime")
    send(
        s,
        "session.update",
        session={"type": "realtime", "audio": {"input": {"format": {"type": str(fmt)}}}},
    )
    g711 = from_pcm24k(tone(500), fmt)
    item = {
        "type": "message",
        "role": "user",
        "id": "item_g711",
        "content": [{"type": "input_audio", "audio": b64(g711)}],
    }
    added, _ = send(s, "conversation.item.create", item=item)
    assert "audio" not in added["item"]["content"][0]
    (got,) = send(s, "conversation.item.retrieve", item_id="item_g711")
    assert len(base64.b64decode(got["item"]["content"][0]["audio"])) == len(g711)
    # 500 ms of audio is 6 input audio tokens whatever the format it came in.
    assert s.input_usage(s.plan_response({}))[1] == 6


def test_an_audio_item_with_bad_base64_is_refused() -> None:
    s = EngineSession(model="gpt-realtime")
    item = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_audio", "audio": "not*base64"}],
    }
    err = only_error(send(s, "conversation.item.create", event_id="bad", item=item))
    assert (err["code"], err["event_id"]) == ("invalid_value", "bad")
    assert s.items == []


# -- responses -------------------------------------------------------------------------------------


def test_response_create_plans_one_response_and_refuses_a_second() -> None:
    s = EngineSession(model="gpt-realtime")
    send(s, "conversation.item.create", item=user_text("hi"))
    events, plan = handle(s, "response.create")
    assert events == [] and plan is not None
    assert plan.conversation and s.active is plan
    resp = plan.response
    assert ID.match(resp["id"]) and resp["id"].startswith("resp_")
    assert resp["status"] == "in_progress" and resp["usage"] is None
    assert resp["conversation_id"] == s.conversation_id
    assert plan.modalities == ["audio"]

    events, second = handle(s, "response.create", event_id="ev_again")
    err = only_error(events)
    assert second is None
    assert err["code"] == "conversation_already_has_active_response"
    assert resp["id"] in err["message"]
    assert err["event_id"] == "ev_again"
    assert s.active is plan


def test_out_of_band_responses_run_beside_the_active_one() -> None:
    s = EngineSession(model="gpt-realtime")
    send(s, "conversation.item.create", item=user_text("hi"))
    _, active = handle(s, "response.create")
    events, oob = handle(
        s,
        "response.create",
        response={
            "conversation": "none",
            "metadata": {"topic": "summary"},
            "output_modalities": ["text"],
            "instructions": "Summarise.",
            "input": [user_text("summarise this")],
        },
    )
    assert events == [] and oob is not None
    assert not oob.conversation
    assert s.active is active  # the default conversation's response is unchanged
    assert oob.response["conversation_id"] is None
    assert oob.response["metadata"] == {"topic": "summary"}
    assert oob.modalities == ["text"] and oob.response["output_modalities"] == ["text"]
    assert oob.instructions == "Summarise."
    assert [i["content"][0]["text"] for i in oob.input_items] == ["summarise this"]
    # It reads its own input, not the conversation.
    assert s.input_usage(oob) == (count_tokens("Summarise.") + count_tokens("summarise this"), 0)


def test_response_cancel() -> None:
    s = EngineSession(model="gpt-realtime")
    err = only_error(send(s, "response.cancel", event_id="ev_c"))
    assert err["code"] == "response_cancel_not_active"
    assert err["message"] == "Cancellation failed: no active response found"
    assert err["event_id"] == "ev_c"

    _, plan = handle(s, "response.create")
    assert plan is not None
    err = only_error(send(s, "response.cancel", response_id="resp_someoneelse"))
    assert err["code"] == "response_cancel_not_active"
    assert not plan.cancelled
    assert send(s, "response.cancel", response_id=plan.response["id"]) == []
    assert plan.cancelled and plan.cancel_reason == "client_cancelled"


def test_responses_are_refused_in_transcription_sessions() -> None:
    s = EngineSession(model="gpt-realtime", transcription=True)
    events, plan = handle(s, "response.create", event_id="ev_t")
    assert plan is None and only_error(events)["event_id"] == "ev_t"


def test_response_parameters_override_the_session() -> None:
    s = EngineSession(model="gpt-realtime")
    send(
        s,
        "session.update",
        session={
            "type": "realtime",
            "instructions": "session",
            "tools": [{"type": "function", "name": "f", "parameters": {}}],
        },
    )
    _, plan = handle(
        s,
        "response.create",
        response={
            "instructions": "response",
            "audio": {"output": {"voice": "cedar"}},
            "tool_choice": "required",
            "max_output_tokens": 50,
        },
    )
    assert plan is not None
    assert plan.instructions == "response"
    assert plan.voice == "cedar" and plan.response["audio"]["output"]["voice"] == "cedar"
    assert plan.tool_choice == "required"
    assert [t["name"] for t in plan.tools] == ["f"]
    assert plan.response["max_output_tokens"] == 50


def test_null_response_instructions_are_the_sessions_and_another_type_is_refused() -> None:
    """LiveKit Agents sends ``"instructions": null`` in every ``response.create`` it makes
    without instructions (docs/engine-fidelity.md); a number is still the wrong type."""
    s = EngineSession(model="gpt-realtime")
    send(s, "session.update", session={"type": "realtime", "instructions": "session"})
    _, plan = handle(s, "response.create", response={"instructions": None, "metadata": {"a": "b"}})
    assert plan is not None and plan.instructions == "session"
    s = EngineSession(model="gpt-realtime")
    error = only_error(send(s, "response.create", response={"instructions": 5}))
    assert (error["code"], error["param"]) == ("invalid_type", "response.instructions")


def test_input_usage_rereads_the_whole_conversation() -> None:
    s = EngineSession(model="gpt-realtime")
    send(s, "session.update", session={"type": "realtime", "instructions": "Be kind."})
    send(s, "conversation.item.create", item=user_text("what time is it"))
    send(s, "input_audio_buffer.append", audio=b64(tone(1000)))
    send(s, "input_audio_buffer.commit")
    plan = s.plan_response({})
    text, audio = s.input_usage(plan)
    assert text == count_tokens("Be kind.") + count_tokens("what time is it")
    assert audio == 11  # 1000 ms at 10 tokens a second, plus one


def test_a_cancelled_response_no_longer_blocks_the_next() -> None:
    # Client events are handled strictly in order: after response.cancel, the conversation is
    # free for the next response.create (the engine sends the old response.done first).
    s = EngineSession(model="gpt-realtime")
    _, first = handle(s, "response.create")
    send(s, "response.cancel")
    events, second = handle(s, "response.create")
    assert events == [] and second is not None and first is not None
    assert s.active is second and first.cancelled and not second.cancelled


def test_an_out_of_band_response_is_cancelled_by_its_id() -> None:
    s = EngineSession(model="gpt-realtime")
    _, active = handle(s, "response.create")
    _, oob = handle(s, "response.create", response={"conversation": "none"})
    assert active is not None and oob is not None
    assert send(s, "response.cancel", response_id=oob.response["id"]) == []
    assert oob.cancelled and oob.cancel_reason == "client_cancelled"
    assert not active.cancelled
    # Without an id, the default conversation's response is the one cancelled.
    assert send(s, "response.cancel") == []
    assert active.cancelled


def test_response_input_resolves_item_references() -> None:
    s = EngineSession(model="gpt-realtime")
    send(s, "conversation.item.create", item=user_text("referenced words", "item_ref"))
    send(s, "input_audio_buffer.append", audio=b64(tone(1000)))
    committed, _, _ = send(s, "input_audio_buffer.commit")
    _, plan = handle(
        s,
        "response.create",
        response={
            "conversation": "none",
            "input": [
                {"type": "item_reference", "id": "item_ref"},
                {"type": "item_reference", "id": committed["item_id"]},
                user_text("and these"),
            ],
        },
    )
    assert plan is not None
    assert [i.get("id") for i in plan.input_items][:2] == ["item_ref", committed["item_id"]]
    assert plan.input_items[0]["content"] == [{"type": "input_text", "text": "referenced words"}]
    text, audio = s.input_usage(plan)
    assert text == count_tokens(s.session["instructions"]) + count_tokens(
        "referenced words"
    ) + count_tokens("and these")
    assert audio == 11  # the referenced audio item's 1000 ms
    events, plan = handle(
        s,
        "response.create",
        event_id="ev_ref",
        response={"conversation": "none", "input": [{"type": "item_reference", "id": "item_x"}]},
    )
    err = only_error(events)
    assert plan is None
    assert (err["code"], err["event_id"]) == ("invalid_value", "ev_ref")
    assert "item_x" in err["message"]


@pytest.mark.parametrize("fmt", [AudioFormat.PCMU, AudioFormat.PCMA])
def test_clear_drops_audio_still_inside_the_resampler(fmt: AudioFormat) -> None:
    s = EngineSession(model="gpt-realtime")
    send(
        s,
        "session.update",
        session={"type": "realtime", "audio": {"input": {"format": {"type": str(fmt)}}}},
    )
    send(s, "input_audio_buffer.append", audio=b64(from_pcm24k(tone(500), fmt)))
    send(s, "input_audio_buffer.clear")
    send(s, "input_audio_buffer.append", audio=b64(from_pcm24k(tone(200), fmt)))
    committed, _, _ = send(s, "input_audio_buffer.commit")
    (got,) = send(s, "conversation.item.retrieve", item_id=committed["item_id"])
    # 200 ms of G.711 is 1600 bytes: none of the cleared audio comes back with it.
    assert abs(len(base64.b64decode(got["item"]["content"][0]["audio"])) - 1600) <= 8


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"audio": 5}, "session.audio"),
        ({"audio": {"input": "x"}}, "session.audio.input"),
        ({"audio": {"output": ["x"]}}, "session.audio.output"),
        (
            {"audio": {"input": {"turn_detection": "server_vad"}}},
            "session.audio.input.turn_detection",
        ),
    ],
)
def test_a_session_update_of_the_wrong_shape_is_refused_not_fatal(
    session: dict[str, Any], param: str
) -> None:
    s = EngineSession(model="gpt-realtime")
    s.created()
    events, plan = s.handle(
        {"type": "session.update", "event_id": "evt_1", "session": {"type": "realtime", **session}}
    )
    assert plan is None
    (error,) = events
    validate_server_event(error)
    assert error["type"] == "error"
    assert error["error"]["code"] == "invalid_type"
    assert error["error"]["param"] == param
    assert error["error"]["event_id"] == "evt_1"
    # Nothing of it was applied: the session goes on as before.
    events, _ = s.handle({"type": "input_audio_buffer.append", "audio": "AAAA"})
    assert [e["type"] for e in events if e["type"] == "error"] == []
    events, _ = s.handle({"type": "session.update", "session": {"type": "realtime"}})
    assert [e["type"] for e in events] == ["session.updated"]
    assert events[0]["session"]["audio"]["output"]["voice"] == "alloy"


# -- every client event checked as OpenAI's GA interface checks it (docs/protocol.md 5.3) ----------

ASSISTANT_TEXT = {
    "type": "message",
    "role": "assistant",
    "content": [{"type": "text", "text": "x"}],
}


@pytest.mark.parametrize(
    ("event", "code", "param", "message"),
    [
        (
            {"type": "response.create", "response": {"modalities": ["text"]}},
            "unknown_parameter",
            "response.modalities",
            "Unknown parameter: 'response.modalities'.",
        ),
        (
            {"type": "conversation.item.create", "item": ASSISTANT_TEXT},
            "invalid_value",
            "item.content[0].type",
            "Invalid value: 'text'. Value must be 'output_text'.",
        ),
        (
            {
                "type": "conversation.item.create",
                "item": {**ASSISTANT_TEXT, "role": "user"},
            },
            "invalid_value",
            "item.content[0].type",
            "Invalid value: 'text'. Supported values are: 'input_text', 'input_audio', and "
            "'input_image'.",
        ),
        (
            {"type": "input_audio_buffer.commit", "foo": 1},
            "unknown_parameter",
            "foo",
            "Unknown parameter: 'foo'.",
        ),
        (
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"output": {"speed": 2.0}}},
            },
            "decimal_above_max_value",
            "session.audio.output.speed",
            "Invalid 'session.audio.output.speed': decimal above maximum value. Expected a value "
            "<= 1.5, but got 2.0 instead.",
        ),
        (
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 2}}},
                },
            },
            "decimal_above_max_value",
            "session.audio.input.turn_detection.threshold",
            None,
        ),
        (
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"output": {"voice": "bob"}}},
            },
            "invalid_value",
            "session.audio.output.voice",
            "Invalid value: 'bob'. Supported values are: 'alloy', 'ash', 'ballad', 'coral', "
            "'echo', 'sage', 'shimmer', 'verse', 'marin', and 'cedar'.",
        ),
        (
            # A typo was transcribed, and its usage booked under it (a newcomer's find).
            {
                "type": "session.update",
                "session": {
                    "type": "transcription",
                    "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcrib"}}},
                },
            },
            "invalid_value",
            "session.audio.input.transcription.model",
            "Invalid value: 'gpt-4o-mini-transcrib'. Supported values are: 'whisper-1', "
            "'gpt-transcribe', 'gpt-live-transcribe', 'gpt-4o-mini-transcribe', "
            "'gpt-4o-mini-transcribe-2025-12-15', 'gpt-4o-transcribe', "
            "'gpt-4o-transcribe-diarize', and 'gpt-realtime-whisper'.",
        ),
        (
            {"type": "session.update", "session": {"type": "realtime", "instructions": 7}},
            "invalid_type",
            "session.instructions",
            "Invalid type for 'session.instructions': expected a string, but got an integer "
            "instead.",
        ),
        (
            {
                "type": "response.create",
                "response": {"metadata": {f"k{i}": "v" for i in range(17)}},
            },
            "object_above_max_properties",
            "response.metadata",
            "Invalid 'response.metadata': too many properties. Expected an object with at most "
            "16 properties, but got an object with 17 properties instead.",
        ),
        (
            {"type": "response.create", "response": {"metadata": {"k": "v" * 513}}},
            "string_above_max_length",
            "response.metadata.k",
            None,
        ),
        (
            {"type": "input_audio_buffer.clear", "event_id": "e" * 513},
            "string_above_max_length",
            "event_id",
            "Invalid 'event_id': string too long. Expected a string with maximum length 512, "
            "but got a string with length 513 instead.",
        ),
        (
            {"type": "conversation.item.create", "item": {"type": "message", "content": []}},
            "missing_required_parameter",
            "item.role",
            "Missing required parameter: 'item.role'.",
        ),
        (
            {"type": "response.create", "response": {"output_modalities": ["video"]}},
            "invalid_value",
            "response.output_modalities[0]",
            "Invalid value: 'video'. Supported values are: 'text' and 'audio'.",
        ),
        (
            {
                "type": "session.update",
                "session": {"type": "realtime", "tools": [{"type": "function", "strict": True}]},
            },
            "unknown_parameter",
            "session.tools[0].strict",
            "Unknown parameter: 'session.tools[0].strict'.",
        ),
        (
            {"type": "response.create", "response": {"tool_choice": "sometimes"}},
            "invalid_value",
            "response.tool_choice",
            "Invalid value: 'sometimes'. Supported values are: 'none', 'auto', and 'required'.",
        ),
    ],
)
def test_client_events_are_checked_as_the_ga_interface_checks_them(
    event: dict[str, Any], code: str, param: str, message: str | None
) -> None:
    s = EngineSession(model="gpt-realtime")
    before = (s.session, list(s.items))
    events, plan = s.handle({**event, "event_id": event.get("event_id", "ev_bad")})
    assert plan is None
    err = only_error(events)
    validate_server_event(events[0])
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", code, param)
    if message is not None:
        assert err["message"] == message
    assert err["event_id"] == event.get("event_id", "ev_bad")
    # Nothing of a refused event applies.
    assert (s.session, list(s.items)) == before


def test_an_unknown_event_type_lists_the_supported_ones_as_openai_does() -> None:
    s = EngineSession(model="gpt-realtime")
    err = only_error(send(s, "response.frobnicate"))
    assert (err["code"], err["param"]) == ("invalid_value", "type")
    assert err["message"].startswith("Invalid value: 'response.frobnicate'. Supported values are: ")
    assert err["message"].endswith(", and 'response.cancel'.")


def test_a_custom_voice_id_is_taken_and_shown_as_given() -> None:
    s = EngineSession(model="gpt-realtime")
    voice = {"id": "voice_custom123"}
    send(s, "session.update", session={"type": "realtime", "audio": {"output": {"voice": voice}}})
    events, plan = handle(s, "response.create")
    assert events == [] and plan is not None
    assert plan.response["audio"]["output"]["voice"] == voice
    assert plan.voice == "voice_custom123"
