"""The ``SessionLimiter`` port over Redis, shared by every gateway instance behind a balancer.

Keys (``P`` is the prefix, ``rtgate:`` by default; ``{key_id}`` is a Redis Cluster hash tag, so
both keys of one gateway key live in one slot and one script may touch them)::

    P{key_id}:leases   sorted set: lease id -> expiry      one lease per live session
    P{key_id}:starts   sorted set: lease id -> start time  session starts, the sliding 60 s window

**Exact under bursts.** ``acquire`` is one Lua script: write back this process's leases of the
key if they are in doubt (below), purge expired leases, check the live count, trim the window,
check the start count, then add the lease and the start. Redis runs a script alone, so parallel
connects through any number of instances cannot slip past a limit; Python never reads a count
and writes it back.

**Crash-safe.** A live session is a lease that expires ``lease_ttl`` (30 s) after it was last
written. Each process keeps its own lease ids per key and rewrites their expiry every
``lease_ttl / 3``; ``release(key_id)`` removes any one of them (leases of one key are
interchangeable within a process). A gateway that dies stops refreshing, so its leases lapse
within the TTL and the script purges them. Both keys get a Redis expiry on every write (twice
the TTL for leases, the window plus the TTL for starts): a key nobody uses disappears.

**Time.** Scores are the ``now`` callers pass (the gateway's ``Clock``), not Redis' ``TIME``, so
the window and the lease expiry are testable with a ``ManualClock`` and agree with the local
limiter. Instances must therefore keep their clocks close (NTP): a clock ``s`` seconds behind the
others shortens its leases by ``s`` as they see them, which is harmless while ``s`` stays well
under ``lease_ttl - refresh interval`` (20 s), and shifts the window by ``s``. Only the idle
expiry of whole keys runs on Redis' clock, with margins well beyond a lease.

**Redis unreachable.** Failing open would hand unlimited sessions to every key, across the fleet,
for as long as the outage lasts: exactly the runaway that ``max_sessions`` and
``sessions_per_minute`` exist to stop. So a key *with* either limit is refused
(``LimiterUnavailable``: 503, close 1011), while a key with neither limit is admitted uncounted,
since there is nothing to enforce (the failure is logged). ``release`` never raises: a lease it
cannot remove is no longer refreshed and lapses within the TTL.

**After an outage.** Nothing here ends a live session, but an outage longer than the TTL lets its
lease lapse, and a Redis restarted empty has lost it. Any command that meets an unreachable Redis
puts this process's leases *in doubt* until a refresh gets through, and meanwhile:

* an admission of a key with ``max_sessions`` sends this process's leases of that key, and the
  script writes them back before it counts: whichever command reaches Redis first, this process
  never admits a session beside its own (outside an outage the leases are not sent: the steady
  state costs nothing, and an admission costs 2-4 µs more per lease sent);
* the refresher, woken by the failure, tries every ``retry_every`` (1 s), not every 10 s, and
  writes every lease back at its first success; it logs the outage once, its end, and how many
  leases Redis no longer held.

What remains is across instances: until instance A's first refresh after Redis answers (within
``retry_every``, plus a command's timeout if one was under way), instance B's admissions see A's
lapsed sessions as ended, like a crashed instance's, and may admit in their place. The key is
then over its limit until enough sessions end; every instance refuses new ones meanwhile and none
is cut. An instance cut off alone is in that state for as long as it is cut off, and a Redis that
restarts empty without any command failing gives the window to every instance (this one too)
until its next refresh (10 s). Closing it would mean refusing every limited key for a grace
period after each outage and each fresh Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import Counter
from collections.abc import Sequence
from itertools import count
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from rtgate.auth.limits import (
    WINDOW_S,
    live_limit_reached,
    mint_rate_reached,
    start_rate_reached,
)
from rtgate.clock import Clock
from rtgate.errors import ConfigError, LimiterUnavailable
from rtgate.redis_pool import shared_redis

log = logging.getLogger("rtgate.limits")

LEASE_TTL_S = 30.0
#: While Redis fails, how often the refresher tries to write this process's leases back.
RETRY_S = 1.0

# KEYS[1] leases, KEYS[2] starts.  ARGV: now, lease id, lease ttl, max sessions (-1: none),
# sessions per minute (-1: none), window, idle expiry of the leases key and of the starts key (ms),
# then this instance's live leases of the key (sent with max sessions only).
# Returns {0, live} admitted, {1, live} over max_sessions, {2, oldest start} over the rate.
ACQUIRE = """
local now = tonumber(ARGV[1])
local lease = ARGV[2]
if redis.call('ZSCORE', KEYS[1], lease) then
  -- a retried call whose first attempt was counted: admitted once, not twice
  return {0, redis.call('ZCARD', KEYS[1])}
