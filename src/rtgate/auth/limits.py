"""Live-session and session-rate limits per key, behind one small interface.

The in-process implementation is exact for one gateway process: asyncio runs one coroutine at a
time and ``acquire`` does not await between its check and its update, so a burst of parallel
connects cannot slip past the limit. Many instances share ``RedisSessionLimiter``
(``auth/redis_limits.py``), the same port over Redis; both refuse with the messages below.
"""

from __future__ import annotations

import math
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

    async def mint(self, key_id: str, per_minute: int, now: float) -> None:
        """Count a client secret minted by ``key_id`` or raise ``RateLimited`` (a sliding
        minute, like session starts)."""
        ...


def live_limit_reached(live: int, max_sessions: int) -> RateLimited:
    sessions = "live session" if live == 1 else "live sessions"
    return RateLimited(f"This key already has {live} {sessions}, its limit is {max_sessions}.")


def mint_rate_reached(per_minute: int, oldest_mint: float, now: float) -> RateLimited:
    wait = oldest_mint + WINDOW_S - now
    secrets = "client secret" if per_minute == 1 else "client secrets"
    return RateLimited(
        f"This key may mint {per_minute} {secrets} per minute; try again in {math.ceil(wait)} s.",
        retry_after=wait,
    )


def start_rate_reached(per_minute: int, oldest_start: float, now: float) -> RateLimited:
    wait = oldest_start + WINDOW_S - now
    sessions = "session" if per_minute == 1 else "sessions"
    return RateLimited(
        f"This key may open {per_minute} {sessions} per minute; try again in {math.ceil(wait)} s.",
        retry_after=wait,
    )


class LocalSessionLimiter:
    def __init__(self) -> None:
        self._live: dict[str, int] = {}
        self._starts: dict[str, deque[float]] = {}
        self._mints: dict[str, deque[float]] = {}

    async def acquire(
        self, key_id: str, max_sessions: int | None, per_minute: int | None, now: float
    ) -> None:
        live = self._live.get(key_id, 0)
        if max_sessions is not None and live >= max_sessions:
            raise live_limit_reached(live, max_sessions)
        starts = self._starts.setdefault(key_id, deque())
        while starts and starts[0] <= now - WINDOW_S:
            starts.popleft()
        if per_minute is not None and len(starts) >= per_minute:
            raise start_rate_reached(per_minute, starts[0], now)
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

    async def mint(self, key_id: str, per_minute: int, now: float) -> None:
        mints = self._mints.setdefault(key_id, deque())
        while mints and mints[0] <= now - WINDOW_S:
            mints.popleft()
        if len(mints) >= per_minute:
            raise mint_rate_reached(per_minute, mints[0], now)
        mints.append(now)
