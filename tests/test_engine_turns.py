"""Turn-taking in ``EngineSession`` (``engine.turns``), driven with plain dicts and tones.

The energy detector is deterministic on tones and silence, so every turn edge is asserted to the
millisecond of the session's audio clock (docs/protocol.md 5.7): ``semantic_vad`` eagerness, the
``idle_timeout_ms`` of ``server_vad`` and a commit or clear in the middle of a turn.
"""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import pytest

from rtgate.engine.response_plan import ResponsePlan
from rtgate.engine.session import EngineSession
from rtgate.engine.turns import SEMANTIC_SILENCE_MS, detector_settings
from rtgate.engine.vad import EnergyVad
from tests.sdk_events import validate_server_event

Event = dict[str, Any]


def tone(ms: int, amp: int = 8000) -> bytes:
    n = 24 * ms
    return struct.pack(
        f"<{n}h", *(int(amp * math.sin(2 * math.pi * 300 * i / 24000)) for i in range(n))
    )


def silence(ms: int) -> bytes:
    return bytes(48 * ms)


def handle(s: EngineSession, etype: str, **fields: Any) -> tuple[list[Event], ResponsePlan | None]:
    events, plan = s.handle({"type": etype, **fields})
    for e in events:
        validate_server_event(e)
    return events, plan


def send(s: EngineSession, etype: str, **fields: Any) -> list[Event]:
    events, plan = handle(s, etype, **fields)
    assert plan is None
    return events


def listening(turn_detection: dict[str, Any]) -> EngineSession:
    """A session with an energy detector and this ``turn_detection``."""
    s = EngineSession(model="gpt-realtime")
    s.use_vad(EnergyVad())
    (updated,) = send(
        s,
        "session.update",
        session={"type": "realtime", "audio": {"input": {"turn_detection": turn_detection}}},
    )
    assert updated["type"] == "session.updated"
    return s


def stream(
    s: EngineSession, pcm: bytes, chunk_ms: int = 20
) -> tuple[list[Event], list[ResponsePlan]]:
    """Append ``pcm`` as a client would, in ``chunk_ms`` pieces: the events and responses."""
    events: list[Event] = []
    plans: list[ResponsePlan] = []
    step = 48 * chunk_ms
    for off in range(0, len(pcm), step):
        got, plan = handle(
            s, "input_audio_buffer.append", audio=base64.b64encode(pcm[off : off + step]).decode()
        )
        events += got
        if plan is not None:
            plans.append(plan)
    return events, plans


def types(events: list[Event]) -> list[str]:
    return [e["type"] for e in events]


def retrieve_ms(s: EngineSession, item_id: str) -> float:
    (got,) = send(s, "conversation.item.retrieve", item_id=item_id)
    return len(base64.b64decode(got["item"]["content"][0]["audio"])) / 48


# -- semantic_vad -----------------------------------------------------------------------------


def test_semantic_vad_is_shown_with_its_own_defaults() -> None:
    s = EngineSession(model="gpt-realtime")
    (updated,) = send(
        s,
        "session.update",
        session={
            "type": "realtime",
            "audio": {"input": {"turn_detection": {"type": "semantic_vad"}}},
        },
    )
    assert updated["session"]["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": "auto",
        "create_response": True,
        "interrupt_response": True,
    }


def test_an_unknown_eagerness_is_refused() -> None:
    s = EngineSession(model="gpt-realtime")
    (err,) = send(
        s,
        "session.update",
        event_id="ev_e",
        session={
            "type": "realtime",
            "audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "eager"}}},
        },
    )
    assert err["type"] == "error"
    assert (err["error"]["code"], err["error"]["param"], err["error"]["event_id"]) == (
        "invalid_value",
        "session.audio.input.turn_detection.eagerness",
        "ev_e",
    )
    assert s.turn_detection is not None and s.turn_detection["type"] == "server_vad"