end
local expiry = now + tonumber(ARGV[3])
if #ARGV > 8 then
  -- this instance's sessions are live, whatever Redis holds: their leases may have lapsed or been
  -- lost while it was unreachable, and must count before anything is admitted beside them
  local held = {}
  for i = 9, #ARGV do
    held[#held + 1] = expiry
    held[#held + 1] = ARGV[i]
    if #held == 1000 or i == #ARGV then  -- ZADD in slices: Lua's unpack has a stack limit
      redis.call('ZADD', KEYS[1], unpack(held))
      held = {}
    end
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local live = redis.call('ZCARD', KEYS[1])
local max_sessions = tonumber(ARGV[4])
if max_sessions >= 0 and live >= max_sessions then
  return {1, live}
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[6]))
local per_minute = tonumber(ARGV[5])
if per_minute >= 0 and redis.call('ZCARD', KEYS[2]) >= per_minute then
  return {2, redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2] or ARGV[1]}
end
redis.call('ZADD', KEYS[1], expiry, lease)
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('ZADD', KEYS[2], now, lease)
redis.call('PEXPIRE', KEYS[2], ARGV[8])
return {0, live + 1}
"""


# KEYS[1] mints.  ARGV: now, member, per minute, window, idle expiry (ms).
# Returns {0} counted, {1, oldest mint} over the rate.
MINT = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[4]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return {1, redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2] or ARGV[1]}
end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {0}
"""


