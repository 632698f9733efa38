"""How each upstream answered this process's dials: the operator's view of upstream health.

The relay reports every dial (``relay/endpoint.py``): connected, with the time it took, or
failed, with why. Nothing is probed: an upstream nobody dialled yet is ``unknown``. Each process
keeps its own tally (with ``--workers``, the worker that answered the console's request).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

HealthState = Literal["ok", "failing", "unknown"]


@dataclass(slots=True)
class UpstreamDials:
    dials: int = 0
    failures: int = 0
    #: Unix seconds of the last dial that connected, and of the last that failed.
    last_ok_at: float | None = None
    last_failure_at: float | None = None
    #: Why the last failed dial failed (never a provider's words: a status or an error class).
    last_error: str | None = None
    connect_seconds: float = 0.0

    @property
    def state(self) -> HealthState:
        """``failing`` when the latest dial failed, ``ok`` when it connected."""
        if self.last_failure_at is None and self.last_ok_at is None:
            return "unknown"
        if self.last_ok_at is None:
            return "failing"
        if self.last_failure_at is not None and self.last_failure_at >= self.last_ok_at:
            return "failing"
        return "ok"

    @property
    def connect_ms_avg(self) -> float | None:
        # A dial refused after it connected is a failure too, so this is a floor: the average
        # over the dials that connected and were not refused after.
        connected = self.dials - self.failures
        return round(self.connect_seconds / connected * 1000, 1) if connected else None


class UpstreamHealth:
    def __init__(self) -> None:
        self._by_name: dict[str, UpstreamDials] = {}

    def _of(self, name: str) -> UpstreamDials:
        return self._by_name.setdefault(name, UpstreamDials())

    def connected(self, name: str, seconds: float, now: float) -> None:
        d = self._of(name)
        d.dials += 1
        d.connect_seconds += seconds
        d.last_ok_at = now

    def failed(self, name: str, error: str, now: float) -> None:
        self._of(name).dials += 1
        self.refused_after(name, error, now)

    def refused_after(self, name: str, error: str, now: float) -> None:
        """A dial that connected (counted already) whose session the upstream then refused:
        a failure, not a second dial."""
        d = self._of(name)
        d.failures += 1
        d.last_failure_at, d.last_error = now, error

    def of(self, name: str) -> UpstreamDials:
        """A copy of the tally (all zero for an upstream never dialled)."""
        d = self._by_name.get(name, UpstreamDials())
        return UpstreamDials(
            d.dials, d.failures, d.last_ok_at, d.last_failure_at, d.last_error, d.connect_seconds
        )
