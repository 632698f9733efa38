"""GPT-Live in the relay core, fed plain strings (docs/protocol-live.md): the first event read,
voice seconds billed as deltas of cumulative snapshots to the nano-dollar, the final total
reconciled, the graceful end (``session.close`` -> ``session.closed``) from every side, an upstream
that dies first (last snapshot billed, flagged unconfirmed), backend tokens, Live's error
envelope."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai.types.live import (
    DecisionEvent,
    ErrorEvent,
    LiveCreateParams,
    MediaSessionConfigParam,
    SessionConfigParam,
    SessionReferParams,
    SessionRejectParams,
    SessionStartEventParam,
    SessionUsageUpdatedEvent,
    live_create_params,
    session_accept_params,
)
from openai.types.realtime import CallReferParams, CallRejectParams

from rtgate.api.calls_http import CONTROLS, LIVE_REQUIRED, REQUIRED
from rtgate.catalog import Catalog
from rtgate.config import load_settings
from rtgate.errors import InvalidSessionStart, QuotaExceeded, ShuttingDown
from rtgate.metering.record import UsageRecord
from rtgate.protocol import session_fields as f
from rtgate.protocol.actions import (
    CheckBudget,
    CloseClient,
    CloseUpstream,
    Commit,
    Ended,
    Record,
    Refused,
    SendClient,
    SendUpstream,
)
from rtgate.protocol.live import SESSION_CLOSE, LiveMeter, read_session_start
from rtgate.protocol.relay import RelayCore
from rtgate.protocol.relay_session import RelaySession
from rtgate.protocol.usage import Usage

START = (
    '{"type":"session.start","event_id":"evt_start_1","session":{"model":"gpt-live-1",'
    '"delegation":{"type":"responses","responses":{"model":"gpt-backend"}}}}'
)
STARTED = orjson.dumps(
    {
        "type": "session.started",
        "event_id": "evt_1",
        "session": {
            "id": "live_123",
            "expires_at": 1782518400,
            "model": "gpt-live-1",
            "status": "active",
            "delegation": {"type": "responses", "responses": {"model": "gpt-backend"}},
        },
    }
)
AUDIO_DOWN = b'{"type":"session.output_audio.delta","delta":"AAAA"}'
AUDIO_UP = b'{"type": "session.input_audio.append", "audio": "AAAA"}'
#: $0.05 a minute: 50,000,000 nanos / 60,000 ms.
NANOS_PER_MS = 50_000_000 / 60_000


def usage(seconds: Any) -> bytes:
    return orjson.dumps(
        {"type": "session.usage.updated", "event_id": "evt_u", "usage": {"seconds": seconds}}
    )


def closed(seconds: float, reason: str = "close_requested") -> bytes:
    return orjson.dumps(
        {
            "type": "session.closed",
            "event_id": "evt_c",
            "reason": reason,
            "session": {
                "id": "live_123",
                "expires_at": 1,
                "model": "gpt-live-1",
                "status": "active",
            },
            "usage": {"seconds": seconds},
        }
    )


def settings_env(**extra: str) -> dict[str, str]:
    return {"OPENAI_API_KEY": "sk-x", **extra}


def live_session(catalog: Catalog | None = None, model: str = "gpt-live-1") -> RelaySession:
    catalog = catalog or Catalog(load_settings(None, settings_env()))
    return RelaySession(
        session_id="rs_1",
        key_id="key_1",
        route=catalog.resolve(model),
        catalog=catalog,
        opened_at=0.0,
        opened_mono=100.0,
        max_seconds=3600,
        intent="live",
        live=LiveMeter(),
    )


def core(**kw: Any) -> RelayCore:
    catalog = kw.pop("catalog", None)
    return RelayCore(live_session(catalog), lambda: 1234.0, opened_mono=100.0, setup=START, **kw)


def started(c: RelayCore) -> RelayCore:
    assert c.start() == (SendUpstream(START.encode()),)
    assert c.upstream_text(STARTED) is None
    return c


def committed_record(c: RelayCore, frame: bytes) -> UsageRecord:
    acts = c.upstream_text(frame)
    assert acts is not None
    (commit,) = acts
    assert isinstance(commit, Commit) and commit.frame == frame.decode()
    # Durable before forwarded (the same Commit as response.done).
    assert c.committed(True) == [SendClient(frame)]
    return commit.record


def test_snapshots_are_cumulative_and_billed_as_deltas_to_the_nano_dollar() -> None:
    c = started(core())
    first = committed_record(c, usage(61.2))
    second = committed_record(c, usage(90.001))
    assert (first.usage.kind, first.usage.audio_ms, first.ref) == ("live", 61_200, "live_123")
    assert (first.model, first.price_key, first.unit) == ("gpt-live-1", "gpt-live-1", "minute")
    assert first.provider_nanos == 51_000_000  # 61.2 / 60 x $0.05
    assert second.usage.audio_ms == 28_801
    assert second.provider_nanos == round(28_801 * NANOS_PER_MS) == 24_000_833
    # The same total again adds nothing: no record, the frame passes untouched.
    assert c.upstream_text(usage(90.001)) is None
    final = committed_record(c, closed(128.4))
    assert final.usage.audio_ms == 128_400 - 90_001
    session = c.session
    assert session.totals.audio_ms == 128_400
    assert session.provider_nanos == round(128_400 * NANOS_PER_MS)
    assert session.live is not None and session.live.confirmed


def test_a_total_that_goes_down_is_never_refunded_and_unreadable_usage_is_flagged() -> None:
    c = started(core())
    committed_record(c, usage(30))
    assert c.upstream_text(usage(20)) is None
    flagged = committed_record(c, usage("lots"))
    assert (flagged.review, flagged.usage.audio_ms, flagged.provider_nanos) == (
        "unreadable_usage",
        0,
        0,
    )
    assert c.session.live is not None and c.session.live.billed_ms == 30_000


def test_a_client_close_asks_the_upstream_to_close_and_waits_for_the_final_total() -> None:
    c = started(core())
    committed_record(c, usage(10))
    assert c.client_closed(1000, "bye") == (SendUpstream(SESSION_CLOSE.encode()),)
    assert c.open  # waiting for session.closed
    # Nothing reaches the client any more; the audio still flowing is dropped.
    assert c.upstream_text(AUDIO_DOWN) == ()
    acts = list(c.upstream_text(closed(12.5)) or ())
    assert [type(a) for a in acts] == [Record, CloseUpstream, Ended]
    rec = acts[0]
    assert isinstance(rec, Record) and rec.record.usage.audio_ms == 2_500
    assert acts[1] == CloseUpstream(1000, "bye")
    assert not c.open
    assert (c.session.close_code, c.session.closed_by) == (1000, "client")
    assert c.finish() == ()  # confirmed: nothing flagged


def test_no_answer_within_the_grace_closes_the_upstream_and_flags_the_record() -> None:
    c = started(core(close_grace=5.0))
    committed_record(c, usage(10))
    assert c.client_lost() == (SendUpstream(SESSION_CLOSE.encode()),)
    assert c.tick(200.0) == ()  # the grace starts at the first tick
    # The pump's timer is armed for the grace's end, not for a tick every second.
    assert c.expires_in(200.0) == 5.0
    assert c.expires_in(204.5) == 0.5
    assert c.tick(204.9) == ()
    assert c.tick(205.0) == (CloseUpstream(1001, "client disconnected"), Ended())
    (rec,) = c.finish()
    assert isinstance(rec, Record)
    r = rec.record
    assert (r.review, r.usage.kind, r.usage.audio_ms, r.provider_nanos, r.ref) == (
        "unconfirmed_usage",
        "live",
        0,
        0,
        "live_123",
    )
    # Billed to the last snapshot.
    assert c.session.totals.audio_ms == 10_000
    assert c.finish() == ()  # once


def snapshot(seconds: int, active: int | None = None, paused: int | None = None) -> bytes:
    usage: dict[str, int] = {"seconds": seconds}
    if active is not None and paused is not None:
        usage |= {"active_seconds": active, "paused_seconds": paused}
    event = {"type": "session.usage.updated", "event_id": "evt_s", "usage": usage}
    SessionUsageUpdatedEvent.model_validate(event)  # the SDK's shape
    return orjson.dumps(event)


def live_11(tmp_path: Any, row: str = "", model: str = "gpt-live-1.1") -> RelayCore:
    env = settings_env()
    if row:
        cfg = tmp_path / "rtgate.toml"
        cfg.write_text(row)
        env["RTGATE_CONFIG"] = str(cfg)
    session = live_session(Catalog(load_settings(None, env)), model)
    return started(RelayCore(session, lambda: 1.0, opened_mono=100.0, setup=START))


def test_standby_seconds_are_billed_at_the_standby_rate(tmp_path: Any) -> None:
    """An audit's find: ``paused_seconds``, the standby time eligible WebRTC sessions report
    apart (SDK ``SessionUsage``), was billed at the active rate: $0.05 a minute, not
    gpt-live-1.1's $0.02."""
    c = live_11(tmp_path)
    # 60 s active, 540 s standby: 60 x $0.05 / 60 + 540 x $0.02 / 60 = $0.23.
    first = committed_record(c, snapshot(600, 60, 540))
    assert (first.usage.audio_ms, first.provider_nanos) == (600_000, 230_000_000)
    # The next minute, half of each: $0.025 + $0.01.
    second = committed_record(c, snapshot(660, 90, 570))
    assert (second.usage.audio_ms, second.provider_nanos) == (60_000, 35_000_000)
    # A snapshot with no breakdown is all active time.
    third = committed_record(c, snapshot(720))
    assert third.provider_nanos == 50_000_000
    assert c.session.provider_nanos == 315_000_000