def test_eagerness_keeps_the_documented_proportions() -> None:
    # SDK docstring: low, medium and high wait at most 8 s, 4 s and 2 s; auto is medium.
    assert SEMANTIC_SILENCE_MS["auto"] == SEMANTIC_SILENCE_MS["medium"]
    assert SEMANTIC_SILENCE_MS["low"] == 2 * SEMANTIC_SILENCE_MS["medium"]
    assert SEMANTIC_SILENCE_MS["medium"] == 2 * SEMANTIC_SILENCE_MS["high"]
    assert SEMANTIC_SILENCE_MS["high"] > detector_settings({"type": "server_vad"})[2]


@pytest.mark.parametrize(
    ("eagerness", "silence_ms"),
    [("high", 500), ("medium", 1000), ("auto", 1000), ("low", 2000), (None, 1000)],
)
def test_eagerness_sets_how_long_a_pause_ends_the_turn(
    eagerness: str | None, silence_ms: int
) -> None:
    td: dict[str, Any] = {"type": "semantic_vad", "create_response": False}
    if eagerness is not None:
        td["eagerness"] = eagerness
    # A pause a little shorter than the eagerness allows does not end the turn...
    s = listening(td)
    events, _ = stream(s, silence(200) + tone(600) + silence(silence_ms - 100) + tone(400))
    assert types(events) == ["input_audio_buffer.speech_started"]
    events, _ = stream(s, silence(silence_ms + 200))
    assert types(events)[:2] == [
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
    ]
    # ...and the turn ends that long after the voice did (audio_end_ms includes the silence).
    voice_end = 200 + 600 + (silence_ms - 100) + 400
    assert events[0]["audio_end_ms"] == voice_end + silence_ms

    # A pause a little longer ends the first turn: two turns, two user items.
    s = listening(td)
    events, _ = stream(
        s, silence(200) + tone(600) + silence(silence_ms + 100) + tone(400) + silence(3000)
    )
    stopped = [e for e in events if e["type"] == "input_audio_buffer.speech_stopped"]
    assert [e["audio_end_ms"] for e in stopped] == [800 + silence_ms, 1300 + 2 * silence_ms]
    assert len([e for e in events if e["type"] == "input_audio_buffer.committed"]) == 2


# -- idle timeout -----------------------------------------------------------------------------


def answered(s: EngineSession, audio_ms: int) -> ResponsePlan:
    """A conversation response that produced ``audio_ms`` of audio and is over, as
    ``engine.server`` leaves it."""
    _, plan = handle(s, "response.create")
    assert plan is not None
    plan.audio_out_ms = audio_ms
    s.finished(plan)
    return plan


