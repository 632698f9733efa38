"""The admin API's reports behind the console: sessions by page, one session with its turns,
the overview, keys' spend and last use, the catalog and upstream health."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson
import websockets

from rtgate.api.reports import turns
from rtgate.clock import ManualClock
from rtgate.config import Settings
from rtgate.metering.record import UsageRecord, utc_day
from rtgate.protocol.transcript import TranscriptEntry
from rtgate.protocol.usage import Usage
from rtgate.store.port import SessionClose, SessionOpen
from tests.conftest import TOKEN, RunningGateway, events_until
from tests.test_admin_api import (
    call,
    keys_with_usage,
    metered,
    open_session,
    until_no_live_sessions,
)
from tests.test_metrics import scrape


async def seed_sessions(gw: RunningGateway, key_id: str, n: int, start: float) -> list[str]:
    """``n`` closed sessions of ``key_id``, one a second from ``start``, one usage record each."""
    ids = [f"rs_seed{i:05d}" for i in range(n)]
    entries: list[Any] = []
    for i, sid in enumerate(ids):
        t = start + i
        entries.append(SessionOpen(sid, key_id, "gpt-realtime", "openai", None, t))
        entries.append(
            UsageRecord(sid, key_id, "gpt-realtime", "gpt-realtime", Usage(text_in=10), 40, 48, t)
        )
        entries.append(SessionClose(sid, t + 0.5, 1000 if i % 3 else 1011, "", "client"))
    await gw.store.write(entries)
    return ids


async def test_recent_sessions_page_by_page(admin: RunningGateway) -> None:
    key = (await call(admin, "POST", "/keys", body={"name": "pager"})).json()
    ids = await seed_sessions(admin, key["id"], 25, 1_700_000_000.0)
    newest_first = ids[::-1]
    seen: list[str] = []
    before: str | None = None
    while True:
        params = {"limit": "10", **({"before": before} if before else {})}
        page = (await call(admin, "GET", "/sessions", params=params)).json()
        if not page:
            break
        seen += [r["id"] for r in page]
        before = page[-1]["id"]
    assert seen == newest_first
    # Each row still carries its own usage, and only its own.
    first = (await call(admin, "GET", "/sessions", params={"limit": "1"})).json()[0]
    assert first["tokens"]["text_in"] == 10 and first["cost_usd"] == "0.000000048"
    unknown = await call(admin, "GET", "/sessions", params={"before": "rs_nope"})
    assert unknown.status == 200 and unknown.json() == []
    by_key = await call(
        admin, "GET", "/sessions", params={"key_id": key["id"], "before": ids[5], "limit": "3"}
    )
    assert [r["id"] for r in by_key.json()] == [ids[4], ids[3], ids[2]]


async def test_a_sessions_page_with_its_turns_and_transcript(admin: RunningGateway) -> None:
    key = (
        await call(admin, "POST", "/keys", body={"name": "scribe", "keep_transcripts": True})
    ).json()
    async with await open_session(admin, key["secret"]) as ws:
        await ws.send(
            '{"type":"conversation.item.create","item":{"type":"message",'
            '"role":"user","content":[{"type":"input_text","text":"note this"}]}}'
        )
        await ws.send('{"type":"response.create","response":{"output_modalities":["text"]}}')
        await events_until(ws, "response.done")
    await until_no_live_sessions(admin)
    (row,) = (await call(admin, "GET", "/sessions")).json()
    reply = await call(admin, "GET", f"/sessions/{row['id']}")
    assert reply.status == 200, reply.text
    detail = reply.json()
    assert {k: detail[k] for k in row} == row
    (turn,) = detail["turns"]
    assert turn["kind"] == "response" and turn["ref"]
    assert turn["tokens"]["text_out"] > 0 and Decimal(turn["cost_usd"]) > 0
    assert turn["cost_usd"] == row["cost_usd"]
    assert [(e["role"], e["text"]) for e in turn["lines"]] == [
        ("user", "note this"),
        ("assistant", "note this"),
    ]
    assert turn["reply_s"] is not None and turn["reply_s"] >= 0
    assert detail["after"] == []
    missing = await call(admin, "GET", "/sessions/rs_nope")
    assert missing.status == 404 and missing.error["param"] == "session_id"


def test_turns_take_the_lines_seen_before_each_record() -> None:
    def line(seq: int, at: float, role: str, text: str) -> TranscriptEntry:
        return TranscriptEntry("rs_1", "key_1", seq, at, role, "transcript", text)

    def record(at: float, kind: str, ref: str) -> UsageRecord:
        return UsageRecord(
            "rs_1",
            "key_1",
            "m",
            "m",
            Usage(kind=kind, audio_in=5),
            1,
            2,
            at,
            ref,  # type: ignore[arg-type]
        )

    lines = [
        line(1, 10.0, "user", "hello"),
        line(2, 11.5, "assistant", "hello"),
        line(3, 11.5, "usage", ""),
        line(4, 20.0, "user", "again"),
    ]
    records = [record(10.0, "transcription", "item_1"), record(11.5, "response", "resp_1")]
    metered, after = turns(records, lines)
    assert [[e.text for e in t.lines] for t in metered] == [["hello"], ["hello"]]
    assert [t.reply_s for t in metered] == [None, 1.5]
    assert [e.text for e in after] == ["again"]


async def test_the_overview_counts_today_this_month_and_close_codes(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any]
) -> None:
    # 2026-03-03 12:00 UTC: the chart's 30 days reach into February, the month starts on the 1st.
    now = 1_772_539_200.0
    assert utc_day(now) == "2026-03-03"
    clock = ManualClock(now)
    gw: RunningGateway = await start_gateway(make_settings(RTGATE_ADMIN_TOKEN=TOKEN), clock=clock)
    key = (await call(gw, "POST", "/keys", body={"name": "o"})).json()
    await seed_sessions(gw, key["id"], 3, now - 60)  # today
    await seed_sessions_named(gw, key["id"], "rs_feb", now - 5 * 86400)  # 2026-02-26
    await seed_sessions_named(gw, key["id"], "rs_old", now - 90 * 86400)  # outside both
    body = (await call(gw, "GET", "/overview")).json()
    assert body["live_sessions"] == 0
    assert body["today"] == {
        "day": "2026-03-03",
        "sessions": 3,
        "cost_usd": "0.000000144",
        "provider_cost_usd": "0.000000120",
    }
    assert body["month"]["day"] == "2026-03-01" and body["month"]["sessions"] == 3
    assert len(body["days"]) == 30 and body["days"][-1] == body["today"]
    assert body["days"][0]["day"] == "2026-02-02"
    feb = next(d for d in body["days"] if d["day"] == "2026-02-26")
    assert feb["sessions"] == 1 and feb["cost_usd"] == "0.000000048"
    assert sum(d["sessions"] for d in body["days"]) == 4
    assert body["closes_since"] == "2026-02-02"
    closes = [(c["code"], c["reason"], c["sessions"]) for c in body["closes"]]
    assert sorted(closes, key=str) == [
        (1000, "", 2),
        (1011, "", 1),
        (1011, "server_error.upstream_unavailable", 1),
    ]


async def seed_sessions_named(gw: RunningGateway, key_id: str, sid: str, t: float) -> None:
    await gw.store.write(
        [
            SessionOpen(sid, key_id, "gpt-realtime", "openai", None, t),
            UsageRecord(sid, key_id, "gpt-realtime", "gpt-realtime", Usage(text_in=10), 40, 48, t),
            SessionClose(sid, t + 1, 1011, "server_error.upstream_unavailable", "gateway"),
        ]
    )


async def test_key_activity_is_spend_and_last_use(admin: RunningGateway) -> None:
    alice, bob = await keys_with_usage(admin)
    idle = (await call(admin, "POST", "/keys", body={"name": "idle"})).json()
    rows = {r["key_id"]: r for r in (await call(admin, "GET", "/spend")).json()}
    assert set(rows) == {alice["id"], bob["id"]} and idle["id"] not in rows
    usage = {r["key_id"]: r for r in (await call(admin, "GET", "/usage")).json()}
    a = rows[alice["id"]]
    assert a["spend_usd_day"] == a["spend_usd_month"] == a["spend_usd_total"]
    assert a["spend_usd_total"] == usage[alice["id"]]["cost_usd"]
    assert a["sessions"] == 1 and a["last_used_at"]
    (recent,) = (await call(admin, "GET", "/sessions", params={"key_id": alice["id"]})).json()
    assert a["last_used_at"] == recent["started_at"]


async def test_models_with_prices_and_upstreams_with_health(admin: RunningGateway) -> None:
    models = {m["model"]: m for m in (await call(admin, "GET", "/models")).json()}
    gr = models["gpt-realtime"]
    assert (gr["upstream"], gr["upstream_kind"], gr["price_row"]) == (
        "openai",
        "openai",
        "gpt-realtime",
    )
    # $4 / 1M text in; cached input at the row's own rate.
    assert Decimal(gr["prices"]["text_in"]) == 4 and Decimal(gr["prices"]["audio_out"]) == 64
    assert Decimal(gr["prices"]["text_cached"]) < Decimal(gr["prices"]["text_in"])
    ups = {u["name"]: u for u in (await call(admin, "GET", "/upstreams")).json()}
    assert ups["openai"]["health"]["state"] == "unknown"
    assert "gpt-realtime" in ups["openai"]["models"]
    key = (await call(admin, "POST", "/keys", body={"name": "h"})).json()
    async with await open_session(admin, key["secret"]) as ws:
        await metered(ws, "resp_h", text_in=1)
    health = {u["name"]: u for u in (await call(admin, "GET", "/upstreams")).json()}["openai"]
    assert health["health"]["state"] == "ok" and health["health"]["dials"] == 1
    assert health["health"]["connect_ms_avg"] is not None


async def test_a_failed_dial_shows_the_upstream_failing(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any]
) -> None:
    gw: RunningGateway = await start_gateway(
        make_settings(RTGATE_ADMIN_TOKEN=TOKEN, RTGATE_OPENAI_BASE_URL="ws://127.0.0.1:9/v1")
    )
    secret = await gw.new_key()
    async with websockets.connect(
        f"{gw.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {secret}"},
    ) as ws:
        assert orjson.loads(await ws.recv())["error"]["code"] == "upstream_unavailable"
    (up,) = [u for u in (await call(gw, "GET", "/upstreams")).json() if u["name"] == "openai"]
    assert up["health"]["state"] == "failing" and up["health"]["failures"] == 1
    assert up["health"]["last_error"] == "ConnectionRefusedError"


async def test_a_transcription_session_is_listed_under_its_transcription_model(
    admin: RunningGateway,
) -> None:
    # A newcomer's find: it was listed under its route's model (none, or the realtime model
    # of its URL), and counted in rtgate_sessions_started_total{model=""}.
    secret = await admin.new_key()
    for query in ("intent=transcription", "model=gpt-realtime&intent=transcription"):
        async with websockets.connect(
            f"{admin.ws}/v1/realtime?{query}",
            additional_headers={"Authorization": f"Bearer {secret}"},
        ) as ws:
            assert orjson.loads(await ws.recv())["type"] == "session.created"
            (live,) = (await call(admin, "GET", "/sessions/live")).json()
            assert (live["model"], live["intent"]) == ("gpt-4o-mini-transcribe", "transcription")
        await until_no_live_sessions(admin)
    rows = (await call(admin, "GET", "/sessions")).json()
    assert [r["model"] for r in rows] == ["gpt-4o-mini-transcribe"] * 2
    started = {
        labels: value
        for (name, labels), value in (await scrape(admin)).items()
        if name == "rtgate_sessions_started_total"
    }
    assert started == {(("model", "gpt-4o-mini-transcribe"),): 2.0}