def test_standby_seconds_of_a_row_with_no_standby_rate_are_billed_at_its_rate(
    tmp_path: Any,
) -> None:
    c = live_11(tmp_path, model="gpt-live-1")  # its row has no standby rate
    assert committed_record(c, snapshot(600, 60, 540)).provider_nanos == 500_000_000
    # An operator's row sets its own; one merged over the built-in row keeps the built-in.
    c = live_11(tmp_path, '[prices."gpt-live-1.1"]\nrate = "0.06"\nstandby_rate = "0.03"\n')
    assert committed_record(c, snapshot(600, 60, 540)).provider_nanos == 330_000_000
    c = live_11(tmp_path, '[prices."gpt-live-1.1"]\nrate = "0.06"\n')
    assert committed_record(c, snapshot(600, 60, 540)).provider_nanos == 240_000_000


def test_an_upstream_that_dies_first_bills_its_last_snapshot_flagged_unconfirmed() -> None:
    c = started(core())
    committed_record(c, usage(42))
    acts = c.upstream_lost()
    assert [type(a) for a in acts] == [SendClient, CloseClient, Ended]
    assert orjson.loads(acts[0].data)["error"]["code"] == "upstream_unavailable"  # type: ignore[union-attr]
    (rec,) = c.finish()
    assert isinstance(rec, Record) and rec.record.review == "unconfirmed_usage"
    assert c.session.totals.audio_ms == 42_000


