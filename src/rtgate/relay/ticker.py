"""One timer for every live session of the process: the keepalive's beat and the frame counts.

A timer per session cost each session a scheduled callback every ``every`` seconds (500 sessions:
500 callbacks a second, each re-armed, each flushing four counters under their locks). One
``Ticker`` per gateway ticks every registered session in one callback instead; each session's
core still makes its own decisions (``RelayCore.tick``: expiry, then one keepalive beat per
leg), and the frame counts of all of them reach the metrics in one flush.

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
    """Beats every ``add``-ed session each ``every`` seconds while any is registered."""

    def __init__(self, every: float, metrics: Metrics | None = None) -> None:
        self.every = every
        self._metrics = metrics
        #: Insertion-ordered: sessions are ticked in the order they opened.
        self._ticked: dict[Ticked, None] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._ticked)

    def add(self, ticked: Ticked) -> None:
        self._ticked[ticked] = None
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.every, self._beat)

    def discard(self, ticked: Ticked) -> None:
        self._ticked.pop(ticked, None)
        if not self._ticked and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _beat(self) -> None:
        self._timer = None
        up = down = bytes_up = bytes_down = 0
        # A copy: a tick may end its session, which leaves the ticker.
        for ticked in list(self._ticked):
            ticked.tick()
            fu, fd, bu, bd = ticked.take_counts()
            up += fu
            down += fd
            bytes_up += bu
            bytes_down += bd
        if self._metrics is not None:
            self._metrics.relayed(up, down, bytes_up, bytes_down)
        if self._ticked:
            self._timer = asyncio.get_running_loop().call_later(self.every, self._beat)
