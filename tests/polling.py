"""Waiting for what sets no event a test could await: another thread's or process's state, a
store's rows, a timer's effect."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def until(
    check: Callable[[], Awaitable[bool] | bool], seconds: float = 5.0, every: float = 0.01
) -> None:
    """Poll ``check`` (plain or async) every ``every`` seconds until it holds; TimeoutError after
    ``seconds``."""
    async with asyncio.timeout(seconds):
        while True:
            got = check()
            if await got if isinstance(got, Awaitable) else got:
                return
            await asyncio.sleep(every)