def test_a_sideband_that_never_heard_the_start_is_flagged_unconfirmed_too() -> None:
    """An audit's find: a SIP call's sideband need not hear ``session.started``; its usage
    was billed, but a provider that died before ``session.closed`` left no flag to review."""
    c = RelayCore(live_session(), lambda: 1.0, client=False, opened_mono=100.0)
    acts = c.upstream_text(usage(42))
    assert acts is not None and isinstance(acts[0], Commit)
    assert c.committed(True) == []  # no client to forward it to
    c.upstream_lost()
    (rec,) = c.finish()
    assert isinstance(rec, Record) and rec.record.review == "unconfirmed_usage"
    assert c.session.totals.audio_ms == 42_000


def test_an_upstream_that_dies_while_closing_ends_it_unconfirmed() -> None:
    c = started(core())
    committed_record(c, usage(5))
    assert c.client_closed(1000, "") == (SendUpstream(SESSION_CLOSE.encode()),)
    assert c.upstream_lost() == (Ended(),)
    (rec,) = c.finish()
    assert isinstance(rec, Record) and rec.record.review == "unconfirmed_usage"


def test_a_session_the_provider_never_started_owes_nothing() -> None:
    c = core()
    c.start()
    assert [type(a) for a in c.upstream_closed(1008, "invalid_request_error.x")] == [
        CloseClient,
        Ended,
    ]
    assert c.finish() == ()


