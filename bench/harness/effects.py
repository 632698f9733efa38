"""The side effects a ``Pump`` asks for, answered at once, for benchmarks that drive a pump
without a gateway (``relay_hotpath_bench.py``, ``record_path_bench.py``).

Each answer is a future that is already done, as the pump's ``Effects`` protocol has it (a
commit's outcome and a budget check are futures the pump adds callbacks to); an older checkout
that awaited them still can.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

T = TypeVar("T")


def resolved(value: T) -> asyncio.Future[T]:
    """A future of the running loop, already holding ``value``."""
    done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    done.set_result(value)
    return done


class NoEffects:
    """Every commit durable at once, no budget crossed, nothing else done."""

    def commit(self, record: Any, frame: Any) -> Any:
        return resolved(True)

    def budget_refusal(self) -> asyncio.Future[None]:
        return resolved(None)

    def keep_transcript(self, entries: Any) -> None: ...

    def refused(self, code: str) -> None: ...

    async def hangup(self) -> None: ...
