"""The admin API's reports for the console: the overview, keys' spend and last use, and one
session with its turns. Views and handlers; the routes are declared in ``rtgate.api.admin``.

A session's turns are its usage records in the order they were metered, each with the kept
transcript lines (``keep_transcripts``) that came in before it: a transcription record with the
user's words, a response record with the assistant's words and tool calls. Both clocks are the
gateway's, so the order is the order the gateway saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from rtgate.api.live import live_everywhere
from rtgate.api.views import (
    Day,
    SessionRow,
    Timestamp,
    Tokens,
    TranscriptEntryView,
    Usd,
    View,
    session_row,
    timestamp,
    transcript_entry,
)
from rtgate.errors import GatewayError
from rtgate.metering.cost import usd_str
from rtgate.metering.record import UsageRecord, utc_day
from rtgate.protocol.transcript import TranscriptEntry

if TYPE_CHECKING:
    from rtgate.api.operation import Call, Reply

#: The overview's chart covers this many UTC days, today included.
CHART_DAYS = 30
_DAY_S = 86400


class NoSuchSession(GatewayError):
    http_status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class DayView(View, frozen=True, kw_only=True):
    """Sessions started and spend metered on one UTC day (or a longer period, from ``day``)."""

    day: Day
    sessions: int
    cost_usd: Usd
    provider_cost_usd: Usd


class CloseView(View, frozen=True, kw_only=True):
    """Sessions that ended with this close code and reason; both null: still open (or lost
    with their instance)."""

    code: int | None
    reason: str | None
    sessions: int


class OverviewView(View, frozen=True, kw_only=True):
    #: Sessions relayed now, by every instance sharing this one's Redis (this one's alone
    #: without ``redis_url``).
    live_sessions: int
    today: DayView
    #: This UTC month so far: ``day`` is its first day.
    month: DayView
    #: The last ``CHART_DAYS`` UTC days, oldest first, days without activity included.
    days: list[DayView]
    #: How the sessions started since ``closes_since`` ended, the commonest first (at most 20).
    closes_since: Day
    closes: list[CloseView]


class KeyActivityView(View, frozen=True, kw_only=True):
    """A key's charged spend against its budgets, and when it was last used."""

    key_id: str
    spend_usd_day: Usd
    spend_usd_month: Usd
    spend_usd_total: Usd
    sessions: int
    last_used_at: Timestamp | None


class TurnView(View, frozen=True, kw_only=True):
    """One metered event of a session and the kept transcript lines that led to it."""

    #: ``resp_...`` (a response) or the transcribed ``item_...``.
    ref: str | None
    #: ``response``, ``transcription`` or ``translation``.
    kind: str
    model: str
    at: Timestamp
    tokens: Tokens
    cost_usd: Usd
    provider_cost_usd: Usd
    #: Why its usage wants review, or null when it was read in full.
    review: str | None
    #: ``provider`` (read from its event) or ``gateway`` (counted by rtgate where the provider
    #: reports no usage: a translation's input audio).
    metered_by: str = "provider"
    #: Seconds from the user's last words reaching the gateway (their transcript or text) to
    #: this response's end; null without a kept transcript, and for transcriptions.
    reply_s: float | None
    lines: list[TranscriptEntryView]


class SessionDetail(SessionRow, frozen=True, kw_only=True):
    turns: list[TurnView]
    #: Kept lines after the last metered event (a reply cut short, a session still live).
    after: list[TranscriptEntryView]


def _day_view(day: str, sessions: int, provider: int, charged: int) -> DayView:
    return DayView(
        day=day, sessions=sessions, cost_usd=usd_str(charged), provider_cost_usd=usd_str(provider)
    )


def _days_ago(now: float, days: int) -> float:
    """The start (unix seconds) of the UTC day ``days`` before ``now``'s."""
    return now - now % _DAY_S - days * _DAY_S


async def overview(call: Call[None, None]) -> Reply:
    gw = call.gw
    now = gw.clock.now()
    today = utc_day(now)
    # The chart's 30 days and this month, whichever reaches further back.
    since = min(_days_ago(now, CHART_DAYS - 1), _days_ago(now, int(today[8:]) - 1))
    found = await gw.store.overview(utc_day(since), since)
    by_day = {d.day: d for d in found.days}
    chart = []
    for back in range(CHART_DAYS - 1, -1, -1):
        day = utc_day(_days_ago(now, back))
        d = by_day.get(day)
        chart.append(
            _day_view(day, *((d.sessions, d.provider_nanos, d.charged_nanos) if d else (0, 0, 0)))
        )
    month_start = today[:8] + "01"
    month = [d for d in found.days if d.day >= month_start]
    live = await live_everywhere(gw)
    return OverviewView(
        live_sessions=len(live),
        today=chart[-1],
        month=_day_view(
            month_start,
            sum(d.sessions for d in month),
            sum(d.provider_nanos for d in month),
            sum(d.charged_nanos for d in month),
        ),
        days=chart,
        closes_since=utc_day(since),
        closes=[CloseView(code=c.code, reason=c.reason, sessions=c.sessions) for c in found.closes],
    )


async def key_activity(call: Call[None, None]) -> Reply:
    gw = call.gw
    today = utc_day(gw.clock.now())
    return [
        KeyActivityView(
            key_id=a.key_id,
            spend_usd_day=usd_str(a.spend[0]),
            spend_usd_month=usd_str(a.spend[1]),
            spend_usd_total=usd_str(a.spend[2]),
            sessions=a.sessions,
            last_used_at=timestamp(a.last_used_at),
        )
        for a in await gw.store.key_activity(today, today[:8] + "01")
    ]


def turns(
    records: Sequence[UsageRecord], entries: Sequence[TranscriptEntry]
) -> tuple[list[TurnView], list[TranscriptEntryView]]:
    """Each record with the lines seen up to it; the lines after the last record."""
    words = [e for e in entries if e.role != "usage"]  # a record carries the usage itself
    out: list[TurnView] = []
    i = 0
    user_at: float | None = None
    for r in records:
        lines = []
        while i < len(words) and words[i].created_at <= r.created_at:
            if words[i].role == "user":
                user_at = words[i].created_at
            lines.append(transcript_entry(words[i]))
            i += 1
        reply_s = None
        if r.usage.kind == "response" and user_at is not None:
            reply_s, user_at = round(r.created_at - user_at, 3), None
        out.append(
            TurnView(
                ref=r.ref,
                kind=r.usage.kind,
                model=r.model,
                at=timestamp(r.created_at) or "",
                tokens=Tokens.of(r.usage),
                cost_usd=usd_str(r.charged_nanos),
                provider_cost_usd=usd_str(r.provider_nanos),
                review=r.review,
                metered_by=r.metered_by,
                reply_s=reply_s,
                lines=lines,
            )
        )
    return out, [transcript_entry(e) for e in words[i:]]


async def session_detail(call: Call[None, None]) -> Reply:
    session_id, store = call.path("session_id"), call.gw.store
    found = await store.recent_sessions(1, session_id=session_id)
    if not found:
        raise NoSuchSession(f"No session with id {session_id[:64]!r}.", param="session_id")
    records = await store.session_usage(session_id)
    entries = await store.session_transcript(session_id)
    metered, after = turns(records, entries)
    return SessionDetail(
        **msgspec.structs.asdict(session_row(found[0])), turns=metered, after=after
    )