def test_a_closed_session_upstream_is_closed_at_once() -> None:
    c = started(core())
    committed_record(c, closed(3.0, "expired"))
    assert c.client_closed(1000, "") == (CloseUpstream(1000, ""), Ended())
    assert c.finish() == ()


def test_a_budget_crossed_at_a_snapshot_ends_with_insufficient_quota_and_the_final_total() -> None:
    c = started(core(budget=True))
    frame = usage(60)
    acts = c.upstream_text(frame)
    assert acts is not None and [type(a) for a in acts] == [Commit]
    assert c.committed(True) == [SendClient(frame), CheckBudget()]
    # Frames behind the check wait for it.
    assert c.upstream_text(AUDIO_DOWN) == ()
    out = list(c.budget_checked(QuotaExceeded("Budget exceeded.")))
    assert [type(a) for a in out] == [Refused, SendClient, CloseClient, SendUpstream]
    err = ErrorEvent.model_validate_json(out[1].data)  # type: ignore[union-attr]
    assert (err.error.type, err.error.code) == ("insufficient_quota", "insufficient_quota")
    assert out[2] == CloseClient(3000, "insufficient_quota.insufficient_quota")
    assert out[3] == SendUpstream(SESSION_CLOSE.encode())
    acts2 = list(c.upstream_text(closed(61.5)) or ())
    assert [type(a) for a in acts2] == [Record, CloseUpstream, Ended]
    assert acts2[0].record.usage.audio_ms == 1_500  # type: ignore[union-attr]


def test_an_operator_close_and_a_shutdown_end_gracefully_too() -> None:
    c = started(core())
    out = c.terminate(ShuttingDown("The gateway is shutting down."), "gateway")
    assert [type(a) for a in out] == [SendClient, CloseClient, SendUpstream]
    assert c.terminate(ShuttingDown("again")) == ()  # already ending


def test_expiry_sends_session_close_and_no_tick_storm_follows() -> None:
    catalog = Catalog(load_settings(None, settings_env()))
    session = live_session(catalog)
    session.deadline = 110.0
    c = RelayCore(session, lambda: 0.0, opened_mono=100.0, setup=START)
    started(c)
    out = c.tick(110.0)
    assert [type(a) for a in out] == [SendClient, CloseClient, SendUpstream]
    assert orjson.loads(out[0].data)["error"]["code"] == "session_expired"  # type: ignore[union-attr]
    # The session's own deadline is past; the timer's next moment is the grace's end, not now
    # again and again.
    assert c.expires_in(110.0) == 5.0  # RelayCore's default close_grace


def test_backend_tokens_of_a_model_with_no_row_are_recorded_unpriced() -> None:
    c = started(core())
    event = {
        "type": "response.event",
        "event_id": "evt_9",
        "delegation_id": "item_delegation_123",
        "event": {
            "type": "response.completed",
            "response": {
                "id": "resp_1",
                "usage": {
                    "input_tokens": 812,
                    "input_tokens_details": {"cached_tokens": 12},
                    "output_tokens": 64,
                    "total_tokens": 876,
                },
            },
        },
    }
    rec = committed_record(c, orjson.dumps(event))
    u = rec.usage
    assert (u.kind, u.text_in, u.text_in_cached, u.text_out) == ("backend", 812, 12, 64)
    # The snapshot names no model: the session's delegation does. No row for it: unpriced.
    assert (rec.model, rec.priced, rec.ref) == ("gpt-backend", False, "resp_1")
    # Nested events that carry no usage pass untouched.
    delta = {"type": "response.event", "event": {"type": "response.output_text.delta"}}
    assert c.upstream_text(orjson.dumps(delta)) is None


