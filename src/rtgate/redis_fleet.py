"""The ``Fleet`` port over Redis: every instance sharing ``redis_url`` sees and ends the live
sessions of all of them.

Keys and channels (``P`` is the prefix, ``rtgate:`` by default; the limiter's keys all contain a
``{``, so these never collide with them)::

    P fleet:live:<instance>      hash: session id -> live view (JSON)   rewritten every second
    P fleet:instances            sorted set: instance -> last write, by the writer's clock
    P fleet:commands             channel: commands (``rtgate.fleet.Command``), heard by all
    P fleet:answers:<instance>   channel: the answers to that instance's commands

**The listing.** Every ``publish_every`` (1 s) an instance replaces its hash in one MULTI (DEL,
HSET, PEXPIRE ``listing_ttl``, 3 s): another instance lists its sessions at most about a second
late (a new session appears, tokens move and an ended session disappears on the next write), and
the sessions of an instance that died or lost Redis vanish within the TTL, by Redis' own clock.
The sorted set only finds the hashes without a SCAN: an instance with nothing to list leaves it,
and entries not rewritten for a minute are dropped by whoever writes next (so clocks need only
agree within that minute; nothing else here reads them).

**Commands.** Pub/sub delivers at most once, to whoever is subscribed at that instant. Every
instance, the asker included, answers each command on the asker's channel; the asker waits, at
most ``answer_within`` (5 s), until all the command reached have answered or, for a forced close,
one has closed the session. Another client subscribed to the command channel (a ``redis-cli``
watching ``P*``) is counted as reached and never answers: the asker then waits out the bound.

**Redis unreachable.** Nothing local depends on it: the admin API lists and ends this instance's
sessions as before. Listing others and asking them raise ``FleetUnavailable``; the writer and the
listener log the outage once, retry every second, and log the recovery. Commands published while
an instance's subscription was down are lost to it; its hash lapses meanwhile, so its sessions
are not listed either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import cast

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from rtgate.clock import Clock
from rtgate.fleet import (
    Answer,
    Answers,
    Command,
    FleetUnavailable,
    Op,
    SessionHolder,
    Tally,
    new_instance_id,
)
from rtgate.redis_pool import shared_redis

log = logging.getLogger("rtgate.fleet")

PUBLISH_EVERY_S = 1.0
LISTING_TTL_S = 3.0
ANSWER_WITHIN_S = 5.0
#: An instance in the index whose hash has not been rewritten for this long is dropped from it.
FORGET_AFTER_S = 60.0


class RedisFleet:
    """This instance among those sharing one Redis.

    Owns its client (``close`` closes it) and two tasks (``start``): the writer of this instance's
    listing and the listener that obeys commands and routes answers.
    """

    def __init__(
        self,
        redis: Redis,
        clock: Clock,
        *,
        prefix: str = "rtgate:",
        instance: str | None = None,
        publish_every: float = PUBLISH_EVERY_S,
        listing_ttl: float = LISTING_TTL_S,
        answer_within: float = ANSWER_WITHIN_S,
    ) -> None:
        self.instance = instance or new_instance_id()
        self._redis = redis
        self._clock = clock
        self._prefix = prefix
        self._every = publish_every
        self._ttl = listing_ttl
        self._answer_within = answer_within
        self._index = f"{prefix}fleet:instances"
        self._commands = f"{prefix}fleet:commands"
        self._here: SessionHolder | None = None
        #: Commands this instance asked and still waits on: request id -> answers, settled.
        self._waiting: dict[str, tuple[Tally, asyncio.Event]] = {}
        #: Set while the listener holds both subscriptions (commands and this instance's answers).
        self._subscribed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        #: The loops (``writer``, ``listener``) failing now: an outage is logged once, its end too.
        self._failing: set[str] = set()

    @classmethod
    def from_url(
        cls,
        url: str,
        clock: Clock,
        *,
        prefix: str = "rtgate:",
        socket_timeout: float = 1.0,
        answer_within: float = ANSWER_WITHIN_S,
    ) -> RedisFleet:
        """A fleet on ``url`` (the ``redis_url`` setting, already checked by the limiter at
        start-up). Commands are bounded by ``socket_timeout`` and retried once, at once."""
        redis = shared_redis(url, socket_timeout=socket_timeout)
        return cls(redis, clock, prefix=prefix, answer_within=answer_within)

    # -- the Fleet port ---------------------------------------------------------------------------

    async def start(self, here: SessionHolder) -> None:
        """Write this instance's listing every second and listen for commands, until ``stop``;
        returns once subscribed (or, Redis not answering, after the answer bound, still trying)."""
        if self._tasks:
            return
        self._here = here
        self._tasks = [
            asyncio.create_task(self._publish_forever(), name="fleet-writer"),
            asyncio.create_task(self._listen_forever(), name="fleet-listener"),
        ]
        try:
            async with asyncio.timeout(self._answer_within):
                await self._subscribed.wait()
        except TimeoutError:
            log.warning("fleet: not subscribed to %s yet; still trying", self._commands)

    async def stop(self) -> None:
        """Stop writing and listening. The listing stays and lapses after its TTL, as on a
        crash."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._subscribed.clear()

    async def close(self) -> None:
        """Stop, take this instance's listing down (best effort), close the client."""
        await self.stop()
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(self._live_key(self.instance))
        pipe.zrem(self._index, self.instance)
        try:
            await pipe.execute()
        except RedisError as exc:
            log.warning("fleet: Redis unreachable at shutdown (%s): listing lapses", _name(exc))
        await self._redis.aclose()

    async def sessions_elsewhere(self) -> list[bytes]:
        try:
            members = cast("list[bytes]", await self._redis.zrange(self._index, 0, -1))
            others = [m.decode() for m in members if m.decode() != self.instance]
            if not others:
                return []
            pipe = self._redis.pipeline(transaction=False)
            for instance in others:
                pipe.hvals(self._live_key(instance))
            listed: list[list[bytes]] = await pipe.execute()
        except RedisError as exc:
            raise FleetUnavailable(
                f"The other gateway instances cannot be listed ({_name(exc)})."
            ) from exc
        return [view for views in listed for view in views]

    async def ask(self, op: Op, target: str) -> Answers:
        if not self._subscribed.is_set():
            raise FleetUnavailable(
                "The other gateway instances cannot be asked right now (not subscribed to "
                "their shared Redis); try again shortly."
            )
        request = secrets.token_hex(8)
        tally, settled = Tally(op), asyncio.Event()
        self._waiting[request] = (tally, settled)
        try:
            try:
                reached = await self._redis.publish(
                    self._commands, Command(op, target, request, self.instance).encode()
                )
            except RedisError as exc:
                raise FleetUnavailable(
                    f"The other gateway instances cannot be asked right now ({_name(exc)}); "
                    "try again shortly."
                ) from exc
            tally.reached = int(reached)
            if not tally.settled:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._answer_within):
                        await settled.wait()
        finally:
            del self._waiting[request]
        return tally.outcome()

    # -- the listing ------------------------------------------------------------------------------

    async def publish(self) -> None:
        """Replace this instance's listing with what it relays now (one MULTI)."""
        listing = self._here.listing() if self._here is not None else {}
        key, now = self._live_key(self.instance), self._clock.now()
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(key)
        if listing:
            pipe.hset(key, mapping=listing)  # type: ignore[arg-type]  # Mapping keys: invariant
            pipe.pexpire(key, _ms(self._ttl))
            pipe.zadd(self._index, {self.instance: now})
            pipe.pexpire(self._index, _ms(FORGET_AFTER_S))
        else:
            pipe.zrem(self._index, self.instance)
        pipe.zremrangebyscore(self._index, "-inf", now - FORGET_AFTER_S)
        await pipe.execute()

    async def _publish_forever(self) -> None:
        while True:
            try:
                await self.publish()
            except RedisError as exc:
                self._trouble("writer", "this instance's sessions are not listed elsewhere", exc)
            except Exception:
                # A bug in rendering the listing: logged, and tried again next second.
                log.exception("fleet: listing not written")
            else:
                self._recovered("writer")
            await asyncio.sleep(self._every)

    # -- commands ---------------------------------------------------------------------------------

    async def _listen_forever(self) -> None:
        # Commands run as tasks of this group, so a slow close never holds up the next message;
        # cancelling the listener (``stop``) cancels them.
        async with asyncio.TaskGroup() as obeying:
            while True:
                pubsub = self._redis.pubsub()
                try:
                    await self._listen(pubsub, obeying)
                except RedisError as exc:
                    self._subscribed.clear()
                    self._trouble("listener", "commands from other instances are not heard", exc)
                finally:
                    # Typed through a variable: redis-py < 6 left aclose unannotated, newer
                    # releases annotate it, and an ignore would be wrong on one or the other.
                    close: Callable[[], Awaitable[None]] = pubsub.aclose
                    await close()
                await asyncio.sleep(self._every)

    async def _listen(self, pubsub: PubSub, obeying: asyncio.TaskGroup) -> None:
        answers = self._answers_to(self.instance)
        await pubsub.subscribe(self._commands, answers)
        while True:
            # A bounded wait: older redis-py clients time a blocking read out by socket_timeout.
            message = await pubsub.get_message(timeout=self._every)
            if message is None:
                continue
            kind, channel, data = message["type"], message["channel"], message["data"]
            if kind == "subscribe":
                if data == 2:  # both channels: commands and answers reach this instance
                    self._subscribed.set()
                    self._recovered("listener")
            elif kind == "message" and channel == self._commands.encode():
                command = Command.decode(data)
                if command is None:
                    log.warning("fleet: a message on %s is not a command", self._commands)
                else:
                    obeying.create_task(self._obey(command))
            elif kind == "message" and channel == answers.encode():
                self._hear(data)

    async def _obey(self, command: Command) -> None:
        here, closed = self._here, []
        try:
            if here is not None and command.op == "close":
                closed = await here.close(command.target)
            elif here is not None:
                closed = await here.revoke(command.target)
        except Exception:
            # Still answer (with nothing), so the asker need not wait out its bound.
            log.exception("fleet: a %s command from %s failed", command.op, command.origin)
        answer = Answer(command.request, self.instance, tuple(closed))
        try:
            await self._redis.publish(self._answers_to(command.origin), answer.encode())
        except RedisError as exc:
            log.warning(
                "fleet: Redis unreachable (%s): answer to %s's %s command not sent",
                _name(exc),
                command.origin,
                command.op,
            )

    def _hear(self, data: bytes) -> None:
        answer = Answer.decode(data)
        if answer is None:
            log.warning("fleet: a message on %s is not an answer", self._answers_to(self.instance))
            return
        waiting = self._waiting.get(answer.request)
        if waiting is None:
            return  # an answer after its asker stopped waiting
        tally, settled = waiting
        tally.add(answer)
        if tally.settled:
            settled.set()

    # -- names and logs ---------------------------------------------------------------------------

    def _live_key(self, instance: str) -> str:
        return f"{self._prefix}fleet:live:{instance}"

    def _answers_to(self, instance: str) -> str:
        return f"{self._prefix}fleet:answers:{instance}"

    def _trouble(self, loop: str, consequence: str, exc: RedisError) -> None:
        if loop not in self._failing:
            self._failing.add(loop)
            log.warning(
                "fleet: Redis unreachable (%s): %s; the %s retries every %.0f s",
                _name(exc),
                consequence,
                loop,
                self._every,
            )

    def _recovered(self, loop: str) -> None:
        if loop in self._failing:
            self._failing.discard(loop)
            log.info("fleet: Redis reachable again, the %s is back", loop)


def _name(exc: BaseException) -> str:
    return type(exc).__name__


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
