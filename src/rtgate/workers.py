"""``--workers N``: N processes sharing the port, started and told to drain by a parent.

Imported only when ``workers`` is over 1 (``server.serve``). The parent imports no more than
this module does; each worker is ``python -m rtgate.worker`` (``worker.py``), which reads the
settings and imports the serving process (``rtgate.serving``) once it starts (docs/performance.md
9.16, 9.18).

Workers bind the same port with ``SO_REUSEPORT`` and the kernel spreads connections over them;
they share the database, and with ``redis_url`` the session limits and the admin API's view of
live sessions; without it each worker counts and sees only its own (a warning says so). The
parent serves nothing: it turns its signals into words on each worker's link (``worker.py``:
SIGTERM drains, a second one or SIGINT stops at once, SIGUSR1 drains and never escalates) and
waits for its workers.

Workers of a drain close together. Each worker's ``SO_REUSEPORT`` listener has an accept queue
of its own, and the kernel resets the connections still queued on a listener that closes; so a
worker that closed as soon as its own sessions were over would reset clients while a sibling
still serves. Instead a drained worker tells the parent and keeps listening, refusing new
sessions as the drain does, until the parent has heard it from every worker (or seen it exit);
then they all close (``Workers.serve``). A stop waits for no one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rtgate.config import Settings, fingerprint
from rtgate.errors import START_FAILED
from rtgate.interpreter import python_m
from rtgate.worker import ASK_DRAIN, CLOSE, DRAIN, DRAINED, METRICS_DIR, SPOKEN_FOR, STOP

log = logging.getLogger("rtgate")


class Workers:
    """The parent's ends of its workers' links, and what it has told them and heard."""

    def __init__(self, links: list[socket.socket]) -> None:
        self.links = links
        self.procs: list[subprocess.Popen[bytes]] = []
        self.draining = False
        self.stopping = False
        self.closed = False
        self._drained: set[int] = set()
        self._gone: set[int] = set()

    def drain(self) -> None:
        """Every worker drains (once: a drain under way is left as it is)."""
        if not self.draining:
            self.draining = True
            self._say(DRAIN)

    def stop(self) -> None:
        """Every worker ends its live sessions now."""
        self.stopping = True
        self._say(STOP)

    def on_signal(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if signum != signal.SIGUSR1 and self.stopping:
            # A worker that is not serving yet reads no word (a store that takes its time to
            # open, say): a third signal does not wait for it.
            log.warning("%s again: killing the workers still running", name)
            self.kill()
        elif signum == signal.SIGINT or (signum == signal.SIGTERM and self.draining):
            log.info("%s: ending the live sessions now", name)
            self.stop()
        else:
            self.drain()

    def kill(self) -> None:
        for p in self.procs:
            if p.returncode is None:  # not reaped: its pid is still its own
                with contextlib.suppress(ProcessLookupError):
                    p.kill()

    def _say(self, word: bytes) -> None:
        for link in self.links:
            with contextlib.suppress(OSError):  # exited already: its end of file says so
                link.send(word)

    def serve(self) -> None:
        """Read every link until each worker has exited: a worker's request to drain has all
        drain; once each has drained (or exited), all are told to close."""
        with selectors.DefaultSelector() as reading:
            for i, link in enumerate(self.links):
                reading.register(link, selectors.EVENT_READ, i)
            while reading.get_map():
                for key, _ in reading.select():
                    try:
                        heard = key.fileobj.recv(64)  # type: ignore[union-attr]
                    except OSError:
                        heard = b""
                    if not heard:
                        reading.unregister(key.fileobj)
                        self._gone.add(key.data)
                        self._forget_live(key.data)
                        if not (self.draining or self.stopping):
                            # It failed to start, or died serving: the gateway does not run on
                            # short of a worker; the rest drain, and a supervisor restarts it.
                            log.error("rtgate-worker-%d ended: draining the others", key.data)
                            self.drain()
                        continue
                    if ASK_DRAIN in heard:
                        self.drain()
                    if DRAINED in heard:
                        self._drained.add(key.data)
                self._close_when_all_drained()

    def _forget_live(self, index: int) -> None:
        """A worker gone: its live gauges no longer count (what prometheus-client's
        ``mark_process_dead`` does, without the library in this process). Its counters stay,
        as totals do."""
        metrics_dir = os.environ.get(METRICS_DIR)
        if metrics_dir is None or index >= len(self.procs):
            return
        for f in Path(metrics_dir).glob(f"gauge_live*_{self.procs[index].pid}.db"):
            f.unlink(missing_ok=True)

    def _close_when_all_drained(self) -> None:
        if self.draining and not self.closed and len(self._drained | self._gone) == len(self.links):
            self.closed = True
            self._say(CLOSE)


def serve_workers(settings: Settings, engine_token: str) -> int:
    """Start ``settings.workers`` workers, turn the signals into their orders, close them
    together, and return once every one has exited: the exit status, 2 if a worker failed to
    start (``START_FAILED``, as one process would), 1 if one ended otherwise in failure, else 0."""
    program = sys.argv[1] if len(sys.argv) > 1 else "rtgate"
    # The workers' metrics, in files of this run's own (prometheus_client's multiprocess
    # mode): each scrape, whichever worker takes it, sums them all (a newcomer's find: it
    # answered for one worker, and Prometheus read each change of worker as a reset).
    settings.home.mkdir(parents=True, exist_ok=True)
    forget_dead_runs(settings.home)
    with tempfile.TemporaryDirectory(prefix="metrics-", dir=settings.home) as metrics_dir:
        os.environ[METRICS_DIR] = metrics_dir
        with held_while_alive(Path(metrics_dir)):
            return _serve_workers(settings, engine_token, program)


#: In each run's metrics directory: locked by its parent for the run's life.
ALIVE = ".alive"


@contextlib.contextmanager
def held_while_alive(run: Path) -> Iterator[None]:
    """Lock ``run``'s ``ALIVE`` file for as long as this parent runs: the kernel lets the lock
    go when the process dies, however it dies (the lock is not inherited by the workers)."""
    fd = os.open(run / ALIVE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def forget_dead_runs(home: Path) -> None:
    """Remove the metrics directories of runs whose parent is gone without removing its own
    (killed, SIGKILL: a newcomer's find, they piled up in the home): one whose ``ALIVE`` lock
    can be taken is nobody's. A live one, another gateway's on this home (in another container
    too: a lock, not a pid), is left alone; so is one from before the lock, which cannot tell."""
    for run in home.glob("metrics-*"):
        try:
            fd = os.open(run / ALIVE, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue  # not a run's directory, or one without the lock
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its parent runs
        else:
            shutil.rmtree(run, ignore_errors=True)
        finally:
            os.close(fd)


def _serve_workers(settings: Settings, engine_token: str, program: str) -> int:
    pairs = [socket.socketpair() for _ in range(settings.workers)]
    workers = Workers([ours for ours, _ in pairs])
    first = f"{engine_token} {fingerprint(settings)}\n".encode()
    for ours, _ in pairs:
        # First on each link, before any word a signal writes there.
        ours.sendall(first)
    for sig in SPOKEN_FOR:
        signal.signal(sig, workers.on_signal)
    procs = workers.procs
    # Blocked while the workers start, so each starts with them blocked until it can catch
    # them (``worker.main``): a supervisor's signal to the whole group in a worker's first
    # moments must not kill it. This process's own are delivered once unblocked.
    signal.pthread_sigmask(signal.SIG_BLOCK, SPOKEN_FOR)
    try:
        for i, (_, theirs) in enumerate(pairs):
            fd = theirs.fileno()
            # The worker's end is the worker's alone (no sibling inherits it), so its exit reads
            # as end of file here. Workers inherit this process's environment: the same settings.
            argv = python_m("rtgate.worker", program, str(fd), str(i))
            procs.append(subprocess.Popen(argv, pass_fds=(fd,)))  # noqa: S603 (this interpreter)
            theirs.close()
    except OSError as err:
        log.error("a worker could not be started: %s", err)
        workers.stop()  # those started end; the links of those not started read as exited
        for _, theirs in pairs:
            theirs.close()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SPOKEN_FOR)
    workers.serve()
    for p in procs:
        p.wait()
    failed = [p.returncode for p in procs if p.returncode]
    for i, p in enumerate(procs):
        # A worker that could not start said why in its one line (``report_failed_start``).
        if p.returncode and p.returncode != START_FAILED:
            log.error("rtgate-worker-%d exited with status %s", i, p.returncode)
    if len(procs) < len(pairs):
        return 1
    return START_FAILED if START_FAILED in failed else 1 if failed else 0
