"""One serving process: the app on the front door's port, the engine's loopback site, the
signals and the drain. ``rtgate.server`` runs it in its own process, ``rtgate.worker`` in each
worker; the parent of ``--workers N`` serves nothing and imports none of this (aiohttp, the app,
the relay: ~24 MB of a process that only passes its signals on; docs/performance.md 9.16).

Signals (``rtgate.drain``): SIGTERM drains (new sessions refused, live ones run on until they
end or ``drain_seconds`` pass), and the process exits when the drain is over; a second SIGTERM,
or SIGINT, ends the live sessions at once (1001). SIGUSR1 drains too and never escalates. The
parent of ``--workers N`` turns each of these signals into a word on every worker's link, and
each worker drains or stops on its parent's word, not on signals of its own; a worker that has
drained waits for its siblings before it closes (``worker.ParentLink``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from rtgate import heap
from rtgate.api.app import create_app, end_live, set_local_base_url
from rtgate.api.request_timeouts import app_runner
from rtgate.config import Settings
from rtgate.drain import DRAIN, Drain
from rtgate.listen import listen_failed, shown
from rtgate.relay.endpoint import relay_door
from rtgate.relay.front_door import FrontDoorSite
from rtgate.tls import server_context
from rtgate.welcome import summary_lines

if TYPE_CHECKING:
    from rtgate.worker import ParentLink

log = logging.getLogger("rtgate")


def _program() -> str:
    """How the person ran rtgate (``.venv/bin/rtgate`` under make run), for the lines that
    tell them what to type next: the CLI's ``argv[0]``, which ``cli.serve`` passes on as this
    process's first argument (``python -m rtgate.server PROGRAM``, and each worker's:
    ``python -m rtgate.worker PROGRAM FD INDEX``)."""
    argv0 = Path(sys.argv[1] if len(sys.argv) > 1 else "rtgate")
    return str(argv0) if argv0.name == "rtgate" else "rtgate"


def freeze_startup_heap() -> None:
    """Move everything built at startup (the app, settings, the catalog, ~120k
    objects) out of the cyclic collector's reach: it lives as long as the process, and a full
    collection that walks it stalls every session (measured ~37 ms, a p99 spike under load).
    Sessions' own objects are still collected as usual.

    The collection's garbage and the imports' scratch leave whole free pages in the C heap
    that glibc keeps; ``heap.trim`` collects, then gives them back: ~1.1 MB of the idle
    process where its modules were compiled at this start (no ``.pyc`` could be written: a
    read-only install, ``PYTHONDONTWRITEBYTECODE``), 0-0.2 MB otherwise (docs/performance.md
    9.23)."""
    heap.trim()
    gc.freeze()


async def _first_of(*waits: Coroutine[Any, Any, object]) -> None:
    tasks = [asyncio.create_task(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


class Lifetime:
    """When this serving process drains and stops: on its own signals (one process alone, or a
    worker whose parent is gone) or on its parent's words (a worker, ``worker.py``). Set up
    before the port opens: a SIGTERM that finds it open drains (the signal's default action
    would kill the process, with any session it had just accepted)."""

    def __init__(self, drain: Drain, link: ParentLink | None) -> None:
        self.drain = drain
        self.link = link
        self.now = asyncio.Event()
        #: The parent is gone: this worker listens no more and answers its own signals.
        self.alone = False
        self._site: FrontDoorSite | None = None
        self._unlistening: list[asyncio.Task[None]] = []
        if link is None:
            self._take_signals()
        else:
            # The signals are the parent's; its words, those sent while this one started
            # included, drain and stop it.
            link.watch(drain=drain.begin, stop=self.now.set, orphaned=self._orphaned)

    def _take_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        loop.add_signal_handler(signal.SIGINT, self.now.set)
        loop.add_signal_handler(signal.SIGUSR1, self.drain.begin)

    def _on_sigterm(self) -> None:
        if self.drain.started:
            log.info("second SIGTERM: ending the live sessions now")
            self.now.set()
        else:
            self.drain.begin()

    def _orphaned(self) -> None:
        # The port is its siblings' now, or a restarted gateway's, which must get every new
        # connection: none refused by a worker on its way out.
        self.alone = True
        log.warning("the parent of this worker is gone: no longer listening, draining")
        self._take_signals()
        self.drain.begin()
        if self._site is not None:
            self._unlistening.append(asyncio.get_running_loop().create_task(self._site.stop()))

    async def listen(self, site: FrontDoorSite) -> None:
        await site.start()
        if self.alone:
            await site.stop()
        else:
            self._site = site

    async def over(self) -> None:
        """Until the drain is over (or a stop); a worker then waits for its siblings to have
        drained too before it closes (``worker.ParentLink.wait``)."""
        await _first_of(self.now.wait(), self.drain.finished.wait())
        if self.link is not None and not self.now.is_set() and not self.alone:
            log.info("drained: listening on, refusing new sessions, until every worker has drained")
            await _first_of(self.now.wait(), self.link.wait())

    def close(self) -> None:
        if self.link is not None:
            self.link.unwatch()


async def serve_async(
    settings: Settings,
    engine_token: str,
    link: ParentLink | None = None,
    announce: bool = True,
) -> None:
    propagate = link.ask_drain if link is not None else None
    app = create_app(settings, engine_token=engine_token, propagate_drain=propagate)
    # At exit aiohttp waits this long for handlers still running (a drain's length at least).
    wait = max(60.0, settings.drain_seconds)
    runner = app_runner(app, settings, handle_signals=False, access_log=None, shutdown_timeout=wait)
    await runner.setup()
    lifetime = Lifetime(app[DRAIN], link)
    tls = server_context(settings.tls_certfile, settings.tls_keyfile)
    # One port: the relay's upgrades on picows, everything else on aiohttp (front_door.py).
    site = FrontDoorSite(
        runner,
        relay_door(app),
        head_timeout=settings.request_timeout_seconds,
        host=settings.host,
        port=settings.port,
        reuse_port=settings.workers > 1,
        backlog=4096,
        ssl_context=tls,
    )
    try:
        await lifetime.listen(site)
    except OSError as err:  # taken since server.py checked it
        await runner.cleanup()
        raise listen_failed(settings.host, settings.port, err) from None
    # The relay dials this process's own engine on a loopback port of its own: on the shared
    # port (SO_REUSEPORT, --workers) the kernel may hand the engine's connection to a sibling,
    # which then ends it when it drains or stops before this worker's session does. The engine
    # routes need this process's per-process token, and the port is loopback only, so no TLS.
    engine_site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await engine_site.start()
    set_local_base_url(app, "127.0.0.1", engine_site.port)
    host, port = settings.host, settings.port
    freeze_startup_heap()
    scheme = "https" if tls is not None else "http"
    if announce:  # of N workers, the first says where they serve (worker.main)
        base = f"{scheme}://{shown(host, port)}"
        config = os.environ.get("RTGATE_CONFIG")
        for line in summary_lines(settings, base, _program(), config, os.environ):
            log.info(line)
    await lifetime.over()
    log.info("shutting down")
    # What is still live ends (1001) while aiohttp still reads its connections (app.py
    # ``end_live``); then its clean-up stops listening, waits for the handlers and
    # drains the ledger.
    await end_live(app)
    await runner.cleanup()
    lifetime.close()


def serve_one(
    settings: Settings,
    engine_token: str,
    *,
    link: ParentLink | None = None,
    announce: bool = True,
) -> None:
    """Serve in this process until its drain or stop is over. A worker of ``--workers N`` has
    its ``link`` to the parent (``worker.py``), and only the first worker ``announce``s where
    the gateway serves."""
    if sys.platform != "win32":
        # Its loop does the relay's socket work in C (docs/performance.md).
        import uvloop

        uvloop.install()
    asyncio.run(serve_async(settings, engine_token, link=link, announce=announce))
