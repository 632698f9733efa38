"""The sans-I/O relay session, fed plain strings."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from rtgate.catalog import Catalog, Route
from rtgate.config import load_settings
from rtgate.metering.record import UsageRecord
from rtgate.protocol.relay_session import RelaySession, review_excerpt


def make(
    model: str | None = "gpt-realtime",
    *,
    route: Route | None = None,
    catalog: Catalog | None = None,
    intent: str | None = None,
) -> RelaySession:
    catalog = catalog or Catalog(load_settings(None, {"OPENAI_API_KEY": "sk-x"}))
    return RelaySession(
        session_id="rs_1",
        key_id="key_1",
        route=route or catalog.resolve(model),
        catalog=catalog,
        opened_at=0.0,
        opened_mono=100.0,
        max_seconds=60,
        intent=intent,
    )


def done(usage: dict[str, object], rid: str = "resp_1") -> str:
    return orjson.dumps(
        {"type": "response.done", "event_id": "event_1", "response": {"id": rid, "usage": usage}}
    ).decode()


def test_audio_frames_are_skipped_without_parsing() -> None:
    s = make()
    frame = '{"type":"response.output_audio.delta","delta":"' + "A" * 1000 + '"}'
    assert s.on_upstream_text(frame, 1.0) is None
    assert s.records == 0


def test_response_done_is_metered_wherever_type_sits() -> None:
    s = make()
    frame = (
        '{"event_id":"e","response":{"id":"resp_9","usage":{"input_tokens":5,'
        '"output_tokens":1,"input_token_details":{"text_tokens":5},'
        '"output_token_details":{"text_tokens":1}}},"type":"response.done"}'
    )
    rec = s.on_upstream_text(frame, 2.0)
    assert isinstance(rec, UsageRecord)
    assert (rec.ref, rec.model, rec.usage.text_in, rec.usage.text_out) == (
        "resp_9",
        "gpt-realtime",
        5,
        1,
    )
    assert rec.charged_nanos == 5 * 4000 + 1 * 16000
    assert s.totals.total_tokens == 6


def test_a_quoted_event_name_inside_a_string_does_not_meter() -> None:
    s = make()
    frame = orjson.dumps(
        {"type": "response.output_text.done", "text": 'say "response.done" please'}
    ).decode()
    assert '\\"response.done\\"' in frame
    assert s.on_upstream_text(frame, 1.0) is None


def test_zero_usage_writes_no_record() -> None:
    assert make().on_upstream_text(done({}), 1.0) is None


def test_transcription_model_is_tracked_from_session_updated() -> None:
    s = make()
    updated = {
        "type": "session.updated",
        "session": {
            "model": "gpt-realtime",
            "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}},
        },
    }
    assert s.on_upstream_text(orjson.dumps(updated).decode(), 1.0) is None
    completed = {
        "type": "conversation.item.input_audio_transcription.completed",
        "item_id": "item_1",
        "content_index": 0,
        "transcript": "hi",
        "usage": {
            "type": "tokens",
            "input_tokens": 10,
            "output_tokens": 2,
            "total_tokens": 12,
            "input_token_details": {"audio_tokens": 10, "text_tokens": 0},
        },
    }
    rec = s.on_upstream_text(orjson.dumps(completed).decode(), 2.0)
    assert isinstance(rec, UsageRecord)
    assert rec.model == "gpt-4o-transcribe" and rec.ref == "item_1"
    assert rec.charged_nanos == 10 * 6000 + 2 * 10000


def test_beta_transcription_config_is_understood() -> None:
    s = make()
    frame = orjson.dumps(
        {
            "type": "session.created",
            "session": {"input_audio_transcription": {"model": "whisper-1"}},
        }
    ).decode()
    s.on_upstream_text(frame, 1.0)
    assert s.transcription_model == "whisper-1"
    # A beta upstream's transcription session says so in events of its own (a review's find:
    # once a session opens with a model, a switch read nowhere was billed at the first one).
    for etype in ("transcription_session.created", "transcription_session.updated"):
        model = "gpt-4o-transcribe" if etype.endswith("created") else "gpt-4o-mini-transcribe"
        event = {"type": etype, "session": {"input_audio_transcription": {"model": model}}}
        s.on_upstream_text(orjson.dumps(event).decode(), 2.0)
        assert s.transcription_model == model


def test_upstream_invalid_key_error_is_rewritten() -> None:
    s = make()
    frame = orjson.dumps(
        {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "code": "invalid_api_key",
                "message": "Incorrect API key provided: sk-pr...WXYZ.",
                "event_id": "evt_client_1",
            },
        }
    ).decode()
    out = s.on_upstream_text(frame, 1.0)
    assert isinstance(out, str)
    assert "WXYZ" not in out and orjson.loads(out)["error"]["code"] == "upstream_auth_failed"
    # The client event it answered stays named.
    assert orjson.loads(out)["error"]["event_id"] == "evt_client_1"


def test_first_close_wins_and_deadline_is_monotonic() -> None:
    s = make()
    assert not s.expired(159.9) and s.expired(160.0)
    assert s.close(4321, "bye", "upstream")
    assert not s.close(1000, "", "client")
    assert (s.close_code, s.closed_by) == (4321, "upstream")


# -- usage the gateway cannot read as the protocol defines it ------------------------------------
# No frame that carries usage reaches the client without a ledger row: read tolerantly where the
# meaning is clear, else record what can be read, flagged for review.

_LONE_SURROGATE = '"\\ud83d"'  # legal JSON (RFC 8259 8.2), refused by orjson


def test_a_lone_surrogate_does_not_stop_metering() -> None:
    s = make()
    frame = (
        '{"type":"response.done","event_id":"event_1","response":{"id":"resp_\\udc00",'
        '"output":[{"type":"message","content":[{"type":"output_text","text":'
        + _LONE_SURROGATE
        + '}]}],"usage":{"input_tokens":5,"output_tokens":1,'
        '"input_token_details":{"text_tokens":5},"output_token_details":{"text_tokens":1}}}}'
    )
    rec = s.on_upstream_text(frame, 2.0)
    assert isinstance(rec, UsageRecord)
    assert (rec.usage.text_in, rec.usage.text_out, rec.review) == (5, 1, None)
    # The tolerant parser's lone surrogates never reach the ledger (UTF-8 cannot store them).
    assert rec.ref is not None and rec.ref.startswith("resp_")
    rec.ref.encode()


def test_a_lone_surrogate_in_a_transcription_does_not_stop_metering() -> None:
    s = make()
    frame = (
        '{"type":"conversation.item.input_audio_transcription.completed","item_id":"item_1",'
        '"content_index":0,"transcript":'
        + _LONE_SURROGATE
        + ',"usage":{"type":"tokens","input_tokens":10,"output_tokens":2,'
        '"input_token_details":{"audio_tokens":10}}}'
    )
    rec = s.on_upstream_text(frame, 2.0)
    assert isinstance(rec, UsageRecord)
    assert (rec.usage.kind, rec.usage.audio_in, rec.usage.text_out) == ("transcription", 10, 2)
    assert rec.review is None


def test_a_lone_surrogate_in_session_created_still_tracks_the_model() -> None:
    s = make()
    frame = (
        '{"type":"session.created","session":{"model":"gpt-realtime-mini",'
        '"instructions":' + _LONE_SURROGATE + "}}"
    )
    assert s.on_upstream_text(frame, 1.0) is None
    assert s.upstream_session_model == "gpt-realtime-mini"


@pytest.mark.parametrize(
    "value",
    [12.0, "12", " 12 "],
    ids=["integer-valued float", "numeric string", "padded numeric string"],
)
def test_counts_whose_meaning_is_clear_are_metered(value: object) -> None:
    usage = {
        "input_tokens": value,
        "output_tokens": 3,
        "input_token_details": {"text_tokens": value},
    }
    rec = make().on_upstream_text(done(usage), 2.0)
    assert isinstance(rec, UsageRecord)
    assert (rec.usage.text_in, rec.usage.text_out, rec.review) == (12, 3, None)
    assert rec.charged_nanos == 12 * 4000 + 3 * 16000


@pytest.mark.parametrize(
    "value",
    [
        "12.5",
        "null",
        "-12",
        '"twelve"',
        '"-12"',
        "true",
        '{"n":12}',
        "[12]",
        "1e999",
        "1e13",
        "NaN",
    ],
    ids=[
        "fraction",
        "null",
        "negative",
        "word",
        "negative string",
        "bool",
        "object",
        "list",
        "infinity",
        "implausible",
        "NaN (not JSON at all)",
    ],
)
def test_a_count_of_the_wrong_type_is_recorded_for_review(value: str) -> None:
    frame = (
        '{"type":"response.done","response":{"id":"resp_1","usage":{"input_tokens":5,'
        '"output_tokens":3,"input_token_details":{"text_tokens":5,"audio_tokens":'
        + value
        + '},"output_token_details":{"text_tokens":3}}}}'
    )
    s = make()
    rec = s.on_upstream_text(frame, 2.0)
    assert isinstance(rec, UsageRecord)
    assert rec.review == "unreadable_usage"
    # What could be read is billed; the rest waits for an operator.
    assert (rec.usage.text_in, rec.usage.audio_in, rec.usage.text_out) == (5, 0, 3)
    assert rec.charged_nanos == 5 * 4000 + 3 * 16000
    assert s.records == 1


@pytest.mark.parametrize(
    "response",
    [
        {"id": "resp_1"},
        {"id": "resp_1", "usage": None},
        {"id": "resp_1", "usage": "lots"},
        {"id": "resp_1", "usage": 42},
        {"id": "resp_1", "usage": {"input_token_details": "nope"}},
        "resp_1",
        None,
    ],
    ids=[
        "no usage",
        "null usage",
        "string usage",
        "number usage",
        "string details",
        "string",
        "null",
    ],
)
def test_a_response_done_without_readable_usage_is_recorded_for_review(response: object) -> None:
    frame = orjson.dumps({"type": "response.done", "response": response}).decode()
    rec = make().on_upstream_text(frame, 2.0)
    assert isinstance(rec, UsageRecord)
    assert (rec.review, rec.usage.total_tokens, rec.charged_nanos) == ("unreadable_usage", 0, 0)
    assert rec.model == "gpt-realtime"


@pytest.mark.parametrize(
    "usage",
    [
        None,
        {"type": "duration", "seconds": -1},
        {"type": "duration", "seconds": "soon"},
        {"type": "tokens", "input_tokens": 1.5},
        {"type": "characters", "count": 12},
    ],
    ids=["null", "negative seconds", "word seconds", "fraction", "unknown type"],
)
def test_transcription_usage_of_the_wrong_type_is_recorded_for_review(usage: object) -> None:
    frame = orjson.dumps(
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "item_1",
            "usage": usage,
        }
    ).decode()
    rec = make().on_upstream_text(frame, 2.0)
    assert isinstance(rec, UsageRecord)
    assert (rec.review, rec.usage.kind, rec.ref) == ("unreadable_usage", "transcription", "item_1")


def test_duration_as_a_numeric_string_is_metered() -> None:
    s = make()
    s.transcription_model = "whisper-1"
    frame = orjson.dumps(
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "item_1",
            "usage": {"type": "duration", "seconds": "3.2"},
        }
    ).decode()
    rec = s.on_upstream_text(frame, 2.0)
    assert isinstance(rec, UsageRecord)
    assert (rec.usage.audio_ms, rec.review) == (3200, None)


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        ('{"type":"response.done","response":{"id":"resp_1","usage":{"input_tokens":1', "response"),
        ('{"type":"response.done","response":{"usage":{"input_tokens":01}}}', "response"),
        ('["response.done"]', "response"),
        (
            '{"type":"conversation.item.input_audio_transcription.completed","usage":{',
            "transcription",
        ),
    ],
    ids=["truncated", "leading zero", "not an object", "truncated transcription"],
)
def test_an_unparseable_usage_event_is_recorded_for_review(frame: str, kind: str) -> None:
    s = make()
    s.transcription_model = "gpt-4o-transcribe"
    rec = s.on_upstream_text(frame, 2.0)
    assert isinstance(rec, UsageRecord)
    assert (rec.review, rec.usage.kind, rec.usage.total_tokens) == ("unparseable_frame", kind, 0)
    assert rec.model == ("gpt-realtime" if kind == "response" else "gpt-4o-transcribe")
    assert rec.ref is None


def test_an_unparseable_frame_that_carries_no_usage_is_just_relayed() -> None:
    s = make()
    assert s.on_upstream_text('{"type":"session.updated","session":{', 1.0) is None
    assert s.on_upstream_text('{"type":"response.output_text.done","text":"', 1.0) is None
    assert s.records == 0


def test_the_review_excerpt_keeps_the_usage_and_hides_string_values() -> None:
    frame = (
        '{"type":"response.done","response":{"id":"resp_1","output":[{"type":"message",'
        '"content":[{"type":"output_text","text":"my card is 4111 1111"}]}],'
        '"metadata":{"note":"sk-secret-value"},"usage":{"input_tokens":"twelve",'
        '"output_tokens":3,"input_token_details":{"text_tokens":-5}}}}'
    )
    excerpt = review_excerpt(frame)
    assert len(excerpt) <= 200
    assert '"input_tokens":"…"' in excerpt and '"text_tokens":-5' in excerpt
    assert "4111" not in excerpt and "sk-secret" not in excerpt and "twelve" not in excerpt
    # No usage key to start from: the start of the frame, masked just the same.
    cut = review_excerpt('{"type":"response.done","response":{"id":"resp_1","note":"private')
    assert "private" not in cut and cut.startswith('{"type":"…"')


def session_updated(transcription_model: str) -> str:
    session = {"audio": {"input": {"transcription": {"model": transcription_model}}}}
    return orjson.dumps({"type": "session.updated", "session": session}).decode()


def transcribed(usage: dict[str, object], item_id: str = "item_1") -> str:
    return orjson.dumps(
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": item_id,
            "content_index": 0,
            "transcript": "hello there",
            "usage": usage,
        }
    ).decode()


# A realtime session, a transcription session (an intent, no model) and the gateway's own
# sideband of a WebRTC call: transcription usage is billed the same way on each.
INTENTS = [("gpt-realtime", None), (None, "transcription"), ("gpt-realtime-mini", "webrtc")]


@pytest.mark.parametrize(("model", "intent"), INTENTS)
def test_duration_usage_is_billed_per_minute_on_sessions_of_every_intent(
    model: str | None, intent: str | None
) -> None:
    s = make(model, intent=intent)
    s.on_upstream_text(session_updated("gpt-live-transcribe"), 1.0)
    rec = s.on_upstream_text(transcribed({"type": "duration", "seconds": 3.4}), 2.0)
    assert isinstance(rec, UsageRecord)
    # $0.017 a minute: 3.4 s is 963333.33 nano-dollars.
    assert (rec.model, rec.price_key, rec.unit, rec.priced) == (
        "gpt-live-transcribe",
        "gpt-live-transcribe",
        "minute",
        True,
    )
    assert (rec.usage.audio_ms, rec.provider_nanos, rec.charged_nanos) == (3400, 963_333, 963_333)
    assert (rec.ref, rec.usage.kind, rec.review) == ("item_1", "transcription", None)


def test_each_completed_event_is_billed_and_summed_even_for_the_same_item() -> None:
    # Duration usage is an increment per event, never a running total: every report counts.
    s = make()
    s.on_upstream_text(session_updated("whisper-1"), 1.0)
    seconds = [1.5, 2.25, 0.75]
    items = ["item_1", "item_2", "item_2"]
    recs = [
        s.on_upstream_text(transcribed({"type": "duration", "seconds": sec}, item), 2.0 + i)
        for i, (sec, item) in enumerate(zip(seconds, items, strict=True))
    ]
    assert all(isinstance(r, UsageRecord) for r in recs)
    assert [r.ref for r in recs] == items  # type: ignore[union-attr]
    # whisper-1, $0.006 a minute: 100 nano-dollars a millisecond.
    assert [r.provider_nanos for r in recs] == [150_000, 225_000, 75_000]  # type: ignore[union-attr]
    assert (s.totals.audio_ms, s.provider_nanos, s.records) == (4500, 450_000, 3)


def test_a_dated_transcription_model_is_billed_as_its_family() -> None:
    s = make()
    s.on_upstream_text(session_updated("gpt-realtime-whisper-2026-09-30"), 1.0)
    rec = s.on_upstream_text(transcribed({"type": "duration", "seconds": 60}), 2.0)
    assert isinstance(rec, UsageRecord)
    assert (rec.model, rec.price_key, rec.unit) == (
        "gpt-realtime-whisper-2026-09-30",
        "gpt-realtime-whisper",
        "minute",
    )
    assert rec.charged_nanos == 17_000_000


def test_usage_in_a_unit_its_row_does_not_price_is_recorded_unpriced() -> None:
    # gpt-live-transcribe's row is per minute: tokens from it are not billed as zero-cost
    # tokens but recorded unpriced (the relay logs it); a duration from a per-token model too.
    s = make()
    s.on_upstream_text(session_updated("gpt-live-transcribe"), 1.0)
    tokens = {"type": "tokens", "input_tokens": 10, "output_tokens": 4}
    by_tokens = s.on_upstream_text(transcribed(tokens), 2.0)
    s.on_upstream_text(session_updated("gpt-4o-transcribe"), 3.0)
    by_time = s.on_upstream_text(transcribed({"type": "duration", "seconds": 2}), 4.0)
    assert isinstance(by_tokens, UsageRecord) and isinstance(by_time, UsageRecord)
    assert [(r.model, r.priced, r.unit, r.charged_nanos) for r in (by_tokens, by_time)] == [
        ("gpt-live-transcribe", False, "token", 0),
        ("gpt-4o-transcribe", False, "second", 0),
    ]
    assert (by_tokens.usage.total_tokens, by_time.usage.audio_ms) == (14, 2000)
    assert s.unpriced == {"gpt-live-transcribe", "gpt-4o-transcribe"}


def test_duration_usage_of_a_session_that_named_no_transcription_model_is_unpriced() -> None:
    # No model is guessed for it: the record is kept, at cost 0, for the operator to see.
    s = make(None, intent="transcription")
    rec = s.on_upstream_text(transcribed({"type": "duration", "seconds": 2}), 1.0)
    assert isinstance(rec, UsageRecord)
    assert (rec.model, rec.priced, rec.usage.audio_ms, rec.charged_nanos) == ("", False, 2000, 0)


def test_every_usage_kind_the_local_engine_serves_is_priced_by_the_local_row(
    tmp_path: Path,
) -> None:
    # OpenAI's list prices for the names a client picks (gpt-4o-transcribe, whisper-1) are no
    # price of the engine's own Whisper: the route's upstream decides, for a realtime session
    # and a transcription session alike, and `[prices.local]` is what an operator sets.
    cfg = tmp_path / "rtgate.toml"
    cfg.write_text(
        '[prices.local]\naudio_in = "2"\ntext_out = "3"\nunit = "minute"\nrate = "0.06"\n'
    )
    for priced in (False, True):
        settings = load_settings(cfg if priced else None, {})
        catalog = Catalog(settings)
        for route in (catalog.resolve("gpt-realtime"), catalog.resolve(None)):
            s = make(route=route, catalog=catalog)
            tokens = {"type": "tokens", "input_tokens": 10, "output_tokens": 4}
            s.on_upstream_text(session_updated("gpt-4o-transcribe"), 1.0)
            by_tokens = s.on_upstream_text(transcribed(tokens), 2.0)
            s.on_upstream_text(session_updated("whisper-1"), 3.0)
            by_minute = s.on_upstream_text(transcribed({"type": "duration", "seconds": 1.5}), 4.0)
            audio_in = {"input_tokens": 7, "input_token_details": {"audio_tokens": 7}}
            realtime = s.on_upstream_text(done(audio_in), 5.0)
            records = [by_tokens, by_minute, realtime]
            assert all(isinstance(r, UsageRecord) for r in records)
            costs = [(r.model, r.price_key, r.charged_nanos) for r in records]  # type: ignore[union-attr]
            # Whatever the local row's unit, none of it is unpriced: the row is the operator's.
            assert all(r.priced for r in records)  # type: ignore[union-attr]
            assert costs == [
                ("gpt-4o-transcribe", "local", 10 * 2000 + 4 * 3000 if priced else 0),
                ("whisper-1", "local", 1500 * 1000 if priced else 0),
                (route.model, "local", 7 * 2000 if priced else 0),
            ]
