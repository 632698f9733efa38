"""Time as a port, so expiry and duration caps are tested without sleeping."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


def rfc3339(t: float) -> str:
    """Unix seconds as an RFC 3339 UTC timestamp to the second (``2026-01-31T12:00:00Z``); the
    year keeps four digits (``strftime("%Y")`` drops the leading zeros of a year before 1000)."""
    return datetime.fromtimestamp(t, UTC).replace(tzinfo=None).isoformat("T", "seconds") + "Z"


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (for records and expiry)."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds (for durations and deadlines)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that only moves when told to; shipped beside the real one for tests."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._mono = 1000.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds
