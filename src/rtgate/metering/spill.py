"""The spill directory: where the ledger keeps entries the database did not take in time.

Each ledger appends to segment files of its own, ``seg-<owner>-<seq>.jsonl`` (``owner`` random
per ledger, ``seq`` counting up), one JSON line per entry (``journal.py``), fsynced before the
entry counts as durable; a new segment's directory entry is fsynced too. The ledger holds an
exclusive ``flock`` on the segment it appends to until it seals it.

Any ledger sharing the directory (another worker, the next start) may drain a segment whose
lock it gets (``Claim``): read it, write its entries to the store, delete it. The store writes
each entry once (``Store.write``), so a drain that is interrupted, or two that race for a file
one of them opened before the other deleted it, write nothing twice.

``SpillWriter.append`` blocks on ``fsync``: the ledger runs it in a thread; the rest is quick.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path

#: Entries the store refused for their data, set aside for the operator (not a segment).
REJECTED = "rejected.jsonl.txt"


def segments(directory: Path) -> list[Path]:
    """The segment files in ``directory``: each owner's in the order they were written."""
    return sorted(directory.glob("seg-*.jsonl")) if directory.is_dir() else []


def owner(segment: Path) -> str:
    """Who wrote ``segment``: a session's entries are all in its owner's segments, in order,
    so one owner's segments are drained in order, never past one that cannot be taken."""
    return segment.name.rsplit("-", 1)[0]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _append(fd: int, data: bytes) -> None:
    """Append ``data`` and fsync it, or leave the file as it was and raise ``OSError``: a torn
    line (a disk that filled up half-way) would otherwise glue itself to the next one."""
    size = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise


def set_aside(directory: Path, lines: Sequence[bytes]) -> Path:
    """Append ``lines`` to the rejected entries' file (fsynced); its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / REJECTED
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        _append(fd, b"".join(lines))
    finally:
        os.close(fd)
    return path


class SpillWriter:
    """One ledger's open segment."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._owner = secrets.token_hex(6)
        self._seq = 0
        self._fd: int | None = None
        #: The segment being appended to; None once sealed, until the next append.
        self.path: Path | None = None
        # An append runs in a thread, and may outlive a cancelled caller: a seal waits for it.
        self._mutex = threading.Lock()

    def append(self, lines: Sequence[bytes]) -> Path:
        """Append ``lines``, durable when this returns; the segment they are in."""
        with self._mutex:
            if self._fd is None or self.path is None:
                self._fd, self.path = self._open()
            _append(self._fd, b"".join(lines))
            return self.path

    def _open(self) -> tuple[int, Path]:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        path = self.directory / f"seg-{self._owner}-{self._seq:06d}.jsonl"
        # Created and locked under a name no drainer looks for, then renamed (the lock goes
        # with the file): a drainer in between would take the new segment and fail its append.
        new = path.with_name(path.name + ".new")
        fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            # Held until sealed: no drainer takes a segment that may still grow.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            new.rename(path)
            _fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            for left in (new, path):
                with contextlib.suppress(OSError):
                    left.unlink()
            raise
        return fd, path

    def left(self) -> list[Path]:
        """This writer's segments still on disk, sealed or open: not in the store yet (another
        ledger sharing the directory may be draining one of them)."""
        mine = f"seg-{self._owner}"
        return [p for p in segments(self.directory) if owner(p) == mine]

    def seal(self) -> Path | None:
        """Stop appending to the open segment (it may be drained now); its path, if any."""
        with self._mutex:
            fd, path = self._fd, self.path
            self._fd = self.path = None
            if fd is not None:
                os.close(fd)
            return path


class Claim:
    """A sealed segment taken for draining: locked against other drainers until released."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def take(cls, path: Path) -> Claim | None:
        """The claim on ``path``; None if it is gone or locked (being written or drained)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return cls(path, fd)

    def lines(self) -> list[bytes]:
        chunks = []
        while chunk := os.read(self._fd, 1 << 20):
            chunks.append(chunk)
        return [ln for ln in b"".join(chunks).splitlines() if ln.strip()]

    def drained(self) -> None:
        """Every entry is in the store: delete the segment, then let go."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.release()

    def release(self) -> None:
        os.close(self._fd)
