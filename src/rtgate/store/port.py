"""The ``Store`` port: everything the gateway asks of persistence, and the rows it gets back.

Every call answers within a deadline or raises ``StoreError``: the relay asks the store while
clients wait, so a database that stalls must cost them seconds, never the session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from rtgate.config import PriceUnit
from rtgate.errors import GatewayError
from rtgate.metering.record import UsageRecord
from rtgate.protocol.transcript import TranscriptEntry
from rtgate.protocol.usage import Usage


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    name: str
    display_prefix: str
    created_at: float
    revoked_at: float | None
    policy_json: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class UsageSummary:
    """Usage of one key, model, UTC day and unit."""

    key_id: str
    key_name: str
    model: str
    day: str
    #: What it counts in, as priced: ``token``, ``second`` or ``minute`` (``UsageRecord.unit``).
    unit: PriceUnit
    usage: Usage
    records: int
    provider_nanos: int
    charged_nanos: int
    #: Records whose usage could not be read in full (``UsageRecord.review``).
    needs_review: int


@dataclass(frozen=True, slots=True)
class SessionSummary:
    id: str
    key_id: str
    key_name: str
    model: str
    upstream: str
    intent: str | None
    started_at: float
    ended_at: float | None
    close_code: int | None
    close_reason: str | None
    closed_by: str | None
    usage: Usage
    provider_nanos: int
    charged_nanos: int


@dataclass(frozen=True, slots=True)
class DayTotals:
    """Sessions started and usage metered on one UTC day."""

    day: str
    sessions: int
    provider_nanos: int
    charged_nanos: int


@dataclass(frozen=True, slots=True)
class CloseTally:
    """How many sessions of a window ended with one close code and reason."""

    code: int | None
    reason: str | None
    sessions: int


@dataclass(frozen=True, slots=True)
class Overview:
    """The store's side of the console's overview: per UTC day from ``since_day`` on (days
    without sessions or usage are left out), and how the window's sessions ended."""

    days: tuple[DayTotals, ...]
    closes: tuple[CloseTally, ...]


@dataclass(frozen=True, slots=True)
class KeyActivity:
    """A key's charged spend (this UTC day, this UTC month, ever) and its last session."""

    key_id: str
    spend: tuple[int, int, int]
    sessions: int
    last_used_at: float | None


@dataclass(frozen=True, slots=True)
class SessionOpen:
    id: str
    key_id: str
    model: str
    upstream: str
    intent: str | None
    started_at: float
    #: The serving process relaying it (``Fleet.instance``); None in a journal line written
    #: before sessions named theirs.
    instance: str | None = None


@dataclass(frozen=True, slots=True)
class SessionClose:
    id: str
    ended_at: float
    code: int | None
    reason: str
    closed_by: str


#: What the ledger writes (``Store.write``): a session's start, its usage and transcript, its end.
Entry = SessionOpen | UsageRecord | TranscriptEntry | SessionClose


class StoreError(GatewayError):
    """The database failed or did not answer in time; mapped from the driver at the adapter."""

    code = "store_unavailable"

    def __init__(self, message: str, *, bad_data: bool = False) -> None:
        super().__init__(message)
        #: The database refused the data itself (a constraint, a value out of range): writing
        #: it again cannot succeed. False: the database is unavailable; it may work later.
        self.bad_data = bad_data


@dataclass(frozen=True, slots=True)
class StoredClientSecret:
    """A minted client secret's row; the secret itself is never stored."""

    secret_hash: str
    key_id: str
    model: str | None
    session_json: str
    created_at: float
    expires_at: float
    revoked_at: float | None = None


@dataclass(frozen=True, slots=True)
class StoredCall:
    """A call and its owner: the key that placed or accepted it (and the client secret, if one
    placed it), the model it was placed for and the upstream that carries it."""

    call_id: str
    key_id: str
    secret_id: str | None
    model: str
    upstream: str
    created_at: float
    #: When its metered sideband was started; None while a SIP call's accept has not gone
    #: through (``relay/call_owners.py``).
    accepted_at: float | None = None


