"""The pump between two fake legs: what the core decides is done, in order, without awaiting a
frame; async effects feed their outcome back; backpressure pauses the other leg; the teardown
hangs a call up before it closes the socket."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from rtgate.errors import GatewayError, QuotaExceeded, ShuttingDown
from rtgate.metering.record import UsageRecord
from rtgate.protocol.relay import (
    HOLD_LIMIT,
    RelayCore,
)
from rtgate.protocol.transcript import TranscriptEntry
from rtgate.relay.legs import Leg, LegEvents
from rtgate.relay.pump import Pump
from rtgate.relay.ticker import Ticker
from tests.test_relay_core import AUDIO_DOWN, AUDIO_UP, TEXT_DELTA, done, session


class FakeLeg:
    """A leg that records what the pump asks of it; ``events`` is what it reports to."""

    def __init__(self) -> None:
        self.closed = False
        self.events: LegEvents | None = None
        self.sent: list[bytes] = []
        #: Each sent frame's kind, in order: "text" or "binary".
        self.kinds: list[str] = []
        self.closes: list[tuple[int, str]] = []
        self.pings = self.severed = 0
        self.paused = False
        self.backed_up = False
        self.log: list[str] = []
        self._gone = asyncio.Event()

    def start(self, events: LegEvents) -> None:
        self.events = events

    def send_text(self, data: bytes) -> None:
        if not self.closed:
            self.sent.append(data)
            self.kinds.append("text")

    def send_bytes(self, data: bytes) -> None:
        if not self.closed:
            self.sent.append(data)
            self.kinds.append("binary")

    def ping(self) -> None:
        self.pings += 1

    def close(self, code: int, reason: str) -> None:
        self.closed = True
        self.closes.append((code, reason))
        self.log.append("close")
        self._gone.set()

    def sever(self) -> None:
        self.closed = True
        self.severed += 1
        self._gone.set()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def quiet_seconds(self) -> float | None:
        return None

    async def wait_closed(self) -> None:
        await self._gone.wait()


class FakeEffects:
    def __init__(self, log: list[str] | None = None) -> None:
        self.commits: list[tuple[UsageRecord, asyncio.Future[bool]]] = []
        self.refusal: GatewayError | None = None
        self.transcripts: list[TranscriptEntry] = []
        self.refusals: list[str] = []
        self.hangups = 0
        self.log = log if log is not None else []

    def commit(self, record: UsageRecord, frame: str) -> asyncio.Future[bool]:
        outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.commits.append((record, outcome))
        return outcome

    def budget_refusal(self) -> asyncio.Future[GatewayError | None]:
        answer: asyncio.Future[GatewayError | None] = asyncio.get_running_loop().create_future()
        answer.set_result(self.refusal)
        return answer

    def keep_transcript(self, entries: list[TranscriptEntry]) -> None:
        self.transcripts.extend(entries)

    def refused(self, code: str) -> None:
        self.refusals.append(code)

    async def hangup(self) -> None:
        self.hangups += 1
        self.log.append("hangup")


class Clock:
    def __init__(self) -> None:
        self.mono = 100.0

    def monotonic(self) -> float:
        return self.mono


def rig(
    *,
    client: bool = True,
    budget: bool = False,
    max_seconds: float = 60,
    tick_every: float = 0.01,
    **core_kw: Any,
) -> tuple[Pump, FakeLeg, FakeLeg, FakeEffects, Clock]:
    clock = Clock()
    up = FakeLeg()
    effects = FakeEffects(up.log)
    core = RelayCore(
        session(max_seconds=max_seconds),
        lambda: 1.0,
        client=client,
        budget=budget,
        opened_mono=100.0,
        **core_kw,
    )
    cl = FakeLeg() if client else None
    pump = Pump(core, cl, up, effects, monotonic=clock.monotonic, ticker=Ticker(tick_every))
    return pump, cl or FakeLeg(), up, effects, clock


def events(leg: FakeLeg) -> LegEvents:
    assert leg.events is not None
    return leg.events


async def started(pump: Pump) -> asyncio.Task[None]:
    task = asyncio.create_task(pump.run())
    await asyncio.sleep(0)
    return task


def test_fake_leg_is_a_leg() -> None:
    leg: Leg = FakeLeg()
    assert not leg.closed


async def test_frames_pass_both_ways_at_once_and_are_counted() -> None:
    pump, client, up, _, _ = rig()
    task = await started(pump)
    events(up).on_text(AUDIO_DOWN)
    events(up).on_binary(b"\x01\x02")
    events(client).on_text(AUDIO_UP)
    assert client.sent == [AUDIO_DOWN, b"\x01\x02"]
    assert client.kinds == ["text", "binary"]
    assert up.sent == [AUDIO_UP]
    assert (pump.frames_down, pump.frames_up) == (2, 1)
    events(client).on_close(1000, "bye")
    await task
    assert up.closes == [(1000, "bye")]
    assert (pump.session.close_code, pump.session.closed_by) == (1000, "client")
    # Flushed at the end.
    assert pump.frames_down == 0


async def test_the_setup_frame_goes_up_before_any_client_frame() -> None:
    setup = '{"type":"session.update","session":{"type":"realtime"}}'
    pump, client, up, _, _ = rig(setup=setup)
    task = await started(pump)
    events(client).on_text(AUDIO_UP)
    assert up.sent == [setup.encode(), AUDIO_UP]
    events(up).on_close(1000, "")
    await task


async def test_a_metered_frame_reaches_the_client_only_once_committed() -> None:
    pump, client, up, effects, _ = rig()
    task = await started(pump)
    frame = done()
    events(up).on_text(frame)
    events(up).on_text(AUDIO_DOWN)
    events(client).on_text(AUDIO_UP)
    await asyncio.sleep(0)
    assert client.sent == [] and up.sent == [AUDIO_UP]
    ((record, outcome),) = effects.commits
    assert record.ref == "resp_1"
    outcome.set_result(True)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert client.sent == [frame, AUDIO_DOWN]
    events(up).on_close(1000, "")
    await task


async def test_a_failed_commit_ends_the_session_and_drops_the_frame() -> None:
    pump, client, up, effects, _ = rig()
    task = await started(pump)
    frame = done()
    events(up).on_text(frame)
    await asyncio.sleep(0)
    effects.commits[0][1].set_result(False)
    await task
    (error,) = client.sent
    assert orjson.loads(error)["error"]["code"] == "usage_unavailable"
    assert client.closes == [(1011, "server_error.usage_unavailable")]
    assert up.closes == [(1011, "server_error.usage_unavailable")]


async def test_a_crossed_budget_ends_the_session_after_delivering_the_frame() -> None:
    pump, client, up, effects, _ = rig(budget=True)
    effects.refusal = QuotaExceeded("Over budget.")
    task = await started(pump)
    frame = done()
    events(up).on_text(frame)
    await asyncio.sleep(0)
    effects.commits[0][1].set_result(True)
    await task
    assert client.sent[0] == frame
    assert orjson.loads(client.sent[1])["error"]["code"] == "insufficient_quota"
    assert effects.refusals == ["insufficient_quota"]
    assert client.closes == [(3000, "insufficient_quota.insufficient_quota")]


TRANSCRIBED = orjson.dumps(
    {
        "type": "conversation.item.input_audio_transcription.completed",
        "item_id": "item_2",
        "transcript": "hi",
        "usage": {"type": "tokens", "input_tokens": 50, "output_tokens": 5},
    }
)


async def test_usage_held_behind_a_budget_check_reaches_the_ledger_when_the_budget_ends_it() -> (
    None
):
    """An audit's find, through the pump: the turn's transcription, right behind its
    ``response.done``, never reached the ledger when the budget check ended the session."""
    pump, client, up, effects, _ = rig(budget=True)
    effects.refusal = QuotaExceeded("Over budget.")
    task = await started(pump)
    events(up).on_text(done("resp_1"))
    events(up).on_text(TRANSCRIBED)
    await asyncio.sleep(0)
    effects.commits[0][1].set_result(True)
    await task
    assert [r.ref for r, _ in effects.commits] == ["resp_1", "item_2"]
    assert TRANSCRIBED not in client.sent  # billed, not delivered after the refusal


async def test_usage_held_behind_a_commit_reaches_the_ledger_when_the_client_leaves() -> None:
    pump, client, up, effects, _ = rig()
    task = await started(pump)
    events(up).on_text(TRANSCRIBED)
    events(up).on_text(done("resp_9", 100_000))
    events(client).on_close(1000, "bye")
    await asyncio.sleep(0)
    effects.commits[0][1].set_result(True)
    await task
    assert [r.ref for r, _ in effects.commits] == ["item_2", "resp_9"]
    assert up.closes == [(1000, "bye")]


async def test_a_client_that_stops_reading_pauses_the_upstream_until_it_drains() -> None:
    pump, client, up, _, _ = rig()
    task = await started(pump)
    events(up).on_text(AUDIO_DOWN)
    assert not up.paused
    client.backed_up = True
    events(up).on_text(AUDIO_DOWN)
    assert up.paused
    client.backed_up = False
    events(client).on_drain()
    assert not up.paused
    # And the other way round.
    up.backed_up = True
    events(client).on_text(AUDIO_UP)
    assert client.paused
    up.backed_up = False
    events(up).on_drain()
    assert not client.paused
    events(up).on_close(1000, "")
    await task


async def test_held_frames_past_the_bound_pause_the_upstream_until_committed() -> None:
    pump, client, up, effects, _ = rig()
    task = await started(pump)
    events(up).on_text(done())
    for _ in range(HOLD_LIMIT + 1):
        events(up).on_text(TEXT_DELTA)
    assert up.paused
    # A drained client does not resume what the core holds.
    events(client).on_drain()
    assert up.paused
    await asyncio.sleep(0)
    effects.commits[0][1].set_result(True)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not up.paused
    assert len(client.sent) == HOLD_LIMIT + 2
    events(up).on_close(1000, "")
    await task


async def test_the_timer_expires_the_session() -> None:
    pump, client, up, _, clock = rig(max_seconds=30)
    task = await started(pump)
    clock.mono = 131.0
    async with asyncio.timeout(2):
        await task
    assert orjson.loads(client.sent[0])["error"]["code"] == "session_expired"
    assert client.closes[0][0] == 1001 and up.closes[0][0] == 1001


async def test_the_session_ends_at_its_deadline_not_at_the_next_beat() -> None:
    # The ticker beats once a minute here: only the pump's own timer at the deadline (0.05 s
    # after the start, by the fake clock's reading then) can end the session in time.
    pump, client, _up, _, clock = rig(max_seconds=0.05, tick_every=60)
    task = await started(pump)
    clock.mono = 100.05
    async with asyncio.timeout(1):
        await task
    assert orjson.loads(client.sent[0])["error"]["code"] == "session_expired"


async def test_a_deadline_timer_that_fires_early_is_armed_again() -> None:
    pump, client, _up, _, clock = rig(max_seconds=0.05, tick_every=60)
    task = await started(pump)
    await asyncio.sleep(0.08)
    # The fake clock still reads the start: nothing expired, and the timer waits again.
    assert not task.done() and pump.core.open
    clock.mono = 100.05
    async with asyncio.timeout(1):
        await task
    assert orjson.loads(client.sent[0])["error"]["code"] == "session_expired"


async def test_terminate_ends_a_running_session_and_waits_for_its_teardown() -> None:
    pump, client, _up, _, _ = rig()
    task = await started(pump)
    await pump.terminate(ShuttingDown("Bye."), "gateway")
    assert task.done()
    assert orjson.loads(client.sent[0])["error"]["code"] == "server_shutting_down"
    assert pump.session.closed_by == "gateway"


async def test_a_session_terminated_before_it_runs_tears_down_at_once() -> None:
    pump, client, up, _, _ = rig()
    await pump.terminate(ShuttingDown("Bye."), "gateway")
    await pump.run()
    assert client.events is None and up.events is None
    assert client.closes[0][0] == 1001 and up.closes[0][0] == 1001


async def test_a_bug_in_the_relay_still_ends_the_session_with_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: RelayCore, data: str) -> None:
        raise ValueError("bug")

    monkeypatch.setattr(RelayCore, "client_text", broken)
    pump, client, _up, _, _ = rig()
    task = await started(pump)
    events(client).on_text(b'{"type":"response.create"}')
    async with asyncio.timeout(5):
        await task
    assert orjson.loads(client.sent[-1])["error"]["code"] == "server_error"
    assert client.closes == [(1011, "server_error.server_error")]


async def test_a_sideband_hangs_its_call_up_before_closing_its_socket() -> None:
    pump, _, up, effects, _ = rig(client=False)
    task = await started(pump)
    events(up).on_text(AUDIO_DOWN)
    await pump.terminate(ShuttingDown("Bye."), "gateway")
    await task
    assert effects.hangups == 1
    assert up.log == ["hangup", "close"]
    assert up.closes == [(1001, "server_error.server_shutting_down")]


async def test_a_sideband_that_drops_hangs_its_call_up() -> None:
    pump, _, up, effects, _ = rig(client=False)
    task = await started(pump)
    events(up).on_lost()
    await task
    assert effects.hangups == 1


async def test_a_call_the_provider_ended_is_not_hung_up() -> None:
    pump, _, up, effects, _ = rig(client=False)
    task = await started(pump)
    events(up).on_close(1000, "")
    await task
    assert effects.hangups == 0