class RedisSessionLimiter:
    """Live sessions and session starts per key, counted in Redis for every instance at once.

    Owns its client (``close`` closes it) and the task that refreshes this process's leases
    (``start`` / ``stop``).
    """

    def __init__(
        self,
        redis: Redis,
        clock: Clock,
        *,
        prefix: str = "rtgate:",
        lease_ttl: float = LEASE_TTL_S,
        refresh_every: float | None = None,
        retry_every: float = RETRY_S,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self._prefix = prefix
        self._ttl = lease_ttl
        self._refresh_every = lease_ttl / 3 if refresh_every is None else refresh_every
        self._retry_every = retry_every
        self._acquire = redis.register_script(ACQUIRE)
        self._mint = redis.register_script(MINT)
        #: This process's leases per key (an ordered set: a dict with no values).
        self._leases: dict[str, dict[str, None]] = {}
        #: Sessions of unlimited keys admitted while Redis was unreachable; they hold no lease.
        self._uncounted: Counter[str] = Counter()
        self._instance = secrets.token_hex(6)
        self._serial = count(1)
        self._refresher: asyncio.Task[None] | None = None
        #: Set by any command that found Redis unreachable, cleared by the next refresh that gets
        #: through: meanwhile this process's leases may have lapsed in Redis, so admissions write
        #: them back first and the refresher tries every ``retry_every``.
        self._in_doubt = asyncio.Event()

    @classmethod
    async def connect(
        cls,
        url: str,
        clock: Clock,
        *,
        prefix: str = "rtgate:",
        socket_timeout: float = 1.0,
        lease_ttl: float = LEASE_TTL_S,
        refresh_every: float | None = None,
        retry_every: float = RETRY_S,
    ) -> RedisSessionLimiter:
        """Connect to ``url`` (the ``redis_url`` setting) and check Redis answers.

        Raises ``ConfigError`` naming ``redis_url`` when the URL is malformed or Redis does not
        answer, so a misconfigured gateway stops at start-up. The client is
        ``rtgate.redis_pool.shared_redis``: commands bounded by ``socket_timeout``, bursts queued
        for a pooled connection rather than refused.
        """
        try:
            redis = shared_redis(url, socket_timeout=socket_timeout)
        except ValueError as exc:
            raise ConfigError(f"redis_url: not a usable Redis URL: {exc}") from exc
        try:
            await redis.ping()
        except RedisError as exc:
            await redis.aclose()
            raise ConfigError(
                f"redis_url: Redis does not answer at start-up ({type(exc).__name__}: {exc}); "
                "unset redis_url (RTGATE_REDIS_URL) to count sessions per process instead"
            ) from exc
        return cls(
            redis,
            clock,
            prefix=prefix,
            lease_ttl=lease_ttl,
            refresh_every=refresh_every,
            retry_every=retry_every,
        )

    # -- the SessionLimiter port -----------------------------------------------------------------

    async def acquire(
        self, key_id: str, max_sessions: int | None, per_minute: int | None, now: float
    ) -> None:
        lease = f"{self._instance}-{next(self._serial)}"
        most = -1 if max_sessions is None else max_sessions
        rate = -1 if per_minute is None else per_minute
        # This process's live sessions of the key, written back before the count while their
        # leases may have lapsed (see ACQUIRE); only a live-session limit needs them.
        doubt = most >= 0 and self._in_doubt.is_set()
        mine = tuple(self._leases.get(key_id, ())) if doubt else ()
        args: list[str | float] = [
            now,
            lease,
            self._ttl,
            most,
            rate,
            WINDOW_S,
            self._ms(2 * self._ttl),
            self._ms(WINDOW_S + self._ttl),
            *mine,
        ]
        try:
            verdict: Sequence[Any] = await self._acquire(keys=self._keys(key_id), args=args)
        except RedisError as exc:
            self._in_doubt.set()
            if most < 0 and rate < 0:
                log.warning(
                    "Redis unreachable (%s): session admitted uncounted, its key has no limit",
                    type(exc).__name__,
                    extra={"key_id": key_id},
                )
                self._uncounted[key_id] += 1
                return
            log.warning(
                "Redis unreachable (%s): session refused, its key's limits cannot be checked",
                type(exc).__name__,
                extra={"key_id": key_id},
            )
            raise LimiterUnavailable(
                "The gateway cannot check this key's session limits right now (its shared "
                "counter store is unreachable); try again shortly."
            ) from exc
        await self._remove_released({key_id: mine})
        status = int(verdict[0])
        if status == 1:
            raise live_limit_reached(int(verdict[1]), most)
        if status == 2:
            raise start_rate_reached(rate, float(verdict[1]), now)
        self._leases.setdefault(key_id, {})[lease] = None

    async def release(self, key_id: str) -> None:
        if self._uncounted[key_id] > 0:
            self._uncounted[key_id] -= 1
            if not self._uncounted[key_id]:
                del self._uncounted[key_id]
            return
        held = self._leases.get(key_id)
        if not held:
            return
        lease, _ = held.popitem()
        if not held:
            del self._leases[key_id]
        try:
            await self._redis.zrem(self._leases_key(key_id), lease)
        except RedisError as exc:
            self._in_doubt.set()
            log.warning(
                "Redis unreachable (%s): a released lease lapses within %.0f s instead",
                type(exc).__name__,
                self._ttl,
                extra={"key_id": key_id},
            )

    async def live(self, key_id: str) -> int:
        """Live sessions of ``key_id`` across every instance (leases not yet expired)."""
        try:
            n = await self._redis.zcount(
                self._leases_key(key_id), f"({self._clock.now()!r}", "+inf"
            )
        except RedisError as exc:
            self._in_doubt.set()
            raise LimiterUnavailable("The shared session counters are unreachable.") from exc
        return int(n)

    async def mint(self, key_id: str, per_minute: int, now: float) -> None:
        """One window of client secrets minted per key, shared by every instance; a key with
        this limit is refused while Redis is unreachable, as for session limits."""
        member = f"{self._instance}-{next(self._serial)}"
        args: list[str | float] = [now, member, per_minute, WINDOW_S, self._ms(WINDOW_S)]
        try:
            verdict: Sequence[Any] = await self._mint(
                keys=[f"{self._prefix}{{{key_id}}}:mints"], args=args
            )
        except RedisError as exc:
            self._in_doubt.set()
            log.warning(
                "Redis unreachable (%s): client secret refused, its key's mint rate cannot be "
                "checked",
                type(exc).__name__,
                extra={"key_id": key_id},
            )
            raise LimiterUnavailable(
                "The gateway cannot check this key's minting rate right now (its shared counter "
                "store is unreachable); try again shortly."
            ) from exc
        if int(verdict[0]) == 1:
            raise mint_rate_reached(per_minute, float(verdict[1]), now)

    # -- leases ------------------------------------------------------------------------------------

    async def refresh(self) -> int | None:
        """Push the expiry of every lease this process holds to ``now + lease_ttl``, writing back
        any that Redis no longer holds. Returns how many it no longer held (lapsed during an
        outage, or lost by a restart; a lower bound when a release raced the refresh), or
        ``None`` when this process holds no lease and nothing was sent."""
        held = {key_id: tuple(leases) for key_id, leases in self._leases.items() if leases}
        if not held:
            return None
        expiry = self._clock.now() + self._ttl
        pipe = self._redis.pipeline(transaction=False)
        for key_id, leases in held.items():
            pipe.zadd(self._leases_key(key_id), dict.fromkeys(leases, expiry))
            pipe.pexpire(self._leases_key(key_id), self._ms(2 * self._ttl))
        written: list[Any] = await pipe.execute()
        added = sum(int(n) for n in written[0::2])  # ZADD answers how many members were new
        return max(0, added - await self._remove_released(held))

    async def _remove_released(self, sent: dict[str, tuple[str, ...]]) -> int:
        """Remove again, and count, the leases of ``sent`` released while a command writing them
        was in flight: it may have written them back after their ``ZREM``, and they would count
        for a whole TTL. Never raises: what it cannot remove lapses within the TTL."""
        stale = [
            (key_id, lease)
            for key_id, leases in sent.items()
            for lease in leases
            if lease not in self._leases.get(key_id, {})
        ]
        if stale:
            pipe = self._redis.pipeline(transaction=False)
            for key_id, lease in stale:
                pipe.zrem(self._leases_key(key_id), lease)
            try:
                await pipe.execute()
            except RedisError as exc:
                self._in_doubt.set()
                log.warning(
                    "Redis unreachable (%s): %d released leases lapse within %.0f s instead",
                    type(exc).__name__,
                    len(stale),
                    self._ttl,
                )
        return len(stale)

    def start(self) -> None:
        """Refresh this process's leases every ``lease_ttl / 3``, and every ``retry_every`` while
        Redis fails, until ``stop``."""
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_forever(), name="lease-refresher")

    async def stop(self) -> None:
        """Stop refreshing. The leases stay in Redis and lapse after the TTL, as on a crash."""
        task, self._refresher = self._refresher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        """Stop refreshing, give back the leases still held (best effort), close the client."""
        await self.stop()
        held, self._leases = self._leases, {}
        if held:
            pipe = self._redis.pipeline(transaction=False)
            for key_id, leases in held.items():
                pipe.zrem(self._leases_key(key_id), *leases)
            try:
                await pipe.execute()
            except RedisError as exc:
                log.warning("Redis unreachable at shutdown (%s): leases lapse", type(exc).__name__)
        await self._redis.aclose()

    async def _refresh_forever(self) -> None:
        failing = False  # an outage is logged once, its end too
        while True:
            if self._in_doubt.is_set():
                await asyncio.sleep(self._retry_every)
            else:
                # A command that fails meanwhile cuts the wait short.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._in_doubt.wait(), self._refresh_every)
            try:
                missing = await self.refresh()
            except RedisError as exc:
                self._in_doubt.set()
                if not failing:
                    failing = True
                    log.warning(
                        "Redis unreachable (%s): session leases not refreshed, retrying every %g s",
                        type(exc).__name__,
                        self._retry_every,
                    )
                continue
            self._in_doubt.clear()
            if missing is None:
                continue  # no lease held: none could lapse
            if failing:
                failing = False
                log.info("Redis reachable again: session leases refreshed")
            if missing:
                log.warning(
                    "%d session leases had lapsed or were lost in Redis and are written back; "
                    "other instances may have admitted sessions in their place meanwhile",
                    missing,
                )

    def _keys(self, key_id: str) -> list[str]:
        return [self._leases_key(key_id), f"{self._prefix}{{{key_id}}}:starts"]

    def _leases_key(self, key_id: str) -> str:
        return f"{self._prefix}{{{key_id}}}:leases"

    @staticmethod
    def _ms(seconds: float) -> int:
        return int(seconds * 1000)