class Store(Protocol):
    async def init(self) -> None:
        """Create or migrate the schema; idempotent."""
        ...

    async def close(self) -> None: ...

    async def create_key(
        self,
        key_id: str,
        name: str,
        display_prefix: str,
        key_hash: str,
        now: float,
        policy_json: str | None = None,
    ) -> KeyInfo: ...

    async def list_keys(self, include_revoked: bool = True) -> list[KeyInfo]: ...

    async def get_key(self, key_id: str) -> KeyInfo | None: ...

    async def key_by_hash(self, key_hash: str) -> tuple[KeyInfo, str] | None:
        """The key and its stored hash (for the caller's constant-time check)."""
        ...

    async def revoke_key(self, key_id: str, now: float) -> KeyInfo | None: ...

    async def revoked_keys(self, key_ids: Collection[str]) -> set[str]:
        """Which of ``key_ids`` are revoked (the keys of live sessions, checked now and then:
        ``api/live.py``)."""
        ...

    async def revoked_client_secrets(self, since: float) -> set[str]:
        """The hashes of the client secrets revoked at ``since`` or later (the secrets of live
        sessions, checked now and then: ``api/live.py``; one revoked before a session opened
        never opened it)."""
        ...

    async def set_key_policy(self, key_id: str, policy_json: str | None) -> KeyInfo | None: ...

    async def add_client_secret(self, row: StoredClientSecret) -> None:
        """Store a minted secret; secrets expired before ``row.created_at`` may be dropped."""
        ...

    async def client_secret_by_hash(
        self, secret_hash: str
    ) -> tuple[StoredClientSecret, KeyInfo] | None:
        """The secret and its minting key, revoked or not (the caller decides)."""
        ...

    async def list_client_secrets(self, key_id: str | None, now: float) -> list[StoredClientSecret]:
        """Secrets not yet expired at ``now`` (revoked ones too), newest first."""
        ...

    async def client_secret_by_id(self, hash_prefix: str) -> StoredClientSecret | None:
        """The one secret whose hash starts with ``hash_prefix`` (a secret's id), revoked or
        not; None if no secret matches."""
        ...

    async def revoke_client_secret(self, hash_prefix: str, now: float) -> StoredClientSecret | None:
        """Revoke the one secret whose hash starts with ``hash_prefix`` (a secret's id); an
        already revoked one keeps its first ``revoked_at``. None if no secret matches."""
        ...

    async def claim_call(self, call: StoredCall) -> StoredCall:
        """Record ``call`` unless its call id has an owner already; the owner either way. Atomic
        across instances: of two claims at once, exactly one is stored and both see it."""
        ...

    async def call_owner(self, call_id: str) -> StoredCall | None: ...

    async def release_call(self, call_id: str, key_id: str) -> None:
        """Forget the call's owner if it is ``key_id`` (its accept was refused upstream)."""
        ...

    async def accept_call(self, call_id: str, now: float) -> None:
        """Note that the call's metered sideband was started (``StoredCall.accepted_at``)."""
        ...

    async def spend(self, key_id: str, day: str, month_start: str) -> tuple[int, int, int]:
        """Charged nano-dollars of ``key_id``: on ``day``, since ``month_start``, ever."""
        ...

    def write(self, entries: Sequence[Entry]) -> Awaitable[None]:
        """Write ``entries`` in one transaction, durable when the awaitable is done: a
        coroutine, or a future whose work goes on without its waiter (no task per batch; the
        ledger waits on it with its deadline, ``rtgate.deadline``). Idempotent: an entry
        already written (a session open, a usage record or transcript entry by its id, a
        session close) is written again as a no-op, so a batch may be replayed after a failure
        or a timeout that in fact committed."""
        ...

    async def session_transcript(self, session_id: str) -> list[TranscriptEntry]: ...

    async def usage_summary(
        self, key_id: str | None = None, since_day: str | None = None
    ) -> list[UsageSummary]: ...

    async def recent_sessions(
        self,
        limit: int = 50,
        key_id: str | None = None,
        session_id: str | None = None,
        before: str | None = None,
    ) -> list[SessionSummary]:
        """Newest first; ``before`` (a session id) starts the page after that session, in the
        same order (keyset pagination: a page costs the same however deep it is)."""
        ...

    async def session_usage(self, session_id: str) -> list[UsageRecord]:
        """The session's usage records in the order they were metered."""
        ...

    async def overview(self, since_day: str, since: float) -> Overview:
        """Totals per UTC day of sessions started and usage metered from ``since_day`` on, and
        the close codes of the sessions started since ``since`` (unix seconds, that day's
        start)."""
        ...

    async def key_activity(self, day: str, month_start: str) -> list[KeyActivity]:
        """Every key with any session or usage: spend as ``spend`` sums it, and its last
        session's start."""
        ...

    async def add_console_session(self, value_hash: str, now: float, expires_at: float) -> None:
        """A signed-in console session (only its hash); expired ones may be dropped."""
        ...

    async def console_session(self, value_hash: str, now: float) -> bool:
        """Whether the console session is signed in and not expired at ``now``."""
        ...

    async def end_console_session(self, value_hash: str) -> None: ...

    async def beat(self, instance: str, now: float) -> None:
        """``instance`` serves at ``now`` (its row made on its first beat)."""
        ...

    async def end_lost_sessions(self, seen_since: float, opened_before: float) -> int:
        """End as lost (1006, ``gateway_instance_lost``) every open session whose instance
        was not seen since ``seen_since`` or has no row, and every open session that names no
        instance (written before sessions named theirs) opened before ``opened_before``; forget
        those instances. Each ends at the last moment it is known to have been relayed (its
        instance's last beat, its last usage record, its start). Returns how many ended."""
        ...

    async def leave(self, instance: str) -> None:
        """``instance`` has stopped, every session of it closed: forget it."""
        ...
