"""The gateway's one timer for every live session (``relay/ticker.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from rtgate.metrics import Metrics
from rtgate.relay.ticker import Ticker
from tests.polling import until


class Session:
    def __init__(self, ticker: Ticker | None = None, counts: tuple[int, int, int, int] = (0,) * 4):
        self.ticks = 0
        self.counts = counts
        #: Leaves this ticker on its first tick (as a session its tick ended).
        self.leaves = ticker

    def tick(self) -> None:
        self.ticks += 1
        if self.leaves is not None:
            self.leaves.discard(self)

    def take_counts(self) -> tuple[int, int, int, int]:
        counts, self.counts = self.counts, (0, 0, 0, 0)
        return counts


def relayed(metrics: Metrics, direction: str) -> tuple[float, float]:
    frames = metrics.registry.get_sample_value("rtgate_frames_total", {"direction": direction})
    data = metrics.registry.get_sample_value("rtgate_bytes_total", {"direction": direction})
    return frames or 0.0, data or 0.0


async def test_one_beat_ticks_every_session_and_flushes_their_counts_together() -> None:
    metrics = Metrics()
    ticker = Ticker(0.01, metrics, slots=1)
    a, b = Session(counts=(2, 3, 200, 300)), Session(counts=(1, 0, 100, 0))
    ticker.add(a)
    ticker.add(b)
    await asyncio.sleep(0.015)
    assert (a.ticks, b.ticks) == (1, 1)
    assert relayed(metrics, "up") == (3, 300)
    assert relayed(metrics, "down") == (3, 300)
    await asyncio.sleep(0.01)
    assert (a.ticks, b.ticks) == (2, 2)
    ticker.discard(a)
    ticker.discard(b)


async def test_the_timer_stops_with_the_last_session_and_starts_with_the_next() -> None:
    ticker = Ticker(0.01, slots=1)
    first = Session(ticker)
    ticker.add(first)
    await asyncio.sleep(0.05)
    # It left on its first tick; with no session left nothing is scheduled.
    assert first.ticks == 1
    assert len(ticker) == 0
    assert ticker._timer is None
    later = Session()
    ticker.add(later)
    await asyncio.sleep(0.015)
    assert later.ticks == 1
    ticker.discard(later)
    assert ticker._timer is None


async def test_the_wheel_ticks_a_slot_per_beat_and_each_session_once_per_period() -> None:
    # Four sessions over two slots: a beat ticks two of them, never all four at once, and
    # each is ticked once per period.
    ticker = Ticker(0.1, slots=2)
    sessions = [Session() for _ in range(4)]
    for s in sessions:
        ticker.add(s)
    await beats_until(lambda: sum(s.ticks for s in sessions) >= 2)
    assert sorted(s.ticks for s in sessions) == [0, 0, 1, 1]
    await beats_until(lambda: all(s.ticks for s in sessions))
    assert [s.ticks for s in sessions] == [1, 1, 1, 1]
    # One leaves; the next comes into the emptier slot (the one it left), so each beat still
    # ticks two: the newcomer's first with the one session left in that slot.
    ticker.discard(sessions[0])
    newcomer = Session()
    ticker.add(newcomer)
    await beats_until(lambda: newcomer.ticks == 1)
    assert sorted(s.ticks for s in sessions[1:]) == [1, 1, 2]
    for s in [*sessions[1:], newcomer]:
        ticker.discard(s)
    assert ticker._timer is None


async def beats_until(check: Callable[[], bool]) -> None:
    """Wait beat by beat (a beat is a timer callback: one loop iteration sees its effect)."""
    await until(check, every=0.001)
