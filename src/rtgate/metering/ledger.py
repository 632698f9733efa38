"""The durable ledger: usage records, and the session rows and transcripts they belong to, written
in order through one queue with a deadline, and spilled to local files when the database does
not take them in time.

Durable means committed to the store, or appended to a spill segment and fsynced
(``spill.py``). ``record``, ``open_session`` and ``close_session`` return once their entry is
durable, and the relay forwards a metered frame (``response.done``, transcription
``completed``) only after that, so a gateway killed at any instant loses no record whose frame a
client has seen. Transcript entries are queued without waiting: the relay never waits for them.

One writer task takes what is queued, in order, in batches: entries that arrive while a write
runs go into the next, so many sessions share one transaction (group commit). Its states:

* ``STORING``: a batch goes to the store and gets ``commit_timeout`` seconds. One that fails, or
  misses the deadline, is spilled instead, and the ledger turns ``SPILLING``.
* ``SPILLING``: batches go straight to the spill (a database that is down must not cost every
  batch its deadline again), in the same order. The drainer, every ``retry_seconds``, seals the
  segment being written, writes each sealed segment to the store in order and deletes it; when
  nothing more was spilled meanwhile, the ledger turns ``STORING`` again.

A batch the store refuses for its data (a constraint, a value out of range) is retried entry by
entry; an entry refused alone is set aside in the spill directory's rejected file (logged) and
counts as durable. Only an entry that can be neither stored nor spilled (the disk is full) fails
its caller with ``LedgerError`` (``submit``'s future: False). The operator hears of an outage
once as it starts, once as it ends, and once if entries cannot be kept at all: never once per
record.

A write that missed its deadline may still commit later, with its entries spilled as well: the
store writes each entry once (``Store.write`` is idempotent), so draining adds nothing twice. For
the same reason a drain cut short is simply run again, and ledgers sharing a spill directory
may drain each other's sealed segments. ``recover()`` writes what an earlier run left.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rtgate.deadline import Deadlines
from rtgate.gil import Lender
from rtgate.metering.journal import from_line, to_line
from rtgate.metering.record import UsageRecord, utc_day
from rtgate.metering.spill import Claim, SpillWriter, owner, segments, set_aside
from rtgate.metrics import Metrics
from rtgate.protocol.transcript import TranscriptEntry
from rtgate.store.port import Entry, SessionClose, SessionOpen, Store, StoreError

log = logging.getLogger("rtgate.ledger")

#: A drained chunk gets this many times the commit deadline: nobody waits on it.
_DRAIN_DEADLINE_FACTOR = 5


class LedgerError(Exception):
    """An entry could be neither committed nor spilled."""


@dataclass
class _Backlog:
    """What one of this ledger's segments holds that the store may not have yet."""

    records: int = 0
    #: Charged nano-dollars by key id, then UTC day.
    charged: dict[str, dict[str, int]] = field(default_factory=dict)


#: An entry and its future: True once durable, False if it can be neither stored nor spilled.
_Queued = tuple[Entry, asyncio.Future[bool] | None]