def test_backend_usage_held_behind_a_snapshots_commit_is_recorded_when_the_client_leaves() -> None:
    """An audit's find: a backend response's tokens, held behind a snapshot's commit, were
    dropped unrecorded when the client left meanwhile."""
    c = started(core())
    backend = {
        "type": "response.event",
        "event": {
            "type": "response.completed",
            "response": {"id": "resp_b", "usage": {"input_tokens": 50_000, "output_tokens": 2}},
        },
    }
    acts = c.upstream_text(usage(30))
    assert acts is not None and [type(a) for a in acts] == [Commit]
    assert c.upstream_text(orjson.dumps(backend)) == ()  # held behind it
    acts = c.client_closed(1000, "bye")
    records = [a.record for a in acts if isinstance(a, Record)]
    assert [(r.usage.kind, r.ref) for r in records] == [("backend", "resp_b")]
    assert acts[-1] == SendUpstream(SESSION_CLOSE.encode())  # and the final total is asked for


def test_backend_tokens_priced_by_the_models_own_row(tmp_path: Any) -> None:
    cfg = tmp_path / "rtgate.toml"
    cfg.write_text('[prices.gpt-backend]\ntext_in = "2"\ntext_out = "8"\n')
    catalog = Catalog(load_settings(None, settings_env(RTGATE_CONFIG=str(cfg))))
    c = started(core(catalog=catalog))
    event = {
        "type": "response.event",
        "event": {
            "type": "response.completed",
            "response": {
                "id": "resp_2",
                "model": "gpt-backend-2026-01-01",
                "usage": {"input_tokens": 1000, "output_tokens": 100},
            },
        },
    }
    rec = committed_record(c, orjson.dumps(event))
    # 1,000 x $2 / 1M + 100 x $8 / 1M = $0.0028
    assert (rec.model, rec.price_key, rec.provider_nanos) == (
        "gpt-backend-2026-01-01",
        "gpt-backend",
        2_800_000,
    )


def decision(usage: Any, *, model: str = "gpt-decider", event_id: str = "evt_d1") -> bytes:
    """A delegation's Decision API result (the SDK's ``openai.types.live.DecisionEvent``)."""
    return orjson.dumps(
        {
            "type": "decision.event",
            "event_id": event_id,
            "delegation_id": "dlg_1",
            "event": {
                "type": "decision.completed",
                "decision": {"answers": [], "model": model, "usage": usage},
            },
        }
    )


def test_a_decisions_tokens_are_billed_by_its_models_row(tmp_path: Any) -> None:
    """An audit's find: a delegation's or transcript trigger's Decision API call
    (``decision.event``) was relayed unread, its tokens never billed."""
    cfg = tmp_path / "rtgate.toml"
    cfg.write_text('[prices.gpt-decider]\ntext_in = "2"\ntext_cached = "0.5"\ntext_out = "8"\n')
    catalog = Catalog(load_settings(None, settings_env(RTGATE_CONFIG=str(cfg))))
    c = started(core(catalog=catalog))
    usage = {
        "input_tokens": 1000,
        "input_tokens_details": {"cached_tokens": 200, "cache_write_tokens": 0},
        "output_tokens": 100,
        "output_tokens_details": {"reasoning_tokens": 40},
        "total_tokens": 1100,
    }
    DecisionEvent.model_validate_json(decision(usage))  # the sample is the SDK's
    rec = committed_record(c, decision(usage))
    u = rec.usage
    assert (u.kind, u.text_in, u.text_in_cached, u.text_out) == ("backend", 1000, 200, 100)
    # 800 x $2 + 200 x $0.5 + 100 x $8, per 1M = $0.0025
    assert (rec.model, rec.price_key, rec.ref, rec.provider_nanos) == (
        "gpt-decider",
        "gpt-decider",
        "evt_d1",
        2_500_000,
    )
    # Another model's decision with no row is recorded, unpriced; one with no usage is
    # recorded for review; other decision events are relayed unread.
    rec = committed_record(c, decision({"input_tokens": 5, "output_tokens": 1}, model="x"))
    assert (rec.model, rec.priced, rec.usage.text_in) == ("x", False, 5)
    assert committed_record(c, decision(None)).review == "unreadable_usage"
    other = b'{"type":"decision.event","event_id":"e","event":{"type":"decision.failed"}}'
    assert c.upstream_text(other) is None


