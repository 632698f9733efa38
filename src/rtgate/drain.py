"""A graceful drain: a deploy restarts the gateway without cutting a call.

A drain (SIGTERM, or ``POST /admin/v1/drain``) moves the gateway from SERVING to DRAINING
(``gateway.Lifecycle``): ``/readyz`` answers 503 at once, so load balancers send new sessions
elsewhere, and new sessions (sockets, client secrets, calls) are refused with
``server_shutting_down``, a reconnect error. The live sessions, relayed sockets and call
sidebands alike, run on until they end or ``drain_seconds`` pass; those still live then get an
``error`` event and 1001. ``finished`` is set either way, and the process exits (``serving.py``);
the ledger drains at the application's cleanup, as on every exit, so every usage record of the
drain is written first.

A process with ``--workers N`` drains all its workers: the parent turns its signals into words
on each worker's link (``worker.py``), and a worker that gets the admin API's request asks the
parent to tell every worker (``propagate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiohttp import web

from rtgate.gateway import Gateway, shutting_down

log = logging.getLogger("rtgate")


class Drain:
    """One gateway's drain: begun once, finished when no session is left or at the deadline."""

    def __init__(
        self, gw: Gateway, seconds: float, *, propagate: Callable[[], None] | None = None
    ) -> None:
        self._gw = gw
        self.seconds = seconds
        self._propagate = propagate
        self._task: asyncio.Task[None] | None = None
        #: Wall-clock time the drain began, and its deadline (None before it begins).
        self.started_at: float | None = None
        self.deadline_at: float | None = None
        self.finished = asyncio.Event()

    @property
    def started(self) -> bool:
        return self._task is not None

    def begin(self) -> None:
        """Stop taking new sessions and wait for the live ones; a drain already under way is
        left as it is (its deadline does not move)."""
        if self._task is not None:
            return
        gw = self._gw
        gw.stop_accepting()
        self.started_at = gw.clock.now()
        self.deadline_at = self.started_at + self.seconds
        live = len(gw.live)
        log.info(
            "draining: %d live session%s, new ones refused; those left in %g s end with 1001",
            live,
            "" if live == 1 else "s",
            self.seconds,
        )
        self._task = asyncio.create_task(self._run(), name="drain")

    def request(self) -> None:
        """An operator's drain (the admin API): this process's, and the sibling workers' too."""
        if self._task is None:
            self.begin()
            if self._propagate is not None:
                self._propagate()

    async def _run(self) -> None:
        gw = self._gw
        try:
            async with asyncio.timeout(self.seconds):
                await gw.live.none_left()
            log.info("drained: no live session is left")
        except TimeoutError:
            log.warning("drain deadline: ending %d live sessions with 1001", len(gw.live))
            await gw.end_live_sessions(shutting_down())
        finally:
            self.finished.set()

    async def cancel(self) -> None:
        """Stop waiting (an immediate stop takes over the sessions still live)."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


DRAIN: web.AppKey[Drain] = web.AppKey("drain", Drain)
