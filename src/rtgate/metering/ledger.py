"""The durable usage ledger: group commit in front of ``Store.add_usage``, with a spill file.

``record()`` returns only once the record is durable, and the bridge forwards a metered frame
(``response.done``, transcription ``completed``) to the client only after that. So a gateway
killed at any instant loses no record whose frame a client has seen.

Records that arrive while a commit runs are batched into the next one, so many sessions share one
transaction and one fsync. When a batch fails, each record is retried alone (one bad record must
not sink the others); a record the store still refuses is appended to the spill file (one JSON
line, fsynced) and counts as durable. ``recover()`` moves spilled records into the store at the
next start. Only when the spill file cannot be written either does ``record()`` raise.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import orjson

from rtgate.metering.record import UsageRecord
from rtgate.store.port import Store

log = logging.getLogger("rtgate.ledger")


class LedgerError(Exception):
    """A record could be neither committed nor spilled."""


def _append_lines(path: Path, lines: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, b"".join(lines))
        os.fsync(fd)
    finally:
        os.close(fd)


class Ledger:
    def __init__(
        self, store: Store, *, spill_path: Path | None = None, max_batch: int = 512
    ) -> None:
        self._store = store
        self._spill_path = spill_path
        self._max_batch = max_batch
        self._pending: list[tuple[UsageRecord, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._closed = False

    async def record(self, rec: UsageRecord) -> None:
        """Queue ``rec`` and wait until it is durable; raises ``LedgerError`` if it cannot be."""
        if self._closed:
            await self._commit_one(rec)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((rec, fut))
        self._wake.set()
        await fut

    async def run(self) -> None:
        """The writer loop; owned by the application, cancelled at shutdown after ``drain``."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = (
                self._pending[: self._max_batch],
                self._pending[self._max_batch :],
            )
            await self._commit(batch)

    async def _commit(self, batch: Sequence[tuple[UsageRecord, asyncio.Future[None]]]) -> None:
        try:
            await self._store.add_usage([rec for rec, _ in batch])
        except Exception as exc:  # noqa: BLE001 -- any failure: fall back per record
            log.error("usage commit of %d records failed: %s", len(batch), exc)
            for rec, fut in batch:
                try:
                    await self._commit_one(rec)
                except LedgerError as err:
                    if not fut.done():
                        fut.set_exception(err)
                else:
                    if not fut.done():
                        fut.set_result(None)
            return
        for _, fut in batch:
            if not fut.done():
                fut.set_result(None)

    async def _commit_one(self, rec: UsageRecord) -> None:
        try:
            await self._store.add_usage([rec])
            return
        except Exception as exc:  # noqa: BLE001 -- the spill file is the last resort
            log.error("usage record refused by the store (%s); spilling it", exc)
        if self._spill_path is None:
            raise LedgerError("the usage record could not be stored")
        line = orjson.dumps(rec.to_json()) + b"\n"
        try:
            await asyncio.to_thread(_append_lines, self._spill_path, [line])
        except OSError as exc:
            raise LedgerError(f"the usage record could not be stored or spilled: {exc}") from exc

    async def drain(self) -> None:
        """Commit whatever is pending; later ``record`` calls commit directly."""
        self._closed = True
        await self._flush()

    async def recover(self) -> int:
        """Move spilled records into the store; return how many. Call before serving."""
        path = self._spill_path
        if path is None or not path.exists():
            return 0
        lines = [ln for ln in path.read_bytes().splitlines() if ln.strip()]
        records = []
        for ln in lines:
            try:
                records.append(UsageRecord.from_json(orjson.loads(ln)))
            except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
                log.error("unreadable spilled usage line skipped: %s", exc)
        remaining: list[UsageRecord] = []
        try:
            await self._store.add_usage(records)
        except Exception:  # noqa: BLE001 -- retry one by one, keep what still fails
            for rec in records:
                try:
                    await self._store.add_usage([rec])
                except Exception as exc:  # noqa: BLE001
                    log.error("spilled usage record still refused: %s", exc)
                    remaining.append(rec)
        if remaining:
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(b"".join(orjson.dumps(r.to_json()) + b"\n" for r in remaining))
            os.replace(tmp, path)
        else:
            path.unlink()
        moved = len(records) - len(remaining)
        log.warning("recovered %d spilled usage records from %s", moved, path)
        return moved
