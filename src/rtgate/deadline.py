"""Waiting for a database call with a hard deadline, without waiting for its driver to give up.

Cancelling a SQLAlchemy call does not return at once: on the way out SQLAlchemy closes the
connection it was using (for asyncpg a graceful close of up to 2 s, then a hard one) and only
then lets the cancellation through; over a stalled network none of that is answered. So the
caller stops waiting at the deadline, and the call, cancelled, winds down in a task of its own.
``Deadlines`` owns those tasks until they end; ``close`` waits for them, bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Deadlines:
    def __init__(self) -> None:
        #: Calls past their deadline, cancelled and still winding down.
        self._late: set[asyncio.Task[Any]] = set()

    async def run(self, call: Coroutine[Any, Any, T], seconds: float) -> T:
        """``call``'s result or exception; ``TimeoutError`` once ``seconds`` have passed."""
        task = asyncio.create_task(call)
        try:
            done, _ = await asyncio.wait({task}, timeout=seconds)
        except asyncio.CancelledError:
            self._abandon(task)
            raise
        if not done:
            self._abandon(task)
            raise TimeoutError
        return task.result()

    @property
    def late(self) -> int:
        """Calls past their deadline that have not wound down yet."""
        return len(self._late)

    def _abandon(self, task: asyncio.Task[Any]) -> None:
        task.cancel()
        self._late.add(task)
        task.add_done_callback(_settled)
        task.add_done_callback(self._late.discard)

    async def close(self, seconds: float = 5.0) -> None:
        """Wait up to ``seconds`` for the late calls to wind down (before their pool closes)."""
        if self._late:
            await asyncio.wait(set(self._late), timeout=seconds)


def _settled(task: asyncio.Task[Any]) -> None:
    # Retrieve the outcome of an abandoned call, so asyncio does not report it as never read.
    if not task.cancelled():
        with contextlib.suppress(BaseException):
            task.exception()
