"""``GeminiLeg`` between a recording pump and scripted connections: what it reports, where it
sends, and how a resumption after ``goAway`` succeeds or fails. No sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from rtgate.errors import UpstreamError
from rtgate.relay.gemini_leg import GeminiLeg, translator_for
from rtgate.relay.legs import LegEvents


class ScriptedLeg:
    """A Gemini connection the test speaks for."""

    def __init__(self) -> None:
        self.closed = False
        self.backed_up = False
        self.sent: list[dict[str, Any]] = []
        self.closes: list[tuple[int, str]] = []
        self.events: LegEvents | None = None

    def start(self, events: LegEvents) -> None:
        self.events = events

    def send_text(self, data: bytes) -> None:
        self.sent.append(orjson.loads(data))

    def send_bytes(self, data: bytes) -> None: ...
    def ping(self) -> None: ...

    def close(self, code: int, reason: str) -> None:
        self.closed = True
        self.closes.append((code, reason))

    def sever(self) -> None:
        self.closed = True

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

    def quiet_seconds(self) -> float | None:
        return None

    async def wait_closed(self) -> None: ...

    # -- the test speaks for Gemini --
    def says(self, msg: dict[str, Any]) -> None:
        assert self.events is not None
        self.events.on_binary(orjson.dumps(msg))

    def ends(self, code: int, reason: str = "") -> None:
        self.closed = True
        assert self.events is not None
        self.events.on_close(code, reason)


class Pump:
    """What the leg reports, in order."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self.lost = False

    def on_text(self, data: bytes) -> None:
        self.frames.append(orjson.loads(data))

    def on_binary(self, data: bytes) -> None: ...
    def on_heard(self) -> None: ...

    def on_close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def on_lost(self) -> None:
        self.lost = True

    def on_drain(self) -> None: ...

    def types(self) -> list[str]:
        return [f["type"] for f in self.frames]


def text_turn(leg: GeminiLeg) -> None:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
    leg.send_text(orjson.dumps({"type": "conversation.item.create", "item": item}))


async def live(
    redial_to: list[ScriptedLeg | Exception],
) -> tuple[GeminiLeg, ScriptedLeg, Pump]:
    first = ScriptedLeg()

    async def redial() -> Any:
        nxt = redial_to.pop(0)
        if isinstance(nxt, Exception):
            raise nxt
        return nxt

    leg = GeminiLeg(first, translator_for("gemini-live", "gemini-3.8-live"), redial)
    # The setup update the core sends before starting the leg is answered once it starts.
    leg.send_text(b'{"type":"session.update","session":{"instructions":"hi"}}')
    pump = Pump()
    leg.start(pump)
    assert pump.types() == ["session.created", "session.updated"]
    text_turn(leg)
    first.says({"setupComplete": {}})
    first.says({"sessionResumptionUpdate": {"newHandle": "h1", "resumable": True}})
    return leg, first, pump


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_go_away_switches_to_a_resumed_connection() -> None:
    second = ScriptedLeg()
    leg, first, pump = await live([second])
    first.says({"goAway": {"timeLeft": "5s"}})
    await settle()
    assert second.sent[0]["setup"]["sessionResumption"] == {"handle": "h1", "transparent": True}
    text_turn(leg)  # held for the new connection
    second.says({"setupComplete": {}})
    assert first.closes == [(1000, "resumed")]
    # Both turns replayed: Gemini reported neither consumed.
    assert [m["clientContent"]["turns"][0]["parts"] for m in second.sent[1:]] == [
        [{"text": "hi"}],
        [{"text": "hi"}],
    ]
    first.ends(1000)  # the old connection's end is not the session's
    assert pump.closed is None and leg.resumptions == 1
    assert "error" not in pump.types()


async def test_a_refused_resumption_leaves_the_old_connection_to_end_the_session() -> None:
    second = ScriptedLeg()
    _leg, first, pump = await live([second])
    first.says({"goAway": {"timeLeft": "5s"}})
    await settle()
    second.ends(1007, "Request contains an invalid argument")
    assert pump.closed is None
    first.ends(1000, "")
    assert pump.closed == (1000, "")


async def test_a_server_fault_is_resumed_and_a_failed_resumption_loses_the_session() -> None:
    third = ScriptedLeg()
    leg, first, pump = await live([third, UpstreamError("unreachable")])
    first.ends(1011, "Internal error occurred")
    await settle()
    third.says({"setupComplete": {}})
    assert leg.resumptions == 1
    assert pump.closed is None and not pump.lost
    third.ends(1011, "Deadline expired before operation could complete")
    await settle()
    assert pump.lost  # upstream_unavailable from the core


async def test_a_failed_dial_after_the_old_connection_closed_loses_the_session() -> None:
    leg, first, pump = await live([UpstreamError("unreachable")])
    first.says({"serverContent": {"modelTurn": {"parts": [{"text": "x"}]}}})
    first.says({"goAway": {"timeLeft": "1s"}})
    first.ends(1000)  # mid-response: resumed after the fact, the response dropped
    await settle()
    assert pump.lost
    assert leg.closed


async def test_usage_gemini_reported_is_flushed_when_the_gateway_closes_the_leg() -> None:
    """An audit's find: usage Gemini reported after its turn's end, with no response open,
    was lost when the gateway ended the session; now the close meters it first, once."""
    leg, first, pump = await live([])
    first.says({"serverContent": {"turnComplete": True}})
    turn = [f for f in pump.frames if f["type"] == "response.done"]
    meta = {"promptTokenCount": 30, "responseTokenCount": 7, "totalTokenCount": 37}
    first.says({"usageMetadata": meta})
    before = len(pump.frames)
    leg.close(1000, "bye")
    late = [f for f in pump.frames[before:] if f["type"] == "response.done"]
    assert len(late) == 1 and late[0]["response"]["usage"]["total_tokens"] == 37, (turn, late)
    assert first.closes == [(1000, "bye")]
    leg.close(1000, "bye")  # a second close flushes nothing more
    assert len([f for f in pump.frames if f["type"] == "response.done"]) == len(turn) + 1


async def test_usage_gemini_reported_is_flushed_when_the_leg_is_severed() -> None:
    """Gemini stopped answering pings: the cut leg meters what it reported first."""
    leg, first, pump = await live([])
    first.says({"serverContent": {"turnComplete": True}})
    before = len(pump.frames)
    first.says({"usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 3}})
    leg.sever()
    late = [f for f in pump.frames[before:] if f["type"] == "response.done"]
    assert [f["response"]["usage"]["total_tokens"] for f in late] == [3]
    assert first.closed
