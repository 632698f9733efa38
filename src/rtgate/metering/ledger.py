"""The durable usage ledger: group commit in front of ``Store.add_usage``.

``record()`` returns only once the record is committed, and the bridge forwards a metered
frame (``response.done``, transcription ``completed``) to the client only after that. So a gateway
killed at any instant loses no record whose frame a client has seen, and any record whose commit
was cut short belongs to a frame no client received. Records that arrive while a commit runs are
batched into the next one, so many sessions share one transaction and one fsync.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from rtgate.metering.record import UsageRecord
from rtgate.store.port import Store

log = logging.getLogger("rtgate.ledger")


class Ledger:
    def __init__(self, store: Store, *, max_batch: int = 512) -> None:
        self._store = store
        self._max_batch = max_batch
        self._pending: list[tuple[UsageRecord, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._closed = False

    async def record(self, rec: UsageRecord) -> None:
        """Queue ``rec`` and wait until it is committed (raises if the commit failed)."""
        if self._closed:
            await self._store.add_usage([rec])
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
        except Exception as exc:  # noqa: BLE001 -- every waiter must learn of any failure
            log.error("usage commit failed for %d records: %s", len(batch), exc)
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for _, fut in batch:
            if not fut.done():
                fut.set_result(None)

    async def drain(self) -> None:
        """Commit whatever is pending; later ``record`` calls commit directly."""
        self._closed = True
        await self._flush()