class Ledger:
    def __init__(
        self,
        store: Store,
        *,
        spill_dir: Path | None = None,
        commit_timeout: float = 1.0,
        retry_seconds: float = 1.0,
        max_batch: int = 512,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._dir = spill_dir
        self._commit_timeout = commit_timeout
        self._retry_seconds = retry_seconds
        self._max_batch = max_batch
        self._metrics = metrics
        self._deadlines = Deadlines()
        self._pending: list[_Queued] = []
        self._wake = asyncio.Event()
        self._drain_wake = asyncio.Event()
        #: One batch at a time reaches the store or the spill, so entries keep their order.
        self._writing = asyncio.Lock()
        #: Appends and seals of the open segment, and the drainer's look at it.
        self._spill_lock = asyncio.Lock()
        self._writer = SpillWriter(spill_dir) if spill_dir is not None else None
        #: The spill's appends run in a thread that a busy loop starves of the GIL (``gil.py``).
        self._spill_lender = Lender()
        self._closed = False
        self._spilling = False
        #: Segments this ledger wrote that are not drained yet.
        self._backlog: dict[Path, _Backlog] = {}
        #: Charged nano-dollars this ledger made durable, by key id, then UTC day.
        self._metered: dict[str, dict[str, int]] = {}
        #: Why the store last failed.
        self._store_failure = "no failure yet"
        #: The outage on now: why it began (None while the store takes what it is given), and
        #: whether the operator was told; entries written from the spill since it began.
        self._outage: str | None = None
        self._outage_logged = False
        self._drained = 0
        self._unrecordable_logged = False
        #: Entries written after ``drain`` by ``submit``, each in a task of its own.
        self._alone: set[asyncio.Task[None]] = set()
        #: The loop of the last entry: ``asyncio.get_running_loop`` costs a system call per
        #: call on Python 3.11 (``getpid``), and a record is queued once per metered event.
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- what callers see ---------------------------------------------------------------------
    async def record(self, rec: UsageRecord) -> None:
        """Queue ``rec`` and wait until it is durable; ``LedgerError`` if it cannot be."""
        if not await self.submit(rec):
            raise LedgerError("the record could be neither stored nor spilled")

    async def open_session(self, s: SessionOpen) -> None:
        """Queue a session's start and wait until it is durable (its usage refers to it)."""
        await self._durable(s)

    async def close_session(self, c: SessionClose) -> None:
        """Queue a session's end and wait until it is durable."""
        await self._durable(c)

    def keep_transcript(self, entries: Sequence[TranscriptEntry]) -> None:
        """Queue transcript entries; nobody waits for them. Entries queued after ``drain``
        (shutdown, once every session has ended) are not written."""
        self._pending.extend((e, None) for e in entries)
        self._wake.set()

    @property
    def spilling(self) -> bool:
        """Whether entries go to the spill because the store did not take them."""
        return self._spilling

    @property
    def waiting(self) -> int:
        """Usage records this ledger spilled that the store may not have yet."""
        return sum(b.records for b in self._backlog.values())

    def metered(self, key_id: str) -> dict[str, int]:
        """Charged nano-dollars of ``key_id`` this ledger made durable, by UTC day."""
        return dict(self._metered.get(key_id, {}))

    def unsettled(self, key_id: str) -> dict[str, int]:
        """Charged nano-dollars of ``key_id`` spilled and not drained yet, by UTC day."""
        out: dict[str, int] = {}
        for backlog in self._backlog.values():
            for day, nanos in backlog.charged.get(key_id, {}).items():
                out[day] = out.get(day, 0) + nanos
        return out

    def submit(self, rec: UsageRecord) -> asyncio.Future[bool]:
        """``record`` without a coroutine: queue ``rec``; the future is True once it is durable
        (and counted in the metrics), False if it can be neither stored nor spilled (the ledger
        logged why and counted it). The relay adds a callback to it instead of running a task
        per record, and hands it to the core as it is (no second future, no second hop)."""
        fut = self._future()
        if self._closed:
            # After ``drain`` (shutdown): written at once, by a task the ledger owns.
            task = asyncio.ensure_future(self._write_alone(rec, fut))
            self._alone.add(task)
            task.add_done_callback(self._alone.discard)
        else:
            self._pending.append((rec, fut))
            self._wake.set()
        return fut

    def _future(self) -> asyncio.Future[bool]:
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop.create_future()

    async def _durable(self, entry: Entry) -> None:
        fut = self._future()
        if self._closed:
            await self._write_alone(entry, fut)
        else:
            self._pending.append((entry, fut))
            self._wake.set()
        if not await fut:
            raise LedgerError("the entry could be neither stored nor spilled")

    async def _write_alone(self, entry: Entry, fut: asyncio.Future[bool]) -> None:
        async with self._writing:
            try:
                await self._write([(entry, fut)])
            except Exception:  # a bug must not leave a caller waiting forever
                log.exception("the ledger failed writing an entry")
                _fail([(entry, fut)])

    # -- the writer ---------------------------------------------------------------------------
    async def run(self) -> None:
        """The writer and the drainer; owned by the application, cancelled at shutdown after
        ``drain``."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._write_loop(), name="ledger-writer")
            tasks.create_task(self._drain_loop(), name="ledger-drainer")

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        async with self._writing:
            while self._pending:
                batch = self._pending[: self._max_batch]
                self._pending = self._pending[self._max_batch :]
                try:
                    await self._write(batch)
                except Exception:  # a bug must not leave a caller waiting forever
                    log.exception("the ledger failed writing %d entries", len(batch))
                    _fail(batch)

    async def _write(self, batch: Sequence[_Queued]) -> None:
        if not self._spilling:
            why = await self._store_batch([e for e, _ in batch], self._commit_timeout)
            if why is None:
                self._made_durable(batch)
                return
            if why == _BAD_DATA:
                await self._write_one_by_one(batch)
                return
            self._start_spilling()
        await self._spill(batch)

    async def _store_batch(self, entries: Sequence[Entry], seconds: float) -> str | None:
        """Write ``entries`` within ``seconds``: None when written, else why not (``_BAD_DATA``
        when the store refused the data itself)."""
        try:
            await self._deadlines.run(self._store.write(entries), seconds)
        except TimeoutError:
            why = f"no answer within {seconds:g} s"
        except StoreError as exc:
            if exc.bad_data:
                return _BAD_DATA
            why = exc.message
        except Exception as exc:  # noqa: BLE001 -- whatever the store raises, the entries are kept
            why = repr(exc)
        else:
            if not self._spilling:
                self._recovered()
            return None
        self._store_failure = why
        if self._outage is None:
            self._outage = why
        return why

    async def _write_one_by_one(self, batch: Sequence[_Queued]) -> None:
        """A batch the store refused for one entry's data, entry by entry, all within one
        commit timeout: a store answering each just in time held every frame behind the batch
        for up to its length times the timeout (an audit's suspicion); what is left then is
        spilled (with nowhere to spill, each entry keeps a timeout of its own, as before).
        A remainder under a quarter of the timeout is not tried: a call cut that short would
        be taken for a store that does not answer (a review's find)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self._commit_timeout
        for i, (entry, fut) in enumerate(batch):
            left = until - loop.time() if self._dir is not None else self._commit_timeout
            if left >= self._commit_timeout / 4:
                why = await self._store_batch([entry], left)
            else:
                why = self._store_failure = "out of time writing a batch entry by entry"
            if why is None:
                self._made_durable([(entry, fut)])
            elif why == _BAD_DATA:
                await self._set_aside([(entry, fut)])
            else:
                self._start_spilling()
                await self._spill(batch[i:])
                return

    async def _set_aside(self, batch: Sequence[_Queued], *, replayed: bool = False) -> bool:
        """Keep entries the store refuses for their data where the operator finds them (False
        if that failed too). ``replayed``: drained from the spill, where they were counted."""
        entries = [e for e, _ in batch]
        if self._dir is None:
            log.error("the store refused %d entries for their data: %r", len(entries), entries)
            _fail(batch)
            return False
        try:
            path = await asyncio.to_thread(set_aside, self._dir, [to_line(e) for e in entries])
        except OSError as exc:
            self._unrecordable(batch, f"refused for their data; setting aside failed: {exc}")
            return False
        log.error("the store refused %d entries for their data; kept in %s", len(entries), path)
        if not replayed:
            self._made_durable(batch)
        return True

    async def _spill(self, batch: Sequence[_Queued]) -> None:
        if self._writer is None:
            self._unrecordable(batch, "there is no spill directory")
            return
        lines = [to_line(e) for e, _ in batch]
        try:
            async with self._spill_lock:
                # In a thread: the append and its fsync (a busy loop lends it the GIL).
                path = await self._spill_lender.run(
                    asyncio.get_running_loop(), None, self._writer.append, lines
                )
                # The drainer may have found the spill empty while this append waited: spilled
                # entries are drained before anything goes to the store again.
                self._start_spilling()
        except OSError as exc:
            self._unrecordable(batch, f"spilling failed: {exc}")
            return
        if self._outage is not None and not self._outage_logged:
            self._outage_logged = True
            log.warning(
                "the usage store is unavailable (%s): usage is spilled to %s (fsynced) and "
                "written to the store once it answers",
                self._outage,
                self._dir,
            )
        backlog = self._backlog.setdefault(path, _Backlog())
        for entry, _ in batch:
            if isinstance(entry, UsageRecord):
                backlog.records += 1
                _add(backlog.charged, entry)
        self._made_durable(batch)
        self._gauge()

    def _made_durable(self, batch: Sequence[_Queued]) -> None:
        if self._unrecordable_logged:
            self._unrecordable_logged = False
            log.warning("usage is recorded again")
        metrics = self._metrics
        for entry, fut in batch:
            if isinstance(entry, UsageRecord):
                _add(self._metered, entry)
                if metrics is not None:
                    metrics.usage(entry)
            if fut is not None and not fut.done():
                fut.set_result(True)

    def _unrecordable(self, batch: Sequence[_Queued], why: str) -> None:
        records = sum(isinstance(e, UsageRecord) for e, _ in batch)
        if not self._unrecordable_logged:
            self._unrecordable_logged = True
            log.error(
                "usage can be neither stored (%s) nor kept locally (%s): sessions whose usage "
                "is lost are ended with usage_unavailable",
                self._store_failure,
                why,
            )
        if self._metrics is not None and records:
            self._metrics.ledger_unrecorded.inc(records)
        _fail(batch)

    # -- outages ------------------------------------------------------------------------------
    def _start_spilling(self) -> None:
        if self._writer is None:
            # Nowhere to spill: every batch tries the store, and fails alone if it must.
            return
        if not self._spilling:
            self._spilling = True
            self._drain_wake.set()
            self._gauge()

    def _recovered(self) -> None:
        """The store takes entries again and the spill is empty: the outage is over."""
        if self._outage_logged:
            log.warning(
                "the usage store answers again; %d spilled entries written to it", self._drained
            )
        self._outage, self._outage_logged, self._drained = None, False, 0

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.ledger_spilling.set(1 if self._spilling else 0)
            self._metrics.ledger_waiting.set(self.waiting)

    # -- the drainer --------------------------------------------------------------------------
    async def _drain_loop(self) -> None:
        while True:
            await self._drain_wake.wait()
            self._drain_wake.clear()
            while self._spilling:
                try:
                    again = await self._drain_pass()
                except Exception:  # the drainer must outlive a bad pass
                    log.exception("draining the usage spill failed")
                    again = False
                if self._spilling and not again:
                    await asyncio.sleep(self._retry_seconds)

    async def _drain_pass(self) -> bool:
        """Write every sealed segment to the store, then seal the open one and write it too;
        True if it all went in but more was spilled meanwhile (go again), False if the store
        did not take it or the ledger is storing again. The open segment is sealed only once
        the sealed ones went in: a long outage grows one segment, not one per retry."""
        assert self._writer is not None
        if await self._drain(self._writer.directory) is None:
            return False
        async with self._spill_lock:
            self._writer.seal()
        if await self._drain(self._writer.directory) is None:
            return False
        async with self._spill_lock:
            if self._writer.path is None:
                if self._writer.left():
                    # A segment of ours is another ledger's to drain now (a sibling worker
                    # sharing the directory): until it is in, what comes after it is spilled
                    # behind it, or a session's usage could reach the store before its start
                    # (an audit's find: such a record was refused and set aside, unbilled).
                    return False
                # Nothing was spilled while the sealed segments drained: back to the store.
                self._spilling = False
                self._gauge()
                self._recovered()
                return False
        return True

    async def _drain(self, directory: Path) -> int | None:
        """Write every segment in ``directory`` that no one holds (and the single spill file of
        earlier versions beside it) to the store, each deleted once in; how many entries, or
        None if the store did not take one."""
        legacy = directory.with_name(directory.name + ".jsonl")
        written = 0
        held: set[str] = set()
        for path in [*segments(directory), legacy]:
            if owner(path) in held:
                # An earlier segment of its owner is being written or drained: a session's
                # usage must not reach the store before its start does.
                continue
            # Taken, read and deleted in the event loop, not a thread: a task cancelled while a
            # thread took the lock would leave the segment locked for good.
            claim = Claim.take(path)
            if claim is None:
                if path.exists():
                    held.add(owner(path))
                continue
            written_in = False
            try:
                lines = claim.lines()
                written_in = await self._replay(path, lines)
            finally:
                if written_in:
                    claim.drained()
                else:
                    claim.release()
            if not written_in:
                return None
            written += len(lines)
            self._drained += len(lines)
            self._backlog.pop(path, None)
            self._gauge()
        # Segments of this ledger that another one drained (a sibling worker sharing the
        # directory) are in the store too.
        for path in list(self._backlog):
            if path != self._writer_path() and not path.exists():
                del self._backlog[path]
        self._gauge()
        return written

    def _writer_path(self) -> Path | None:
        return self._writer.path if self._writer is not None else None

    async def _replay(self, path: Path, lines: Sequence[bytes]) -> bool:
        entries: list[Entry] = []
        for line in lines:
            try:
                entries.append(from_line(line))
            except ValueError as exc:
                # Only a crash mid-append tears a line, and its entry was never acknowledged.
                log.error("skipped an unreadable line in %s: %s", path, exc)
        seconds = self._commit_timeout * _DRAIN_DEADLINE_FACTOR
        for start in range(0, len(entries), self._max_batch):
            chunk = entries[start : start + self._max_batch]
            why = await self._store_batch(chunk, seconds)
            if why == _BAD_DATA:
                for entry in chunk:
                    why = await self._store_batch([entry], seconds)
                    if why == _BAD_DATA:
                        if not await self._set_aside([(entry, None)], replayed=True):
                            return False
                    elif why is not None:
                        return False
            elif why is not None:
                return False
        return True

    async def recover(self) -> int:
        """Write what earlier runs left in the spill directory to the store; how many entries.
        Call before serving. What the store does not take now, the drainer writes later."""
        if self._writer is None:
            return 0
        directory = self._writer.directory
        written = await self._drain(directory)
        if written is None:
            log.warning("entries spilled by an earlier run in %s wait for the store", directory)
            self._start_spilling()
            return 0
        if written:
            log.warning("wrote %d entries spilled by an earlier run from %s", written, directory)
        return written

    # -- shutdown -----------------------------------------------------------------------------
    async def drain(self) -> None:
        """Make whatever is queued durable; later ``record`` calls write directly."""
        self._closed = True
        await self._flush()

    async def close(self) -> None:
        """After ``drain`` and ``run``'s end: let late writes wind down, seal the spill."""
        await self._deadlines.close()
        if self._writer is not None:
            async with self._spill_lock:
                self._writer.seal()
        self._spill_lender.close()


#: ``Ledger._store_batch``'s answer when the store refused the data itself.
_BAD_DATA = "bad data"


def _add(ledger: dict[str, dict[str, int]], rec: UsageRecord) -> None:
    days = ledger.setdefault(rec.key_id, {})
    day = utc_day(rec.created_at)
    days[day] = days.get(day, 0) + rec.charged_nanos


def _fail(batch: Sequence[_Queued]) -> None:
    """The entries of ``batch`` are not durable (the caller logged why): their futures say so."""
    for _, fut in batch:
        if fut is not None and not fut.done():
            fut.set_result(False)
