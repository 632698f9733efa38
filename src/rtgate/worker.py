"""One of ``--workers N``'s processes: ``python -m rtgate.worker PROGRAM FD INDEX``, started by
the parent (``rtgate.workers``) with one end of a socket pair as file descriptor ``FD``, its only
link to the parent (``PROGRAM``: how the person ran rtgate, as ``rtgate.server`` has it; INDEX:
0 for the first worker, which alone prints where the gateway serves).

A worker takes its orders over the link, not from signals: the parent turns its own signals
into words, so a worker still starting (not yet reading them) finds them waiting, in order, and
a worker's signal handlers never race the parent's word for the same signal. The link carries
one line from the parent first: the engine token every worker shares (never an argument or a
variable, which ``ps`` and ``/proc`` show) and the fingerprint of the parent's settings, which
the worker, reading them itself, must find the same (``config.fingerprint``); then single
bytes, which need no framing:

* ``DRAIN``, parent to worker: drain (a SIGTERM, SIGUSR1 or a sibling's request);
* ``STOP``, parent to worker: end the live sessions now (a second SIGTERM, or SIGINT);
* ``CLOSE``, parent to worker: every worker has drained or exited; close (``workers.py``);
* ``DRAINED``, worker to parent: this worker's sessions are over; it listens on, refusing new
  ones, until ``CLOSE``, so no worker's closing listener resets a connection queued for it
  while a sibling still serves;
* ``ASK_DRAIN``, worker to parent: the admin API asked this worker to drain; the parent has
  every worker drain.

The parent's end of file (it exited, killed, say) makes the worker its own master: it stops
listening at once (the port is its siblings' now, or a restarted gateway's, which must not
have its connections refused by a worker on its way out), takes its signals again, drains its
sessions and exits. Not ``multiprocessing``: a spawned process needs its
resource tracker, a process of ~12 MB for the gateway's life (docs/performance.md 9.18), and
each worker reads the settings itself, as ``rtgate.server`` does, so nothing is pickled across.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable

DRAIN = b"d"
STOP = b"s"
CLOSE = b"c"
DRAINED = b"D"

#: Where every worker of one gateway keeps its metrics (prometheus_client's multiprocess
#: mode reads this variable as it is imported): a directory of the parent's own, for its run.
METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"

ASK_DRAIN = b"r"

log = logging.getLogger("rtgate")


class ParentLink:
    """A worker's end of its link to the parent (module docstring)."""

    def __init__(self, parent: socket.socket) -> None:
        self._sock = parent
        self._on_drain: Callable[[], None] = _nothing
        self._on_stop: Callable[[], None] = _nothing
        self._on_orphaned: Callable[[], None] = _nothing
        self._closed = False
        self._told: asyncio.Future[None] | None = None
        self._watched = False

    def first_line(self) -> tuple[str, str]:
        """The first line the parent writes, read before anything else, blocking: the engine
        token and the fingerprint of the parent's settings."""
        line = bytearray()
        while not line.endswith(b"\n"):
            # One byte at a time: what follows the line is the words', not the token's.
            got = self._sock.recv(1)
            if not got:
                raise EOFError("the parent exited before this worker started")
            line += got
        token, _, settings = line[:-1].decode().partition(" ")
        return token, settings

    def watch(
        self, drain: Callable[[], None], stop: Callable[[], None], orphaned: Callable[[], None]
    ) -> None:
        """Read the parent's words for the rest of the worker's life, those already waiting
        first: ``drain`` at ``DRAIN``, ``stop`` at ``STOP``, ``orphaned`` at its end of file."""
        self._on_drain, self._on_stop, self._on_orphaned = drain, stop, orphaned
        self._sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._read)
        self._watched = True
        self._read()

    def unwatch(self) -> None:
        if self._watched:
            self._watched = False
            asyncio.get_running_loop().remove_reader(self._sock.fileno())

    def _read(self) -> None:
        while self._watched:
            try:
                said = self._sock.recv(64)
            except BlockingIOError:
                return
            except OSError:
                said = b""
            if not said:
                self.unwatch()
                self._close()
                self._on_orphaned()
                return
            for word in said:
                if word == DRAIN[0]:
                    self._on_drain()
                elif word == STOP[0]:
                    self._on_stop()
                elif word == CLOSE[0]:
                    self._close()

    def _close(self) -> None:
        self._closed = True
        if self._told is not None and not self._told.done():
            self._told.set_result(None)

    def ask_drain(self) -> None:
        """The admin API asked this worker to drain: the parent has every worker drain."""
        self._say(ASK_DRAIN)

    async def wait(self) -> None:
        """Tell the parent this worker has drained, then wait for ``CLOSE`` (or the parent's
        end)."""
        self._say(DRAINED)
        if not self._closed:
            self._told = asyncio.get_running_loop().create_future()
            await self._told

    def _say(self, word: bytes) -> None:
        with contextlib.suppress(OSError):  # the parent is gone: its end of file says so too
            self._sock.send(word)


def _nothing() -> None:
    return None


#: What the parent speaks for: a supervisor that signals every process of the group, or a
#: terminal's Ctrl-C, reaches the parent too, which passes it on as a word. The parent starts
#: each worker with them blocked (``workers.serve_workers``); caught here by a handler that
#: does nothing, then unblocked: one sent in the meantime is let through to it, and dropped.
#: A handler, not SIG_IGN, which the worker's own children (the engine's TTS) would inherit.
SPOKEN_FOR = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def _ignore(_signum: int, _frame: object) -> None:
    return None


def main(fd: int, index: int) -> int:
    """Serve as one of the parent's workers; the exit status (``START_FAILED`` for a start-up
    failure, which the parent passes on)."""
    for sig in SPOKEN_FOR:
        signal.signal(sig, _ignore)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SPOKEN_FOR)
    # The link is this process's alone: a child it starts (the engine's TTS) must not hold it
    # open, or the parent would see this worker's end only at that child's.
    os.set_inheritable(fd, False)
    from rtgate.config import fingerprint, load_settings
    from rtgate.errors import ConfigError, GatewayError, report_failed_start
    from rtgate.logs import configure_serving_logs

    link = ParentLink(socket.socket(fileno=fd))
    try:
        engine_token, parents = link.first_line()
    except (EOFError, OSError):
        return 1  # nobody left to serve for
    try:
        # As the parent read them (``rtgate.server``): the file and the same environment.
        settings = load_settings()
        if fingerprint(settings) != parents:
            raise ConfigError(
                "the settings changed while the workers started (the config file or the "
                "environment): start the gateway again"
            )
        configure_serving_logs(settings)
        from rtgate.serving import serve_one

        serve_one(settings, engine_token, link=link, announce=index == 0)
    except GatewayError as err:
        # A start-up failure (database, Redis): reported as ``server.main`` reports it.
        return report_failed_start(err)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[2]), int(sys.argv[3])))
