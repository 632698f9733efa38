"""``FirstMessage``: a client's first message read before its session has a pump, what follows
held in order and replayed to the pump, reading paused past the hold's bound and resumed only if
the pump does not hold it; a client gone first; a message that never comes."""

from __future__ import annotations

from typing import Any

from rtgate.relay import first_message
from rtgate.relay.first_message import FirstMessage, FirstMessageLeg
from rtgate.relay.legs import Leg
from tests.test_relay_pump import FakeLeg


class Recorder:
    """LegEvents that record what they get, in order; ``pause_on`` pauses ``leg`` on a frame."""

    def __init__(self, leg: Leg | None = None, pause_on: str | None = None) -> None:
        self.got: list[Any] = []
        self.leg = leg
        self.pause_on = pause_on

    def on_text(self, data: bytes) -> None:
        self.got.append(data.decode())
        if self.leg is not None and data.decode() == self.pause_on:
            self.leg.pause_reading()

    def on_binary(self, data: bytes) -> None:
        self.got.append(data)

    def on_heard(self) -> None:
        self.got.append("heard")

    def on_close(self, code: int, reason: str) -> None:
        self.got.append(("close", code, reason))

    def on_lost(self) -> None:
        self.got.append("lost")

    def on_drain(self) -> None:
        self.got.append("drain")


async def test_the_first_message_is_answered_and_the_rest_replayed_in_order() -> None:
    leg = FakeLeg()
    first = FirstMessage(leg)
    assert leg.events is first
    leg.events.on_text(b"start")
    leg.events.on_text(b"a")
    leg.events.on_binary(b"b")
    assert await first.read(1.0) == "start"
    assert not first.gone
    wrapped = FirstMessageLeg(leg, first)
    pump = Recorder()
    wrapped.start(pump)
    assert pump.got == ["a", b"b"]
    leg.events.on_text(b"c")
    leg.events.on_heard()
    leg.events.on_close(1000, "bye")
    assert pump.got == ["a", b"b", "c", "heard", ("close", 1000, "bye")]
    # Everything else is the leg's own.
    wrapped.send_text(b"x")
    wrapped.close(1000, "")
    assert (leg.sent, leg.closes, wrapped.closed) == ([b"x"], [(1000, "")], True)


async def test_a_client_gone_before_it_said_anything() -> None:
    leg = FakeLeg()
    first = FirstMessage(leg)
    assert leg.events is not None
    leg.events.on_close(1000, "")
    assert await first.read(1.0) is None
    assert first.gone


async def test_no_message_within_the_deadline() -> None:
    first = FirstMessage(FakeLeg())
    assert await first.read(0.01) is None
    assert not first.gone


async def test_reading_pauses_past_the_bound_and_the_pumps_own_pause_holds(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(first_message, "HOLD_BYTES", 10)
    leg = FakeLeg()
    first = FirstMessage(leg)
    assert leg.events is not None
    leg.events.on_text(b"start")
    assert await first.read(1.0) == "start"
    leg.events.on_text(b"0123456789")
    assert not leg.paused
    leg.events.on_text(b"more")
    assert leg.paused
    wrapped = FirstMessageLeg(leg, first)
    # The pump pauses reading as it takes a held frame: the hold's resume must not undo it.
    wrapped.start(Recorder(wrapped, pause_on="more"))
    assert leg.paused
    wrapped.resume_reading()
    assert not leg.paused

    leg2 = FakeLeg()
    first2 = FirstMessage(leg2)
    assert leg2.events is not None
    for frame in (b"start", b"0123456789", b"more"):
        leg2.events.on_text(frame)
    assert leg2.paused
    FirstMessageLeg(leg2, first2).start(Recorder())
    assert not leg2.paused
