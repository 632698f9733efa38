"""``--workers N``: N processes sharing the port, started and told to drain by a parent.

Imported only when ``workers`` is over 1 (``server.serve``). The parent imports no more than
this module does; each worker is ``python -m rtgate.worker`` (``rtgate.worker``), which reads the
settings and imports the serving process (``rtgate.serving``) once it starts (docs/performance.md
9.16, 9.18).

Workers bind the same port with ``SO_REUSEPORT`` and the kernel spreads connections over them;
they share the database, and with ``redis_url`` the session limits and the admin API's view of
live sessions; without it each worker counts and sees only its own (a warning says so). The
parent forwards the signals (``rtgate.serving`` says what each means) and serves nothing.

Workers of a drain close together. Each worker's ``SO_REUSEPORT`` listener has an accept queue
of its own, and the kernel resets the connections still queued on a listener that closes; so a
worker that closed as soon as its own sessions were over would reset clients while a sibling
still serves. Instead a drained worker tells the parent (``worker.DrainBarrier``) and keeps
listening, refusing new sessions as the drain does, until the parent has heard it from every
worker (or seen it exit: ``close_together``); then they all close. A second SIGTERM, or SIGINT,
waits for no one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys

from rtgate.config import Settings
from rtgate.errors import START_FAILED
from rtgate.worker import CLOSE, DRAIN

log = logging.getLogger("rtgate")


def python_m(module: str, *args: str) -> list[str]:
    """``python -m MODULE ARGS`` with this interpreter and its flags (``-X dev``, ``-O``,
    ``-B``), as ``multiprocessing`` starts its processes."""
    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    return [sys.executable, *flags, "-m", module, *args]


def ask_to_drain(workers: list[socket.socket]) -> None:
    """The parent's request to drain, written to each worker before the signal that carries
    it: a worker not yet listening then reads it once it serves."""
    for link in workers:
        with contextlib.suppress(OSError):  # exited already
            link.send(DRAIN)


def close_together(workers: list[socket.socket]) -> None:
    """The parent's side: once every worker has said it drained, or exited (its end of the link
    then reads end of file), tell each to close. Returns when they are told."""
    with selectors.DefaultSelector() as waiting:
        for link in workers:
            waiting.register(link, selectors.EVENT_READ)
        while waiting.get_map():
            for key, _ in waiting.select():
                waiting.unregister(key.fileobj)
    for link in workers:
        with contextlib.suppress(OSError):  # exited already
            link.send(CLOSE)


def serve_workers(settings: Settings, engine_token: str) -> int:
    """Start ``settings.workers`` workers, forward the signals to them, close them together,
    and return once every one has exited: the exit status, 2 if a worker failed to start
    (``START_FAILED``, as one process would), 1 if one ended otherwise in failure, else 0."""
    program = sys.argv[1] if len(sys.argv) > 1 else "rtgate"
    links = [socket.socketpair() for _ in range(settings.workers)]
    ours = [link for link, _ in links]
    procs: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGUSR1):
            # Written before the signal: a worker still starting, deaf to it, reads it once it
            # serves (``serving.serve_async``), so no worker outlives a drain.
            ask_to_drain(ours)
        # Each worker decides what the signal means for it (a drain, or an end at once).
        for p in procs:
            if p.returncode is None:  # not yet reaped: its pid is still its own
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signum)

    # Before the workers start, so a worker's first drain request finds the parent listening.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, forward)
    for i, (link, theirs) in enumerate(links):
        fd = theirs.fileno()
        # The worker's end is the worker's alone (no sibling inherits it), so its exit reads as
        # end of file here. The workers inherit this process's environment: the same settings.
        argv = python_m("rtgate.worker", program, str(fd), str(i))
        procs.append(subprocess.Popen(argv, pass_fds=(fd,)))  # noqa: S603 (this interpreter)
        theirs.close()
        with contextlib.suppress(OSError):  # exited already: its status says why
            link.sendall(engine_token.encode() + b"\n")
    close_together(ours)
    for p in procs:
        p.wait()
    failed = [p.returncode for p in procs if p.returncode]
    for i, p in enumerate(procs):
        # A worker that could not start said why in its one line (``report_failed_start``).
        if p.returncode and p.returncode != START_FAILED:
            log.error("rtgate-worker-%d exited with status %s", i, p.returncode)
    return START_FAILED if START_FAILED in failed else 1 if failed else 0