def test_a_second_session_start_is_refused_in_lives_envelope_and_dropped() -> None:
    c = started(core())
    again = b'{"type":"session.start","event_id":"evt_2","session":{"model":"gpt-live-1.1"}}'
    acts = c.client_text(again)
    assert acts is not None
    assert [type(a) for a in acts] == [SendClient, Refused]
    err = ErrorEvent.model_validate_json(acts[0].data)  # type: ignore[union-attr]
    assert (err.error.code, err.error.client_event_id) == ("session_already_started", "evt_2")
    # Audio and other events pass untouched.
    assert c.client_text(AUDIO_UP) is None
    assert c.client_text(b'{"type":"session.input_audio.mute"}') is None
    assert c.upstream_text(AUDIO_DOWN) is None


def test_the_first_event_names_the_model() -> None:
    start = read_session_start(START)
    assert (start.model, start.event_id) == ("gpt-live-1", "evt_start_1")
    assert start.frame_for("gpt-live-1") is START  # byte for byte
    moved = orjson.loads(start.frame_for("my-deployment"))
    assert moved["session"]["model"] == "my-deployment"
    assert moved["session"]["delegation"] == {
        "type": "responses",
        "responses": {"model": "gpt-backend"},
    }
    assert moved["event_id"] == "evt_start_1"


@pytest.mark.parametrize(
    ("frame", "param"),
    [
        (None, None),
        (b"\x00", None),
        ("not json", "type"),
        ('{"type":"session.update","session":{}}', "type"),
        ('{"type":"session.start"}', "session"),
        ('{"type":"session.start","session":{"model":7}}', "session.model"),
        ('{"type":"session.start","session":{}}', "session.model"),
    ],
)
def test_a_missing_or_foreign_first_event_is_refused(
    frame: str | bytes | None, param: str | None
) -> None:
    with pytest.raises(InvalidSessionStart) as exc:
        read_session_start(frame)
    assert exc.value.param == param
    assert exc.value.close_code == 1008


def test_a_client_that_asked_to_close_is_not_asked_for_again() -> None:
    c = started(core())
    assert c.client_text(b'{"type":"session.close","event_id":"evt_c"}') == [
        SendUpstream(b'{"type":"session.close","event_id":"evt_c"}')
    ]
    # It closed its socket before session.closed came: the wait goes on, nothing sent twice.
    assert c.client_closed(1000, "") == ()
    assert c.open
    acts = list(c.upstream_text(closed(4.0)) or ())
    assert [type(a) for a in acts] == [Record, CloseUpstream, Ended]


