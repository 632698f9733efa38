"""A key's spend for its budgets, answered whether or not the database does.

A read is the store's sums (``Store.spend``) plus what this process spilled for the key that the
store does not have yet (``Ledger.unsettled``). Between reads, and whenever the store does not
answer, a key's spend is its last read plus what this process has metered for it since
(``Ledger.metered``). A budget check runs between two frames of a live session, so a read gets
``timeout`` seconds (the commit deadline), and while the ledger spills the store is not asked at
all: a stalled database would otherwise hold the session's next frames at every check.

Only a key never read by this process, asked while the store does not answer, has no answer
(``StoreError``). Other instances' spend during an outage is not known here until the store
answers again (README, Metering).

The check after each metered event (``check``) reads a key once at a time: checks that come
while a read of their key runs share the next one, which starts when it ends. Every answer comes
from a read that began after its check was asked (after its record was durable), so it counts
that record; a key's many sessions cost one read at a time, not a task and a read per event.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

from rtgate.auth.policy import Spend
from rtgate.clock import Clock
from rtgate.deadline import Deadlines
from rtgate.metering.ledger import Ledger
from rtgate.store.port import Store, StoreError


@dataclass(frozen=True, slots=True)
class _Read:
    spend: Spend
    day: str
    month_start: str
    #: ``Ledger.metered`` of the key when it was read.
    metered: dict[str, int]


class SpendBook:
    def __init__(self, store: Store, ledger: Ledger, clock: Clock, *, timeout: float) -> None:
        self._store = store
        self._ledger = ledger
        self._clock = clock
        self._timeout = timeout
        self._deadlines = Deadlines()
        self._reads: dict[str, _Read] = {}
        #: Per key with a check under way: its read, and the future of the checks that came
        #: while it ran (None if none came).
        self._checks: dict[str, tuple[asyncio.Task[Spend], asyncio.Future[Spend] | None]] = {}

    def check(self, key_id: str) -> asyncio.Future[Spend]:
        """``spend`` for the budget check after a metered event: a future shared with the
        other checks of ``key_id`` waiting for the same read, so a caller never cancels it (it
        drops it). Done within two read deadlines: the read under way, then its own."""
        under_way = self._checks.get(key_id)
        if under_way is None:
            return self._read(key_id, None)
        task, after = under_way
        if after is None:
            after = task.get_loop().create_future()
            self._checks[key_id] = (task, after)
        return after

    def _read(self, key_id: str, answer: asyncio.Future[Spend] | None) -> asyncio.Future[Spend]:
        task = asyncio.ensure_future(self.spend(key_id))
        self._checks[key_id] = (task, None)
        task.add_done_callback(lambda done: self._read_done(key_id, done, answer))
        return task if answer is None else answer

    def _read_done(
        self, key_id: str, done: asyncio.Task[Spend], answer: asyncio.Future[Spend] | None
    ) -> None:
        after = self._checks.pop(key_id)[1]
        if answer is not None and not answer.done():
            if done.cancelled():  # the loop is shutting down
                answer.cancel()
            elif (exc := done.exception()) is not None:
                answer.set_exception(exc)
            else:
                answer.set_result(done.result())
        if after is not None:
            # The checks that came while this read ran: a read of their own, begun now.
            self._read(key_id, after)

    async def spend(self, key_id: str) -> Spend:
        """What ``key_id`` has been charged this UTC day, this UTC month, and ever."""
        now = datetime.fromtimestamp(self._clock.now(), UTC)
        day, month_start = now.strftime("%Y-%m-%d"), now.strftime("%Y-%m-01")
        last = self._reads.get(key_id)
        if last is None or not self._ledger.spilling:
            # Taken before the read: a record made durable meanwhile is counted twice (for
            # the moment, never once too few).
            metered = self._ledger.metered(key_id)
            unsettled = _sums(self._ledger.unsettled(key_id), day, month_start)
            try:
                d, m, t = await self._deadlines.run(
                    self._store.spend(key_id, day, month_start), self._timeout
                )
            except (StoreError, TimeoutError) as exc:
                if last is None:
                    if isinstance(exc, StoreError):
                        raise
                    raise StoreError(
                        f"cannot read spend: no answer within {self._timeout:g} s"
                    ) from exc
            else:
                total = Spend(d + unsettled.day, m + unsettled.month, t + unsettled.total)
                self._reads[key_id] = _Read(total, day, month_start, metered)
                return total
        since = _sums(_minus(self._ledger.metered(key_id), last.metered), day, month_start)
        return Spend(
            day=(last.spend.day if last.day == day else 0) + since.day,
            month=(last.spend.month if last.month_start == month_start else 0) + since.month,
            total=last.spend.total + since.total,
        )


def _minus(now: dict[str, int], then: dict[str, int]) -> dict[str, int]:
    return {day: nanos - then.get(day, 0) for day, nanos in now.items()}


def _sums(by_day: dict[str, int], day: str, month_start: str) -> Spend:
    return Spend(
        day=by_day.get(day, 0),
        month=sum(n for d, n in by_day.items() if d >= month_start),
        total=sum(by_day.values()),
    )
