"""The transcript recorder, fed plain frames."""

from __future__ import annotations

import orjson

from rtgate.protocol.transcript import TranscriptRecorder


def frame(**event: object) -> str:
    return orjson.dumps(event).decode()


def test_it_records_each_kind_and_ignores_audio() -> None:
    r = TranscriptRecorder("rs_1", "key_1")
    r.on_upstream('{"type":"response.output_audio.delta","delta":"AAAA"}', 1.0)
    r.on_client(frame(type="input_audio_buffer.append", audio="AAAA"), 1.0)
    assert r.pending == []
    r.on_upstream(
        frame(
            type="conversation.item.input_audio_transcription.completed",
            item_id="item_u",
            transcript="what time is it",
        ),
        2.0,
    )
    r.on_upstream(
        frame(
            type="response.function_call_arguments.done",
            item_id="item_f",
            name="get_time",
            call_id="call_1",
            arguments='{"tz":"UTC"}',
        ),
        3.0,
    )
    r.on_client(
        frame(
            type="conversation.item.create",
            item={"type": "function_call_output", "call_id": "call_1", "output": "12:00"},
        ),
        4.0,
    )
    r.on_upstream(
        frame(
            type="response.output_audio_transcript.done", item_id="item_a", transcript="It is noon."
        ),
        5.0,
    )
    r.on_upstream(
        frame(
            type="response.done",
            response={"id": "resp_1", "status": "completed", "usage": {"total_tokens": 9}},
        ),
        6.0,
    )
    got = [(e.seq, e.role, e.kind, e.text, e.item_id) for e in r.drain()]
    assert got == [
        (1, "user", "transcript", "what time is it", "item_u"),
        (2, "assistant", "function_call", "get_time", "item_f"),
        (3, "tool", "function_call_output", "12:00", None),
        (4, "assistant", "transcript", "It is noon.", "item_a"),
        (5, "usage", "response", "completed", "resp_1"),
    ]
    assert r.pending == []


def test_quoted_names_inside_strings_do_not_record() -> None:
    r = TranscriptRecorder("rs_1", "key_1")
    r.on_upstream(frame(type="response.output_text.delta", delta='say "response.done" please'), 1.0)
    assert r.pending == []


def test_an_item_id_too_long_for_its_column_is_left_out_and_the_text_kept() -> None:
    """A client names its own items (``conversation.item.create``): one longer than the
    store's column would have PostgreSQL refuse the transcript line (a security audit)."""
    r = TranscriptRecorder("rs_1", "key_1")
    for item_id in ("i" * 100, "i" * 101):
        r.on_client(
            frame(
                type="conversation.item.create",
                item={
                    "id": item_id,
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hello"}],
                },
            ),
            1.0,
        )
    kept, long = r.drain()
    assert (kept.item_id, kept.text) == ("i" * 100, "hello")
    assert (long.item_id, long.text) == (None, "hello")