def test_the_member_sets_are_the_sdks() -> None:
    """What the gateway forwards of each Live object is what the official SDK types it with, so
    an SDK that gains a field fails here before a client is refused it."""

    def members(t: Any) -> set[str]:
        return set(typing.get_type_hints(t))

    def required(t: Any) -> set[str]:
        hints = typing.get_type_hints(t, include_extras=True)
        return {k for k, v in hints.items() if typing.get_origin(v) is typing.Required}

    assert members(SessionConfigParam) == f.LIVE
    assert members(SessionStartEventParam) == f.LIVE_START
    assert members(MediaSessionConfigParam) == f.LIVE_MEDIA
    assert members(LiveCreateParams) == f.LIVE_CREATE
    assert members(live_create_params.Transport) == f.LIVE_TRANSPORT
    assert members(session_accept_params.Session) == f.LIVE_ACCEPT
    assert members(session_accept_params.SessionAcceptParams) == f.LIVE_ACCEPT_BODY
    # The controls a Live session and a Realtime call share.
    for reject in (SessionRejectParams, CallRejectParams):
        assert set(CONTROLS["reject"]) == members(reject)
    for refer in (SessionReferParams, CallReferParams):
        assert set(CONTROLS["refer"]) == members(refer)
    for params, names in (
        (CallReferParams, REQUIRED["refer"]),
        (SessionReferParams, LIVE_REQUIRED["refer"]),
        (CallRejectParams, REQUIRED.get("reject", ())),
        (SessionRejectParams, LIVE_REQUIRED["reject"]),
    ):
        assert required(params) == set(names), params


@pytest.mark.parametrize(
    ("row", "priced", "nanos"),
    [
        ("", True, 0),  # no [prices.local]: everything the engine serves is free, and priced
        ('unit = "minute"\nrate = "0.06"\n', True, 61_200_000),  # $0.06 a minute, 61.2 s
        # A row that prices tokens only: a Live session's seconds are unpriced, and logged,
        # not billed $0 in silence (a newcomer's find).
        ('text_in = "1"\naudio_in = "2"\n', False, 0),
    ],
)
def test_a_live_session_on_the_engine_is_priced_by_the_local_rows_units(
    tmp_path: Path, row: str, priced: bool, nanos: int
) -> None:
    cfg = tmp_path / "rtgate.toml"
    cfg.write_text(f"[prices.local]\n{row}" if row else "")
    catalog = Catalog(load_settings(cfg, {}))  # no provider key: the local engine
    assert catalog.resolve("gpt-live-1").upstream.kind == "local"
    rec = committed_record(started(core(catalog=catalog)), usage(61.2))
    assert (rec.priced, rec.price_key, rec.charged_nanos) == (priced, "local", nanos)


def test_the_providers_words_on_our_key_are_replaced_in_lives_envelope() -> None:
    """The provider quotes part of the gateway's key back: the client gets the gateway's words,
    in Live's envelope, still naming the client event it answered."""
    c = started(core())
    frame = orjson.dumps(
        {
            "type": "error",
            "event_id": "evt_e",
            "error": {
                "type": "invalid_request_error",
                "code": "invalid_api_key",
                "message": "Incorrect API key provided: sk-pr...WXYZ.",
                "param": None,
                "client_event_id": "evt_client_7",
            },
        }
    )
    acts = c.upstream_text(frame)
    assert acts is not None
    sent = [a for a in acts if isinstance(a, SendClient)]
    assert sent and b"WXYZ" not in sent[0].data
    err = ErrorEvent.model_validate_json(sent[0].data)
    assert (err.error.code, err.error.client_event_id) == ("upstream_auth_failed", "evt_client_7")


def test_a_record_at_cost_0_is_said_to_lack_what_it_lacks() -> None:
    """An operator's find: a Live session on a local row with token rates alone was logged as
    a model with no price at all."""
    from rtgate.relay.live import unpriced

    def record(price_key: str, usage: Usage) -> UsageRecord:
        return UsageRecord("rs_1", "k", "gpt-live-1", price_key, usage, 0, 0, 1.0, None)

    seconds, tokens = Usage(kind="live", audio_ms=1000), Usage(text_in=5)
    assert unpriced(record("local", seconds), True) == (
        "price row 'local' has no per-second or per-minute rate for model 'gpt-live-1'"
    )
    assert unpriced(record("whisper-1", tokens), True) == (
        "price row 'whisper-1' has no token rates for model 'gpt-live-1'"
    )
    # No row matched: the record still names the family it looked for (a review's find).
    assert unpriced(record("gpt-live-1", tokens), False) == "no price for model 'gpt-live-1'"
