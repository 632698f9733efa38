"""A ``Store`` that fails on demand, shipped beside the port for tests: it wraps a real store
(SQLite) and makes chosen calls stall, fail, or commit late.

* ``stall()``: the calls wait until ``heal()``, as over a network that stopped answering;
  ``stall(late=True)``: a ``write`` the caller gave up on still lands once healed, as a commit
  that reached the database before the network went quiet.
* ``fail(err)``: the calls raise ``err`` (a ``StoreError``: the database refuses).
* ``heal()``: everything goes through again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence

from rtgate.metering.record import UsageRecord
from rtgate.protocol.transcript import TranscriptEntry
from rtgate.store.port import (
    Entry,
    KeyActivity,
    KeyInfo,
    Overview,
    SessionSummary,
    Store,
    StoredCall,
    StoredClientSecret,
    StoreError,
    UsageSummary,
)

WRITES = frozenset({"write"})


class FaultyStore:
    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self._healed = asyncio.Event()
        self._healed.set()
        self._error: Exception | None = None
        self._late = False
        self._affects: frozenset[str] | None = None
        #: Calls that came in, by method name (affected or not).
        self.calls: dict[str, int] = {}
        #: Writes given up on by their caller that still land (``stall(late=True)``).
        self.late_writes: set[asyncio.Task[None]] = set()

    def stall(self, *, late: bool = False, only: frozenset[str] | None = None) -> None:
        """Calls (``only`` these method names, else all) wait until ``heal()``."""
        self._healed.clear()
        self._late, self._affects = late, only

    def fail(self, err: Exception | None = None, *, only: frozenset[str] | None = None) -> None:
        """Calls (``only`` these method names, else all) raise ``err``."""
        self._error = err or StoreError("cannot write: OperationalError")
        self._affects = only

    def heal(self) -> None:
        self._error = None
        self._healed.set()

    async def _gate(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if self._affects is not None and name not in self._affects:
            return
        if self._error is not None:
            raise self._error
        await self._healed.wait()

    async def write(self, entries: Sequence[Entry]) -> None:
        if self._late and not self._healed.is_set():
            task = asyncio.create_task(self._write_when_healed(list(entries)))
            self.late_writes.add(task)
            task.add_done_callback(self.late_writes.discard)
            # The caller may stop waiting; the write goes on (shielded), as a late commit.
            await asyncio.shield(task)
            return
        await self._gate("write")
        await self.inner.write(entries)

    async def _write_when_healed(self, entries: list[Entry]) -> None:
        await self._gate("write")
        await self.inner.write(entries)

    # -- the rest of the port, gated the same way --------------------------------------------
    async def init(self) -> None:
        await self.inner.init()

    async def close(self) -> None:
        await self.inner.close()

    async def create_key(
        self,
        key_id: str,
        name: str,
        display_prefix: str,
        key_hash: str,
        now: float,
        policy_json: str | None = None,
    ) -> KeyInfo:
        await self._gate("create_key")
        return await self.inner.create_key(key_id, name, display_prefix, key_hash, now, policy_json)

    async def list_keys(self, include_revoked: bool = True) -> list[KeyInfo]:
        await self._gate("list_keys")
        return await self.inner.list_keys(include_revoked)

    async def get_key(self, key_id: str) -> KeyInfo | None:
        await self._gate("get_key")
        return await self.inner.get_key(key_id)

    async def key_by_hash(self, key_hash: str) -> tuple[KeyInfo, str] | None:
        await self._gate("key_by_hash")
        return await self.inner.key_by_hash(key_hash)

    async def revoke_key(self, key_id: str, now: float) -> KeyInfo | None:
        await self._gate("revoke_key")
        return await self.inner.revoke_key(key_id, now)

    async def revoked_keys(self, key_ids: Collection[str]) -> set[str]:
        await self._gate("revoked_keys")
        return await self.inner.revoked_keys(key_ids)

    async def revoked_client_secrets(self, since: float) -> set[str]:
        await self._gate("revoked_client_secrets")
        return await self.inner.revoked_client_secrets(since)

    async def set_key_policy(self, key_id: str, policy_json: str | None) -> KeyInfo | None:
        await self._gate("set_key_policy")
        return await self.inner.set_key_policy(key_id, policy_json)

    async def add_client_secret(self, row: StoredClientSecret) -> None:
        await self._gate("add_client_secret")
        await self.inner.add_client_secret(row)

    async def client_secret_by_hash(
        self, secret_hash: str
    ) -> tuple[StoredClientSecret, KeyInfo] | None:
        await self._gate("client_secret_by_hash")
        return await self.inner.client_secret_by_hash(secret_hash)

    async def list_client_secrets(self, key_id: str | None, now: float) -> list[StoredClientSecret]:
        await self._gate("list_client_secrets")
        return await self.inner.list_client_secrets(key_id, now)

    async def client_secret_by_id(self, hash_prefix: str) -> StoredClientSecret | None:
        await self._gate("client_secret_by_id")
        return await self.inner.client_secret_by_id(hash_prefix)

    async def revoke_client_secret(self, hash_prefix: str, now: float) -> StoredClientSecret | None:
        await self._gate("revoke_client_secret")
        return await self.inner.revoke_client_secret(hash_prefix, now)

    async def claim_call(self, call: StoredCall) -> StoredCall:
        await self._gate("claim_call")
        return await self.inner.claim_call(call)

    async def call_owner(self, call_id: str) -> StoredCall | None:
        await self._gate("call_owner")
        return await self.inner.call_owner(call_id)

    async def release_call(self, call_id: str, key_id: str) -> None:
        await self._gate("release_call")
        await self.inner.release_call(call_id, key_id)

    async def accept_call(self, call_id: str, now: float) -> None:
        await self._gate("accept_call")
        await self.inner.accept_call(call_id, now)

    async def spend(self, key_id: str, day: str, month_start: str) -> tuple[int, int, int]:
        await self._gate("spend")
        return await self.inner.spend(key_id, day, month_start)

    async def session_transcript(self, session_id: str) -> list[TranscriptEntry]:
        await self._gate("session_transcript")
        return await self.inner.session_transcript(session_id)

    async def usage_summary(
        self, key_id: str | None = None, since_day: str | None = None
    ) -> list[UsageSummary]:
        await self._gate("usage_summary")
        return await self.inner.usage_summary(key_id, since_day)

    async def recent_sessions(
        self,
        limit: int = 50,
        key_id: str | None = None,
        session_id: str | None = None,
        before: str | None = None,
    ) -> list[SessionSummary]:
        await self._gate("recent_sessions")
        return await self.inner.recent_sessions(limit, key_id, session_id, before)

    async def session_usage(self, session_id: str) -> list[UsageRecord]:
        await self._gate("session_usage")
        return await self.inner.session_usage(session_id)

    async def overview(self, since_day: str, since: float) -> Overview:
        await self._gate("overview")
        return await self.inner.overview(since_day, since)

    async def key_activity(self, day: str, month_start: str) -> list[KeyActivity]:
        await self._gate("key_activity")
        return await self.inner.key_activity(day, month_start)

    async def beat(self, instance: str, now: float) -> None:
        await self._gate("beat")
        await self.inner.beat(instance, now)

    async def end_lost_sessions(self, seen_since: float, opened_before: float) -> int:
        await self._gate("end_lost_sessions")
        return await self.inner.end_lost_sessions(seen_since, opened_before)

    async def leave(self, instance: str) -> None:
        await self._gate("leave")
        await self.inner.leave(instance)

    async def add_console_session(self, value_hash: str, now: float, expires_at: float) -> None:
        await self._gate("add_console_session")
        await self.inner.add_console_session(value_hash, now, expires_at)

    async def console_session(self, value_hash: str, now: float) -> bool:
        await self._gate("console_session")
        return await self.inner.console_session(value_hash, now)

    async def end_console_session(self, value_hash: str) -> None:
        await self._gate("end_console_session")
        await self.inner.end_console_session(value_hash)


def _conforms(store: FaultyStore) -> Store:
    return store  # mypy checks that the fake keeps up with the port
