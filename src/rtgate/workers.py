"""``--workers N``: N processes sharing the port, started and told to drain by a parent.

Imported only when ``workers`` is over 1 (``server.serve``): a single process has no use for
``multiprocessing``. The parent imports no more than this module does; each worker imports the
serving process (``rtgate.serving``) once it starts (docs/performance.md 9.16).

Workers bind the same port with ``SO_REUSEPORT`` and the kernel spreads connections over them;
they share the database, and with ``redis_url`` the session limits and the admin API's view of
live sessions; without it each worker counts and sees only its own (a warning says so). The
parent forwards the signals (``rtgate.serving`` says what each means) and serves nothing.

Workers of a drain close together. Each worker's ``SO_REUSEPORT`` listener has an accept queue
of its own, and the kernel resets the connections still queued on a listener that closes; so a
worker that closed as soon as its own sessions were over would reset clients while a sibling
still serves. Instead a drained worker tells the parent (``DrainBarrier``) and keeps listening,
refusing new sessions as the drain does, until the parent has heard it from every worker (or
seen it exit: ``close_together``); then they all close. A second SIGTERM, or SIGINT, waits for
no one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
from multiprocessing.connection import Connection, wait
from typing import Protocol

from rtgate.config import Settings
from rtgate.errors import START_FAILED, GatewayError, report_failed_start
from rtgate.logs import configure_serving_logs

log = logging.getLogger("rtgate")


class DrainBarrier:
    """A worker's side of closing together (module docstring): it tells the parent it has
    drained, then waits for the parent's word that every worker has (or for the parent's end:
    a closed pipe reads as that word too)."""

    def __init__(self, parent: Connection) -> None:
        self._parent = parent

    async def wait(self) -> None:
        with contextlib.suppress(OSError):  # the parent is gone: nobody left to wait for
            self._parent.send_bytes(b"drained")
        loop = asyncio.get_running_loop()
        told: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not told.done():
                told.set_result(None)

        fd = self._parent.fileno()
        loop.add_reader(fd, readable)
        try:
            await told
        finally:
            loop.remove_reader(fd)


def close_together(workers: list[Connection]) -> None:
    """The parent's side: once every worker has said it drained, or exited (its pipe then reads
    end of file), tell each to close. Returns when they are told."""
    waiting = list(workers)
    while waiting:
        for ready in wait(waiting):
            waiting.remove(ready)  # type: ignore[arg-type]
    for conn in workers:
        with contextlib.suppress(OSError):  # exited already
            conn.send_bytes(b"close")


class EventLike(Protocol):
    """A ``multiprocessing`` event as a worker sees it."""

    def is_set(self) -> bool: ...


def _tell_parent_to_drain() -> None:
    """A worker asked to drain (the admin API) has the parent drain every worker."""
    os.kill(os.getppid(), signal.SIGUSR1)


def _worker(
    settings: Settings, engine_token: str, drain_requested: EventLike, parent: Connection
) -> None:
    # A drain may come before this worker serves (a sibling's request, or SIGTERM): ignored,
    # not fatal, and seen once it serves (``drain_requested``). Killed by SIGTERM's default
    # action once listening, it would reset the connections queued on its listener.
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    configure_serving_logs(settings)
    # Here, not at the top: the parent imports this module and serves nothing.
    from rtgate.serving import serve_one

    try:
        serve_one(
            settings,
            engine_token,
            propagate_drain=_tell_parent_to_drain,
            drain_requested=drain_requested.is_set,
            siblings=DrainBarrier(parent),
        )
    except GatewayError as err:
        # A start-up failure (database, Redis): reported as ``server.main`` reports it.
        sys.exit(report_failed_start(err))


def serve_workers(settings: Settings, engine_token: str) -> int:
    """Start ``settings.workers`` spawned workers, forward the signals to them, close them
    together, and return once every one has exited: the exit status, 2 if a worker failed to
    start (``START_FAILED``, as one process would), 1 if one ended otherwise in failure, else 0."""
    ctx = multiprocessing.get_context("spawn")
    # Set before a drain is fanned out: a worker still starting then, deaf to the signal, sees
    # it once it serves (``serving.serve_async``), so no worker outlives a drain.
    drain_requested = ctx.Event()
    pipes = [ctx.Pipe() for _ in range(settings.workers)]
    procs = [
        ctx.Process(
            target=_worker,
            args=(settings, engine_token, drain_requested, theirs),
            name=f"rtgate-worker-{i}",
        )
        for i, (_, theirs) in enumerate(pipes)
    ]

    def forward(signum: int, _frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGUSR1):
            drain_requested.set()
        # Each worker decides what the signal means for it (a drain, or an end at once).
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signum)

    # Before the workers start, so a worker's first drain request finds the parent listening
    # (spawned workers start with the default handlers, whatever the parent installs).
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, forward)
    for p, (_, theirs) in zip(procs, pipes, strict=True):
        p.start()
        theirs.close()  # the worker's end is the worker's alone: its exit then reads as EOF
    close_together([ours for ours, _ in pipes])
    for p in procs:
        p.join()
    failed = [p.exitcode for p in procs if p.exitcode]
    for p in procs:
        if p.exitcode:
            log.error("%s exited with status %s", p.name, p.exitcode)
    return START_FAILED if START_FAILED in failed else 1 if failed else 0
