"""One of ``--workers N``'s processes: ``python -m rtgate.worker PROGRAM FD INDEX``, started by
the parent (``rtgate.workers``) with one end of a socket pair as file descriptor ``FD``, its only
link to the parent (``PROGRAM``: how the person ran rtgate, as ``rtgate.server`` has it; INDEX:
0 for the first worker, which alone prints where the gateway serves).

The link carries single bytes, so it needs no framing, after one line from the parent (the
engine token every worker shares, never put in an argument or the environment, where ``ps`` and
``/proc`` show it):

* ``DRAIN``, parent to worker, written before the parent signals a drain: a worker not yet
  listening then ignores the signal, and reads the request once it serves;
* ``DRAINED``, worker to parent: this worker's sessions are over; it listens on, refusing new
  sessions, until
* ``CLOSE``, parent to worker: every worker has drained (or exited); all close together.

Either side's end of file (its process exited) reads as the last word: a worker whose parent is
gone closes; a parent counts an exited worker as drained.

A process of its own, not ``multiprocessing``'s: each worker reads the settings itself, as
``rtgate.server`` does, so nothing is pickled across, and no resource tracker is started (a
spawned process needs one, ~12 MB for the gateway's life; docs/performance.md 9.18).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys

from rtgate.config import load_settings
from rtgate.errors import ConfigError, GatewayError, report_failed_start
from rtgate.logs import configure_serving_logs

DRAIN = b"d"
DRAINED = b"D"
CLOSE = b"c"


class DrainBarrier:
    """A worker's end of its link to the parent (module docstring)."""

    def __init__(self, parent: socket.socket) -> None:
        self._parent = parent
        self._drain = self._close = False

    def engine_token(self) -> str:
        """The first line the parent writes: read before anything else, blocking."""
        line = bytearray()
        while not line.endswith(b"\n"):
            # One byte at a time: what follows the line is the link's, not the token's.
            got = self._parent.recv(1)
            if not got:
                raise ConfigError("the parent of this worker exited before it started")
            line += got
        return line[:-1].decode()

    def _read(self) -> None:
        """Read what the parent has written since; its end of file reads as ``CLOSE``."""
        self._parent.setblocking(False)
        try:
            while not self._close:
                said = self._parent.recv(64)
                if not said:
                    self._close = True
                self._drain |= DRAIN in said
                self._close |= CLOSE in said
        except BlockingIOError:
            pass
        except OSError:
            self._close = True

    def drain_requested(self) -> bool:
        """Whether the parent has asked every worker to drain."""
        self._read()
        return self._drain

    async def wait(self) -> None:
        """Tell the parent this worker has drained, then wait for the word that every worker
        has (or for the parent's end)."""
        with contextlib.suppress(OSError):  # the parent is gone: nobody left to wait for
            self._parent.send(DRAINED)
        loop = asyncio.get_running_loop()
        told: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            self._read()
            if self._close and not told.done():
                told.set_result(None)

        fd = self._parent.fileno()
        loop.add_reader(fd, readable)
        try:
            readable()  # the word may be here already
            await told
        finally:
            loop.remove_reader(fd)


def _tell_parent_to_drain() -> None:
    """A worker asked to drain (the admin API) has the parent drain every worker."""
    os.kill(os.getppid(), signal.SIGUSR1)


def main(fd: int, index: int) -> int:
    """Serve as one of the parent's workers; the exit status (``START_FAILED`` for a start-up
    failure, which the parent passes on)."""
    # A drain may come before this worker serves (a sibling's request, or SIGTERM): ignored,
    # not fatal, and read from the link once it serves (``DrainBarrier.drain_requested``).
    # Killed by SIGTERM's default action once listening, it would reset the connections queued
    # on its listener.
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    link = DrainBarrier(socket.socket(fileno=fd))
    try:
        engine_token = link.engine_token()
        # As the parent read them (``rtgate.server``): the file and the same environment.
        settings = load_settings()
        configure_serving_logs(settings)
        # Here, not at the top: the parent imports this module for the link's words.
        from rtgate.serving import serve_one

        serve_one(
            settings,
            engine_token,
            propagate_drain=_tell_parent_to_drain,
            drain_requested=link.drain_requested,
            siblings=link,
            announce=index == 0,
        )
    except GatewayError as err:
        # A start-up failure (database, Redis): reported as ``server.main`` reports it.
        return report_failed_start(err)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[2]), int(sys.argv[3])))
