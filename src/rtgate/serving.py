"""One serving process: the app on the front door's port, the engine's loopback site, the
signals and the drain. ``rtgate.server`` runs it in its own process, ``rtgate.worker`` in each
worker; the parent of ``--workers N`` serves nothing and imports none of this (aiohttp, the app,
the relay: ~24 MB of a process that only forwards signals; docs/performance.md 9.16).

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
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from rtgate.api.app import create_app, end_live, set_local_base_url
from rtgate.api.request_timeouts import app_runner
from rtgate.config import Settings
from rtgate.drain import DRAIN
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
    Sessions' own objects are still collected as usual."""
    gc.collect()
    gc.freeze()


async def _first_of(*waits: Coroutine[Any, Any, object]) -> None:
    tasks = [asyncio.create_task(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


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
    # Before the port opens: a SIGTERM that finds it open drains (the default action would
    # kill the process, and any session it had just accepted).
    drain = app[DRAIN]
    now = asyncio.Event()

    def on_sigterm() -> None:
        if drain.started:
            log.info("second SIGTERM: ending the live sessions now")
            now.set()
        else:
            drain.begin()

    loop = asyncio.get_running_loop()

    def take_signals() -> None:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        loop.add_signal_handler(signal.SIGINT, now.set)
        loop.add_signal_handler(signal.SIGUSR1, drain.begin)

    site: FrontDoorSite | None = None
    alone = False
    unlistening: list[asyncio.Task[None]] = []

    def orphaned() -> None:
        # The parent is gone (worker.py): this worker stops listening now, so a restarted
        # gateway sharing the port gets every new connection, takes its signals again, drains
        # its sessions and exits.
        nonlocal alone
        alone = True
        log.warning("the parent of this worker is gone: no longer listening, draining")
        take_signals()
        drain.begin()
        if site is not None:
            unlistening.append(loop.create_task(site.stop()))

    if link is None:
        take_signals()
    else:
        # A worker takes its drain and stop from the parent's words (worker.py), those sent
        # while it started included; the signals are the parent's.
        link.watch(drain=drain.begin, stop=now.set, orphaned=orphaned)
    tls = server_context(settings.tls_certfile, settings.tls_keyfile)
    # One port: the relay's upgrades on picows, everything else on aiohttp (front_door.py).
    front_door = FrontDoorSite(
        runner,
        relay_door(app),
        head_timeout=settings.request_timeout_seconds,
        host=settings.host,
        port=settings.port,
        reuse_port=settings.workers > 1,
        backlog=4096,
        ssl_context=tls,
    )
    await front_door.start()
    if alone:
        await front_door.stop()
    else:
        site = front_door
    # The relay dials this process's own engine on a loopback port of its own: on the shared
    # port (SO_REUSEPORT, --workers) the kernel may hand the engine's connection to a sibling,
    # which then ends it when it drains or stops before this worker's session does. The engine
    # routes need this process's per-process token, and the port is loopback only, so no TLS.
    engine_site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await engine_site.start()
    set_local_base_url(app, "127.0.0.1", engine_site.port)
    host, port = settings.host, settings.port
    freeze_startup_heap()
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if tls is not None else "http"
    if announce:  # of N workers, the first says where they serve (worker.main)
        for line in summary_lines(settings, f"{scheme}://{shown}:{port}", _program()):
            log.info(line)
    await _first_of(now.wait(), drain.finished.wait())
    if link is not None and not now.is_set() and not alone:
        log.info("drained: listening on, refusing new sessions, until every worker has drained")
        await _first_of(now.wait(), link.wait())
    log.info("shutting down")
    # What is still live ends (1001) while aiohttp still reads its connections (app.py
    # ``end_live``); then its clean-up stops listening, waits for the handlers and
    # drains the ledger.
    await end_live(app)
    await runner.cleanup()
    if link is not None:
        link.unwatch()


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
