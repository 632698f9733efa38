"""Sessions whose serving process died: ended in the database, not left live there forever.

A session's row is written when it opens and again when it ends; a process killed in between
(SIGKILL, out of memory, a host lost) never writes the end, and the row said "live" for good,
in the console, the admin API and ``rtgate sessions`` alike, even after a restart. So every
serving process (each worker of ``--workers N``, each instance of a fleet) names itself in the
rows of the sessions it opens (``SessionOpen.instance``) and beats: it writes that it is alive
every ``instance_beat_seconds`` (``instances.seen_at``), and at every beat it ends as lost the
open sessions of any instance not seen for ``LOST_AFTER_BEATS`` beats
(``Store.end_lost_sessions``: close 1006, ``gateway_instance_lost``). Nothing needs Redis: the
database every instance already shares is the witness.

The sweep can be wrong only one way: an instance alive but unable to reach the database for
that long has its open sessions ended in the database while it still relays them; their real
end, written when it comes, replaces the sweep's. Rows from before sessions named their
instance are ended once they are older than the longest session this process allows.
"""

from __future__ import annotations

import asyncio
import logging

from rtgate.clock import Clock
from rtgate.store.port import Store

log = logging.getLogger("rtgate")

#: An instance not seen for this many beats is gone: a beat may miss (the store's deadline,
#: a stalled database) without its sessions being taken for lost.
LOST_AFTER_BEATS = 4


async def sweep(store: Store, clock: Clock, every: float, longest: float) -> int:
    """End the sessions of the instances gone since ``LOST_AFTER_BEATS`` beats of ``every``
    seconds, and those naming none that are older than ``longest`` (the longest session this
    process allows) and a beat; how many ended."""
    now = clock.now()
    ended = await store.end_lost_sessions(
        seen_since=now - LOST_AFTER_BEATS * every, opened_before=now - longest - every
    )
    if ended:
        log.warning(
            "ended %d session(s) whose gateway instance stopped without closing them", ended
        )
    return ended


class Witness:
    """Whether this process may judge the others' silence: only after ``LOST_AFTER_BEATS``
    beats in a row reached the database. Its own failed beats mean it could not hear them
    either: after an outage they all beat again, and the first back must not take the others
    for dead before they had as long to be heard (a review's find: the first instance to
    reach the database after 80 s of failover ended every other instance's live sessions).
    At start-up the same wait holds, since nothing is known of the others' last beats."""

    def __init__(self) -> None:
        self.heard = 0

    def beat(self, ok: bool) -> bool:
        """Record a beat; True when this one may sweep."""
        self.heard = self.heard + 1 if ok else 0
        return self.heard >= LOST_AFTER_BEATS


async def keep_beating(
    store: Store, clock: Clock, instance: str, every: float, longest: float
) -> None:
    """Beat every ``every`` seconds until cancelled, and sweep once ``Witness`` allows. A beat
    that fails is tried again at the next, logged once for the outage: the relay does not
    depend on it, and nothing but cancellation ends the loop (an instance that stopped
    beating would have its sessions taken for lost by the others)."""
    witness, failing = Witness(), False
    while True:
        await asyncio.sleep(every)
        try:
            await store.beat(instance, clock.now())
            if witness.beat(True):
                await sweep(store, clock, every, longest)
        except Exception as exc:  # noqa: BLE001 -- a beat that stopped would lose the sessions
            witness.beat(False)
            if not failing:
                log.warning("instance beat failed, trying again every %g s: %s", every, exc)
            failing = True
            continue
        if failing:
            log.info("instance beat works again")
        failing = False
