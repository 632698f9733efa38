"""The Redis client every shared component uses (``redis_url``): session limits, the fleet.

redis-py's asyncio client takes one pooled connection per command in flight, and its default pool
raises ``MaxConnectionsError`` (a ``RedisError``) once 100 are busy: a burst of session starts
in one process would then read as a Redis outage, refusing keys with limits and admitting the
others uncounted (measured with ``bench/limits_bench.py``: 4,281 of 5,000 calls at 200 in flight).
A blocking pool makes a burst queue for a connection instead, for at most ``wait`` seconds; only
a Redis that cannot serve the queue in that time counts as unreachable.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

#: Connections per process: beyond a few dozen, a single-threaded Redis gains nothing.
MAX_CONNECTIONS = 64
#: How long a command may wait for a free connection before it counts as an outage.
POOL_WAIT_S = 2.0


def shared_redis(url: str, *, socket_timeout: float) -> Redis:
    """A client on ``url`` whose commands are bounded by ``socket_timeout`` (the URL's
    ``?socket_timeout=`` wins) and retried once, at once (re-dialling a pooled connection that
    died with a Redis restart). Raises ``ValueError`` for a malformed URL."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_WAIT_S,
        # First come, first served: the default LIFO hands a freed connection to the newest
        # waiter, which leaves the oldest waiting for the whole burst (a 100 ms p99 at 200).
        queue_class=asyncio.Queue,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 1),
    )
    # from_pool: the client owns the pool and closes it with itself.
    return Redis.from_pool(pool)