def test_idle_timeout_commits_the_silence_after_the_answer_played_and_responds() -> None:
    s = listening({"type": "server_vad", "idle_timeout_ms": 1000})
    stream(s, silence(300))
    answered(s, audio_ms=600)  # response.done at 300 ms; played out at 900 ms
    events, plans = stream(s, silence(2000))
    assert types(events) == [
        "input_audio_buffer.timeout_triggered",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    timeout, committed, added, _ = events
    # From the end of playback to the append that reached the timeout (20 ms appends).
    assert (timeout["audio_start_ms"], timeout["audio_end_ms"]) == (900, 1900)
    assert committed["item_id"] == added["item"]["id"] == timeout["item_id"]
    assert added["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    # The item is the silent segment the event names, not the whole buffer.
    assert retrieve_ms(s, timeout["item_id"]) == 1000
    # create_response is on: a response of the conversation follows.
    (plan,) = plans
    assert plan.conversation and s.active is plan
    # Once per response: more silence triggers nothing until that response is over.
    assert stream(s, silence(3000)) == ([], [])


def test_idle_timeout_without_create_response_only_commits() -> None:
    s = listening({"type": "server_vad", "idle_timeout_ms": 500, "create_response": False})
    answered(s, audio_ms=0)
    events, plans = stream(s, silence(1000))
    assert types(events)[:2] == [
        "input_audio_buffer.timeout_triggered",
        "input_audio_buffer.committed",
    ]
    assert plans == [] and s.active is None


def test_speech_before_the_idle_timeout_is_a_turn_not_a_timeout() -> None:
    s = listening({"type": "server_vad", "idle_timeout_ms": 1000, "create_response": False})
    answered(s, audio_ms=200)
    events, _ = stream(s, silence(800) + tone(400) + silence(3000))
    assert "input_audio_buffer.timeout_triggered" not in types(events)
    assert types(events)[:3] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
    ]


def test_the_idle_timeout_waits_for_a_first_response_and_is_server_vad_only() -> None:
    s = listening({"type": "server_vad", "idle_timeout_ms": 500})
    assert stream(s, silence(2000)) == ([], [])  # nothing was said yet to be idle after
    # semantic_vad has no idle timeout: the field is refused, as the GA types have none.
    s = EngineSession(model="gpt-realtime")
    (err,) = send(
        s,
        "session.update",
        session={
            "type": "realtime",
            "audio": {"input": {"turn_detection": {"type": "semantic_vad", "idle_timeout_ms": 5}}},
        },
    )
    assert (err["error"]["code"], err["error"]["param"]) == (
        "unknown_parameter",
        "session.audio.input.turn_detection.idle_timeout_ms",
    )
    s = listening({"type": "semantic_vad"})
    answered(s, audio_ms=0)
    assert stream(s, silence(2000)) == ([], [])


def test_a_commit_disarms_the_idle_timeout() -> None:
    s = listening({"type": "server_vad", "idle_timeout_ms": 500})
    answered(s, audio_ms=0)
    stream(s, silence(300))
    send(s, "input_audio_buffer.commit")
    assert stream(s, silence(2000)) == ([], [])


# -- a manual commit or clear mid-turn --------------------------------------------------------


def test_a_commit_mid_speech_ends_the_turn_and_the_next_speech_starts_a_fresh_one() -> None:
    s = listening({"type": "server_vad", "create_response": False})
    events, _ = stream(s, silence(100) + tone(400))
    (started,) = events
    assert started["type"] == "input_audio_buffer.speech_started"
    committed, _, _ = send(s, "input_audio_buffer.commit")
    # The item is the one speech_started announced.
    assert committed["item_id"] == started["item_id"]

    events, _ = stream(s, tone(300) + silence(1000))
    assert types(events) == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    again, stopped, second = events[:3]
    assert again["item_id"] == stopped["item_id"] == second["item_id"] != started["item_id"]
    # The fresh turn starts where the buffer did (after the commit), not in the old turn.
    assert again["audio_start_ms"] == 500
    assert retrieve_ms(s, second["item_id"]) == 300 + 200
    assert [i["id"] for i in s.items] == [started["item_id"], second["item_id"]]


def test_a_clear_mid_speech_forgets_the_turn() -> None:
    s = listening({"type": "server_vad", "create_response": False})
    events, _ = stream(s, tone(400))
    (started,) = events
    send(s, "input_audio_buffer.clear")
    events, _ = stream(s, tone(300) + silence(1000))
    assert types(events)[:2] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
    ]
    assert events[0]["item_id"] != started["item_id"]
    assert retrieve_ms(s, events[0]["item_id"]) == 300 + 200


def test_turns_in_one_large_append_each_become_an_item_and_one_response() -> None:
    s = listening({"type": "server_vad"})
    pcm = tone(300) + silence(400) + tone(300) + silence(400)
    events, plans = stream(s, pcm, chunk_ms=len(pcm) // 48)
    assert types(events).count("input_audio_buffer.committed") == 2
    # The first turn's response never started: the second turn dropped it, so one remains.
    (plan,) = plans
    assert list(s.running.values()) == [plan] and s.active is plan and not plan.cancelled


def test_speech_cancels_the_active_response_with_turn_detected() -> None:
    s = listening({"type": "server_vad"})
    _, plan = handle(s, "response.create")
    assert plan is not None
    events, plans = stream(s, tone(300) + silence(400))
    assert plan.cancelled and plan.cancel_reason == "turn_detected"
    # The turn's own response is planned at once; engine.server starts it after the first ends.
    (second,) = plans
    assert s.active is second and not second.cancelled
    assert types(events)[0] == "input_audio_buffer.speech_started"
