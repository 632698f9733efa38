"""Live-session and session-rate limits per key, behind one small interface.

The in-process implementation is exact for one gateway process: asyncio runs one coroutine at a
time and ``acquire`` does not await between its check and its update, so a burst of parallel
connects cannot slip past the limit. Many instances need a shared implementation (Redis) of the
same ``SessionLimiter`` port.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from rtgate.errors import RateLimited

WINDOW_S = 60.0


class SessionLimiter(Protocol):
    async def acquire(
        self, key_id: str, max_sessions: int | None, per_minute: int | None, now: float
    ) -> None:
        """Count a new session for ``key_id`` or raise ``RateLimited``."""
        ...

    async def release(self, key_id: str) -> None: ...

    async def live(self, key_id: str) -> int: ...


class LocalSessionLimiter:
    def __init__(self) -> None:
        self._live: dict[str, int] = {}
        self._starts: dict[str, deque[float]] = {}

    async def acquire(
        self, key_id: str, max_sessions: int | None, per_minute: int | None, now: float
    ) -> None:
        live = self._live.get(key_id, 0)
        if max_sessions is not None and live >= max_sessions:
            raise RateLimited(
                f"This key already has {live} live sessions, its limit is {max_sessions}."
            )
        starts = self._starts.setdefault(key_id, deque())
        while starts and starts[0] <= now - WINDOW_S:
            starts.popleft()
        if per_minute is not None and len(starts) >= per_minute:
            raise RateLimited(
                f"This key may open {per_minute} sessions per minute; try again in "
                f"{starts[0] + WINDOW_S - now:.0f} s."
            )
        starts.append(now)
        self._live[key_id] = live + 1

    async def release(self, key_id: str) -> None:
        left = self._live.get(key_id, 0) - 1
        if left > 0:
            self._live[key_id] = left
        else:
            self._live.pop(key_id, None)

    async def live(self, key_id: str) -> int:
        return self._live.get(key_id, 0)
