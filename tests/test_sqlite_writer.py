"""The ledger's SQLite writer leaves checkpoints to its ``Checkpointer`` (``sqlite_writer.py``).

SQLite's automatic checkpoint ran inside the commit that filled the WAL past 1,000 pages: that
batch took several milliseconds of copying and fsyncs, and everything queued behind it waited
(docs/performance.md 9.15). The writer's own connection checkpoints only as a safety net, far
past that; the checkpointer copies the WAL back, and the WAL stays bounded either way.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rtgate.store import sqlite_writer
from rtgate.store.sqlite_writer import SqliteWriter, open_sqlite

#: A row of a page's size, so each batch adds pages to the WAL at a known rate.
ROW = "x" * 4000
ROWS_PER_BATCH = 4
#: Enough batches for ~2,000 pages: twice SQLite's automatic checkpoint threshold.
BATCHES = 500


def wal_pages(db: Path) -> float:
    wal = Path(f"{db}-wal")
    return os.path.getsize(wal) / 4096 if wal.exists() else 0.0


@pytest.fixture
def frequent_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_writer, "CHECKPOINT_EVERY", 20)


async def checkpoints_after(checkpointer: sqlite_writer.Checkpointer, runs: int) -> int:
    """The checkpointer's count once it passes ``runs`` (a request may still be running), or
    as it is after ~2 s."""
    for _ in range(200):
        if checkpointer.runs > runs:
            break
        await asyncio.sleep(0.01)
    return checkpointer.runs


async def write_batches(db: Path) -> SqliteWriter:
    conn = open_sqlite(str(db), 1000)
    conn.execute("CREATE TABLE t (x TEXT)")
    conn.close()
    writer = SqliteWriter(str(db), 1000, lambda exc: exc)
    for _ in range(BATCHES):
        await writer.write([("INSERT INTO t (x) VALUES (:x)", [{"x": ROW}] * ROWS_PER_BATCH)])
    return writer


async def test_the_writer_does_not_checkpoint_at_sqlites_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_writer, "CHECKPOINT_EVERY", 10**9)
    db = tmp_path / "w.db"
    writer = await write_batches(db)
    # With SQLite's own threshold the WAL would start over near 1,000 pages.
    assert wal_pages(db) > 1500, wal_pages(db)
    await writer.close()
    conn = open_sqlite(str(db), 1000)
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == BATCHES * ROWS_PER_BATCH
    conn.close()


async def test_the_writers_safety_net_bounds_the_wal_without_the_checkpointer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Passive checkpoints beside a writer that never pauses may never let the WAL start
    over; the writer's own checkpoint, at ``SAFETY_CHECKPOINT_PAGES``, still does."""
    monkeypatch.setattr(sqlite_writer, "CHECKPOINT_EVERY", 10**9)
    monkeypatch.setattr(sqlite_writer, "SAFETY_CHECKPOINT_PAGES", 300)
    db = tmp_path / "w.db"
    writer = await write_batches(db)
    pages = wal_pages(db)  # before close: closing the last connection removes the WAL
    await writer.close()
    assert pages < 600, pages


@pytest.mark.usefixtures("frequent_checkpoints")
async def test_the_checkpointer_copies_the_wal_back(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    writer = await write_batches(db)
    checkpointer = writer._checkpointer
    assert await checkpoints_after(checkpointer, 0) >= 1
    await writer.close()
    assert checkpointer.copied > 0


async def test_close_stops_the_writer_and_checkpointer_threads(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    before = set(threading.enumerate())
    writer = await write_batches(db)
    writer._checkpointer.request()
    started = [t for t in threading.enumerate() if t not in before]
    names = sorted(t.name.split("_")[0] for t in started)
    assert names == ["rtgate-sqlite-checkpoint", "rtgate-sqlite-writer"], names
    await writer.close()
    assert not any(t.is_alive() for t in started)


async def test_a_checkpointer_that_cannot_open_the_file_tries_again(tmp_path: Path) -> None:
    """A failed open must not stop later checkpoints: the WAL would then grow for as long as
    the gateway runs."""
    db = tmp_path / "later" / "w.db"
    checkpointer = sqlite_writer.Checkpointer(str(db), 1000)
    checkpointer.request()  # the directory does not exist yet: the open fails
    assert checkpointer._queued is not None
    checkpointer._queued.result(5)
    assert checkpointer.runs == 0
    db.parent.mkdir()
    open_sqlite(str(db), 1000).close()
    checkpointer.request()
    assert await checkpoints_after(checkpointer, 0) >= 1
    checkpointer.close()


@pytest.mark.usefixtures("frequent_checkpoints")
async def test_a_closed_writer_writes_and_checkpoints_again(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    writer = await write_batches(db)
    await writer.close()
    runs = writer._checkpointer.runs
    for _ in range(100):
        await writer.write([("INSERT INTO t (x) VALUES (:x)", [{"x": ROW}])])
    assert await checkpoints_after(writer._checkpointer, runs) > runs
    await writer.close()


def test_processes_opening_a_new_file_at_once_all_open_it_in_wal(tmp_path: Path) -> None:
    """``--workers N`` on a fresh home: every worker opens the new file at the same moment,
    and one switching it to WAL had the others' switch answer "database is locked" at once,
    failing their start."""
    script = (
        "import sys, time\n"
        "from rtgate.store.sqlite_writer import open_sqlite\n"
        "while time.time() < float(sys.argv[2]):\n"
        "    pass\n"
        "conn = open_sqlite(sys.argv[1], 5000)\n"
        "print(conn.execute('PRAGMA journal_mode').fetchone()[0])\n"
    )
    for attempt in range(4):
        path = str(tmp_path / f"rtgate-{attempt}.db")
        start = time.time() + 1.0  # after every interpreter below has started
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script, path, str(start)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        said = [p.communicate(timeout=30) for p in procs]
        assert [(p.returncode, out.strip()) for p, (out, _) in zip(procs, said, strict=True)] == [
            (0, "wal")
        ] * 4, [err for _, err in said]
