"""Waiting for a database call with a hard deadline, without waiting for its driver to give up.

Cancelling a database call need not return at once: its code may still run on the way out
(PostgreSQL's runner terminates the connection, ``store/connections.py``; a driver that closes
gracefully, as SQLAlchemy's asyncpg pool did, waits up to 2 s for an answer that a stalled
network never sends). So the caller stops waiting at the deadline, and the call, cancelled,
winds down in a task of its own.
``Deadlines`` owns those tasks until they end; ``close`` waits for them, bounded.

A call that is a future already (the SQLite ledger writer's batch, ``store/sqlite_writer.py``)
needs no task: the work it stands for runs elsewhere and ends on its own, so it is awaited
directly, and cancelling it at the deadline returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar, cast

T = TypeVar("T")


class DeadlinePassed(TimeoutError):
    """The deadline passed with the call unanswered; a ``TimeoutError`` the call raised itself
    (a driver's connect timeout) is not this one."""


class Deadlines:
    def __init__(self) -> None:
        #: Calls past their deadline, cancelled and still winding down.
        self._late: set[asyncio.Task[Any]] = set()

    async def run(self, call: Awaitable[T], seconds: float) -> T:
        """``call``'s result or exception; ``DeadlinePassed`` once ``seconds`` have passed."""
        if isinstance(call, asyncio.Future):
            return cast(T, await _future_within(call, seconds))
        task = asyncio.ensure_future(cast(Coroutine[Any, Any, T], call))
        loop = task.get_loop()
        waiter: asyncio.Future[None] = loop.create_future()

        def wake(_: object = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        # What ``asyncio.wait`` does for one awaitable, without its sets and counters.
        timer = loop.call_later(seconds, wake)
        task.add_done_callback(wake)
        try:
            await waiter
        except asyncio.CancelledError:
            self._abandon(task)
            raise
        finally:
            timer.cancel()
            task.remove_done_callback(wake)
        if not task.done():
            self._abandon(task)
            raise DeadlinePassed
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


#: The message of a future cancelled at its deadline (an outside cancel carries another).
_DEADLINE = "rtgate.deadline"


async def _future_within(fut: asyncio.Future[Any], seconds: float) -> Any:
    """``fut``'s outcome, or ``DeadlinePassed`` (``fut`` cancelled) once ``seconds`` have passed.
    Nothing winds down on this loop, so cancelling ``fut`` ends the wait at once. One timer,
    ~1 µs: ``asyncio.timeout`` costs ~10 µs a use (its context, ``current_task``)."""
    timer = fut.get_loop().call_later(seconds, fut.cancel, _DEADLINE)
    try:
        return await fut
    except asyncio.CancelledError as exc:
        if exc.args != (_DEADLINE,):
            raise
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # the caller was cancelled as the deadline passed: the cancel wins
        raise DeadlinePassed from None
    finally:
        timer.cancel()


def _settled(task: asyncio.Task[Any]) -> None:
    # Retrieve the outcome of an abandoned call, so asyncio does not report it as never read.
    if not task.cancelled():
        with contextlib.suppress(BaseException):
            task.exception()
