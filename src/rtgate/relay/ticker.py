"""One timer for every live session of the process: the keepalive's beat and the frame counts.

A timer per session cost each session a scheduled callback every ``every`` seconds (500 sessions:
500 callbacks a second, each re-armed, each flushing four counters under their locks). One
``Ticker`` per gateway ticks the registered sessions from one timer instead, a slot of them per
beat (``Ticker``); each session's core still makes its own decisions (``RelayCore.tick``:
expiry, then one keepalive beat per leg), and the frame counts of a slot reach the metrics in
one flush.

A session's deadline is not left to the beat, which would end it up to ``every`` late: its pump
arms one timer at the deadline itself, once per session (``Pump.run``).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from rtgate.metrics import Metrics


class Ticked(Protocol):
    """A session the ticker beats (``relay/pump.py``'s ``Pump``)."""

    def tick(self) -> None:
        """Its core's tick (expiry and the keepalive); never raises."""

    def take_counts(self) -> tuple[int, int, int, int]:
        """Frames up, frames down, bytes up, bytes down since the last call."""


class Ticker:
    """Beats every ``add``-ed session once each ``every`` seconds while any is registered.

    The sessions are spread over ``slots`` slots (a timing wheel), one slot beaten each
    ``every / slots`` seconds: 1,000 sessions ticked in one callback would hold every frame
    behind them for several ms once a second (a p99 spike), a tenth of them at a time for a
    tenth as long."""

    def __init__(self, every: float, metrics: Metrics | None = None, *, slots: int = 10) -> None:
        self.every = every
        self._metrics = metrics
        #: Each slot's sessions, insertion-ordered (ticked in the order they opened).
        self._slots: list[dict[Ticked, None]] = [{} for _ in range(slots)]
        #: Which slot each session is in.
        self._slot_of: dict[Ticked, int] = {}
        #: The slot the next beat ticks.
        self._hand = 0
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._slot_of)

    def add(self, ticked: Ticked) -> None:
        # The emptiest slot: slots stay even as sessions come and go.
        slot = min(range(len(self._slots)), key=lambda i: len(self._slots[i]))
        self._slots[slot][ticked] = None
        self._slot_of[ticked] = slot
        if self._timer is None:
            self._arm()

    def discard(self, ticked: Ticked) -> None:
        slot = self._slot_of.pop(ticked, None)
        if slot is not None:
            del self._slots[slot][ticked]
        if not self._slot_of and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        delay = self.every / len(self._slots)
        self._timer = asyncio.get_running_loop().call_later(delay, self._beat)

    def _beat(self) -> None:
        self._timer = None
        slot = self._slots[self._hand]
        self._hand = (self._hand + 1) % len(self._slots)
        up = down = bytes_up = bytes_down = 0
        # A copy: a tick may end its session, which leaves the ticker.
        for ticked in list(slot):
            ticked.tick()
            fu, fd, bu, bd = ticked.take_counts()
            up += fu
            down += fd
            bytes_up += bu
            bytes_down += bd
        if self._metrics is not None and (up or down):
            self._metrics.relayed(up, down, bytes_up, bytes_down)
        if self._slot_of:
            self._arm()
