"""The beat of a serving process (rtgate.lost_sessions): it goes on through a store outage."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from rtgate.clock import ManualClock
from rtgate.lost_sessions import LOST_AFTER_BEATS, Witness, keep_beating
from rtgate.store.connections import fetch
from rtgate.store.faults import FaultyStore
from rtgate.store.sql import SqlStore
from tests.polling import until


async def test_a_beat_the_store_refuses_is_tried_again_at_the_next(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "rtgate")
    inner = SqlStore(f"sqlite:///{tmp_path / 'rtgate.db'}")
    await inner.init()
    store = FaultyStore(inner)
    store.fail(only=frozenset({"beat"}))
    clock = ManualClock()
    task = asyncio.create_task(keep_beating(store, clock, "inst_a", every=0.01, longest=3600))
    try:
        await until(lambda: store.calls.get("beat", 0) >= 3)
        assert not task.done()
        assert "instance beat failed, trying again every 0.01 s" in caplog.text
        assert await inner.db.run(fetch("SELECT id FROM instances")) == []
        store.heal()

        async def seen() -> bool:
            return bool(await inner.db.run(fetch("SELECT id FROM instances")))

        await until(seen)
        await until(lambda: store.calls.get("end_lost_sessions", 0) >= 1)
        # Only once four beats in a row got through (Witness): three failed before the heal.
        assert store.calls["beat"] - store.calls["end_lost_sessions"] >= 3 + LOST_AFTER_BEATS - 1
        assert caplog.text.count("instance beat failed") == 1  # once for the outage
        assert "instance beat works again" in caplog.text
    finally:
        task.cancel()
        await inner.close()


def test_only_four_beats_in_a_row_make_a_witness() -> None:
    """After its own failed beat, a process heard nothing of the others either: the first
    back from an outage must not take them for dead (a review's find)."""
    w = Witness()
    assert [w.beat(True) for _ in range(5)] == [False, False, False, True, True]
    assert w.beat(False) is False
    assert [w.beat(True) for _ in range(4)] == [False, False, False, True]
